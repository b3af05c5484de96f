//! `first_seen`: whether the key had no event within the span before this one (a card paying a
//! merchant it has not paid in 30 days, keyed by card × merchant).

use arrow::datatypes::DataType;

use crate::aggregate::{Doc, Kind, Twin, Window};

pub(crate) struct FirstSeen;

impl Kind for FirstSeen {
    fn name(&self) -> &'static str {
        "first_seen"
    }

    fn reads_value(&self) -> bool {
        false
    }

    fn takes_current(&self) -> bool {
        false
    }

    fn output(&self) -> DataType {
        DataType::Int64
    }

    fn value(&self, window: &Window<'_>) -> f64 {
        f64::from(u8::from(window.is_empty()))
    }

    fn twin(&self, twin: &Twin) -> String {
        format!(
            "CASE WHEN {lag} > {t} - {span} THEN 0 ELSE 1 END",
            lag = twin.before("LAG", &twin.time),
            t = twin.time,
            span = twin.span,
        )
    }

    fn doc(&self) -> Doc {
        Doc {
            definition: "1 when the key has no earlier event (by time, then id) in the span, else 0",
            empty: "1",
            example: r#"{ key = ["card.id", "merchant.id"], kind = "first_seen", spans = ["30d"], name = "card_new_merchant_{days}d" }"#,
        }
    }
}

crate::register_kind!(FirstSeen);
