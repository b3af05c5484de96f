//! Stage traits: the two halves of a job the driver runs on two threads ([`FeatureStage`],
//! [`ScoreStage`]), the [`Job`] they make, its [`Inputs`], and what a split or rebuilt job is
//! told ([`Side`], [`Horizon`]).

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use riskpipe_schemas::declared::EventSchema;

use crate::model_slot::ModelSlot;
use crate::records::{Featured, JobInput, JobOutput};
use crate::snapshot::{Installs, StateSnapshot};
use crate::{PipelineError, Result};

/// Which side of a repartition a stage of a split job runs (scale-out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Reads the events, admits them, computes the features keyed like its input and forwards
    /// each row keyed by the repartition's key.
    Before,
    /// Reads the forwarded rows (and the side input), computes the rest, scores.
    After,
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
    fn adopt(&mut self, _installs: Arc<Installs>) -> bool {
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

    /// The columns its model reads (a backtest monitors their drift); none by default.
    fn model_inputs(&self) -> Vec<String> {
        Vec::new()
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
    fn follow_models(&mut self, _slot: Arc<ModelSlot>) -> bool {
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
    /// The declarations of the events and of the side input, where the job's config declares
    /// them: the decoders read each by its declaration (whose Arrow schema is `events` or
    /// `side`).
    pub declared: Vec<Arc<EventSchema>>,
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

/// Default names of a job's input topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streams {
    /// The events topic's default name.
    pub events: &'static str,
    /// The side-input topic's default name, if the job has a side input.
    pub side: Option<&'static str>,
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
