//! `mean`: the window's sum over its count.

use crate::aggregate::{Doc, Kind, Twin, Window};

pub(crate) struct Mean;

impl Kind for Mean {
    fn name(&self) -> &'static str {
        "mean"
    }

    fn value(&self, window: &Window<'_>) -> f64 {
        match window.len() {
            0 => 0.0,
            n => window.sum() / n as f64,
        }
    }

    fn twin(&self, twin: &Twin) -> String {
        let n = twin.count();
        format!(
            "CASE WHEN {n} = 0 THEN 0.0 ELSE {} / CAST({n} AS DOUBLE) END",
            twin.sum()
        )
    }

    fn doc(&self) -> Doc {
        Doc {
            definition: "the `sum` over the `count`",
            empty: "0",
            example: r#"{ key = "card.id", kind = "mean", value = "amount", spans = ["30d"], name = "card_mean_{days}d" }"#,
        }
    }
}

crate::register_kind!(Mean);
