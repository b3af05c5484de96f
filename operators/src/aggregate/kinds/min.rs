//! `min`: the smallest value in the window.

use crate::aggregate::{Doc, Kind, Twin, Window};

pub(crate) struct Min;

impl Kind for Min {
    fn name(&self) -> &'static str {
        "min"
    }

    fn value(&self, window: &Window<'_>) -> f64 {
        window.latest_first().reduce(f64::min).unwrap_or(0.0)
    }

    fn twin(&self, twin: &Twin) -> String {
        let (a, b) = twin.parts("MIN");
        format!("COALESCE(LEAST({a}, {b}), 0.0)")
    }

    fn doc(&self) -> Doc {
        Doc {
            definition: "the smallest value",
            empty: "0",
            example: r#"{ key = "card.id", kind = "min", value = "amount", spans = ["1d"], name = "card_min_{span}" }"#,
        }
    }
}

crate::register_kind!(Min);
