//! `since_previous`: seconds from the key's previous event to the current one.

use crate::aggregate::{Doc, Kind, Twin, Window};

pub(crate) struct SincePrevious;

const NS_PER_SECOND: f64 = 1e9;

impl Kind for SincePrevious {
    fn name(&self) -> &'static str {
        "since_previous"
    }

    fn reads_value(&self) -> bool {
        false
    }

    fn takes_current(&self) -> bool {
        false
    }

    fn value(&self, window: &Window<'_>) -> f64 {
        let gap = window.latest().map_or(window.span, |(t, _)| window.now - t);
        gap as f64 / NS_PER_SECOND
    }

    fn twin(&self, twin: &Twin) -> String {
        format!(
            "CAST(CASE WHEN {lag} > {t} - {span} THEN {t} - {lag} ELSE {span} END AS DOUBLE) / 1000000000.0",
            lag = twin.before("LAG", &twin.time),
            t = twin.time,
            span = twin.span,
        )
    }

    fn doc(&self) -> Doc {
        Doc {
            definition: "seconds from the key's previous event (by time, then id) to this one; 0 for an event of the same time",
            empty: "the span in seconds (no previous event within it)",
            example: r#"{ key = "card.id", kind = "since_previous", spans = ["30d"], name = "card_seconds_since_previous" }"#,
        }
    }
}

crate::register_kind!(SincePrevious);
