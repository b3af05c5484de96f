//! The live Kafka source: one consumer group over the events and side-input topics, adaptive
//! micro-batches, offsets stored only when the driver acknowledges a batch.
//!
//! A micro-batch closes once librdkafka holds no further message ready, at `batch.max_rows`
//! messages, or at the latest `batch.max_delay` after its first message: full batches under load,
//! no waiting when the topic is quiet. Messages stay in arrival order, so per-partition order is
//! kept. Auto-commit is on and auto offset store off (rust-rdkafka's at-least-once recipe):
//! librdkafka commits only offsets riskpipe stored, every `commit_interval`, and the acker
//! commits synchronously when the pipeline drains.
//!
//! In exactly-once mode the consumer commits nothing itself (auto-commit off) and reads only
//! committed input (`read_committed`): the input offsets go into the sink's transactions, with
//! the consumer's group metadata ([`GroupMembership`]), and the acker only counts positions.
//!
//! Here the source; `context`: the consumer's callbacks (health, rebalances, statistics);
//! `ack`: offsets stored and committed as the driver acknowledges batches.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, ConsumerGroupMetadata, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message as _};

use super::{Message, Payload, Source, SourceBatch, Stop};

mod ack;
mod context;

use crate::events;
use crate::kafka::{KafkaConfig, Throttle};
use crate::state::Positions;
use crate::{PipelineError, Result};
pub use ack::KafkaAcker;
use context::Context;
use riskpipe_core::Health;
use riskpipe_core::Streams;

/// How long a consumer that has prefetched its fill waits before fetching again, in ms (see
/// the consumer's defaults; the replay consumer shares it).
pub(crate) const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// How long a revoke waits for the commit of every batch handed on (exactly-once with state
/// that follows the assignment); well within the group's rebalance timeout
/// (`max.poll.interval.ms`, 300 s by default).
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// Highest offset read per (topic, partition) of a batch: what acknowledging it stores.
pub type Offsets = BTreeMap<(Arc<str>, i32), i64>;

pub(super) type Consumer_ = StreamConsumer<Context>;

/// The live source.
pub struct KafkaSource {
    consumer: Arc<Consumer_>,
    started: Instant,
    startup_timeout: Duration,
    max_rows: usize,
    max_delay: std::time::Duration,
    side_topic: Option<String>,
    /// Each topic's shared name and, per partition, the next offset this process has not
    /// handed on yet and whether it is skipping re-delivered messages there now.
    topics: BTreeMap<String, (Arc<str>, ReadPositions)>,
    names: (String, String),
    /// Where the restored state stands: the acker's positions start here.
    start: Positions,
    /// Offsets go into the sink's transactions: the consumer commits none.
    transactional: bool,
    /// State per partition following the assignment, if it does.
    follow: Option<Follow>,
    /// Revocations seen: what was read before a later one is dropped (exactly-once).
    revocations: u64,
    /// The acker's positions, which a restored partition resets.
    positions: Arc<Mutex<Positions>>,
}

/// State kept per input partition that follows the group's assignment (scale-out): a newly
/// assigned partition is paused, its state restored (`restore`) once every batch handed on
/// has been acknowledged, handed to the feature stage (`installs`), and the partition consumed
/// from the committed offsets the state now stands at.
#[derive(Debug, Clone)]
pub struct Follow {
    /// Restores a partition's state.
    pub restore: Arc<super::kafka_assign::PartitionRestore>,
    /// Where the feature stage takes restored stages from.
    pub installs: Arc<riskpipe_core::Installs>,
}

/// The consumer's membership of its group, for a transactional producer's offset commits: a
/// commit made with the metadata of a generation the group has left behind (this member was
/// fenced out in a rebalance) fails and aborts its transaction.
#[derive(Clone)]
pub struct GroupMembership(Arc<Consumer_>);

impl GroupMembership {
    /// The group metadata of the consumer's current generation.
    pub fn metadata(&self) -> Option<ConsumerGroupMetadata> {
        self.0.group_metadata()
    }
}

impl std::fmt::Debug for GroupMembership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupMembership").finish_non_exhaustive()
    }
}

/// Per partition: the next offset not handed on yet, and whether re-delivered messages are
/// being skipped there now.
type ReadPositions = HashMap<i32, (i64, bool)>;

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("max_rows", &self.max_rows)
            .field("side_topic", &self.side_topic)
            .finish_non_exhaustive()
    }
}

impl KafkaSource {
    /// Joins the consumer group of `kafka` on the topics of `streams`; `health.ready` follows
    /// the partition assignment.
    pub fn new(kafka: &KafkaConfig, streams: Streams, health: Arc<Health>) -> Result<Self> {
        let mut cfg = kafka.client();
        let transactional = kafka.exactly_once();
        cfg.set("group.id", &kafka.group_id)
            .set("enable.auto.commit", (!transactional).to_string())
            .set(
                "auto.commit.interval.ms",
                kafka.commit_interval.as_millis().max(1).to_string(),
            )
            .set("enable.auto.offset.store", "false")
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
        if transactional {
            cfg.set("isolation.level", "read_committed");
        }
        for (k, default) in [
            ("auto.offset.reset", "earliest"),
            // Lag for the metrics, and broker states for readiness, every second.
            ("statistics.interval.ms", "1000"),
            // A broker holds an empty fetch this long; librdkafka's 500 ms would dominate
            // latency whenever the topic goes quiet between micro-batches.
            ("fetch.wait.max.ms", "5"),
            // With more than queued.min.messages (100,000) prefetched, librdkafka postpones the
            // partition's next fetch by this much; its 1,000 ms outlasted the pipeline's drain of
            // those messages, so a backlog was read in bursts with a stall of up to a second
            // after each (cargo bench --bench e2e with 200,000 transactions: 0.38 of the scoring
            // ceiling, against 0.69 with 100,000, which never filled the queue).
            ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS),
        ] {
            if cfg.get(k).is_none() {
                cfg.set(k, default);
            }
        }
        for (k, v) in &kafka.consumer_properties {
            cfg.set(k, v);
        }
        let positions = Arc::new(Mutex::new(Positions::new()));
        let context = Context {
            handover: Arc::default(),
            handing_over: AtomicBool::new(false),
            positions: positions.clone(),
            health,
            assigned: AtomicBool::new(false),
            ever_assigned: AtomicBool::new(false),
            brokers_up: AtomicBool::new(true),
            last_error: Mutex::new(None),
            errors: Throttle::new(Duration::from_secs(10)),
            events_topic: kafka.events_topic(streams).to_string(),
            held: Mutex::new(Arc::from([])),
            following: AtomicBool::new(false),
            restoring: Mutex::new(BTreeSet::new()),
            owned: Mutex::new(BTreeSet::new()),
            assignment: Mutex::new(None),
            assigned_now: tokio::sync::Notify::new(),
        };
        let consumer: Consumer_ = cfg
            .create_with_context(context)
            .map_err(PipelineError::kafka("creating the consumer"))?;
        consumer
            .subscribe(&kafka.inputs(streams))
            .map_err(PipelineError::kafka("subscribing"))?;
        Ok(Self {
            consumer: Arc::new(consumer),
            started: Instant::now(),
            startup_timeout: kafka.startup_timeout,
            max_rows: kafka.batch.max_rows.max(1),
            max_delay: kafka.batch.max_delay,
            side_topic: kafka.side_topic(streams).map(str::to_string),
            topics: BTreeMap::new(),
            names: (
                kafka.events_topic(streams).to_string(),
                kafka.side_topic(streams).unwrap_or_default().to_string(),
            ),
            start: Positions::new(),
            transactional,
            follow: None,
            revocations: 0,
            positions,
        })
    }

    /// Keeps state per partition that follows the assignment (see [`Follow`]).
    pub fn following(mut self, follow: Follow) -> Self {
        self.consumer
            .context()
            .following
            .store(true, Ordering::Relaxed);
        self.consumer
            .context()
            .handing_over
            .store(self.transactional, Ordering::Release);
        self.follow = Some(follow);
        self
    }

    /// Follows the latest assignment: waits until every batch handed on is acknowledged (their
    /// rows went through the state of the partitions they came from), forgets the read
    /// positions of partitions given up, restores the state of newly assigned ones and
    /// consumes them from where it stands.
    async fn follow_assignment(&mut self, stop: &Stop) -> Result<()> {
        let Some(follow) = self.follow.clone() else {
            return Ok(());
        };
        let handover = &self.consumer.context().handover;
        while handover.acked() < handover.issued() {
            if *stop.borrow() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let context = self.consumer.context();
        let Some(assigned) = context.assignment.lock().ok().and_then(|mut a| a.take()) else {
            return Ok(());
        };
        let new: Vec<i32> = context
            .restoring
            .lock()
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default();
        let numbers: BTreeSet<i32> = assigned.iter().map(|(_, p)| *p).collect();
        let before = context.owned.lock().map(|o| o.clone()).unwrap_or_default();
        for &gone in before.difference(&numbers) {
            for (_, read) in self.topics.values_mut() {
                read.remove(&gone);
            }
            follow.installs.give_up(gone);
        }
        if !new.is_empty() {
            let (restore, partitions) = (follow.restore.clone(), new.clone());
            let restored = tokio::task::spawn_blocking(move || restore.restore(&partitions))
                .await
                .map_err(|e| PipelineError::Bug(format!("restore task: {e}")))??;
            let mut resume = TopicPartitionList::new();
            for r in restored {
                for (topic, p) in assigned.iter().filter(|(_, p)| *p == r.partition) {
                    let at = r.positions.get(topic).and_then(|m| m.get(p)).copied();
                    let entry = self
                        .topics
                        .entry(topic.clone())
                        .or_insert_with(|| (Arc::from(topic.as_str()), HashMap::new()));
                    match at {
                        Some(c) => entry.1.insert(*p, (c, false)),
                        None => entry.1.remove(p),
                    };
                    if let Ok(mut positions) = self.positions.lock() {
                        match at {
                            Some(c) => positions.entry(topic.clone()).or_default().insert(*p, c),
                            None => positions.get_mut(topic).and_then(|m| m.remove(p)),
                        };
                    }
                    let offset = at.map_or(rdkafka::Offset::Beginning, rdkafka::Offset::Offset);
                    if let Err(e) = self
                        .consumer
                        .seek(topic, *p, offset, Duration::from_secs(10))
                    {
                        tracing::warn!(topic, partition = p, "seek after restoring: {e}");
                    }
                    resume.add_partition(topic, *p);
                }
                follow.installs.put(r.partition, r.stage);
            }
            self.consumer
                .resume(&resume)
                .map_err(PipelineError::kafka("resuming restored partitions"))?;
        }
        tracing::info!(
            restored = ?new,
            kept = ?numbers.intersection(&before).collect::<Vec<_>>(),
            given_up = ?before.difference(&numbers).collect::<Vec<_>>(),
            "following the assignment"
        );
        if let Ok(mut o) = context.owned.lock() {
            *o = numbers;
        }
        if let Ok(mut r) = context.restoring.lock() {
            r.clear();
        }
        Ok(())
    }

    /// The consumer's group membership, for the sink's transactions.
    pub fn membership(&self) -> GroupMembership {
        GroupMembership(self.consumer.clone())
    }

    /// The positions the restored state reflects (the acker reports positions from there).
    pub fn starting_from(mut self, positions: Positions) -> Self {
        self.start = positions;
        self
    }

    /// Adds `m` to the batch, unless this process has handed it on already: after a rebalance
    /// (the group lost this member during a broker outage, say) librdkafka fetches again from
    /// the committed offsets, but the job's state has seen everything up to the read position
    /// and the outputs of those messages are delivered or in flight (their acknowledgement
    /// commits them), so reading them again would count them twice in the state.
    fn push(&mut self, batch: &mut Vec<Message>, m: &BorrowedMessage<'_>) {
        self.after_revocation(batch);
        // Fetched before its pause took hold: it is read again once the state is restored.
        if self.follow.is_some()
            && self
                .consumer
                .context()
                .restoring
                .lock()
                .is_ok_and(|r| r.contains(&m.partition()))
        {
            return;
        }
        if !self.topics.contains_key(m.topic()) {
            self.topics.insert(
                m.topic().to_string(),
                (Arc::from(m.topic()), HashMap::new()),
            );
        }
        let Some((topic, read)) = self.topics.get_mut(m.topic()) else {
            return;
        };
        let (next, skipping) = read.entry(m.partition()).or_insert((i64::MIN, false));
        if m.offset() < *next {
            if !*skipping {
                tracing::info!(
                    topic = &**topic,
                    partition = m.partition(),
                    from = m.offset(),
                    to = *next,
                    "re-delivered after a rebalance: skipping the offsets this process has read already"
                );
                *skipping = true;
            }
            events::redelivery_skipped();
            return;
        }
        (*next, *skipping) = (m.offset() + 1, false);
        batch.push(Message {
            side: self.side_topic.as_deref() == Some(&**topic),
            topic: topic.clone(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            created_ms: m.timestamp().to_millis(),
        });
    }

    /// Exactly-once with state that follows the assignment: after a revoke, which committed
    /// every batch handed on, the messages read since and not handed on are dropped, and each
    /// partition's read position goes back to where the state stands (the positions just
    /// committed). The partitions' next owner (this process again, for those it keeps) reads
    /// them from the committed offsets; should a broker answer older committed offsets than
    /// the hand-over's (a test broker did, once, in a rebalance after a member died), what this process
    /// has taken in already is skipped as re-delivered, not refused as duplicates.
    fn after_revocation(&mut self, batch: &mut Vec<Message>) {
        let context = self.consumer.context();
        let now = context.handover.revocations();
        if now == self.revocations {
            return;
        }
        self.revocations = now;
        if !context.handing_over.load(Ordering::Acquire) {
            return;
        }
        if !batch.is_empty() {
            tracing::info!(
                messages = batch.len(),
                "exactly-once: messages read before the revoke and not handed on are read again from the committed offsets"
            );
        }
        batch.clear();
        let positions = self.positions.lock().map(|p| p.clone()).unwrap_or_default();
        for (topic, (_, read)) in self.topics.iter_mut() {
            let state = positions.get(topic);
            read.retain(|p, (next, skipping)| match state.and_then(|s| s.get(p)) {
                Some(&at) => {
                    (*next, *skipping) = (at, false);
                    true
                }
                None => false,
            });
        }
    }

    /// Takes whatever librdkafka already holds, up to `max_rows`.
    fn take_ready(&mut self, batch: &mut Vec<Message>) {
        let consumer = self.consumer.clone();
        while batch.len() < self.max_rows {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => self.push(batch, &m),
                Some(Err(e)) => {
                    events::consumer_error();
                    self.consumer
                        .context()
                        .errors
                        .warn(&format_args!("consumer: {e}"));
                    break;
                }
                None => break,
            }
        }
    }

    fn batch(&mut self, messages: Vec<Message>) -> SourceBatch<Offsets> {
        self.consumer.context().handover.issue();
        let mut offsets = Offsets::new();
        for m in &messages {
            let e = offsets
                .entry((m.topic.clone(), m.partition))
                .or_insert(m.offset);
            *e = (*e).max(m.offset);
        }
        SourceBatch {
            payload: Payload::Messages {
                messages,
                held: self.consumer.context().held(),
            },
            ack: offsets,
        }
    }
}

impl Source for KafkaSource {
    type Ack = Offsets;
    type Acker = KafkaAcker;

    async fn next(&mut self, stop: &mut Stop) -> Result<Option<SourceBatch<Offsets>>> {
        let mut batch: Vec<Message> = Vec::with_capacity(self.max_rows);
        let consumer = self.consumer.clone();
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            self.after_revocation(&mut batch);
            if batch.is_empty() {
                deadline = None;
            }
            if *stop.borrow() {
                return Ok((!batch.is_empty()).then(|| self.batch(batch)));
            }
            if self.follow.is_some()
                && self
                    .consumer
                    .context()
                    .assignment
                    .lock()
                    .is_ok_and(|a| a.is_some())
            {
                if !batch.is_empty() {
                    return Ok(Some(self.batch(batch)));
                }
                self.follow_assignment(stop).await?;
                deadline = None;
                continue;
            }
            let context = self.consumer.context();
            // Never assigned a partition: the brokers are unreachable or the group never formed.
            let give_up = (!context.ever_assigned.load(Ordering::Relaxed)
                && !self.startup_timeout.is_zero())
            .then(|| tokio::time::Instant::from_std(self.started + self.startup_timeout));
            let flush_at = deadline;
            tokio::select! {
                biased;
                () = async { if let Some(t) = give_up { tokio::time::sleep_until(t).await } }, if give_up.is_some() => {
                    let last = context
                        .last_error
                        .lock()
                        .ok()
                        .and_then(|e| e.clone())
                        .unwrap_or_else(|| "none".into());
                    return Err(PipelineError::Startup {
                        timeout: self.startup_timeout,
                        last_error: last,
                    });
                }
                changed = stop.changed() => {
                    // The driver went away: as good as a stop.
                    if changed.is_err() {
                        return Ok((!batch.is_empty()).then(|| self.batch(batch)));
                    }
                }
                () = async { if let Some(d) = flush_at { tokio::time::sleep_until(d).await } }, if flush_at.is_some() => {
                    return Ok(Some(self.batch(batch)));
                }
                () = context.assigned_now.notified(), if self.follow.is_some() => {}
                m = consumer.recv() => match m {
                    Ok(m) => {
                        self.push(&mut batch, &m);
                        drop(m);
                        self.take_ready(&mut batch);
                        if batch.is_empty() {
                            continue; // only messages read already
                        }
                        deadline.get_or_insert_with(|| tokio::time::Instant::now() + self.max_delay);
                        // Bigger batches for more latency only when asked for.
                        if batch.len() >= self.max_rows || self.max_delay.is_zero() {
                            return Ok(Some(self.batch(batch)));
                        }
                    }
                    Err(e) => {
                        events::consumer_error();
                        context.remember(e.to_string());
                        context.errors.warn(&format_args!("consumer: {e}"));
                    }
                }
            }
        }
    }

    fn acker(&self) -> KafkaAcker {
        if let Ok(mut p) = self.positions.lock() {
            *p = self.start.clone();
        }
        KafkaAcker {
            consumer: self.consumer.clone(),
            positions: self.positions.clone(),
            transactional: self.transactional,
        }
    }

    fn names(&self) -> (&str, &str) {
        (&self.names.0, &self.names.1)
    }
}
