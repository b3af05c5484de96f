//! Replay cost against its ceiling: the whole replay (read, order, features, scoring) of a
//! history, and — in the same run, on the same rows — the model scoring the precomputed feature
//! rows alone with the same threads. Used by `benches/replay.rs` and `riskpipe bench`.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backtest::{self, progress_bar};
use crate::{PipelineConfig, Result};

/// Median timings of both measurements.
#[derive(Debug, Clone)]
pub struct ReplayBench {
    /// Rows replayed.
    pub rows: usize,
    /// Repetitions (the median is reported).
    pub runs: usize,
    /// Median full replay time.
    pub replay: Duration,
    /// Median scoring-alone time.
    pub scoring: Duration,
    /// Model file size in bytes.
    pub model_bytes: u64,
    /// Model description.
    pub model: String,
    /// Rows per micro-batch.
    pub batch_rows: usize,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Measures `runs` full replays of `input` and `runs` passes of scoring the same rows alone.
pub fn replay_vs_scoring(cfg: &PipelineConfig, input: &Path, runs: usize) -> Result<ReplayBench> {
    let fraud = cfg.fraud()?;
    let runs = runs.max(1);
    let mut replay_times = Vec::new();
    let mut scored = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let history = Arc::new(backtest::load(cfg, input)?);
        scored = backtest::replay(cfg, history, &progress_bar(0, false))?.scored();
        replay_times.push(started.elapsed());
    }
    let mut scorer = cfg.load_model()?;
    let mut matrices = Vec::with_capacity(scored.len());
    for b in &scored {
        let mut m = Vec::new();
        scorer.feature_matrix(b, &mut m)?;
        matrices.push((m, b.num_rows()));
    }
    let mut score_times = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        for (m, n) in &matrices {
            std::hint::black_box(scorer.score_matrix(m, *n)?);
        }
        score_times.push(started.elapsed());
    }
    Ok(ReplayBench {
        rows: scored.iter().map(|b| b.num_rows()).sum(),
        runs,
        replay: median(replay_times),
        scoring: median(score_times),
        model_bytes: cfg
            .model
            .all()
            .iter()
            .filter_map(|m| std::fs::metadata(&m.path).ok())
            .map(|m| m.len())
            .sum(),
        model: format!(
            "{} ({} features, {} intra-op thread(s))",
            scorer.label(),
            scorer.features().len(),
            cfg.model.primary().threads
        ),
        batch_rows: fraud.replay.batch_rows,
    })
}

impl ReplayBench {
    /// Replay time over scoring-alone time (target ≤ 1.3).
    pub fn ratio(&self) -> f64 {
        self.replay.as_secs_f64() / self.scoring.as_secs_f64()
    }
}

impl fmt::Display for ReplayBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = |d: Duration| self.rows as f64 / d.as_secs_f64();
        writeln!(
            f,
            "replay benchmark: {} transactions, median of {} runs, batches of {} rows",
            self.rows, self.runs, self.batch_rows
        )?;
        writeln!(
            f,
            "  model: {} — {:.1} KiB",
            self.model,
            self.model_bytes as f64 / 1024.0
        )?;
        writeln!(
            f,
            "  full replay (read + order + features + scoring): {:>7.2} s {:>10.0} events/s",
            self.replay.as_secs_f64(),
            rate(self.replay)
        )?;
        writeln!(
            f,
            "  scoring alone (same rows, model, threads):        {:>7.2} s {:>10.0} rows/s",
            self.scoring.as_secs_f64(),
            rate(self.scoring)
        )?;
        write!(
            f,
            "  ratio replay / scoring alone: {:.3} (target <= 1.30)",
            self.ratio()
        )
    }
}
