//! Sinks: where a batch's outputs and dead letters go. With the sources and decoders, the only
//! code that knows Kafka or files.
//!
//! The driver hands each batch to [`Sink::send`] in order and awaits the returned delivery
//! before acknowledging the batch's input: a sink's delivery resolves only once its destination
//! holds every record (for Kafka: the broker acknowledged them).
//!
//! - [`kafka`]: scores, alerts and dead letters to their topics (the live pipeline);
//! - [`collect`]: everything into memory (backtests, exports, tests);
//! - [`parquet`]: the one Parquet writer, for backtest and export files;
//! - [`pseudonyms`]: keyed pseudonyms for published ids (opt-in);
//! - [`redact`]: sensitive fields kept out of dead letters.

pub mod collect;
pub mod kafka;
pub mod parquet;
pub mod pseudonyms;
pub mod redact;

use std::future::Future;

use crate::Result;
use crate::sources::Message;
use crate::state::Positions;
use riskpipe_core::{JobOutput, RejectKind};

/// Where a dead letter came from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A consumed message (its bytes and coordinates go to the dead-letter topic).
    Message(Message),
    /// A row of a history, by index.
    Row(usize),
    /// A row of a history's file refused before replay (as live refuses its message), by its
    /// row in the file.
    FileRow(usize),
}

/// An input that could not be scored, and why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The input.
    pub origin: Origin,
    /// Class of the problem.
    pub kind: RejectKind,
    /// What is wrong.
    pub reason: String,
}

/// One batch's outputs and dead letters.
#[derive(Debug)]
pub struct SinkBatch {
    /// The job's output.
    pub output: JobOutput,
    /// The batch's dead letters (undecodable messages, rejected events).
    pub dead: Vec<DeadLetter>,
}

/// Records a sink's destination acknowledged for one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Score records.
    pub scores: u64,
    /// Alert records.
    pub alerts: u64,
    /// The challenger's score records.
    pub challenger: u64,
    /// Decision records.
    pub decisions: u64,
    /// Rows forwarded to the next stage of a repartitioned topology.
    pub forwarded: u64,
    /// Dead letters.
    pub dead_letters: u64,
}

/// A destination of outputs.
pub trait Sink: Send + 'static {
    /// Resolves once the destination holds every record of one batch.
    type Delivery: Future<Output = Result<Delivered>> + Send + 'static;

    /// Hands one batch to the destination (waiting while it is full: backpressure).
    fn send(&mut self, batch: SinkBatch) -> impl Future<Output = Result<Self::Delivery>> + Send;

    /// Whether the sink publishes in transactions that carry the input positions too
    /// (exactly-once): the driver then makes input durable through [`Self::commit`], not
    /// through the source's acknowledgements.
    fn transactional(&self) -> bool {
        false
    }

    /// A transactional sink commits every record sent since its last commit together with
    /// the input `positions` (the next offset per topic and partition), both or neither, and
    /// opens the next transaction.
    fn commit(&mut self, _positions: &Positions) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// A transactional sink aborts its open transaction (the pipeline is stopping on an
    /// error); best effort, as a restart aborts it too.
    fn abort(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}
