//! End-to-end replay benchmark: the whole handbook history (1,754,155 transactions) read,
//! ordered, run through every feature operator and scored, against — in the same run, on the
//! same rows — scoring the precomputed feature rows alone with the same model and threads.
//!
//! `cargo bench --bench replay` (release). Reports events/s of both and their ratio; the target
//! is replay ≤ 1.3 × scoring alone. Set RISKPIPE_BENCH_RUNS to change the repetitions (default 3).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use riskpipe_models::Scorer;
use riskpipe_pipeline::{PipelineConfig, load_history, progress_bar, score_history};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (e.g. a filter) is ignored.
    let runs: usize = std::env::var("RISKPIPE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let input = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/handbook/transactions.parquet");
    assert!(input.is_file(), "missing {}", input.display());
    let cfg = PipelineConfig::handbook().expect("config");
    let model_bytes = std::fs::metadata(&cfg.model.path).expect("model").len();

    let mut replay_times = Vec::new();
    let mut scored = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let history = load_history(&cfg, &input).expect("history");
        scored = score_history(&cfg, &history, &progress_bar(0, false)).expect("replay");
        replay_times.push(started.elapsed());
    }
    let rows: usize = scored.iter().map(|b| b.num_rows()).sum();

    // The ceiling: the same feature rows, already in the model's input layout, scored alone.
    let mut scorer = Scorer::load(&cfg.model).expect("model");
    let matrices: Vec<(Vec<f32>, usize)> = scored
        .iter()
        .map(|b| {
            let mut m = Vec::new();
            scorer.feature_matrix(b, &mut m).expect("matrix");
            (m, b.num_rows())
        })
        .collect();
    let mut score_times = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        for (m, n) in &matrices {
            std::hint::black_box(scorer.score_matrix(m, *n).expect("score"));
        }
        score_times.push(started.elapsed());
    }
    let (replay, scoring) = (median(replay_times), median(score_times));
    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    println!(
        "riskpipe replay benchmark ({rows} transactions, median of {runs} runs, batch {} rows)",
        cfg.replay.batch_rows
    );
    println!(
        "  model: {} ({:.1} KiB, {} features, {} intra-op thread(s))",
        cfg.model.path.display(),
        model_bytes as f64 / 1024.0,
        scorer.features().len(),
        cfg.model.threads
    );
    println!(
        "  full replay (read + order + features + scoring): {:>7.2} s  {:>10.0} events/s",
        replay.as_secs_f64(),
        rate(replay)
    );
    println!(
        "  scoring alone (same rows, same model/threads):   {:>7.2} s  {:>10.0} rows/s",
        scoring.as_secs_f64(),
        rate(scoring)
    );
    println!(
        "  ratio replay / scoring alone: {:.3} (target <= 1.30)",
        replay.as_secs_f64() / scoring.as_secs_f64()
    );
}
