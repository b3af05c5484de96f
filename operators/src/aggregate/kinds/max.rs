//! `max`: the largest value in the window.

use crate::aggregate::{Doc, Kind, Twin, Window};

pub(crate) struct Max;

impl Kind for Max {
    fn name(&self) -> &'static str {
        "max"
    }

    fn value(&self, window: &Window<'_>) -> f64 {
        window.latest_first().reduce(f64::max).unwrap_or(0.0)
    }

    fn twin(&self, twin: &Twin) -> String {
        let (a, b) = twin.parts("MAX");
        format!("COALESCE(GREATEST({a}, {b}), 0.0)")
    }

    fn doc(&self) -> Doc {
        Doc {
            definition: "the largest value",
            empty: "0",
            example: r#"{ key = "card.id", kind = "max", value = "amount", spans = ["1d"], name = "card_max_{span}" }"#,
        }
    }
}

crate::register_kind!(Max);
