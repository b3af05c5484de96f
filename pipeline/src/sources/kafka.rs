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

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
    StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};

use super::{Acker, Message, Payload, Source, SourceBatch, Stop};
use crate::config::Streams;
use crate::events;
use crate::kafka::{KafkaConfig, Throttle};
use crate::observe::Health;
use crate::state::Positions;
use crate::{PipelineError, Result};

/// Highest offset read per (topic, partition) of a batch: what acknowledging it stores.
pub type Offsets = BTreeMap<(Arc<str>, i32), i64>;

/// The consumer's view of its own health: readiness is holding partitions while a broker is up.
struct Context {
    health: Arc<Health>,
    assigned: AtomicBool,
    ever_assigned: AtomicBool,
    brokers_up: AtomicBool,
    last_error: Mutex<Option<String>>,
    errors: Throttle,
    /// The events topic, and its partitions this consumer holds.
    events_topic: String,
    held: Mutex<Arc<[i32]>>,
}

impl Context {
    fn hold(&self, partitions: Arc<[i32]>) {
        if let Ok(mut held) = self.held.lock() {
            *held = partitions;
        }
    }

    fn held(&self) -> Arc<[i32]> {
        self.held
            .lock()
            .map_or_else(|_| Arc::from([]), |h| h.clone())
    }

    fn update_ready(&self) {
        self.health.set_ready(
            self.assigned.load(Ordering::Relaxed) && self.brokers_up.load(Ordering::Relaxed),
        );
    }

    fn remember(&self, error: String) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error);
        }
    }
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions {
                if partition >= 0 && p.consumer_lag >= 0 {
                    events::consumer_lag(&topic, partition, p.consumer_lag);
                }
            }
        }
        let up = statistics.brokers.values().any(|b| b.state == "UP");
        self.brokers_up.store(up, Ordering::Relaxed);
        self.update_ready();
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.brokers_up.store(false, Ordering::Relaxed);
            self.update_ready();
        }
        self.remember(format!("{error}: {reason}"));
        self.errors
            .warn(&format_args!("kafka client: {error}: {reason}"));
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.errors.librdkafka(level, facility, message);
    }
}

impl ConsumerContext for Context {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned");
                let mut events: Vec<i32> = tpl
                    .elements_for_topic(&self.events_topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                events.sort_unstable();
                self.hold(Arc::from(events));
                self.assigned.store(tpl.count() > 0, Ordering::Relaxed);
                self.ever_assigned.store(true, Ordering::Relaxed);
                // An assignment comes through a live coordinator.
                self.brokers_up.store(true, Ordering::Relaxed);
                self.update_ready();
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions revoked");
                self.hold(Arc::from([]));
                self.assigned.store(false, Ordering::Relaxed);
                self.update_ready();
            }
            Rebalance::Error(e) => tracing::warn!("rebalance error: {e}"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) => events::commit(true),
            // Nothing stored since the last commit: not a failure.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                events::commit(false);
                tracing::warn!("offset commit failed (will be retried with the next): {e}");
            }
        }
    }
}

type Consumer_ = StreamConsumer<Context>;

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
        ] {
            if cfg.get(k).is_none() {
                cfg.set(k, default);
            }
        }
        for (k, v) in &kafka.consumer_properties {
            cfg.set(k, v);
        }
        let context = Context {
            health,
            assigned: AtomicBool::new(false),
            ever_assigned: AtomicBool::new(false),
            brokers_up: AtomicBool::new(true),
            last_error: Mutex::new(None),
            errors: Throttle::new(Duration::from_secs(10)),
            events_topic: kafka.events_topic(streams).to_string(),
            held: Mutex::new(Arc::from([])),
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
        })
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

    fn batch(&self, messages: Vec<Message>) -> SourceBatch<Offsets> {
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
            if *stop.borrow() {
                return Ok((!batch.is_empty()).then(|| self.batch(batch)));
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
        KafkaAcker {
            consumer: self.consumer.clone(),
            positions: self.start.clone(),
            transactional: self.transactional,
        }
    }

    fn names(&self) -> (&str, &str) {
        (&self.names.0, &self.names.1)
    }
}

/// Stores acknowledged offsets; commits on the way out. In exactly-once mode it only keeps the
/// positions: the sink's transactions commit them.
pub struct KafkaAcker {
    consumer: Arc<Consumer_>,
    positions: Positions,
    transactional: bool,
}

impl std::fmt::Debug for KafkaAcker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaAcker").finish_non_exhaustive()
    }
}

impl Acker for KafkaAcker {
    type Ack = Offsets;

    fn ack(&mut self, offsets: Offsets) {
        for ((topic, partition), offset) in &offsets {
            if !self.positions.contains_key(&**topic) {
                self.positions.insert(topic.to_string(), Default::default());
            }
            if let Some(partitions) = self.positions.get_mut(&**topic) {
                let next = partitions.entry(*partition).or_insert(0);
                *next = (*next).max(offset + 1);
            }
            if self.transactional {
                continue;
            }
            if let Err(e) = self.consumer.store_offset(topic, *partition, *offset) {
                // The partition moved to another member in a rebalance: it re-processes from
                // the last commit, which is still at-least-once.
                tracing::warn!(%topic, partition, offset, "offset not stored: {e}");
            }
        }
    }

    fn finish(&mut self) -> Result<()> {
        if self.transactional {
            return Ok(());
        }
        commit_stored(&self.consumer, "final offset commit")
    }

    fn positions(&self) -> Positions {
        self.positions.clone()
    }

    fn commit(&self) -> Option<super::Commit> {
        if self.transactional {
            return None;
        }
        let consumer = self.consumer.clone();
        Some(Box::new(move || {
            commit_stored(&consumer, "offset commit before a checkpoint")
        }))
    }
}

/// Commits the stored offsets synchronously.
fn commit_stored(consumer: &Consumer_, op: &'static str) -> Result<()> {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => events::commit(true),
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => return Err(PipelineError::kafka(op)(e)),
    }
    Ok(())
}
