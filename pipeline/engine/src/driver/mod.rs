//! The driver: the one loop every execution runs — `riskpipe run` (live), `riskpipe replay`
//! (a Kafka range), `riskpipe backtest` (files), the demo, the benches and the tests.
//!
//! ```text
//! source ──▶ decode ──▶ features ──▶ score ──▶ sink ──▶ ack
//! (async)   (thread)    (thread)    (thread)  (async)  (async)
//! ```
//!
//! Stages are joined by bounded queues of `in_flight` batches, so a slow sink slows the source
//! instead of growing memory, and the decoding, features and scoring of consecutive batches
//! overlap. The acknowledgement stage awaits each batch's delivery in batch order and only then
//! hands the batch's token to the source's [`Acker`]: an input is never acknowledged before
//! every output derived from it is. A [`Fault::BadInput`] error of a job stage dead-letters that
//! batch's events and the pipeline goes on; any other error stops every stage without
//! acknowledging the failed batch, so a restart re-processes it.
//!
//! With [`Checkpoints`], the feature thread copies the job's feature state right after a batch
//! every `interval` (between two batches: the copy is the only pause), the copy travels with
//! the batch, the score thread adds its stage's state right after the same batch (when the
//! stage keeps any), and once the batch is acknowledged the acknowledgement stage commits the offsets
//! and writes the checkpoint of the copy with the acknowledged positions, on a task of its own.
//! A last checkpoint is written after a clean drain.
//!
//! With a transactional sink (exactly-once), the publish stage settles input instead: after
//! handing batch k to the sink it acknowledges k's input and, every `commit_interval` or when k
//! carries a checkpoint copy, has the sink commit its open transaction with the positions
//! through k, before batch k+1 is sent; the checkpoint is then written at exactly the positions
//! committed. The acknowledgement stage only awaits deliveries, for the counts and to stop on a
//! failed one. A source that hands partitions over in a rebalance ([`crate::sources::Handover`])
//! gets a commit as soon as every batch it handed on has been sent.

mod counters;
mod stages;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use riskpipe_schemas::Fault;
use tokio::sync::{mpsc, watch};

pub use counters::{Counters, Summary};

use crate::decoders::Decoder;
use crate::events;
use crate::sinks::Sink;
use crate::sources::{Acker, Commit, Payload, Source};
use crate::state::{CheckpointStore, Positions};
use crate::{PipelineError, Result};
use riskpipe_core::{Job, StateSnapshot};

/// How batches flow; see the module documentation.
#[derive(Debug)]
pub struct Driver {
    /// Batches in flight between any two stages.
    pub in_flight: usize,
    /// Decodes the payloads of message sources.
    pub decoder: Box<dyn Decoder>,
    /// Where and how often the feature state is checkpointed, if it is.
    pub checkpoints: Option<Checkpoints>,
    /// Time between the commits of a transactional sink.
    pub commit_interval: Duration,
}

/// Checkpointing of the job's feature state.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    /// The store.
    pub store: CheckpointStore,
    /// Time between checkpoints.
    pub interval: Duration,
    /// The job kind, recorded in each manifest.
    pub job: &'static str,
    /// The first checkpoint's id.
    pub next_id: u64,
    /// The feature state is kept per input partition (`p<N>/` tables), each partition's in a
    /// store of its own with its own offsets, so it can move to another instance alone; the
    /// score stage's state (per instance) is not written.
    pub per_partition: bool,
}

/// A per-partition snapshot (`p<N>/` feature tables) split into each partition's own: its
/// tables and its positions in every input topic; the score stage's tables are left out.
fn by_partition(
    snapshot: StateSnapshot,
    positions: Positions,
) -> Vec<(i32, StateSnapshot, Positions)> {
    let (features, _) = snapshot.split();
    let mut out: std::collections::BTreeMap<i32, StateSnapshot> = Default::default();
    for (name, table) in features.tables {
        if let Some((p, own)) = crate::partitioned::partition_of_table(&name) {
            out.entry(p)
                .or_insert_with(|| StateSnapshot {
                    tables: Vec::new(),
                    fingerprint: features.fingerprint.clone(),
                })
                .tables
                .push((own.to_string(), table));
        }
    }
    out.into_iter()
        .map(|(p, snapshot)| {
            let mine: Positions = positions
                .iter()
                .filter_map(|(topic, parts)| {
                    let at = parts.get(&p)?;
                    Some((topic.clone(), std::iter::once((p, *at)).collect()))
                })
                .collect();
            (p, snapshot, mine)
        })
        .collect()
}

/// Writes checkpoints one at a time, each on a task of its own.
struct Writer {
    checkpoints: Checkpoints,
    writing: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Writer {
    /// Commits (`commit`, blocking, off the reactor) and then writes `snapshot` at `positions`.
    fn start(&mut self, snapshot: StateSnapshot, positions: Positions, commit: Option<Commit>) {
        let c = self.checkpoints.clone();
        let id = self.checkpoints.next_id;
        self.checkpoints.next_id += 1;
        let writing = self.writing.clone();
        self.task = Some(tokio::spawn(async move {
            let r = async {
                if let Some(commit) = commit {
                    tokio::task::spawn_blocking(commit)
                        .await
                        .map_err(|e| PipelineError::Bug(format!("commit task: {e}")))??;
                }
                if c.per_partition {
                    let mut bytes = 0;
                    for (p, snapshot, positions) in by_partition(snapshot, positions) {
                        // Ids by time: the instances that hold a partition one after the other
                        // write into the same store.
                        let id = crate::state::now_ms().max(0) as u64;
                        bytes += c
                            .store
                            .partition(p)
                            .write(id, c.job, positions, snapshot)
                            .await?
                            .bytes();
                    }
                    Ok::<u64, PipelineError>(bytes)
                } else {
                    Ok(c.store.write(id, c.job, positions, snapshot).await?.bytes())
                }
            }
            .await;
            match r {
                Ok(bytes) => tracing::debug!(id, bytes, "checkpoint written"),
                Err(e) => {
                    events::checkpoint_failed();
                    tracing::warn!("checkpoint {id} not written (the next one retries): {e}");
                }
            }
            writing.store(false, Ordering::Release);
        }));
    }

    /// Waits for the write in progress.
    async fn wait(&mut self) {
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// What settles input: the source's acknowledger and the checkpoint writer, held by the stage
/// that decides when input is done with (see [`Driver::run`]).
struct Settle<A> {
    acker: A,
    writer: Option<Writer>,
}

impl<A: Acker> Settle<A> {
    /// Commits the sink's open transaction with the acknowledged positions, then writes the
    /// checkpoint `snapshot` (taken right after the last batch in it) at those positions.
    async fn commit<K: Sink>(
        &mut self,
        sink: &mut K,
        snapshot: Option<StateSnapshot>,
    ) -> Result<()> {
        let handover = self.acker.handover();
        if handover.as_ref().is_some_and(|h| !h.begin_commit()) {
            // It holds outputs of partitions a rebalance gave to another instance before they
            // were committed (see `Handover`): their next owner publishes them from the last
            // commit.
            sink.abort().await;
            return Err(PipelineError::Transaction {
                op: "handing partitions over in a rebalance",
                source: "their outputs' commit did not come in time".into(),
                aborted: true,
            });
        }
        // Every batch acknowledged so far is in the transaction (this stage acknowledges them).
        let through = handover.as_ref().map(|h| h.acked());
        let positions = self.acker.positions();
        let handing_over = handover.as_ref().is_some_and(|h| h.due().is_some());
        let committed = sink.commit(&positions).await;
        if let (Ok(()), Some(h), Some(through)) = (&committed, &handover, through) {
            h.committed(through);
        }
        if let Some(h) = &handover {
            h.end_commit();
        }
        committed?;
        if handing_over {
            tracing::info!(?positions, "exactly-once: committed for a hand-over");
        }
        if let (Some(snapshot), Some(w)) = (snapshot, self.writer.as_mut()) {
            w.start(snapshot, positions, None);
        }
        Ok(())
    }
}

impl Driver {
    /// A driver decoding with `decoder`, `in_flight` batches per queue.
    pub fn new(decoder: Box<dyn Decoder>, in_flight: usize) -> Self {
        Self {
            in_flight: in_flight.max(1),
            decoder,
            checkpoints: None,
            commit_interval: Duration::from_secs(1),
        }
    }

    /// How often a transactional sink commits (`kafka.commit_interval`).
    pub fn with_commit_interval(mut self, every: Duration) -> Self {
        self.commit_interval = every;
        self
    }

    /// Checkpoints the job's feature state as `checkpoints` says.
    pub fn with_checkpoints(mut self, checkpoints: Option<Checkpoints>) -> Self {
        self.checkpoints = checkpoints;
        self
    }

    /// Runs `job` over `source` into `sink` until the source ends or `shutdown` resolves (then
    /// drains: every batch read is processed, delivered and acknowledged), or a stage fails.
    pub async fn run<S: Source, K: Sink>(
        self,
        mut source: S,
        job: Job,
        mut sink: K,
        counters: Arc<Counters>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<Summary> {
        let n = self.in_flight;
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let (batch_tx, batch_rx) = mpsc::channel(n);
        let (decoded_tx, decoded_rx) = mpsc::channel(n);
        let (featured_tx, featured_rx) = mpsc::channel(n);
        let (scored_tx, mut scored_rx) = mpsc::channel(n);
        let (pending_tx, mut pending_rx) = mpsc::channel(n);
        let names = source.names();
        let names = (Arc::<str>::from(names.0), Arc::<str>::from(names.1));
        let inputs = job.inputs.clone();
        let decoder = self.decoder;

        let decode = stages::spawn("riskpipe-decode", &stop_tx, move || {
            stages::decode(batch_rx, decoded_tx, decoder.as_ref(), &inputs, &names)
        })?;
        let writing = Arc::new(AtomicBool::new(false));
        let timer = self.checkpoints.as_ref().map(|c| stages::SnapshotTimer {
            every: c.interval,
            last: std::time::Instant::now(),
            writing: writing.clone(),
        });
        let writer = self.checkpoints.map(|checkpoints| Writer {
            checkpoints,
            writing,
            task: None,
        });
        let mut features = job.features;
        let featuring = stages::spawn("riskpipe-features", &stop_tx, move || {
            stages::features(decoded_rx, featured_tx, features.as_mut(), timer)?;
            Ok(features)
        })?;
        let mut scoring = job.scoring;
        let score_writing = writer.as_ref().map(|w| w.writing.clone());
        let scoring_thread = stages::spawn("riskpipe-score", &stop_tx, move || {
            stages::score(featured_rx, scored_tx, scoring.as_mut(), score_writing)?;
            Ok(scoring)
        })?;
        // Who settles input: the acknowledgement stage, once each batch's outputs are
        // delivered (at-least-once); or, with a transactional sink, the publish stage, which
        // commits the outputs sent so far with their input positions in one transaction
        // between two batches (so no later batch's outputs enter a transaction without its
        // offsets), every `commit_interval` and right after a batch that carries a checkpoint.
        let settle = Settle {
            acker: source.acker(),
            writer,
        };
        let (in_publish, in_ack) = if sink.transactional() {
            (Some(settle), None)
        } else {
            (None, Some(settle))
        };
        let commit_interval = self.commit_interval;
        let publish = {
            let guard = stages::StopGuard::new(&stop_tx);
            tokio::spawn(async move {
                let r = async {
                    let mut txn = in_publish;
                    // A source handing partitions over in a rebalance wants a commit now.
                    let handover = txn.as_ref().and_then(|t| t.acker.handover());
                    // When the open transaction is due for a commit (None: nothing in it).
                    let mut due: Option<tokio::time::Instant> = None;
                    loop {
                        let handing_over = async {
                            match &handover {
                                Some(h) => h.wanted().await,
                                None => std::future::pending().await,
                            }
                        };
                        let commit_at = async {
                            match due {
                                Some(d) => tokio::time::sleep_until(d).await,
                                None => std::future::pending().await,
                            }
                        };
                        let next = tokio::select! {
                            biased;
                            () = handing_over => {
                                if let Some(t) = txn.as_mut()
                                    && handover.as_ref().is_some_and(|h| h.due().is_some())
                                {
                                    t.commit(&mut sink, None).await?;
                                    due = None;
                                }
                                continue;
                            }
                            () = commit_at => {
                                // A quiet input: commit what the transaction holds.
                                if let Some(t) = txn.as_mut() {
                                    t.commit(&mut sink, None).await?;
                                }
                                due = None;
                                continue;
                            }
                            next = scored_rx.recv() => next,
                        };
                        let Some((mut work, batch)) = next else { break };
                        let sent = std::time::Instant::now();
                        let delivery = match sink.send(batch).await {
                            Ok(d) => d,
                            Err(e) => {
                                sink.abort().await;
                                return Err(e);
                            }
                        };
                        if let Some(t) = txn.as_mut() {
                            if let Some(ack) = work.ack.take() {
                                t.acker.ack(ack);
                            }
                            let snapshot = work.snapshot.take();
                            let now = tokio::time::Instant::now();
                            let at = *due.get_or_insert(now + commit_interval);
                            let handing_over = handover.as_ref().is_some_and(|h| h.due().is_some());
                            if snapshot.is_some() || now >= at || handing_over {
                                t.commit(&mut sink, snapshot).await?;
                                due = None;
                            }
                        }
                        if pending_tx.send((work, delivery, sent)).await.is_err() {
                            break; // the ack stage stopped; it reports why
                        }
                    }
                    if let Some(t) = txn.as_mut()
                        && due.is_some()
                    {
                        t.commit(&mut sink, None).await?;
                    }
                    Ok(txn)
                }
                .await;
                guard.check(r)
            })
        };
        let acknowledge = {
            let guard = stages::StopGuard::new(&stop_tx);
            let counters = counters.clone();
            tokio::spawn(async move {
                let r = async {
                    let mut settle = in_ack;
                    while let Some((mut work, delivery, sent)) = pending_rx.recv().await {
                        let delivered = delivery.await?;
                        events::stage_time(events::Stage::Publish, sent.elapsed().as_secs_f64());
                        counters.delivered(&work, delivered);
                        if let Some(s) = settle.as_mut() {
                            let snapshot = work.snapshot.take();
                            if let Some(ack) = work.ack.take() {
                                s.acker.ack(ack);
                            }
                            if let (Some(snapshot), Some(w)) = (snapshot, s.writer.as_mut()) {
                                w.start(snapshot, s.acker.positions(), s.acker.commit());
                            }
                        }
                    }
                    Ok(settle)
                }
                .await;
                guard.check(r)
            })
        };

        // The source loop, here on the caller's task: ends at the end of the input, on shutdown
        // (the source returns what it holds first) or when a stage stopped the pipeline.
        let consumed = {
            let stop = stop_tx.clone();
            let watch_shutdown = async move {
                shutdown.await;
                let _ = stop.send(true);
            };
            let read = async {
                while let Some(batch) = source.next(&mut stop_rx).await? {
                    counters.consumed(&batch.payload);
                    if batch_tx.send(batch).await.is_err() {
                        break; // the decode stage stopped; it reports why
                    }
                }
                Ok::<(), PipelineError>(())
            };
            tokio::pin!(watch_shutdown);
            tokio::pin!(read);
            tokio::select! {
                r = &mut read => r,
                () = &mut watch_shutdown => read.await,
            }
        };
        if consumed.is_err() {
            let _ = stop_tx.send(true);
        }
        drop(batch_tx); // each stage ends after its last batch

        let published = publish
            .await
            .map_err(|e| PipelineError::Bug(format!("sink task: {e}")))?;
        let acked = acknowledge
            .await
            .map_err(|e| PipelineError::Bug(format!("acknowledgement task: {e}")))?;
        let decoded = stages::join(decode).await;
        let featured = stages::join(featuring).await;
        let scored = stages::join(scoring_thread).await;
        // The first stage to fail is the cause; later ones failed because it stopped.
        let features = featured?;
        let scoring = scored?;
        decoded?;
        let settled = published?.or(acked?);
        consumed?;
        let Settle { mut acker, writer } =
            settled.ok_or_else(|| PipelineError::Bug("no stage settled the input".into()))?;
        let committed = acker.finish()?;
        if let Some(mut w) = writer.filter(|_| committed) {
            // The last checkpoint: everything acknowledged and committed, the state after it.
            w.wait().await;
            let snapshot = features.snapshot().and_then(|f| {
                let s = scoring
                    .has_state()
                    .then(|| scoring.snapshot())
                    .transpose()?;
                Ok(StateSnapshot::join(f, s))
            });
            match snapshot {
                Ok(s) => {
                    w.start(s, acker.positions(), None);
                    w.wait().await;
                }
                Err(e) => tracing::warn!("no checkpoint at shutdown: {e}"),
            }
        }
        Ok(counters.summary())
    }

    /// [`Self::run`] on a runtime of its own, for synchronous callers (backtests, exports).
    pub fn run_blocking<S: Source, K: Sink>(
        self,
        source: S,
        job: Job,
        sink: K,
        counters: Arc<Counters>,
    ) -> Result<Summary> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(PipelineError::runtime("starting the async runtime"))?
            .block_on(self.run(source, job, sink, counters, std::future::pending()))
    }
}

/// Whether an error of a job stage dead-letters the batch (bad input) or stops the pipeline.
pub(crate) fn dead_letters_batch(e: &PipelineError) -> bool {
    e.fault() == Fault::BadInput
}

/// Rows of a payload, for the batch-size metric.
pub(crate) fn rows(payload: &Payload) -> usize {
    match payload {
        Payload::Messages { messages, .. } => messages.len(),
        Payload::Rows { input, .. } => {
            input.events.num_rows() + input.side.as_ref().map_or(0, |s| s.num_rows())
        }
    }
}

#[cfg(test)]
mod tests;
