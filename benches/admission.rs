//! What the admission of numbers costs ([`OutOfRange`]: every float column of a batch checked
//! against ±10¹⁵ before any state): the check alone over handbook transactions in the live
//! batch size, against the shipped feature stage (which runs it) over the same batches, in one
//! run. Prints ns per row of each and their ratio (median of 5 passes each).
//!
//! `cargo bench --bench admission`; RISKPIPE_ADMISSION_ROWS (default 200000) sizes it.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use riskpipe_pipeline::jobs::value_range::OutOfRange;
use riskpipe_pipeline::jobs::{JobInput, fraud};
use riskpipe_pipeline::{PipelineConfig, backtest};

fn median(mut d: Vec<Duration>) -> Duration {
    d.sort();
    d[d.len() / 2]
}

fn main() {
    let n = std::env::var("RISKPIPE_ADMISSION_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000usize);
    let cfg = PipelineConfig::handbook().expect("config");
    let history = backtest::load(&cfg, &support::handbook_data()).expect("history");
    let events = history.head(n).events;
    let batches: Vec<_> = (0..events.num_rows())
        .step_by(1024)
        .map(|at| events.slice(at, 1024.min(events.num_rows() - at)))
        .collect();
    let check = median(
        (0..5)
            .map(|_| {
                let started = Instant::now();
                for b in &batches {
                    let refused = OutOfRange::of(b);
                    assert!(refused.reason(0).is_none());
                }
                started.elapsed()
            })
            .collect(),
    );
    let stage = median(
        (0..5)
            .map(|_| {
                let mut stage = fraud::feature_stage(
                    riskpipe_pipeline::jobs::fraud::FraudConfig::of(&cfg).expect("fraud job"),
                )
                .expect("stage");
                let started = Instant::now();
                for b in &batches {
                    let f = stage
                        .process(JobInput {
                            events: b.clone(),
                            side: None,
                            partitions: None,
                        })
                        .expect("features");
                    assert!(f.rejects.is_empty());
                }
                started.elapsed()
            })
            .collect(),
    );
    let per_row = |d: Duration| d.as_nanos() as f64 / n as f64;
    println!(
        "{n} handbook transactions in batches of 1,024: the admission check {:.2} ns/row, the whole feature stage {:.1} ns/row: the check is {:.2}% of it",
        per_row(check),
        per_row(stage),
        100.0 * check.as_secs_f64() / stage.as_secs_f64()
    );
}
