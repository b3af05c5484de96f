//! `sum`: the sum of the window's values.

use crate::aggregate::{Doc, Kind, Twin, Window};

pub(crate) struct Sum;

impl Kind for Sum {
    fn name(&self) -> &'static str {
        "sum"
    }

    fn value(&self, window: &Window<'_>) -> f64 {
        window.sum()
    }

    fn twin(&self, twin: &Twin) -> String {
        twin.sum()
    }

    fn doc(&self) -> Doc {
        Doc {
            definition: "Σ v, added from the latest event to the earliest",
            empty: "0",
            example: r#"{ key = "card.id", kind = "sum", value = "amount", spans = ["1h"], name = "card_spent_{span}" }"#,
        }
    }
}

crate::register_kind!(Sum);
