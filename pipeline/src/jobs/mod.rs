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
//! [`build`] is the registry: one line per job kind. [`drift`]: how far the model inputs and
//! the score moved from a reference, in a backtest and live.

pub mod drift;
pub mod event_time;
pub mod fraud;
pub mod market;
pub mod partitioned;
pub mod value_range;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::SchemaRef;
use riskpipe_models::Model;

pub use partitioned::MakeStage;

use crate::backtest::{Options, Replayed, Report};
use crate::config::{PipelineConfig, Streams};
use crate::sources::history::History;
use crate::{PipelineError, Result};

/// One micro-batch as a job sees it.
#[derive(Debug, Clone)]
pub struct JobInput {
    /// Side-input rows (fraud labels), applied to the keyed state before `events`.
    pub side: Option<RecordBatch>,
    /// The events to score, in order.
    pub events: RecordBatch,
    /// Where each event came from, for the watermark; `None` for a history, read in event-time
    /// order as one partition.
    pub partitions: Option<Partitions>,
}

/// The input partition of each event, and every partition of the events' topic the source
/// holds now.
#[derive(Debug, Clone)]
pub struct Partitions {
    /// Partition of each row of [`JobInput::events`].
    pub of_events: Vec<i32>,
    /// Partition of each row of [`JobInput::side`], where the source knows it (live); empty
    /// otherwise.
    pub of_side: Vec<i32>,
    /// Partitions held (assigned); the watermark waits for each of them.
    pub held: Arc<[i32]>,
}

impl Partitions {
    /// The partitions of events `start..start + len` (clamped to the events there are).
    pub fn slice(&self, start: usize, len: usize) -> Partitions {
        let n = self.of_events.len();
        Partitions {
            of_events: self.of_events[start.min(n)..(start + len).min(n)].to_vec(),
            of_side: Vec::new(),
            held: self.held.clone(),
        }
    }
}

/// Why an input was refused: the dead letter's `riskpipe.error.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    /// Larger than the configured maximum.
    Oversized,
    /// No payload.
    Empty,
    /// Not decodable at all (broken JSON, truncated).
    Malformed,
    /// Decodable, but not the published schema (missing, unknown or mistyped field).
    Schema,
    /// In the schema, but a value the job cannot take (a non-positive price, a late tick, an
    /// event time too far in the future, a number no sum or model input can hold).
    Invalid,
    /// Behind the watermark by more than the allowed lateness.
    Late,
    /// A transaction whose id the job has taken in already (its producer published it twice):
    /// counting it again would change its key's features, so the copy is refused.
    Duplicate,
    /// Admitted, but the model's answer for it is no probability (not finite, or outside
    /// [0, 1]): never published as a score; its features stay counted (they were valid).
    Model,
    /// A row of a repartition topic taken in already (the topic is at-least-once): dropped,
    /// not dead-lettered (the first copy was scored).
    Redelivered,
}

impl RejectKind {
    /// The header / metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::Oversized => "oversized",
            RejectKind::Empty => "empty",
            RejectKind::Malformed => "malformed",
            RejectKind::Schema => "schema",
            RejectKind::Invalid => "invalid",
            RejectKind::Late => "late",
            RejectKind::Duplicate => "duplicate",
            RejectKind::Model => "model",
            RejectKind::Redelivered => "redelivered",
        }
    }
}

/// An input event the job refused, by its row in [`JobInput::events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// Row in the batch's events.
    pub row: usize,
    /// Class of the problem.
    pub kind: RejectKind,
    /// What is wrong, naming the field.
    pub reason: String,
}

/// What the feature stage hands to the score stage.
#[derive(Debug, Clone)]
pub struct Featured {
    /// The accepted events with their feature columns.
    pub batch: RecordBatch,
    /// Events refused before they touched any state.
    pub rejects: Vec<Reject>,
}

/// Records for one output stream: rows in the stream's published Arrow schema
/// (`riskpipe_schemas::*_schema`) and one message key per row.
#[derive(Debug, Clone)]
pub struct Records {
    /// The rows.
    pub batch: RecordBatch,
    /// A `Utf8` array of message keys (customer, instrument or portfolio id).
    pub keys: ArrayRef,
    /// The column the keys are the text of, if they are one column's (a sink that replaces
    /// that column's values, e.g. with pseudonyms, derives the keys again from it).
    pub key_column: Option<&'static str>,
}

/// What one micro-batch produced.
#[derive(Debug, Clone, Default)]
pub struct JobOutput {
    /// Every accepted event with its features and scores: what a backtest evaluates and writes.
    pub scored: Option<RecordBatch>,
    /// Records for the scores output.
    pub scores: Option<Records>,
    /// Records for the alerts output (fraud alerts, limit breaches).
    pub alerts: Option<Records>,
    /// The challenger's score records (shadow scoring; never alerts).
    pub challenger: Option<Records>,
    /// Rows for the next stage of a repartitioned topology (scale-out), keyed by its key.
    pub forward: Option<Records>,
    /// Events refused while scoring.
    pub rejects: Vec<Reject>,
}

/// A column holding one repeated string, grown on demand and sliced per batch, so the model
/// name is not copied once per record.
#[derive(Debug, Default)]
pub(crate) struct Repeated {
    value: String,
    array: Option<ArrayRef>,
}

impl Repeated {
    pub(crate) fn new(value: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            array: None,
        }
    }

    pub(crate) fn column(&mut self, rows: usize) -> ArrayRef {
        match &self.array {
            Some(a) if a.len() >= rows => a.slice(0, rows),
            _ => {
                let a: ArrayRef = Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    self.value.as_str(),
                    rows.max(1024),
                )));
                self.array = Some(a.clone());
                a.slice(0, rows)
            }
        }
    }
}

/// Keyed state of a stage as Arrow tables: what a checkpoint stores.
#[derive(Debug, Clone, Default)]
pub struct StateSnapshot {
    /// Named tables.
    pub tables: Vec<(String, RecordBatch)>,
    /// What definitions made the state (a hash of them): state is restored only into a stage
    /// of the same definitions.
    pub fingerprint: String,
}

/// Prefix of the score stage's tables in a job's snapshot ([`StateSnapshot::join`]).
const SCORE_TABLES: &str = "score/";

impl StateSnapshot {
    /// One snapshot of a job's two stages taken after the same batch: the feature stage's tables
    /// as they are, the score stage's prefixed `score/`, the fingerprints joined by `+`.
    pub fn join(features: StateSnapshot, score: Option<StateSnapshot>) -> StateSnapshot {
        let Some(score) = score else {
            return features;
        };
        let mut tables = features.tables;
        tables.extend(
            score
                .tables
                .into_iter()
                .map(|(name, t)| (format!("{SCORE_TABLES}{name}"), t)),
        );
        StateSnapshot {
            tables,
            fingerprint: format!("{}+{}", features.fingerprint, score.fingerprint),
        }
    }

    /// The two stages' snapshots [`StateSnapshot::join`] made (the score stage's is `None` when
    /// the job's snapshot has none).
    pub fn split(self) -> (StateSnapshot, Option<StateSnapshot>) {
        let (features_fp, score_fp) = match self.fingerprint.split_once('+') {
            Some((f, s)) => (f.to_string(), Some(s.to_string())),
            None => (self.fingerprint, None),
        };
        let (mut features, mut score) = (Vec::new(), Vec::new());
        for (name, t) in self.tables {
            match name.strip_prefix(SCORE_TABLES) {
                Some(n) => score.push((n.to_string(), t)),
                None => features.push((name, t)),
            }
        }
        let score = match score_fp {
            Some(fingerprint) => Some(StateSnapshot {
                tables: score,
                fingerprint,
            }),
            // Tables without a fingerprint stay with the features, which refuse them.
            None => {
                features.extend(
                    score
                        .into_iter()
                        .map(|(n, t)| (format!("{SCORE_TABLES}{n}"), t)),
                );
                None
            }
        };
        (
            StateSnapshot {
                tables: features,
                fingerprint: features_fp,
            },
            score,
        )
    }
}

/// A short hash of definitions (their `Debug` text): a checkpoint's state is restored only into
/// a stage built from the same definitions.
pub(crate) fn fingerprint(definitions: &impl std::fmt::Debug) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{definitions:?}").as_bytes());
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// Which side of a repartition a stage of a split job runs (scale-out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Reads the events, admits them, computes the features keyed like its input and forwards
    /// each row keyed by the repartition's key.
    Before,
    /// Reads the forwarded rows (and the side input), computes the rest, scores.
    After,
}

/// Runs `input` through the feature stage, side events first, then the events in
/// micro-batches of `batch_rows`, and their featured rows through `scoring` when it is given
/// (a score stage that keeps state): how a restarted pipeline brings restored state up to its
/// committed offsets without publishing anything (the stages refuse what they refused live, by
/// each partition's own order). Returns the events refused.
pub fn warm_up(
    features: &mut dyn FeatureStage,
    mut scoring: Option<&mut dyn ScoreStage>,
    input: JobInput,
    batch_rows: usize,
) -> Result<usize> {
    let JobInput {
        side,
        events,
        partitions,
    } = input;
    // A batch refused whole was dead-lettered whole live: the same here.
    let mut feed = |input: JobInput| -> Result<usize> {
        let rows = input.events.num_rows();
        let featured = match features.process(input) {
            Ok(f) => f,
            Err(e) if e.fault() == riskpipe_schemas::Fault::BadInput => return Ok(rows),
            Err(e) => return Err(e),
        };
        let refused = featured.rejects.len();
        match scoring.as_deref_mut() {
            Some(s) if featured.batch.num_rows() > 0 => {
                let kept = featured.batch.num_rows();
                match s.warm(featured) {
                    Ok(r) => Ok(refused + r),
                    Err(e) if e.fault() == riskpipe_schemas::Fault::BadInput => Ok(refused + kept),
                    Err(e) => Err(e),
                }
            }
            _ => Ok(refused),
        }
    };
    let mut refused = 0;
    if side.as_ref().is_some_and(|s| s.num_rows() > 0) {
        refused += feed(JobInput {
            side,
            events: events.slice(0, 0),
            partitions: partitions.as_ref().map(|p| p.slice(0, 0)),
        })?;
    }
    let rows = batch_rows.max(1);
    let mut start = 0;
    while start < events.num_rows() {
        let len = rows.min(events.num_rows() - start);
        refused += feed(JobInput {
            side: None,
            events: events.slice(start, len),
            partitions: partitions.as_ref().map(|p| p.slice(start, len)),
        })?;
        start += len;
    }
    Ok(refused)
}

/// The feature half of a job.
pub trait FeatureStage: Send + std::fmt::Debug {
    /// Applies the side inputs, refuses what the state cannot take, appends the features.
    fn process(&mut self, input: JobInput) -> Result<Featured>;

    /// Keys held in the stage's state (a key per operator that keeps it), if it counts them.
    fn state_keys(&self) -> Option<usize> {
        None
    }

    /// The stage's keyed state, for a checkpoint.
    fn snapshot(&self) -> Result<StateSnapshot> {
        Err(PipelineError::StateNotSupported { stage: "features" })
    }

    /// Replaces the stage's keyed state with a checkpoint's.
    fn restore(&mut self, _state: StateSnapshot) -> Result<()> {
        Err(PipelineError::StateNotSupported { stage: "features" })
    }

    /// State per input partition that follows the group's assignment: restored stages of
    /// newly assigned partitions come from `installs`. False when the stage keeps no state per
    /// partition.
    fn adopt(&mut self, _installs: Arc<partitioned::Installs>) -> bool {
        false
    }
}

/// The scoring half of a job: model, alerts, output records.
pub trait ScoreStage: Send + std::fmt::Debug {
    /// Scores the featured rows (never called with zero rows).
    fn process(&mut self, featured: Featured) -> Result<JobOutput>;

    /// Whether it keeps state across batches (then checkpoints hold it and a restore replays
    /// the gap through it too).
    fn has_state(&self) -> bool {
        false
    }

    /// Brings the stage's state up to `featured` without producing anything (the silent replay
    /// after a restore); returns the rows it refused. By default, [`ScoreStage::process`]
    /// with the output dropped.
    fn warm(&mut self, featured: Featured) -> Result<usize> {
        self.process(featured).map(|o| o.rejects.len())
    }

    /// The stage's keyed state, for a checkpoint.
    fn snapshot(&self) -> Result<StateSnapshot> {
        Err(PipelineError::StateNotSupported { stage: "score" })
    }

    /// Replaces the stage's keyed state with a checkpoint's.
    fn restore(&mut self, _state: StateSnapshot) -> Result<()> {
        Err(PipelineError::StateNotSupported { stage: "score" })
    }

    /// From now on, takes checked models from `slot` between batches (hot reload); false when
    /// the stage's model cannot be swapped.
    fn follow_models(&mut self, _slot: Arc<crate::reload::ModelSlot>) -> bool {
        false
    }
}

/// The input streams a job reads, as Arrow schemas the decoders decode against.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The events (transactions, ticks).
    pub events: SchemaRef,
    /// The side input (fraud labels), if the job has one.
    pub side: Option<SchemaRef>,
}

/// A job, ready to run: its inputs and its two stages.
#[derive(Debug)]
pub struct Job {
    /// `fraud` or `market`.
    pub kind: &'static str,
    /// The model's name, as stamped on scores (empty for a features-only job).
    pub model: String,
    /// An ensemble's members, `<file>@<version>` each, in the order of their scored columns
    /// (`score::member`); empty for one model.
    pub members: Vec<String>,
    /// What the decoders decode.
    pub inputs: Inputs,
    /// The feature half.
    pub features: Box<dyn FeatureStage>,
    /// The scoring half.
    pub scoring: Box<dyn ScoreStage>,
}

/// How far back in event time a job's state reaches, for a rebuild that seeks back by time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Horizon {
    /// The events' event-time column (a UTC timestamp).
    pub time_column: String,
    /// How far before the watermark the state still needs events: the features' reach, plus
    /// the allowed lateness (the state follows the watermark less it), plus the longest stretch
    /// the score stage's state covers (drift days).
    pub reach: std::time::Duration,
    /// How far ahead of its event time a message may have been stamped by its producer
    /// (`max_future_skew`): the seek goes back this much further, since Kafka finds offsets by
    /// the messages' timestamps, not by event time.
    pub skew: std::time::Duration,
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
        let history = Arc::new(self.load(input)?);
        let job = features_only(pipeline)?;
        let replayed = crate::backtest::replay_job(
            job,
            history,
            self.batch_rows(),
            &indicatif::ProgressBar::hidden(),
        )?;
        let scored = replayed.scored();
        crate::sinks::parquet::write(output, &scored, None)?;
        Ok(scored.iter().map(|b| b.num_rows()).sum())
    }
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
    use arrow::array::Int64Array;

    fn table(v: i64) -> RecordBatch {
        RecordBatch::try_from_iter([("v", Arc::new(Int64Array::from(vec![v])) as ArrayRef)])
            .expect("table")
    }

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

    #[test]
    fn a_joined_snapshot_splits_into_the_stages_snapshots() {
        let features = StateSnapshot {
            tables: vec![
                ("clock".into(), table(1)),
                ("features/0-w".into(), table(2)),
            ],
            fingerprint: "f1".into(),
        };
        let score = StateSnapshot {
            tables: vec![("latest".into(), table(3))],
            fingerprint: "s1".into(),
        };
        let joined = StateSnapshot::join(features.clone(), Some(score.clone()));
        assert_eq!(joined.fingerprint, "f1+s1");
        assert_eq!(joined.tables[2].0, "score/latest");
        let (f, s) = joined.split();
        assert_eq!(f.tables, features.tables);
        assert_eq!(f.fingerprint, "f1");
        let s = s.expect("the score stage's snapshot");
        assert_eq!((s.tables, s.fingerprint), (score.tables, score.fingerprint));
        // Without a score stage's state, nothing changes.
        let (f, s) = StateSnapshot::join(features.clone(), None).split();
        assert!(s.is_none());
        assert_eq!(
            (f.tables, f.fingerprint),
            (features.tables, features.fingerprint)
        );
    }
}
