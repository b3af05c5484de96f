//! `first`: the value of the window's earliest event.

use crate::aggregate::{Doc, Kind, Twin, Window};

pub(crate) struct First;

impl Kind for First {
    fn name(&self) -> &'static str {
        "first"
    }

    fn value(&self, window: &Window<'_>) -> f64 {
        window.earliest().map_or(0.0, |(_, v)| v)
    }

    fn twin(&self, twin: &Twin) -> String {
        // Every event of the earliest time in the earlier frame carries its time's first value.
        let (n, _) = twin.parts("COUNT");
        format!(
            "CASE WHEN {n} > 0 THEN FIRST_VALUE({g}){skip} {e} ELSE COALESCE(FIRST_VALUE({v}){skip} {p}, 0.0) END",
            skip = twin.skip_unselected(),
            g = twin.group_first,
            e = twin.earlier,
            v = twin.value,
            p = twin.peers,
        )
    }

    fn doc(&self) -> Doc {
        Doc {
            definition: "the value of the earliest event (by time, then id)",
            empty: "0",
            example: r#"{ key = "card.id", kind = "first", value = "amount", spans = ["1d"], name = "card_first_{span}" }"#,
        }
    }
}

crate::register_kind!(First);
