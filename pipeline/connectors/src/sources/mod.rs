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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::Result;
use crate::state::Positions;
use riskpipe_core::JobInput;

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
    /// The hand-over of partitions a rebalance takes away (exactly-once with state that
    /// follows partitions): the stage that commits transactions serves it.
    fn handover(&self) -> Option<Arc<Handover>> {
        None
    }
}

/// Exactly-once across a rebalance: before a consumer lets partitions go, every batch it has
/// handed on must be in a committed transaction together with its offsets. Otherwise the open
/// transaction would commit their outputs after the partitions' next owner has started over
/// from the last committed offsets, and a `read_committed` reader would see those outputs
/// twice. The consumer asks for that commit in its revoke callback and waits for it
/// ([`Self::revoked`]); the stage that commits transactions commits as soon as every batch
/// handed on has reached it ([`Self::due`]) and reports it ([`Self::committed`]).
#[derive(Debug, Default)]
pub struct Handover {
    /// Batches handed on by the source, and those acknowledged (sent into the transaction).
    issued: AtomicU64,
    acked: AtomicU64,
    /// The commit asked for: through this many batches (0: none).
    wanted: AtomicU64,
    /// Batches through which a transaction has committed.
    committed: Mutex<u64>,
    done: Condvar,
    /// Wakes the committing stage when a commit is wanted.
    wake: tokio::sync::Notify,
    /// Rebalances that took partitions away: the source drops what it read before one.
    revocations: AtomicU64,
    /// A wanted commit did not come in time: the open transaction holds outputs of partitions
    /// given up and must be aborted.
    tainted: AtomicBool,
    /// A commit is under way ([`Self::begin_commit`]): a revoke whose time runs out waits for
    /// it instead of tainting the transaction it is committing. Set and read under `committed`.
    committing: AtomicBool,
    /// The committing stage is gone: nothing to wait for.
    closed: AtomicBool,
}

impl Handover {
    /// A batch was handed on.
    pub fn issue(&self) {
        self.issued.fetch_add(1, Ordering::AcqRel);
    }

    /// Batches handed on so far.
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::Acquire)
    }

    /// A batch was acknowledged (its outputs are in the open transaction).
    pub fn ack(&self) {
        self.acked.fetch_add(1, Ordering::AcqRel);
    }

    /// Batches acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }

    /// Rebalances that took partitions away so far.
    pub fn revocations(&self) -> u64 {
        self.revocations.load(Ordering::Acquire)
    }

    /// Partitions are being taken away (called by the consumer's revoke callback, blocking):
    /// waits up to `within` for a commit of every batch handed on, and then for a commit under
    /// way. `false` when it did not come (the open transaction is then tainted and its next
    /// commit aborts instead).
    pub fn revoked(&self, within: Duration) -> bool {
        self.revocations.fetch_add(1, Ordering::AcqRel);
        let through = self.issued();
        let Ok(committed) = self.committed.lock() else {
            return false;
        };
        if *committed >= through || self.closed.load(Ordering::Acquire) {
            return true;
        }
        self.wanted.fetch_max(through, Ordering::AcqRel);
        self.wake.notify_one();
        let closed = || self.closed.load(Ordering::Acquire);
        let wait = move || {
            // (No time at all: decided at once, the lock held since the commit was asked for.)
            let committed = match within.is_zero() {
                true => committed,
                false => match self
                    .done
                    .wait_timeout_while(committed, within, |c| *c < through && !closed())
                {
                    Ok((committed, _)) => committed,
                    Err(_) => return false,
                },
            };
            // A commit under way when the time ran out commits before the partitions go: wait
            // for it. Otherwise the open transaction is tainted, under the same lock a commit
            // begins under, so a commit either began before (and is waited for) or sees it.
            let Ok(committed) = self.done.wait_while(committed, |_| {
                self.committing.load(Ordering::Acquire) && !closed()
            }) else {
                return false;
            };
            let ok = *committed >= through;
            if !ok && !closed() {
                self.tainted.store(true, Ordering::Release);
            }
            ok
        };
        // Off the async reactor's worker, so the committing stage's task keeps running.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            _ => wait(),
        }
    }

    /// A transaction is about to commit: `false` when it is tainted (it must be aborted), else
    /// the commit is under way until [`Self::end_commit`].
    pub fn begin_commit(&self) -> bool {
        let Ok(_committed) = self.committed.lock() else {
            return false;
        };
        if self.tainted.load(Ordering::Acquire) {
            return false;
        }
        self.committing.store(true, Ordering::Release);
        true
    }

    /// The commit [`Self::begin_commit`] started is over (committed or failed).
    pub fn end_commit(&self) {
        if let Ok(_committed) = self.committed.lock() {
            self.committing.store(false, Ordering::Release);
        }
        self.done.notify_all();
    }

    /// Through which batch a commit is due now: one is wanted, and every batch it covers has
    /// been acknowledged.
    pub fn due(&self) -> Option<u64> {
        let wanted = self.wanted.load(Ordering::Acquire);
        let committed = self.committed.lock().map_or(0, |c| *c);
        (wanted > committed && self.acked() >= wanted).then_some(wanted)
    }

    /// Resolves when a commit may be wanted (check [`Self::due`]).
    pub async fn wanted(&self) {
        self.wake.notified().await;
    }

    /// A transaction committed every batch acknowledged before it: `through` of them.
    pub fn committed(&self, through: u64) {
        if let Ok(mut c) = self.committed.lock() {
            *c = (*c).max(through);
        }
        self.done.notify_all();
    }

    /// The committing stage is gone (its run ended): a revoke has nothing to wait for.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.done.notify_all();
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
