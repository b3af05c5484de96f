//! Jobs: what runs between the decoders and the sinks, knowing neither Kafka, files nor formats.
//!
//! A [`Job`] is two stages the driver runs on two threads, so that the features of one
//! micro-batch overlap the scoring of the previous one:
//! - its [`FeatureStage`] takes a decoded [`JobInput`] (side inputs such as fraud labels first,
//!   then the events), refuses what its keyed state cannot take ([`Reject`]s) and appends the
//!   feature columns;
//! - its [`ScoreStage`] runs the model on those rows and returns a [`JobOutput`]: every event
//!   with its features and score, and the records to publish (scores, alerts) in their
//!   published Arrow schemas, each with its message key.
//!
//! Both stages own their keyed state and expose it through `snapshot` / `restore`, the seam
//! checkpoints use: a feature stage's state is the windows and histories, a score stage's
//! whatever its outputs depend on beyond the row (the market job's portfolio aggregation).
//! The records and stage traits are the core crate's ([`riskpipe_core`]); this module holds
//! the [`JobKind`] each job implements. [`build`] is the registry: one line per job kind. [`drift`]: how far the model inputs and
//! the score moved from a reference, in a backtest and live.

pub mod drift;
pub mod fraud;
pub mod market;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use riskpipe_models::Model;

// The engine event clock, number admission and per-partition state, under their old paths.
pub use riskpipe_engine::{event_time, partitioned, value_range};
// The shared types and stage traits live in the core crate, below every layer.
pub use riskpipe_core::records::{
    Featured, JobInput, JobOutput, Partitions, Records, Reject, RejectKind, Repeated,
};
pub use riskpipe_core::snapshot::{Installs, MakeStage, StateSnapshot, fingerprint};
pub use riskpipe_core::stage::{
    FeatureStage, Horizon, Inputs, Job, ScoreStage, Side, Streams, warm_up,
};

use crate::backtest::{Options, Replayed, Report};
use crate::config::PipelineConfig;
use crate::sources::history::History;
use crate::{PipelineError, Result};

/// The schemas of one record a job publishes.
#[derive(Debug, Clone)]
pub struct RecordSchema {
    /// The record's name (`Score`).
    pub name: String,
    /// The file stem its schemas are written under (`score`).
    pub file: String,
    /// The topic it is published on.
    pub topic: String,
    /// Its JSON Schema.
    pub json_schema: String,
    /// Its Avro schema.
    pub avro_schema: String,
}

impl RecordSchema {
    /// The schemas of records shaped as `arrow` (an Avro record name in its metadata).
    pub fn of(file: &str, topic: &str, description: &str, arrow: &SchemaRef) -> Result<Self> {
        let name = arrow
            .metadata()
            .get(riskpipe_schemas::avro::RECORD_NAME)
            .cloned()
            .unwrap_or_else(|| file.to_string());
        let json = riskpipe_schemas::record_schema::json_schema(&name, description, arrow)
            .map_err(PipelineError::Bug)?;
        let avro = riskpipe_schemas::avro::schema(&name, arrow).map_err(PipelineError::Bug)?;
        let pretty = |v: &serde_json::Value| {
            serde_json::to_string_pretty(v).map_err(|e| PipelineError::Bug(e.to_string()))
        };
        Ok(Self {
            name,
            file: file.to_string(),
            topic: topic.to_string(),
            json_schema: pretty(&json)?,
            avro_schema: pretty(&avro)?,
        })
    }
}

/// What a job kind gives the engine, implemented by its `[job]` settings type. Its stages know
/// neither Kafka, files nor formats; this is where a kind names the sources and the report it
/// uses. Each kind registers its settings for `[job] kind = "..."` on its impl
/// (`#[typetag::deserialize(name = "...")]`): adding a job touches no other file's list.
#[typetag::deserialize(tag = "kind")]
pub trait JobKind: std::fmt::Debug + Send + Sync + std::any::Any {
    /// `fraud`, `market`.
    fn name(&self) -> &'static str;
    /// Every problem of the job's settings, and of the shared sections as this job reads them.
    fn problems(&self, pipeline: &PipelineConfig) -> Vec<String>;
    /// Reads what the settings name relative to the config file's directory `base_dir` (a
    /// schema file), once, as the config is loaded; what it finds wrong goes to `problems`.
    fn resolve(&mut self, _base_dir: &Path) {}
    /// Default names of the input topics.
    fn streams(&self) -> Streams;
    /// What the decoders decode.
    fn inputs(&self) -> Inputs;
    /// The job, with its model loaded and checked against what the job computes.
    fn build(&self, pipeline: &PipelineConfig) -> Result<Job>;
    /// Whether a model's scores on a batch are what the job reads (a fraud job, probabilities);
    /// a reloaded model that fails is refused.
    fn check_scores(&self, scores: &[f32]) -> std::result::Result<(), String> {
        crate::reload::check_scores(scores)
    }
    /// The schemas of the records the job publishes, shaped by its declaration (`riskpipe
    /// schemas`); a job of fixed records says where they are.
    fn record_schemas(&self, _pipeline: &PipelineConfig) -> Result<Vec<RecordSchema>> {
        Err(PipelineError::Config(vec![format!(
            "a {} job publishes the fixed records of schemas/json and schemas/avro",
            self.name()
        )]))
    }
    /// Whether `model` can score this job's feature rows (the check of [`JobKind::build`],
    /// also run on a model reloaded live).
    fn check_model(&self, _pipeline: &PipelineConfig, _model: &Model) -> Result<()> {
        Err(PipelineError::Config(vec![format!(
            "the {} job does not reload its model",
            self.name()
        )]))
    }
    /// The feature half alone (no model).
    fn feature_stage(&self) -> Result<Box<dyn FeatureStage>>;
    /// The job split at a repartition by `by` (`kafka.repartition`, scale-out): the stage on
    /// `side` of it, whose feature state is kept per input partition; the events topic has
    /// `origins` partitions. A job that cannot be split refuses.
    fn split_stage(
        &self,
        _pipeline: &PipelineConfig,
        _by: &str,
        _origins: i32,
        _side: Side,
    ) -> Result<Job> {
        Err(self.not_split())
    }
    /// One input partition's feature stage of [`JobKind::split_stage`]'s stage: what a
    /// partition assigned to this instance is restored into.
    fn split_partition_stage(&self, _by: &str, _origins: i32, _side: Side) -> Result<MakeStage> {
        Err(self.not_split())
    }
    /// Why [`JobKind::split_stage`] refuses.
    fn not_split(&self) -> PipelineError {
        PipelineError::Config(vec![format!(
            "kafka.repartition: the {} job cannot be split at a repartition",
            self.name()
        )])
    }
    /// Whether its feature state can be checkpointed (`[state]`).
    fn checkpoints(&self) -> bool {
        false
    }
    /// How a state-less start may rebuild the state from a bounded stretch of the input rather
    /// than all of it: `None` (the default) when some state has no bounded reach (an EWMA, a
    /// running peak), so the rebuild reads from the earliest retained offsets.
    fn rebuild_horizon(&self, _pipeline: &PipelineConfig) -> Option<Horizon> {
        None
    }
    /// Rows per micro-batch when a history is replayed.
    fn batch_rows(&self) -> usize;
    /// The history a backtest reads when none is given (relative to the config file).
    fn default_input(&self) -> Option<&Path> {
        None
    }
    /// Reads a history file.
    fn load(&self, input: &Path) -> Result<History>;
    /// A history from decoded Kafka messages: the events of a range (with their partitions,
    /// each in offset order), and every side event.
    fn history(
        &self,
        source: &str,
        events: RecordBatch,
        side: Option<RecordBatch>,
        partitions: Partitions,
    ) -> Result<History>;
    /// Evaluates a replay and writes the report's files into `out_dir`.
    fn evaluate(
        &self,
        pipeline: &PipelineConfig,
        replayed: &Replayed,
        out_dir: &Path,
        opts: &Options,
    ) -> Result<(Box<dyn Report>, Vec<PathBuf>)>;
    /// The training-set export: the feature stage over a whole history, on the driver.
    fn export(&self, pipeline: &PipelineConfig, input: &Path, output: &Path) -> Result<usize> {
        let featured = featured_history(pipeline, input)?;
        crate::sinks::parquet::write(output, &featured, None)?;
        Ok(featured.iter().map(|b| b.num_rows()).sum())
    }
}

/// The job's feature stage over the history in `input`, on the driver (the code that scores
/// live): the events' columns and every feature, in replay order; rows the history refuses are
/// left out.
pub(crate) fn featured_history(
    pipeline: &PipelineConfig,
    input: &Path,
) -> Result<Vec<RecordBatch>> {
    let kind = pipeline.job.kind();
    let history = Arc::new(kind.load(input)?);
    let job = features_only(pipeline)?;
    let replayed = crate::backtest::replay_job(
        job,
        history,
        kind.batch_rows(),
        &indicatif::ProgressBar::hidden(),
    )?;
    Ok(replayed.scored())
}

/// The registry: builds the configured job (loads its model and checks the model's inputs
/// against what the job computes).
pub fn build(cfg: &PipelineConfig) -> Result<Job> {
    cfg.job.kind().build(cfg)
}

/// A job of only the feature half: its score stage passes the featured rows through. The
/// training-set export runs it, so a model's training features come from the scoring code.
pub fn features_only(cfg: &PipelineConfig) -> Result<Job> {
    let kind = cfg.job.kind();
    Ok(Job {
        kind: kind.name(),
        model: String::new(),
        members: Vec::new(),
        inputs: kind.inputs(),
        features: kind.feature_stage()?,
        scoring: Box::new(Passthrough),
    })
}

/// Hands the featured rows on as the scored rows.
#[derive(Debug)]
struct Passthrough;

impl ScoreStage for Passthrough {
    fn process(&mut self, featured: Featured) -> Result<JobOutput> {
        Ok(JobOutput {
            scored: Some(featured.batch),
            rejects: featured.rejects,
            ..JobOutput::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    /// The runtime asks the job for the stages of a repartitioned topology: the fraud job
    /// gives both sides, the market job refuses by name.
    #[test]
    fn a_job_splits_at_a_repartition_or_says_it_cannot() {
        let fraud = PipelineConfig::handbook().expect("shipped config");
        let kind = fraud.job.kind();
        for side in [Side::Before, Side::After] {
            let job = kind
                .split_stage(&fraud, "TERMINAL_ID", 2, side)
                .expect("fraud stage");
            // Only the side after the repartition reads the labels and scores.
            assert_eq!(job.inputs.side.is_some(), side == Side::After);
            assert!(kind.split_partition_stage("TERMINAL_ID", 2, side).is_ok());
        }
        let market = PipelineConfig::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/market-nasdaq.toml"),
        )
        .expect("shipped market config");
        let err = market
            .job
            .kind()
            .split_stage(&market, "INSTRUMENT", 2, Side::Before)
            .expect_err("the market job is not split");
        assert!(
            err.to_string()
                .contains("the market job cannot be split at a repartition"),
            "{err}"
        );
    }
}
