//! `variance`: the population variance of the window's values, in two passes (the mean, then
//! the squared deviations from it, corrected by their sum), which stays exact where a running
//! sum of squares would cancel.

use crate::aggregate::{Doc, Kind, Twin, Window};

pub(crate) struct Variance;

/// (Σ (v − mean)² − (Σ (v − mean))² / n) / n, every sum from the latest event to the earliest;
/// exactly 0 when every value is the same (and for one event or none).
pub(crate) fn population_variance(window: &Window<'_>) -> f64 {
    let n = window.len();
    if n == 0 {
        return 0.0;
    }
    let mean = window.sum() / n as f64;
    let (mut lo, mut hi, mut squares, mut deviations) =
        (f64::INFINITY, f64::NEG_INFINITY, 0.0, 0.0);
    for v in window.latest_first() {
        lo = lo.min(v);
        hi = hi.max(v);
        squares += (v - mean) * (v - mean);
        deviations += v - mean;
    }
    // The deviations would sum to 0 with an exact mean: their sum corrects the rounded mean
    // (the corrected two-pass algorithm), which matters where values are large and spread small.
    let n = n as f64;
    match lo == hi {
        true => 0.0,
        false => ((squares - deviations * deviations / n) / n).max(0.0),
    }
}

/// The twin: the two frames' population variances combined (Chan, Golub and LeVeque's
/// pairwise update), so that later events of equal time stay out.
pub(crate) fn twin_variance(twin: &Twin) -> String {
    let (na, nb) = twin.parts("COUNT");
    let (na, nb) = (
        format!("CAST({na} AS DOUBLE)"),
        format!("CAST({nb} AS DOUBLE)"),
    );
    let (ma, mb) = twin.parts("AVG");
    let (va, vb) = twin.parts("VAR_POP");
    let (lo_a, lo_b) = twin.parts("MIN");
    let (hi_a, hi_b) = twin.parts("MAX");
    // Equal values (one event among them) have no variance: exactly 0, as the stream says,
    // where a sliding VAR_POP keeps a residue of the values that left its frame.
    format!(
        "CASE WHEN {na} + {nb} = 0 THEN 0.0 \
         WHEN LEAST({lo_a}, {lo_b}) = GREATEST({hi_a}, {hi_b}) THEN 0.0 \
         WHEN {na} = 0 THEN {vb} WHEN {nb} = 0 THEN {va} \
         ELSE ({va} * {na} + {vb} * {nb} + ({ma} - {mb}) * ({ma} - {mb}) * {na} * {nb} / ({na} + {nb})) / ({na} + {nb}) END"
    )
}

impl Kind for Variance {
    fn name(&self) -> &'static str {
        "variance"
    }

    fn value(&self, window: &Window<'_>) -> f64 {
        population_variance(window)
    }

    fn twin(&self, twin: &Twin) -> String {
        twin_variance(twin)
    }

    fn doc(&self) -> Doc {
        Doc {
            definition: "population variance Σ (v − m)² / n, m the `mean`; two passes, latest to earliest, corrected by the rounded mean: (Σ (v − m)² − (Σ (v − m))² / n) / n; exactly 0 when all values are equal",
            empty: "0 (also for one event)",
            example: r#"{ key = "card.id", kind = "variance", value = "amount", spans = ["7d"], name = "card_var_{span}" }"#,
        }
    }
}

crate::register_kind!(Variance);
