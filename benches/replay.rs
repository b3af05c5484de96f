//! End-to-end replay benchmark: the whole handbook history (1,754,155 transactions) read,
//! ordered, run through every feature operator and scored, against — in the same run, on the
//! same rows — scoring the precomputed feature rows alone with the same model and threads.
//!
//! `cargo bench --bench replay` (release), or `riskpipe bench` with an already built binary.
//! RISKPIPE_BENCH_RUNS sets the repetitions (default 3). Target: replay ≤ 1.3 × scoring alone.

use std::path::PathBuf;

use riskpipe_pipeline::PipelineConfig;
use riskpipe_pipeline::bench::replay_vs_scoring;

fn main() {
    let runs = std::env::var("RISKPIPE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let input = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/handbook/transactions.parquet");
    let cfg = PipelineConfig::handbook().expect("config");
    println!(
        "{}",
        replay_vs_scoring(&cfg, &input, runs).expect("benchmark")
    );
}
