//! `last_k`: the values of the window's k latest events, one column each.

use crate::aggregate::{Doc, Kind, Parameter, Params, Twin, Window};

pub(crate) struct LastK;

impl Kind for LastK {
    fn name(&self) -> &'static str {
        "last_k"
    }

    fn parameters(&self) -> &'static [Parameter] {
        &[Parameter::K]
    }

    fn width(&self, params: &Params) -> usize {
        params.k.max(1)
    }

    fn value(&self, window: &Window<'_>) -> f64 {
        window.latest().map_or(0.0, |(_, v)| v)
    }

    fn values(&self, window: &Window<'_>, out: &mut [f64]) {
        let mut latest = window.latest_first();
        for slot in out.iter_mut() {
            *slot = latest.next().unwrap_or(0.0);
        }
    }

    fn twin(&self, twin: &Twin) -> String {
        self.twins(twin).swap_remove(0)
    }

    fn twins(&self, twin: &Twin) -> Vec<String> {
        let v = &twin.value;
        (1..=twin.params.k.max(1))
            .map(|i| {
                // The i-th latest: the current event first, when it is in its window.
                let with_current = match i {
                    1 => v.clone(),
                    _ => twin.nth_previous(i - 1, v, "0.0"),
                };
                let without = twin.nth_previous(i, v, "0.0");
                match (twin.current, &twin.filter) {
                    (true, None) => with_current,
                    (true, Some(f)) => {
                        format!("CASE WHEN ({f}) THEN {with_current} ELSE {without} END")
                    }
                    (false, _) => without,
                }
            })
            .collect()
    }

    fn doc(&self) -> Doc {
        Doc {
            definition: "the values of the k latest events (by time, then id), column `{i}` = i the i-th latest (1 = the latest: the current event, when it is included)",
            empty: "0 in each column the window has no event for (a `count` over the same span tells how many are real)",
            example: r#"{ key = "card.id", kind = "last_k", value = "amount", k = 3, spans = ["1d"], include_current = false, name = "card_amount_{i}_before" }"#,
        }
    }
}

crate::register_kind!(LastK);
