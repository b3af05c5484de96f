//! riskpipe's core: what every layer shares and nothing below it knows — the records that flow
//! between stages, the stage traits, the state snapshots, the errors and the metric names. It
//! names no Kafka, file, format, job or column.
//!
//! # Layout
//!
//! - [`records`] — a decoded micro-batch ([`JobInput`]), refusals ([`Reject`]), featured rows
//!   ([`Featured`]), what scoring produced ([`JobOutput`], [`Records`]);
//! - [`stage`] — the two halves of a job ([`FeatureStage`], [`ScoreStage`]) and the [`Job`]
//!   they make;
//! - [`snapshot`] — keyed state as Arrow tables ([`StateSnapshot`]), restored stages per
//!   partition ([`Installs`]);
//! - [`model_slot`] — the hot-reload hand-over between a reloader and a score stage;
//! - [`health`] — liveness and readiness, from the source to the health endpoint;
//! - [`error`] — [`PipelineError`], each variant saying whose fault it is;
//! - [`events`] — every metric name and what it counts;
//! - [`dead_letters`] — a dead letter's headers and the kinds of problem.

pub mod dead_letters;
pub mod error;
pub mod events;
pub mod health;
pub mod model_slot;
pub mod records;
pub mod snapshot;
pub mod stage;

pub use error::{PipelineError, Result};
pub use health::Health;
pub use model_slot::ModelSlot;
pub use records::{Featured, JobInput, JobOutput, Partitions, Records, Reject, RejectKind};
pub use snapshot::{Installs, MakeStage, StateSnapshot};
pub use stage::{FeatureStage, Horizon, Inputs, Job, ScoreStage, Side, Streams, warm_up};
