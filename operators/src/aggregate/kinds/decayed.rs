//! `decayed_sum` and `decayed_count`: Σ vᵢ · 2^(−(t − tᵢ)/h) over the window (vᵢ = 1 for the
//! count), h the half-life. Each term is weighed from its own age and the terms are added from
//! the latest event to the earliest, so the value depends only on which events the window holds:
//! an incremental `s · e^(−λΔt) + v` would depend on the order late events arrived in.

use std::time::Duration;

use crate::aggregate::{Doc, Kind, Parameter, Params, Twin, Window};

pub(crate) struct DecayedSum;
pub(crate) struct DecayedCount;

/// Half-lives a span may hold: an event older than ~1074 half-lives weighs exactly 0 in a
/// double, so a longer span would only hold state that changes nothing.
const MOST_HALF_LIVES: u128 = 1000;

fn decayed(window: &Window<'_>, value: impl Fn(f64) -> f64) -> f64 {
    let h = window.params.half_life as f64;
    window
        .events_latest_first()
        .map(|(t, v)| value(v) * (-((window.now - t) as f64) / h).exp2())
        .fold(0.0, |s, x| s + x)
}

fn check(params: &Params, span: Duration) -> Option<String> {
    let h = u128::try_from(params.half_life).unwrap_or(0).max(1);
    (span.as_nanos() > MOST_HALF_LIVES * h).then(|| {
        format!(
            "span {} is more than {MOST_HALF_LIVES} half-lives ({}): older events weigh under 2^-{MOST_HALF_LIVES}, nothing a double keeps",
            humantime::format_duration(span),
            humantime::format_duration(Duration::from_nanos(params.half_life.max(0) as u64)),
        )
    })
}

/// The twin: weights from a fixed point per block of one span (its middle), so that no power
/// overflows: an event's weight relative to its block's middle lies within 2^±(span/2h). A
/// window (t − span, t] spans the current block and the one before; the key's events of the
/// current block come from a frame partitioned by block, the earlier block's from the whole
/// frame less those. Events at time t weigh 1.
fn twin_decayed(twin: &Twin) -> String {
    let (t, span, v) = (&twin.time, twin.span, &twin.value);
    let h = format!("{:.1}", twin.params.half_life as f64);
    let mid = format!("({t} / {span} * {span} + {span} / 2)");
    let weighed = format!("{v} * POWER(2.0, CAST({t} - {mid} AS DOUBLE) / {h})");
    let same_block = format!(
        "OVER (PARTITION BY {}, {t} / {span} ORDER BY {t} RANGE BETWEEN {} PRECEDING AND 1 PRECEDING)",
        twin.partition,
        span - 1
    );
    let all = format!("COALESCE(SUM({weighed}) {}, 0.0)", twin.earlier);
    let same = format!("COALESCE(SUM({weighed}) {same_block}, 0.0)");
    let peers = format!("COALESCE(SUM({v}) {}, 0.0)", twin.peers);
    format!(
        "(POWER(2.0, CAST({mid} - {t} AS DOUBLE) / {h}) * {same} + POWER(2.0, CAST({mid} - {span} - {t} AS DOUBLE) / {h}) * ({all} - {same}) + {peers})"
    )
}

impl Kind for DecayedSum {
    fn name(&self) -> &'static str {
        "decayed_sum"
    }

    fn parameters(&self) -> &'static [Parameter] {
        &[Parameter::HalfLife]
    }

    fn check(&self, params: &Params, span: Duration) -> Option<String> {
        check(params, span)
    }

    fn value(&self, window: &Window<'_>) -> f64 {
        decayed(window, |v| v)
    }

    fn twin(&self, twin: &Twin) -> String {
        twin_decayed(twin)
    }

    fn doc(&self) -> Doc {
        Doc {
            definition: "Σ v · 2^(−(t − tᵢ)/h), h the `half_life`: each term weighed from its own age, added from the latest event to the earliest; the span at most 1000 half-lives",
            empty: "0",
            example: r#"{ key = "card.id", kind = "decayed_sum", value = "amount", half_life = "1h", spans = ["1d"], name = "card_spent_decayed_1h" }"#,
        }
    }
}

impl Kind for DecayedCount {
    fn name(&self) -> &'static str {
        "decayed_count"
    }

    fn reads_value(&self) -> bool {
        false
    }

    fn parameters(&self) -> &'static [Parameter] {
        &[Parameter::HalfLife]
    }

    fn check(&self, params: &Params, span: Duration) -> Option<String> {
        check(params, span)
    }

    fn value(&self, window: &Window<'_>) -> f64 {
        decayed(window, |_| 1.0)
    }

    fn twin(&self, twin: &Twin) -> String {
        twin_decayed(twin)
    }

    fn doc(&self) -> Doc {
        Doc {
            definition: "Σ 2^(−(t − tᵢ)/h): the `decayed_sum` of 1 per event",
            empty: "0",
            example: r#"{ key = "card.id", kind = "decayed_count", half_life = "10m", spans = ["6h"], name = "card_velocity_decayed" }"#,
        }
    }
}

crate::register_kind!(DecayedSum);
crate::register_kind!(DecayedCount);
