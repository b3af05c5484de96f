//! Sources: where micro-batches come from. With the decoders and sinks, the only code that
//! knows Kafka or files.
//!
//! A [`Source`] yields [`SourceBatch`]es: undecoded [`Message`]s (Kafka) or rows already in
//! Arrow (a history file replayed in micro-batches), each with an acknowledgement token. The
//! driver hands every token back to the source's [`Acker`], in batch order, once the sink holds
//! every output derived from the batch: that is where Kafka offsets are stored.
//!
//! - [`history`]: a [`History`](history::History) (events and side events in order) in
//!   micro-batches; what backtests and Kafka-range replays run;
//! - [`file`](mod@file): fraud history files (Parquet, CSV) to a history; [`ticks`]: price files;
//! - [`kafka`]: the live consumer; [`kafka_range`]: a topic range read back for a backtest;
//!   [`kafka_restore`]: the gap a restart replays; [`kafka_assign`]: the state of a partition
//!   assigned to this instance, restored (scale-out).

pub mod file;
pub mod history;
pub mod kafka;
pub mod kafka_assign;
pub mod kafka_range;
mod kafka_rebuild;
pub mod kafka_restore;
pub mod ticks;

use std::future::Future;
use std::sync::Arc;

use crate::Result;
use crate::jobs::JobInput;
use crate::state::Positions;

/// One consumed message, copied out of the client's buffer.
#[derive(Debug, Clone)]
pub struct Message {
    /// From the side-input topic (fraud labels) rather than the events topic.
    pub side: bool,
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Payload.
    pub payload: Vec<u8>,
    /// Producer timestamp (Kafka CreateTime), ms since the epoch.
    pub created_ms: Option<i64>,
}

/// What a source yields.
#[derive(Debug)]
pub enum Payload {
    /// Messages for the decoders.
    Messages {
        /// The messages, in arrival order.
        messages: Vec<Message>,
        /// Every partition of the events topic the source holds now: the watermark waits for
        /// each of them.
        held: Arc<[i32]>,
    },
    /// Rows already decoded; `first_row` numbers the batch's first event in the whole input.
    Rows {
        /// The rows.
        input: JobInput,
        /// Index of the first event in the source.
        first_row: usize,
    },
}

/// One micro-batch and what acknowledging it settles.
#[derive(Debug)]
pub struct SourceBatch<A> {
    /// The batch.
    pub payload: Payload,
    /// Handed to [`Acker::ack`] once every output of the batch is acknowledged.
    pub ack: A,
}

/// Tells a source that the pipeline is stopping (shutdown, or a stage failed).
pub type Stop = tokio::sync::watch::Receiver<bool>;

/// A source of micro-batches.
pub trait Source: Send + 'static {
    /// What acknowledging a batch settles (Kafka: its highest offset per partition).
    type Ack: Send + 'static;
    /// Acknowledges batches while the source goes on reading.
    type Acker: Acker<Ack = Self::Ack>;

    /// The next micro-batch; `None` at the end of the input, or once `stop` is set (a live
    /// source returns the messages it already holds first).
    fn next(
        &mut self,
        stop: &mut Stop,
    ) -> impl Future<Output = Result<Option<SourceBatch<Self::Ack>>>> + Send;

    /// The acknowledger, handed to the driver's acknowledgement stage.
    fn acker(&self) -> Self::Acker;

    /// Topic label of decoded rows' events and side events in metrics (messages carry their
    /// own topics).
    fn names(&self) -> (&str, &str);
}

/// Makes the acknowledgements so far durable (a blocking call: a synchronous commit).
pub type Commit = Box<dyn FnOnce() -> Result<()> + Send>;

/// Settles acknowledged batches.
pub trait Acker: Send + 'static {
    /// The token.
    type Ack: Send + 'static;
    /// Every output of the batch behind `ack` is acknowledged, and every earlier batch's too.
    fn ack(&mut self, ack: Self::Ack);
    /// The pipeline drained without an error: make the acknowledgements durable (commit).
    /// `false`: they could not be, and losing them is safe (the input is read again from the
    /// last commit, e.g. by the member a rebalance gave the partitions to); no checkpoint may
    /// then be written at them.
    fn finish(&mut self) -> Result<bool>;
    /// The next offset per input topic and partition of everything acknowledged (and of the
    /// state the pipeline started from): what the state reflects once these batches went
    /// through it. Empty for sources without offsets.
    fn positions(&self) -> Positions {
        Positions::new()
    }
    /// A commit of what is acknowledged now, to run before a checkpoint of [`Self::positions`]
    /// is written (so the committed offsets are never behind a checkpoint).
    fn commit(&self) -> Option<Commit> {
        None
    }
}

/// An acknowledger with nothing to settle (files).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAck;

impl Acker for NoAck {
    type Ack = ();
    fn ack(&mut self, (): ()) {}
    fn finish(&mut self) -> Result<bool> {
        Ok(true)
    }
}
