//! `last`: the value of the window's latest event (the current one, when it is included).

use crate::aggregate::{Doc, Kind, Twin, Window};

pub(crate) struct Last;

impl Kind for Last {
    fn name(&self) -> &'static str {
        "last"
    }

    fn value(&self, window: &Window<'_>) -> f64 {
        window.latest().map_or(0.0, |(_, v)| v)
    }

    fn twin(&self, twin: &Twin) -> String {
        match (twin.current, &twin.filter) {
            (true, None) => twin.value.clone(),
            // The current event when the filter selects it, else the previous selected one.
            (true, Some(f)) => format!(
                "CASE WHEN ({f}) THEN {} ELSE {} END",
                twin.value,
                twin.previous(&twin.value, "0.0")
            ),
            (false, _) => twin.previous(&twin.value, "0.0"),
        }
    }

    fn doc(&self) -> Doc {
        Doc {
            definition: "the value of the latest event (by time, then id): with `include_current = false`, the key's previous event",
            empty: "0",
            example: r#"{ key = "card.id", kind = "last", value = "amount", spans = ["1d"], include_current = false, name = "card_previous_amount" }"#,
        }
    }
}

crate::register_kind!(Last);
