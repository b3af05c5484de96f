//! Backtests: a history — a file, or a Kafka topic range — through the one driver exactly as it
//! runs live (the same job, decoders aside), collected in memory; then the job's evaluation
//! writes its report: ROC/PR metrics for fraud, VaR exceedance tests for market risk.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use indicatif::{ProgressBar, ProgressStyle};
use plotters::style::{FontStyle, register_font};
use serde::Serialize;

use crate::config::PipelineConfig;
use crate::decoders;
use crate::driver::{Counters, Driver};
use crate::encoders::{Encoder, JsonEncoder, Payloads};
use crate::jobs::{self, Job};
use crate::sinks::collect::{CollectSink, Collected};
use crate::sinks::{DeadLetter, Origin};
use crate::sources::history::{History, HistorySource};
use crate::sources::kafka_range;
use crate::{PipelineError, Result};

/// What a replay collected.
#[derive(Debug)]
pub struct Replayed {
    /// Every batch's output and every rejected row.
    pub collected: Collected,
    /// The model's name.
    pub model: String,
    /// An ensemble's members (`<file>@<version>`), in the order of their scored columns.
    pub members: Vec<String>,
    /// The columns the model reads.
    pub model_inputs: Vec<String>,
    /// Wall time of the replay (features and scoring).
    pub replay_time: Duration,
}

impl Replayed {
    /// The scored rows of every batch, in order.
    pub fn scored(&self) -> Vec<RecordBatch> {
        self.collected
            .outputs
            .iter()
            .filter_map(|o| o.scored.clone())
            .collect()
    }

    /// The score (`alerts` false) or alert records as the JSON payloads the live pipeline
    /// publishes.
    pub fn payloads(&self, alerts: bool) -> Result<Payloads> {
        let mut payloads = Payloads::default();
        for o in &self.collected.outputs {
            let records = if alerts { &o.alerts } else { &o.scores };
            if let Some(r) = records {
                JsonEncoder.encode("alerts", &r.batch, &mut payloads)?;
            }
        }
        Ok(payloads)
    }

    /// The published score and alert records, parsed.
    pub fn records(&self) -> Result<(Vec<serde_json::Value>, Vec<serde_json::Value>)> {
        let parse = |payloads: Payloads| -> Result<Vec<serde_json::Value>> {
            payloads
                .iter()
                .map(|p| {
                    serde_json::from_slice(p).map_err(|e| {
                        PipelineError::Bug(format!("the JSON encoder wrote invalid JSON: {e}"))
                    })
                })
                .collect()
        };
        Ok((parse(self.payloads(false)?)?, parse(self.payloads(true)?)?))
    }

    /// The rejected rows.
    pub fn rejected(&self) -> &[DeadLetter] {
        &self.collected.dead
    }
}

/// Replays `history` through the configured job.
pub fn replay(
    cfg: &PipelineConfig,
    history: Arc<History>,
    progress: &ProgressBar,
) -> Result<Replayed> {
    replay_job(
        jobs::build(cfg)?,
        history,
        cfg.job.kind().batch_rows(),
        progress,
    )
}

/// Replays `history` through `job` in batches of `batch_rows`, on the driver.
pub fn replay_job(
    job: Job,
    history: Arc<History>,
    batch_rows: usize,
    progress: &ProgressBar,
) -> Result<Replayed> {
    let started = Instant::now();
    let model = job.model.clone();
    let members = job.members.clone();
    let model_inputs = job.scoring.model_inputs();
    let source = HistorySource::new(history.clone(), batch_rows)?;
    let sink = CollectSink::with_progress(progress.clone());
    // Files hold Arrow rows: the decoder is never asked.
    let driver = Driver::new(decoders::json(usize::MAX), 4);
    driver.run_blocking(source, job, sink.clone(), Arc::new(Counters::default()))?;
    let mut collected = sink.take()?;
    // Rows of the file refused before replay, as live refuses their messages.
    collected.dead.splice(
        0..0,
        history.refused.iter().map(|r| DeadLetter {
            origin: Origin::FileRow(r.source_row),
            kind: r.kind,
            reason: r.reason.clone(),
        }),
    );
    Ok(Replayed {
        collected,
        model,
        members,
        model_inputs,
        replay_time: started.elapsed(),
    })
}

/// Reads the input of a backtest: a fraud history or a price history.
pub fn load(cfg: &PipelineConfig, input: &Path) -> Result<History> {
    cfg.job.kind().load(input)
}

/// A history from Kafka: the events of a topic range and every side event, decoded with
/// `decoder` and ordered by the job kind (as [`load`] orders a file); also the event messages
/// that could not be decoded, with their reasons.
pub fn kafka_history(
    cfg: &PipelineConfig,
    decoder: &dyn decoders::Decoder,
    from: kafka_range::Bound,
    to: kafka_range::Bound,
) -> Result<(History, Vec<decoders::Rejection>)> {
    let kafka = cfg.kafka.as_ref().ok_or_else(|| {
        PipelineError::Config(vec!["no [kafka] section: replay reads from Kafka".into()])
    })?;
    let kind = cfg.job.kind();
    let (read, rejected) =
        kafka_range::read(kafka, kind.streams(), &kind.inputs(), decoder, from, to)?;
    let history = kind.history(&read.topic, read.events, read.side, read.partitions)?;
    Ok((history, rejected))
}

/// A progress bar over `rows` events, hidden when not wanted.
pub fn progress_bar(rows: u64, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(rows);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} replay [{bar:40}] {human_pos}/{human_len} events  {per_sec}  eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// A backtest's report, as a job kind evaluates it.
pub trait Report: std::fmt::Debug + Send {
    /// What the replayed events are ("transactions", "ticks").
    fn events(&self) -> &'static str;
    /// A printable table.
    fn table(&self) -> String;
    /// The concrete report, for callers that know the kind.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// What a backtest produced.
#[derive(Debug)]
pub struct Outcome {
    /// The report.
    pub report: Box<dyn Report>,
    /// Events replayed.
    pub replayed: usize,
    /// Events rejected (not scored), and the first reasons, naming the row of the input.
    pub rejected: (usize, Vec<String>),
    /// Wall time of reading, ordering, features and scoring.
    pub replay_time: Duration,
    /// Files written.
    pub files: Vec<PathBuf>,
}

/// Options of a backtest.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Show a progress bar.
    pub show_progress: bool,
    /// Market jobs: the instrument whose VaR is evaluated (default: the first).
    pub instrument: Option<String>,
    /// Fraud jobs: the drift reference each day is compared with (default: the split's
    /// training days).
    pub drift_reference: Option<std::path::PathBuf>,
    /// Fraud jobs with `[decisions]`: a rules file whose decisions of the same events are
    /// compared with the config's (`rules.json`).
    pub rules_candidate: Option<std::path::PathBuf>,
}

/// Replays `history` (read since `started`) and writes the job's backtest files into `out_dir`.
pub fn run(
    cfg: &PipelineConfig,
    history: Arc<History>,
    started: Instant,
    out_dir: &Path,
    opts: &Options,
) -> Result<Outcome> {
    cfg.validate()?;
    let pb = progress_bar(history.events.num_rows() as u64, opts.show_progress);
    let replayed = replay(cfg, history.clone(), &pb)?;
    pb.finish_and_clear();
    let replay_time = started.elapsed();
    let reasons: Vec<String> = replayed
        .rejected()
        .iter()
        .take(10)
        .map(|d| match &d.origin {
            Origin::Row(row) => format!("data row {}: {}", history.source_row(*row) + 1, d.reason),
            Origin::FileRow(row) => format!("data row {}: {}", row + 1, d.reason),
            Origin::Message(m) => {
                format!("{}[{}]@{}: {}", m.topic, m.partition, m.offset, d.reason)
            }
        })
        .collect();
    for r in &reasons {
        tracing::warn!("rejected {r}");
    }
    let (report, files) = cfg.job.kind().evaluate(cfg, &replayed, out_dir, opts)?;
    Ok(Outcome {
        report,
        replayed: history.events.num_rows(),
        rejected: (replayed.rejected().len(), reasons),
        replay_time,
        files,
    })
}

/// Writes `value` as pretty JSON.
pub(crate) fn write_json<T: Serialize>(path: PathBuf, value: &T) -> Result<PathBuf> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| PipelineError::Bug(format!("a report does not serialize: {e}")))?;
    std::fs::write(&path, text).map_err(PipelineError::io("writing", &path))?;
    Ok(path)
}

/// Registers the embedded font once: the plots need no fonts installed on the machine.
pub(crate) fn ensure_font() {
    static FONT: std::sync::Once = std::sync::Once::new();
    FONT.call_once(|| {
        let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}
