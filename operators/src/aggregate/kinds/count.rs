//! `count`: how many of the key's events the window holds.

use arrow::datatypes::DataType;

use crate::aggregate::{Doc, Kind, Twin, Window};

pub(crate) struct Count;

impl Kind for Count {
    fn name(&self) -> &'static str {
        "count"
    }

    fn reads_value(&self) -> bool {
        false
    }

    fn output(&self) -> DataType {
        DataType::Int64
    }

    fn value(&self, window: &Window<'_>) -> f64 {
        window.len() as f64
    }

    fn twin(&self, twin: &Twin) -> String {
        twin.count()
    }

    fn doc(&self) -> Doc {
        Doc {
            definition: "the number of events",
            empty: "0",
            example: r#"{ key = "card.id", kind = "count", spans = ["10m", "1h"], name = "card_count_{span}" }"#,
        }
    }
}

crate::register_kind!(Count);
