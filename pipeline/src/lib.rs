//! The riskpipe runtime: sources, the feature and scoring stages, backtests and feature exports.
//!
//! A history file is read and ordered by [`source`], which also derives the fraud-label events a
//! live deployment would receive. [`stages::replay`] runs those events through the
//! [`FeatureChain`](riskpipe_operators::FeatureChain) built from the configured features and
//! through the [`ScoringStage`](stages::ScoringStage), on two threads joined by a bounded queue.
//! [`backtest`] writes the scored rows to Parquet and evaluates them ([`metrics`], [`report`]);
//! [`export_features`] computes the same features with DataFusion over a whole history, which
//! is how training sets are made. The live Kafka path ([`kafka`]) drives the same stages; only
//! its source and sinks differ.

pub mod bench;
pub mod config;
pub mod kafka;
pub mod market;
pub mod metrics;
pub mod report;
pub mod source;
pub mod stages;
pub mod var;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float32Type, Schema, TimestampNanosecondType};
use indicatif::{ProgressBar, ProgressStyle};
use parquet::arrow::ArrowWriter;
use riskpipe_models::Scorer;
use riskpipe_schemas::{Fault, score, tx};

pub use config::PipelineConfig;
use metrics::Scored;
use report::FraudReport;
use stages::ScoringStage;

/// Errors of the pipeline crate.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The configuration is invalid; every problem is listed.
    #[error("invalid config:\n  - {}", .0.join("\n  - "))]
    Config(Vec<String>),
    /// Input data is malformed.
    #[error("bad input: {0}")]
    BadInput(String),
    /// A file, library or service failed.
    #[error("{0}")]
    External(String),
    /// riskpipe broke an invariant.
    #[error("bug: {0}")]
    Bug(String),
    /// From the feature operators.
    #[error(transparent)]
    Operator(#[from] riskpipe_operators::OperatorError),
    /// From the scoring stage.
    #[error(transparent)]
    Model(#[from] riskpipe_models::ModelError),
    /// From Arrow.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// From Parquet.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// From DataFusion.
    #[cfg(feature = "sql")]
    #[error("datafusion: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// From Kafka (broker unreachable, delivery failed, …).
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

impl PipelineError {
    /// Whose fault the error is: decides dead-letter, retry or stop.
    pub fn fault(&self) -> Fault {
        match self {
            PipelineError::BadInput(_) => Fault::BadInput,
            PipelineError::External(_) | PipelineError::Parquet(_) | PipelineError::Kafka(_) => {
                Fault::External
            }
            PipelineError::Config(_) | PipelineError::Bug(_) | PipelineError::Arrow(_) => {
                Fault::Bug
            }
            #[cfg(feature = "sql")]
            PipelineError::DataFusion(_) => Fault::Bug,
            PipelineError::Operator(e) => e.fault(),
            PipelineError::Model(e) => e.fault(),
        }
    }
}

/// Result of this crate.
pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

const DAY_NS: i64 = 86_400_000_000_000;

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

/// Reads, checks and orders a history file for replay.
pub fn load_history(cfg: &PipelineConfig, input: &Path) -> Result<source::History> {
    let raw = source::read_file(input)?;
    source::prepare(input, raw, &cfg.features, &cfg.replay)
}

/// Replays a prepared history through features and model; returns the scored batches.
pub fn score_history(
    cfg: &PipelineConfig,
    history: &source::History,
    progress: &ProgressBar,
) -> Result<Vec<RecordBatch>> {
    let chain = cfg.features.build_chain()?;
    let scorer = Scorer::load(&cfg.model)?;
    check_model_inputs(cfg, &scorer, &history.transactions.schema())?;
    let scoring = ScoringStage::new(scorer, cfg.alerts.threshold);
    stages::replay(
        history,
        &cfg.features,
        chain,
        scoring,
        cfg.replay.batch_rows,
        progress,
    )
}

/// Fails unless every model input is an input column or a configured feature.
pub(crate) fn check_model_inputs(
    cfg: &PipelineConfig,
    scorer: &Scorer,
    input_schema: &Schema,
) -> Result<()> {
    let produced = cfg.features.feature_names()?;
    let missing: Vec<&String> = scorer
        .features()
        .iter()
        .filter(|f| !produced.contains(f) && input_schema.column_with_name(f).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(PipelineError::Config(vec![format!(
            "model {} reads columns that are neither input nor configured features: {missing:?}",
            cfg.model.path.display()
        )]));
    }
    Ok(())
}

/// What a backtest produced.
#[derive(Debug)]
pub struct BacktestOutcome {
    /// The metrics.
    pub report: FraudReport,
    /// Transactions replayed.
    pub replayed: usize,
    /// Wall time of reading, ordering, features and scoring.
    pub replay_time: Duration,
    /// Files written.
    pub files: Vec<PathBuf>,
}

/// Replays `input` and writes `scores.parquet`, `report.json` and `curves.png` into `out_dir`.
pub fn backtest(
    cfg: &PipelineConfig,
    input: &Path,
    out_dir: &Path,
    show_progress: bool,
) -> Result<BacktestOutcome> {
    cfg.validate()?;
    let started = Instant::now();
    let history = load_history(cfg, input)?;
    backtest_history(cfg, &history, started, out_dir, show_progress)
}

/// Replays a prepared history (from a file or a Kafka range) and writes the backtest outputs.
pub fn backtest_history(
    cfg: &PipelineConfig,
    history: &source::History,
    started: Instant,
    out_dir: &Path,
    show_progress: bool,
) -> Result<BacktestOutcome> {
    let pb = progress_bar(history.transactions.num_rows() as u64, show_progress);
    let scored = score_history(cfg, history, &pb)?;
    pb.finish_and_clear();
    let replay_time = started.elapsed();
    std::fs::create_dir_all(out_dir)
        .map_err(|e| PipelineError::External(format!("creating {}: {e}", out_dir.display())))?;
    let features = cfg.features.feature_names()?;
    let scores_path = out_dir.join("scores.parquet");
    write_scores(&scored, &cfg.features.order_by, &features, &scores_path)?;

    let rows = scored_rows(&scored, cfg)?;
    let (evaluated, label) = match &cfg.backtest {
        Some(s) => {
            let start = chrono::NaiveDate::parse_from_str(&s.train_start, "%Y-%m-%d")
                .map_err(|e| PipelineError::Config(vec![format!("backtest.train_start: {e}")]))?;
            let start_day = start.signed_duration_since(epoch()).num_days();
            let test = metrics::handbook_test_set(
                &rows,
                start_day,
                s.train_days.into(),
                s.delay_days.into(),
                s.test_days.into(),
            );
            let first_test = start + chrono::Days::new(u64::from(s.train_days + s.delay_days));
            (
                test,
                format!(
                    "{} test days from {first_test} (train {} days from {}, delay {} days), known-compromised cards removed",
                    s.test_days, s.train_days, s.train_start, s.delay_days
                ),
            )
        }
        None => (rows, "the whole history".to_string()),
    };
    let report = FraudReport::compute(&model_name(cfg), &label, &evaluated, cfg.alerts.threshold);
    let json = out_dir.join("report.json");
    report.write_json(&json)?;
    let png = out_dir.join("curves.png");
    report::plot_curves(&evaluated, &report, &png)?;
    Ok(BacktestOutcome {
        report,
        replayed: history.transactions.num_rows(),
        replay_time,
        files: vec![scores_path, json, png],
    })
}

fn epoch() -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()
}

pub(crate) fn model_name(cfg: &PipelineConfig) -> String {
    cfg.model
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The rows the metrics need, from scored batches.
pub fn scored_rows(scored: &[RecordBatch], cfg: &PipelineConfig) -> Result<Vec<Scored>> {
    let mut rows = Vec::new();
    for b in scored {
        let time = b
            .column_by_name(&cfg.features.event_time)
            .ok_or_else(|| PipelineError::Bug("no event time".into()))?;
        let time = time.as_primitive::<TimestampNanosecondType>().values();
        let customer = source::int_column(b, tx::CUSTOMER_ID)?;
        let fraud = source::int_column(b, &cfg.replay.label)?;
        let score = b
            .column_by_name(score::SCORE)
            .ok_or_else(|| PipelineError::Bug("no score".into()))?;
        let score = score.as_primitive::<Float32Type>().values();
        for i in 0..b.num_rows() {
            rows.push(Scored {
                day: time[i].div_euclid(DAY_NS),
                customer: customer[i],
                fraud: fraud[i] != 0,
                score: f64::from(score[i]),
            });
        }
    }
    Ok(rows)
}

/// Writes one row per transaction: the id, every feature, the score and the alert flag.
pub fn write_scores(
    scored: &[RecordBatch],
    id: &str,
    features: &[String],
    path: &Path,
) -> Result<()> {
    let mut columns: Vec<&str> = vec![id];
    columns.extend(features.iter().map(String::as_str));
    columns.extend([score::SCORE, score::ALERT]);
    let file = File::create(path)
        .map_err(|e| PipelineError::External(format!("creating {}: {e}", path.display())))?;
    let mut writer: Option<ArrowWriter<File>> = None;
    for b in scored {
        let idx: Vec<usize> = columns
            .iter()
            .map(|c| b.schema().index_of(c))
            .collect::<std::result::Result<_, _>>()?;
        let projected = b.project(&idx)?;
        if writer.is_none() {
            writer = Some(ArrowWriter::try_new(
                file.try_clone()
                    .map_err(|e| PipelineError::External(e.to_string()))?,
                projected.schema(),
                None,
            )?);
        }
        if let Some(w) = writer.as_mut() {
            w.write(&projected)?;
        }
    }
    match writer {
        Some(w) => {
            w.close()?;
        }
        None => {
            let empty = Arc::new(Schema::empty());
            ArrowWriter::try_new(file, empty, None)?.close()?;
        }
    }
    Ok(())
}

/// Computes every configured feature over a whole history with DataFusion (the batch twin of
/// the streaming chain) and writes the input columns plus the features to Parquet, ordered by
/// event time. This is the training-set export: the same feature definitions as live scoring.
#[cfg(feature = "sql")]
pub fn export_features(
    cfg: &riskpipe_operators::FeatureConfig,
    input: &Path,
    output: &Path,
) -> Result<usize> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| PipelineError::External(e.to_string()))?;
    runtime.block_on(async {
        let ctx = riskpipe_operators::batch::session();
        let path = input.to_string_lossy().to_string();
        if path.to_lowercase().ends_with(".csv") {
            ctx.register_csv("history", &path, datafusion::prelude::CsvReadOptions::new())
                .await?;
        } else {
            ctx.register_parquet(
                "history",
                &path,
                datafusion::prelude::ParquetReadOptions::default(),
            )
            .await?;
        }
        let schema = ctx.table("history").await?.schema().as_arrow().clone();
        let keep: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let df = riskpipe_operators::batch::batch_features(&ctx, cfg, "history", &keep).await?;
        let batches = df.collect().await?;
        let mut rows = 0;
        let file = File::create(output)
            .map_err(|e| PipelineError::External(format!("creating {}: {e}", output.display())))?;
        let out_schema = batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| Arc::new(Schema::empty()));
        let mut writer = ArrowWriter::try_new(file, out_schema, None)?;
        for b in &batches {
            rows += b.num_rows();
            writer.write(b)?;
        }
        writer.close()?;
        Ok(rows)
    })
}
