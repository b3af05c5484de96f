//! riskpipe's engine: the one driver every execution runs, and what it keeps the same for every
//! job — event time (a watermark per input partition; late and future events refused), the
//! admission of numbers, and feature state kept per input partition. It knows no job, no config
//! root, no column: connectors hand it batches, jobs plug in as stages.
//!
//! # Layout
//!
//! - [`driver`] — source → decode → features → score → sink → ack, pipelined, acknowledging
//!   input only after every output derived from it is delivered; checkpoints between batches;
//! - [`event_time`] — the event clock and its policy, the same live, in Kafka replay and in a
//!   file backtest;
//! - [`value_range`] — non-finite or out-of-range numbers refused before any state;
//! - [`admission`] — which events a feature stage takes in: each once, numbers in range,
//!   against the watermark; rows a repartition topic re-delivers dropped;
//! - [`repartition`] — the seam of a job split at a repartition: the part a stage computes,
//!   rows forwarded with their partition of origin, keyed for the next part;
//! - [`drift`] — how far each model input and the score moved from a reference (PSI), the
//!   live monitor checkpointed with the state;
//! - [`partitioned`] — one feature stage per input partition (scale-out), following the
//!   group's assignment.

pub mod admission;
pub mod drift;
pub mod driver;
pub mod event_time;
pub mod partitioned;
pub mod repartition;
pub mod value_range;

use riskpipe_connectors::{sinks, sources, state};
use riskpipe_core::{PipelineError, Result, events};
use riskpipe_formats::decoders;
