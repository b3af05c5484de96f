//! Replay cost against its ceilings: the whole replay (read, order, features, scoring) of a
//! history, and — in the same run, on the same rows — the model scoring the precomputed feature
//! rows alone with the same threads, and the feature operators alone (no model) over the loaded
//! history: the engine's own ceiling beside the model's. Used by `benches/replay.rs` and
//! `riskpipe bench`. And what decision rules cost: the same replay with and without them,
//! interleaved (`riskpipe bench --rules`).

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backtest::{self, progress_bar};
use crate::sources::Payload;
use crate::sources::history::HistorySource;
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
    /// Median time of the feature stage alone over the loaded history (no read, no model).
    pub features: Duration,
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
    let fraud = crate::jobs::fraud::FraudConfig::of(cfg)?;
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
    let inputs = scored
        .iter()
        .map(|b| scorer.inputs(b))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    // The feature operators alone: the job's feature stage over the loaded history, batch by
    // batch as the replay feeds it, on this thread.
    let history = Arc::new(backtest::load(cfg, input)?);
    let mut feature_times = Vec::new();
    for _ in 0..runs {
        let mut stage = cfg.job.kind().feature_stage()?;
        let mut source = HistorySource::new(history.clone(), fraud.replay.batch_rows)?;
        let started = Instant::now();
        while let Some(batch) = source.next_batch() {
            if let Payload::Rows { input, .. } = batch.payload {
                std::hint::black_box(stage.process(input)?);
            }
        }
        feature_times.push(started.elapsed());
    }
    let mut score_times = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        for i in &inputs {
            std::hint::black_box(scorer.score_inputs(i)?);
        }
        score_times.push(started.elapsed());
    }
    Ok(ReplayBench {
        rows: scored.iter().map(|b| b.num_rows()).sum(),
        runs,
        replay: median(replay_times),
        scoring: median(score_times),
        features: median(feature_times),
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
        writeln!(
            f,
            "  features alone (loaded history, no model):        {:>7.2} s {:>10.0} events/s",
            self.features.as_secs_f64(),
            rate(self.features)
        )?;
        write!(
            f,
            "  ratio replay / scoring alone: {:.3} (target <= 1.30)",
            self.ratio()
        )
    }
}

/// The replay of one history with decision rules and without, interleaved run by run.
#[derive(Debug, Clone)]
pub struct RulesBench {
    /// Events replayed.
    pub rows: usize,
    /// Runs of each (the median is reported).
    pub runs: usize,
    /// The rules: file, version, how many.
    pub rules: String,
    /// Median replay time without `[decisions]`.
    pub without: Duration,
    /// Median replay time with the rules.
    pub with: Duration,
    /// Events explained (alerts; with the rules, every decision but the default) without the
    /// rules and with them: each costs one model evaluation per model input.
    pub explained: (usize, usize),
}

/// Replays `input` `runs` times without `[decisions]` and `runs` times with the rules of
/// `rules`, alternating which goes first; the history is loaded once, outside the timings.
pub fn with_and_without_rules(
    cfg: &PipelineConfig,
    input: &Path,
    rules: &Path,
    runs: usize,
) -> Result<RulesBench> {
    let runs = runs.max(1);
    let history = Arc::new(backtest::load(cfg, input)?);
    let mut without = cfg.clone();
    without.decisions = None;
    let mut with = cfg.clone();
    let section = crate::jobs::fraud::DecisionsSection {
        file: Some(std::path::absolute(rules).map_err(crate::PipelineError::io("reading", rules))?),
        ..Default::default()
    };
    let declared = section
        .rules(&cfg.base_dir)
        .map_err(crate::PipelineError::Config)?;
    with.decisions = Some(section);
    with.validate()?;
    let (mut a, mut b, mut rows) = (Vec::new(), Vec::new(), 0);
    let mut explained = (0, 0);
    let alerts = |scored: &[arrow::array::RecordBatch]| -> usize {
        scored
            .iter()
            .filter_map(|b| {
                riskpipe_operators::columns::boolean(b, riskpipe_schemas::score::ALERT).ok()
            })
            .map(|a| a.true_count())
            .sum()
    };
    for run in 0..runs {
        let order = match run % 2 {
            0 => [(&without, false), (&with, true)],
            _ => [(&with, true), (&without, false)],
        };
        for (c, decided) in order {
            let started = Instant::now();
            let scored = backtest::replay(c, history.clone(), &progress_bar(0, false))?.scored();
            let took = started.elapsed();
            rows = scored.iter().map(|b| b.num_rows()).sum();
            match decided {
                true => {
                    explained.1 = alerts(&scored);
                    b.push(took);
                }
                false => {
                    explained.0 = alerts(&scored);
                    a.push(took);
                }
            }
        }
    }
    Ok(RulesBench {
        rows,
        runs,
        rules: format!(
            "{} (version {}, {} rules, {} lists)",
            rules.display(),
            declared.version(),
            declared.rules.len(),
            declared.lists.len()
        ),
        without: median(a),
        with: median(b),
        explained,
    })
}

impl RulesBench {
    /// Throughput with the rules over throughput without (1 = free).
    pub fn ratio(&self) -> f64 {
        self.without.as_secs_f64() / self.with.as_secs_f64()
    }
}

impl fmt::Display for RulesBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = |d: Duration| self.rows as f64 / d.as_secs_f64();
        writeln!(
            f,
            "rules benchmark: {} events, median of {} interleaved runs each",
            self.rows, self.runs
        )?;
        writeln!(f, "  rules: {}", self.rules)?;
        writeln!(
            f,
            "  events explained (an occlusion per model input each): {} without, {} with the rules",
            self.explained.0, self.explained.1
        )?;
        writeln!(
            f,
            "  replay without [decisions]: {:>7.2} s {:>10.0} events/s",
            self.without.as_secs_f64(),
            rate(self.without)
        )?;
        writeln!(
            f,
            "  replay with the rules:      {:>7.2} s {:>10.0} events/s",
            self.with.as_secs_f64(),
            rate(self.with)
        )?;
        write!(
            f,
            "  throughput with / without: {:.3} (target >= 0.95)",
            self.ratio()
        )
    }
}
