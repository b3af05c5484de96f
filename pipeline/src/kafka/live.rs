//! The live pipeline: consume → micro-batch → decode → features → score → publish → ack → store
//! offsets.
//!
//! Four stages joined by bounded queues, so a slow broker slows consumption instead of growing
//! memory:
//! 1. the consumer task closes a micro-batch once librdkafka holds no further message ready, at
//!    `max_rows` messages, or at the latest `max_delay` after its first message, so batches are
//!    full under load and nothing waits when the topic is quiet (per-partition order is kept:
//!    messages stay in arrival order);
//! 2. a decode thread turns JSON into Arrow batches (rejects become dead letters), and a scoring
//!    thread runs the [`FeatureChain`] and the [`ScoringStage`] (CPU-heavy, off the async
//!    reactor, overlapping the decoding of the next batch);
//! 3. the producer task encodes scores and alerts and hands every record to librdkafka;
//! 4. the ack task awaits the broker's acknowledgement of every record of a batch, in batch
//!    order, and only then stores the batch's offsets; librdkafka commits stored offsets every
//!    `commit_interval` and riskpipe commits synchronously on shutdown. This is at-least-once:
//!    an offset is never committed before all outputs derived from it are acknowledged.
//!
//! A delivery that fails for good stops the pipeline (without storing that batch's offsets),
//! so a restart re-processes it instead of losing it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use futures::future::join_all;
use metrics::{counter, gauge, histogram};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};
use riskpipe_models::Scorer;
use riskpipe_operators::FeatureChain;
use riskpipe_schemas::{Fault, fraud_label_schema, transaction_schema};
use tokio::sync::mpsc;

use super::KafkaConfig;
use super::decode::decode;
use super::encode::{alert_rows, encode};
use crate::market::{MarketConfig, MarketOutput, MarketStage};
use crate::stages::ScoringStage;
use crate::{PipelineConfig, PipelineError, Result};

/// Liveness and readiness, shared with the health endpoint.
#[derive(Debug, Default)]
pub struct Health {
    /// The consumer holds a partition assignment.
    pub ready: AtomicBool,
    /// Set once the pipeline has stopped.
    pub stopped: AtomicBool,
}

/// Counts of a live run, updated as it goes (the demo shows them while it runs).
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// Transaction messages consumed.
    pub transactions: AtomicU64,
    /// Label messages consumed.
    pub labels: AtomicU64,
    /// Score records acknowledged by the broker.
    pub scores: AtomicU64,
    /// Alert records acknowledged by the broker.
    pub alerts: AtomicU64,
    /// Dead letters acknowledged by the broker.
    pub dead_letters: AtomicU64,
    /// Batches fully acknowledged (their offsets stored).
    pub batches: AtomicU64,
    /// Latency from a transaction's producer timestamp (Kafka CreateTime, ms) to the broker's
    /// acknowledgement of its score, µs (over-states by under 1 ms: CreateTime is truncated).
    pub end_to_end_us: std::sync::Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

impl LiveCounters {
    /// End-to-end latency quantile in ms (NaN before any score).
    pub fn end_to_end_ms(&self, q: f64) -> f64 {
        match self.end_to_end_us.lock() {
            Ok(h) => h
                .as_ref()
                .filter(|h| !h.is_empty())
                .map(|h| h.value_at_quantile(q) as f64 / 1e3)
                .unwrap_or(f64::NAN),
            Err(_) => f64::NAN,
        }
    }
}

/// What a live run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSummary {
    /// Transaction messages consumed.
    pub transactions: u64,
    /// Label messages consumed.
    pub labels: u64,
    /// Scores published.
    pub scores: u64,
    /// Alerts published.
    pub alerts: u64,
    /// Dead letters published.
    pub dead_letters: u64,
}

impl LiveCounters {
    /// A snapshot.
    pub fn summary(&self) -> LiveSummary {
        LiveSummary {
            transactions: self.transactions.load(Ordering::Relaxed),
            labels: self.labels.load(Ordering::Relaxed),
            scores: self.scores.load(Ordering::Relaxed),
            alerts: self.alerts.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
        }
    }
}

struct SourceContext {
    health: Arc<Health>,
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions {
                if partition >= 0 && p.consumer_lag >= 0 {
                    gauge!("riskpipe_consumer_lag", "topic" => topic.clone(), "partition" => partition.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned");
                self.health.ready.store(tpl.count() > 0, Ordering::Relaxed);
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions revoked");
                self.health.ready.store(false, Ordering::Relaxed);
            }
            Rebalance::Error(e) => tracing::warn!("rebalance error: {e}"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) => counter!("riskpipe_commits_total", "result" => "ok").increment(1),
            // Nothing stored since the last commit: not a failure.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                counter!("riskpipe_commits_total", "result" => "error").increment(1);
                tracing::warn!("offset commit failed (will be retried with the next): {e}");
            }
        }
    }
}

type Source = StreamConsumer<SourceContext>;

/// One consumed message, copied out of librdkafka's buffer.
#[derive(Clone)]
struct Raw {
    labels: bool,
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    /// Producer timestamp (CreateTime), ms since the epoch.
    created_ms: Option<i64>,
}

/// Outputs of one batch, and the input offsets they settle.
struct Processed {
    scored: Option<ScoredBatch>,
    /// Records already encoded by the job (the market pipeline's scores and breaches).
    records: Vec<Record>,
    dead: Vec<(Raw, String, &'static str)>,
    /// Highest offset per (topic, partition) in the batch.
    offsets: BTreeMap<(Arc<str>, i32), i64>,
    /// Producer timestamps of the scored transactions (for end-to-end latency).
    created_ms: Vec<i64>,
}

struct Pending {
    deliveries: Vec<(DeliveryFuture, Kind)>,
    offsets: BTreeMap<(Arc<str>, i32), i64>,
    created_ms: Vec<i64>,
    sent: Instant,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Score,
    Alert,
    Dead,
}

/// An encoded output record.
struct Record {
    kind: Kind,
    key: String,
    payload: Vec<u8>,
}

/// What the scoring thread runs after decoding: the fraud chain and model, or the market
/// stage. Everything else (consuming, batching, decoding, publishing, acknowledging, storing
/// offsets) is shared.
enum Job {
    Fraud(Box<(FeatureChain, ScoringStage)>),
    Market(Box<MarketStage>),
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Checks the config, loads the model and builds the stages, without connecting anywhere.
pub fn prepare(cfg: &PipelineConfig) -> Result<(FeatureChain, ScoringStage, &KafkaConfig)> {
    let kafka = cfg.kafka.as_ref().ok_or_else(|| {
        PipelineError::Config(vec![
            "no [kafka] section: the live pipeline needs one".into(),
        ])
    })?;
    cfg.validate()?;
    let chain = cfg.features.build_chain()?;
    let scorer = Scorer::load(&cfg.model)?;
    crate::check_model_inputs(cfg, &scorer, &transaction_schema())?;
    Ok((
        chain,
        ScoringStage::new(scorer, cfg.alerts.threshold),
        kafka,
    ))
}

/// Runs the live fraud pipeline until `shutdown` resolves (then drains, flushes, commits and
/// returns) or a stage fails for good.
pub async fn run(
    cfg: &PipelineConfig,
    health: Arc<Health>,
    counters: Arc<LiveCounters>,
    shutdown: impl Future<Output = ()>,
) -> Result<LiveSummary> {
    let (chain, scoring, kafka) = prepare(cfg)?;
    let encoding = Encoding {
        event_time: cfg.features.event_time.clone(),
        model: crate::model_name(cfg),
        threshold: cfg.alerts.threshold,
    };
    let job = Job::Fraud(Box::new((chain, scoring)));
    run_job(
        kafka.clone(),
        job,
        transaction_schema(),
        Some(encoding),
        health,
        counters,
        shutdown,
    )
    .await
}

/// Runs the live market pipeline: ticks in, instrument and portfolio VaR scores to
/// `topics.scores`, limit breaches to `topics.alerts`; same delivery guarantees as [`run`].
pub async fn run_market(
    cfg: &MarketConfig,
    health: Arc<Health>,
    counters: Arc<LiveCounters>,
    shutdown: impl Future<Output = ()>,
) -> Result<LiveSummary> {
    let kafka = cfg.kafka.clone().ok_or_else(|| {
        PipelineError::Config(vec![
            "no [kafka] section: the live pipeline needs one".into(),
        ])
    })?;
    let stage = MarketStage::new(cfg)?;
    // The market stage encodes its own records: no fraud score encoding.
    run_job(
        kafka,
        Job::Market(Box::new(stage)),
        riskpipe_schemas::market_tick_schema(),
        None,
        health,
        counters,
        shutdown,
    )
    .await
}

async fn run_job(
    kafka: KafkaConfig,
    job: Job,
    input_schema: arrow::datatypes::SchemaRef,
    encoding: Option<Encoding>,
    health: Arc<Health>,
    counters: Arc<LiveCounters>,
    shutdown: impl Future<Output = ()>,
) -> Result<LiveSummary> {
    let external = |what: &str, e: KafkaError| PipelineError::External(format!("{what}: {e}"));

    let mut consumer_cfg = kafka.client();
    consumer_cfg
        .set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "true")
        .set(
            "auto.commit.interval.ms",
            kafka.commit_interval.as_millis().max(1).to_string(),
        )
        .set("enable.auto.offset.store", "false")
        .set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    for (k, default) in [
        ("auto.offset.reset", "earliest"),
        ("statistics.interval.ms", "5000"),
        // A broker holds an empty fetch this long; librdkafka's 500 ms would dominate latency
        // whenever the topic goes quiet between micro-batches.
        ("fetch.wait.max.ms", "5"),
    ] {
        if consumer_cfg.get(k).is_none() {
            consumer_cfg.set(k, default);
        }
    }
    for (k, v) in &kafka.consumer_properties {
        consumer_cfg.set(k, v);
    }
    let consumer: Arc<Source> = Arc::new(
        consumer_cfg
            .create_with_context(SourceContext {
                health: health.clone(),
            })
            .map_err(|e| external("creating consumer", e))?,
    );
    consumer
        .subscribe(&kafka.inputs())
        .map_err(|e| external("subscribing", e))?;

    let mut producer_cfg = kafka.client();
    if producer_cfg.get("linger.ms").is_none() {
        // librdkafka's 5 ms default would spend half of a 10 ms latency budget waiting.
        producer_cfg.set("linger.ms", "1");
    }
    for (k, v) in &kafka.producer_properties {
        producer_cfg.set(k, v);
    }
    let producer: FutureProducer = producer_cfg
        .create()
        .map_err(|e| external("creating producer", e))?;

    let (batch_tx, batch_rx) = mpsc::channel::<Vec<Raw>>(kafka.in_flight_batches);
    let (processed_tx, processed_rx) = mpsc::channel::<Processed>(kafka.in_flight_batches);
    let (pending_tx, pending_rx) = mpsc::channel::<Pending>(kafka.in_flight_batches);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let (decoded_tx, decoded_rx) = mpsc::channel::<Decoded>(kafka.in_flight_batches);
    let decoder = {
        let kafka = kafka.clone();
        std::thread::Builder::new()
            .name("riskpipe-decode".into())
            .spawn(move || decode_loop(batch_rx, decoded_tx, &kafka, &input_schema))
            .map_err(|e| PipelineError::External(format!("starting decode thread: {e}")))?
    };
    let worker = {
        let kafka = kafka.clone();
        let stop_tx = stop_tx.clone();
        std::thread::Builder::new()
            .name("riskpipe-score".into())
            .spawn(move || {
                let r = score_loop(decoded_rx, processed_tx, job, &kafka);
                if r.is_err() {
                    let _ = stop_tx.send(true);
                }
                r
            })
            .map_err(|e| PipelineError::External(format!("starting scoring thread: {e}")))?
    };
    let produce = tokio::spawn(produce_loop(
        producer.clone(),
        kafka.clone(),
        encoding,
        processed_rx,
        pending_tx,
    ));
    let ack = {
        let consumer = consumer.clone();
        let counters = counters.clone();
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            let r = ack_loop(consumer, pending_rx, counters).await;
            if r.is_err() {
                let _ = stop_tx.send(true);
            }
            r
        })
    };

    let consumed = consume_loop(&consumer, &kafka, batch_tx, shutdown, stop_rx, &counters).await;

    // Drain: the batch queue is closed, so each stage ends after its last batch.
    let produced = produce
        .await
        .map_err(|e| PipelineError::Bug(format!("producer task: {e}")))?;
    let acked = ack
        .await
        .map_err(|e| PipelineError::Bug(format!("ack task: {e}")))?;
    tokio::task::spawn_blocking(move || decoder.join())
        .await
        .map_err(|e| PipelineError::Bug(format!("joining decode thread: {e}")))?
        .map_err(|_| PipelineError::Bug("decode thread panicked".into()))?;
    let processed = tokio::task::spawn_blocking(move || worker.join())
        .await
        .map_err(|e| PipelineError::Bug(format!("joining scoring thread: {e}")))?
        .map_err(|_| PipelineError::Bug("scoring thread panicked".into()))?;
    health.stopped.store(true, Ordering::Relaxed);
    health.ready.store(false, Ordering::Relaxed);
    processed?;
    produced?;
    acked?;
    consumed?;
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => counter!("riskpipe_commits_total", "result" => "ok").increment(1),
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => return Err(external("final offset commit", e)),
    }
    Ok(counters.summary())
}

fn push(
    batch: &mut Vec<Raw>,
    topics: &mut BTreeMap<String, Arc<str>>,
    m: &rdkafka::message::BorrowedMessage<'_>,
    labels_topic: &str,
    counters: &LiveCounters,
) {
    let topic = match topics.get(m.topic()) {
        Some(t) => t.clone(),
        None => {
            let t: Arc<str> = Arc::from(m.topic());
            topics.insert(m.topic().to_string(), t.clone());
            t
        }
    };
    let labels = &*topic == labels_topic;
    if labels {
        counters.labels.fetch_add(1, Ordering::Relaxed);
    } else {
        counters.transactions.fetch_add(1, Ordering::Relaxed);
    }
    batch.push(Raw {
        labels,
        topic,
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        created_ms: m.timestamp().to_millis(),
    });
}

async fn consume_loop(
    consumer: &Source,
    kafka: &KafkaConfig,
    batches: mpsc::Sender<Vec<Raw>>,
    shutdown: impl Future<Output = ()>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    counters: &LiveCounters,
) -> Result<()> {
    tokio::pin!(shutdown);
    let labels_topic = kafka.topics.labels.as_str();
    let mut topics: BTreeMap<String, Arc<str>> = BTreeMap::new();
    let mut batch: Vec<Raw> = Vec::with_capacity(kafka.batch.max_rows);
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let flush_at = deadline;
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            _ = stop.changed() => break,
            () = async { if let Some(d) = flush_at { tokio::time::sleep_until(d).await } }, if flush_at.is_some() => {
                deadline = None;
                if batches.send(std::mem::take(&mut batch)).await.is_err() { break; }
            }
            m = consumer.recv() => match m {
                Ok(m) => {
                    push(&mut batch, &mut topics, &m, labels_topic, counters);
                    if deadline.is_none() {
                        deadline = Some(tokio::time::Instant::now() + kafka.batch.max_delay);
                    }
                    // Take whatever librdkafka already holds, then close the batch at once:
                    // full batches under load, no waiting for max_delay when the topic is quiet.
                    while batch.len() < kafka.batch.max_rows {
                        match consumer.recv().now_or_never() {
                            Some(Ok(m)) => push(&mut batch, &mut topics, &m, labels_topic, counters),
                            Some(Err(e)) => {
                                counter!("riskpipe_consumer_errors_total").increment(1);
                                tracing::warn!("consumer: {e}");
                                break;
                            }
                            None => break,
                        }
                    }
                    if batch.len() < kafka.batch.max_rows && !kafka.batch.max_delay.is_zero() {
                        continue; // wait for more until the deadline (bigger batches, more latency)
                    }
                    deadline = None;
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(kafka.batch.max_rows));
                    if batches.send(full).await.is_err() { break; }
                }
                Err(e) => {
                    counter!("riskpipe_consumer_errors_total").increment(1);
                    tracing::warn!("consumer: {e}");
                }
            }
        }
    }
    if !batch.is_empty() {
        let _ = batches.send(batch).await;
    }
    Ok(())
}

/// A micro-batch decoded into Arrow, with the messages that could not be.
struct Decoded {
    labels: arrow::array::RecordBatch,
    transactions: arrow::array::RecordBatch,
    /// Index in `txs` of each row of `transactions`.
    accepted: Vec<usize>,
    txs: Vec<Raw>,
    dead: Vec<(Raw, String, &'static str)>,
    offsets: BTreeMap<(Arc<str>, i32), i64>,
    created_ms: Vec<i64>,
}

/// Stage 2a: JSON to Arrow (its own thread, so decoding overlaps scoring).
fn decode_loop(
    mut batches: mpsc::Receiver<Vec<Raw>>,
    out: mpsc::Sender<Decoded>,
    kafka: &KafkaConfig,
    tx_schema: &arrow::datatypes::SchemaRef,
) {
    let label_schema = fraud_label_schema();
    while let Some(batch) = batches.blocking_recv() {
        let started = Instant::now();
        histogram!("riskpipe_batch_rows").record(batch.len() as f64);
        let mut per_topic: BTreeMap<&str, u64> = BTreeMap::new();
        for m in &batch {
            *per_topic.entry(&*m.topic).or_default() += 1;
        }
        for (topic, n) in per_topic {
            counter!("riskpipe_events_in_total", "topic" => topic.to_string()).increment(n);
        }
        let mut offsets = BTreeMap::new();
        for m in &batch {
            let e = offsets
                .entry((m.topic.clone(), m.partition))
                .or_insert(m.offset);
            *e = (*e).max(m.offset);
        }
        let (labels, txs): (Vec<Raw>, Vec<Raw>) = batch.into_iter().partition(|m| m.labels);
        let mut dead = Vec::new();
        let payloads: Vec<&[u8]> = labels.iter().map(|m| m.payload.as_slice()).collect();
        let decoded_labels = decode(&label_schema, &payloads, kafka.max_message_bytes);
        drop(payloads);
        collect_dead(labels, decoded_labels.rejected, &mut dead);
        let payloads: Vec<&[u8]> = txs.iter().map(|m| m.payload.as_slice()).collect();
        let decoded = decode(tx_schema, &payloads, kafka.max_message_bytes);
        drop(payloads);
        let created_ms = decoded
            .accepted
            .iter()
            .map(|&i| txs[i].created_ms.unwrap_or_else(now_ms))
            .collect();
        for r in decoded.rejected {
            if let Some(m) = txs.get(r.index) {
                dead.push((m.clone(), r.reason, r.kind));
            }
        }
        histogram!("riskpipe_stage_seconds", "stage" => "decode")
            .record(started.elapsed().as_secs_f64());
        let d = Decoded {
            labels: decoded_labels.batch,
            transactions: decoded.batch,
            accepted: decoded.accepted,
            txs,
            dead,
            offsets,
            created_ms,
        };
        if out.blocking_send(d).is_err() {
            break;
        }
    }
}

/// Stage 2b: features and model (its own thread: CPU-heavy, off the async reactor).
fn score_loop(
    mut batches: mpsc::Receiver<Decoded>,
    out: mpsc::Sender<Processed>,
    mut job: Job,
    kafka: &KafkaConfig,
) -> Result<()> {
    while let Some(mut d) = batches.blocking_recv() {
        let started = Instant::now();
        let mut scored = None;
        let mut records = Vec::new();
        match &mut job {
            Job::Fraud(fraud) => {
                let (chain, scoring) = &mut **fraud;
                // Labels first: operators use a label only from its label time on.
                if d.labels.num_rows() > 0 {
                    chain.observe_labels(&d.labels)?;
                }
                if d.transactions.num_rows() > 0 {
                    match score_batch(chain, scoring, d.transactions, kafka) {
                        Ok(s) => scored = Some(s),
                        Err(e) if e.fault() == Fault::BadInput => {
                            // The whole batch failed a check: dead-letter every transaction.
                            let reason = e.to_string();
                            for &i in &d.accepted {
                                if let Some(m) = d.txs.get(i) {
                                    d.dead.push((m.clone(), reason.clone(), "schema"));
                                }
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Job::Market(stage) => {
                if d.transactions.num_rows() > 0 {
                    // Ticks a series cannot take (non-positive price, older than the
                    // instrument's last tick) are dead letters; they never touch the state.
                    let (ticks, rejected) = stage.split_invalid(&d.transactions)?;
                    for (row, reason) in rejected {
                        if let Some(m) = d.accepted.get(row).and_then(|&i| d.txs.get(i)) {
                            d.dead.push((m.clone(), reason, "invalid"));
                        }
                    }
                    let output = stage.process(ticks)?;
                    records = encode_market(&output)?;
                }
            }
        }
        histogram!("riskpipe_stage_seconds", "stage" => "process")
            .record(started.elapsed().as_secs_f64());
        let processed = Processed {
            scored,
            records,
            dead: d.dead,
            offsets: d.offsets,
            created_ms: d.created_ms,
        };
        if out.blocking_send(processed).is_err() {
            break; // the producer stopped; it reports why
        }
    }
    Ok(())
}

/// Instrument scores (ticks with a VaR), portfolio scores and limit breaches as JSON records.
fn encode_market(output: &MarketOutput) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    for s in output.instrument_scores()? {
        records.push(Record {
            kind: Kind::Score,
            key: s.instrument.clone().unwrap_or_default(),
            payload: to_json(&s)?,
        });
    }
    for s in &output.portfolio_scores {
        records.push(Record {
            kind: Kind::Score,
            key: s.portfolio.clone().unwrap_or_default(),
            payload: to_json(s)?,
        });
    }
    for b in &output.breaches {
        records.push(Record {
            kind: Kind::Alert,
            key: b.portfolio.clone(),
            payload: to_json(b)?,
        });
    }
    Ok(records)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| PipelineError::Bug(e.to_string()))
}

/// A scored batch, its alerted rows and their reasons.
struct ScoredBatch {
    batch: arrow::array::RecordBatch,
    alerted: Vec<usize>,
    reasons: Vec<Vec<riskpipe_schemas::Reason>>,
}

fn score_batch(
    chain: &mut FeatureChain,
    scoring: &mut ScoringStage,
    transactions: arrow::array::RecordBatch,
    kafka: &KafkaConfig,
) -> Result<ScoredBatch> {
    let t0 = Instant::now();
    let features = chain.process(transactions)?;
    let t1 = Instant::now();
    histogram!("riskpipe_stage_seconds", "stage" => "features").record((t1 - t0).as_secs_f64());
    let batch = scoring.process(features)?;
    let alerted = alert_rows(&batch)?;
    let reasons = scoring.explain(&alerted, kafka.alert_reasons)?;
    histogram!("riskpipe_stage_seconds", "stage" => "score").record(t1.elapsed().as_secs_f64());
    Ok(ScoredBatch {
        batch,
        alerted,
        reasons,
    })
}

fn collect_dead(
    messages: Vec<Raw>,
    rejected: Vec<super::decode::Rejection>,
    dead: &mut Vec<(Raw, String, &'static str)>,
) {
    if rejected.is_empty() {
        return;
    }
    let mut slots: Vec<Option<Raw>> = messages.into_iter().map(Some).collect();
    for r in rejected {
        if let Some(m) = slots.get_mut(r.index).and_then(Option::take) {
            dead.push((m, r.reason, r.kind));
        }
    }
}

/// Hands a record to librdkafka, waiting while its queue is full (backpressure).
async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: Option<OwnedHeaders>,
) -> Result<DeliveryFuture> {
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).payload(payload);
    record.key = key;
    record.headers = headers;
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => {
                return Err(PipelineError::External(format!(
                    "producing to {topic}: {e}"
                )));
            }
        }
    }
}

/// What the producer needs to encode score and alert records.
struct Encoding {
    event_time: String,
    model: String,
    threshold: f64,
}

/// Stage 3: encode (JSON) and hand every record to librdkafka.
async fn produce_loop(
    producer: FutureProducer,
    kafka: KafkaConfig,
    encoding: Option<Encoding>,
    mut processed: mpsc::Receiver<Processed>,
    pending: mpsc::Sender<Pending>,
) -> Result<()> {
    let topics = &kafka.topics;
    while let Some(p) = processed.recv().await {
        let (scores, alerts) = match p.scored {
            Some(s) => {
                let t = Instant::now();
                let encoding = encoding.as_ref().ok_or_else(|| {
                    PipelineError::Bug("fraud scores in a job without their encoding".into())
                })?;
                let out = encode(
                    &s.batch,
                    &encoding.event_time,
                    &encoding.model,
                    encoding.threshold,
                    &s.alerted,
                    s.reasons,
                )?;
                histogram!("riskpipe_stage_seconds", "stage" => "encode")
                    .record(t.elapsed().as_secs_f64());
                out
            }
            None => (Vec::new(), Vec::new()),
        };
        let mut deliveries =
            Vec::with_capacity(scores.len() + alerts.len() + p.records.len() + p.dead.len());
        for r in &p.records {
            let topic = match r.kind {
                Kind::Alert => &topics.alerts,
                _ => &topics.scores,
            };
            let d = send(&producer, topic, Some(r.key.as_bytes()), &r.payload, None).await?;
            deliveries.push((d, r.kind));
        }
        for (records, topic, kind) in [
            (&scores, &topics.scores, Kind::Score),
            (&alerts, &topics.alerts, Kind::Alert),
        ] {
            for r in records {
                let d = send(&producer, topic, Some(r.key.as_bytes()), &r.payload, None).await?;
                deliveries.push((d, kind));
            }
        }
        for (m, reason, kind) in &p.dead {
            counter!("riskpipe_dead_letters_total", "kind" => *kind).increment(1);
            tracing::warn!(
                topic = &*m.topic,
                partition = m.partition,
                offset = m.offset,
                kind = *kind,
                "dead letter: {reason}"
            );
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "riskpipe.source.topic",
                    value: Some(m.topic.as_bytes()),
                })
                .insert(Header {
                    key: "riskpipe.source.partition",
                    value: Some(m.partition.to_string().as_bytes()),
                })
                .insert(Header {
                    key: "riskpipe.source.offset",
                    value: Some(m.offset.to_string().as_bytes()),
                })
                .insert(Header {
                    key: "riskpipe.error.kind",
                    value: Some(kind.as_bytes()),
                })
                .insert(Header {
                    key: "riskpipe.error",
                    value: Some(reason.as_bytes()),
                });
            let d = send(
                &producer,
                &topics.dead_letter,
                m.key.as_deref(),
                &m.payload,
                Some(headers),
            )
            .await?;
            deliveries.push((d, Kind::Dead));
        }
        let batch = Pending {
            deliveries,
            offsets: p.offsets,
            created_ms: p.created_ms,
            sent: Instant::now(),
        };
        if pending.send(batch).await.is_err() {
            break;
        }
    }
    Ok(())
}

async fn ack_loop(
    consumer: Arc<Source>,
    mut pending: mpsc::Receiver<Pending>,
    counters: Arc<LiveCounters>,
) -> Result<()> {
    while let Some(p) = pending.recv().await {
        let kinds: Vec<Kind> = p.deliveries.iter().map(|(_, k)| *k).collect();
        let results = join_all(p.deliveries.into_iter().map(|(d, _)| d)).await;
        let mut acked = [0u64; 3];
        for (result, kind) in results.into_iter().zip(kinds) {
            match result {
                Ok(Ok(_)) => acked[kind as usize] += 1,
                Ok(Err((e, m))) => {
                    return Err(PipelineError::External(format!(
                        "broker did not acknowledge a record for {}: {e}; offsets of this batch stay uncommitted",
                        m.topic()
                    )));
                }
                Err(_) => {
                    return Err(PipelineError::External(
                        "producer dropped a delivery report; offsets of this batch stay uncommitted"
                            .into(),
                    ));
                }
            }
        }
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        histogram!("riskpipe_stage_seconds", "stage" => "publish")
            .record(p.sent.elapsed().as_secs_f64());
        if let Ok(mut h) = counters.end_to_end_us.lock() {
            let h = h.get_or_insert_with(|| {
                hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
                    .expect("constant, valid bounds")
            });
            let exported = histogram!("riskpipe_end_to_end_seconds");
            for created in &p.created_ms {
                let us = (now_us - created * 1000).max(1);
                exported.record(us as f64 / 1e6);
                let _ = h.record(us as u64);
            }
        }
        counters.scores.fetch_add(acked[0], Ordering::Relaxed);
        counters.alerts.fetch_add(acked[1], Ordering::Relaxed);
        counters.dead_letters.fetch_add(acked[2], Ordering::Relaxed);
        for (kind, n) in [
            ("scores", acked[0]),
            ("alerts", acked[1]),
            ("dead_letter", acked[2]),
        ] {
            counter!("riskpipe_events_out_total", "topic" => kind).increment(n);
        }
        for ((topic, partition), offset) in &p.offsets {
            match consumer.store_offset(topic, *partition, *offset) {
                Ok(()) => {}
                // The partition moved to another member in a rebalance: it re-processes from
                // the last commit, which is still at-least-once.
                Err(e) => tracing::warn!(%topic, partition, offset, "offset not stored: {e}"),
            }
        }
        counters.batches.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
