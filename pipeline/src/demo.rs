//! `riskpipe demo`: the live pipeline end to end with no outside service, and the pieces the
//! end-to-end benchmark reuses against a broker process.
//!
//! A [`Feeder`] publishes handbook transactions in event-time order, each fraud's label at its
//! label time (before the transactions of that instant), at a chosen rate, recording when each
//! transaction was sent. A [`Watcher`] reads the scores and alerts topics and measures the
//! latency from a transaction's send to its score's arrival. [`run_demo`] starts librdkafka's
//! in-process mock cluster, wires the three together around [`crate::live::run`] and prints a
//! summary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::datatypes::{Float64Type, Int64Type, TimestampNanosecondType};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use riskpipe_operators::columns;
use riskpipe_schemas::{FraudLabel, Transaction, label, tx};

use crate::driver::{Counters, Summary};
use crate::encoders::rfc3339;
use crate::kafka::KafkaConfig;
use crate::observe::Health;
use crate::sources::history::History;
use crate::{PipelineConfig, PipelineError, Result};

/// The transactions and label events to publish, as JSON payloads in publishing order.
#[derive(Debug, Default)]
pub struct Feed {
    /// `(is_label, key, payload, transaction index)` in publishing order: transactions are
    /// keyed by customer, labels by terminal.
    pub messages: Vec<(bool, String, Vec<u8>, usize)>,
    /// Transactions in the feed.
    pub transactions: usize,
    /// Transaction ids in feed order (index = the `transaction index` above).
    pub ids: Vec<i64>,
    /// Which transactions are frauds (from the history's label column).
    pub frauds: Vec<bool>,
}

impl Feed {
    /// The same feed with every payload in Avro (schema-registry wire format, the published
    /// schemas), each schema registered through `kafka.schema_registry`: the JSON payloads go
    /// through riskpipe's JSON decoder and Avro encoder.
    pub fn into_avro(mut self, kafka: &KafkaConfig) -> Result<Feed> {
        let streams = crate::jobs::fraud::STREAMS;
        let json = crate::decoders::json(usize::MAX);
        let strategy = kafka
            .schema_registry
            .as_ref()
            .map(|r| r.subject_strategy)
            .unwrap_or_default();
        let mut encoder = crate::encoders::AvroEncoder::new(kafka.registry()?, strategy);
        for (labels, schema, topic) in [
            (
                false,
                riskpipe_schemas::transaction_schema(),
                kafka.events_topic(streams),
            ),
            (
                true,
                riskpipe_schemas::fraud_label_schema(),
                kafka.side_topic(streams).unwrap_or_default(),
            ),
        ] {
            let at: Vec<usize> = (0..self.messages.len())
                .filter(|&i| self.messages[i].0 == labels)
                .collect();
            if at.is_empty() {
                continue;
            }
            let payloads: Vec<&[u8]> = at.iter().map(|&i| self.messages[i].2.as_slice()).collect();
            let decoded =
                crate::decoders::Decoder::decode(json.as_ref(), topic, &schema, &payloads)?;
            if let Some(r) = decoded.rejected.first() {
                return Err(PipelineError::Bug(format!(
                    "a feed payload riskpipe wrote does not decode: {}",
                    r.reason
                )));
            }
            let mut out = crate::encoders::Payloads::default();
            crate::encoders::Encoder::encode(&mut encoder, topic, &decoded.batch, &mut out)?;
            for (&i, p) in at.iter().zip(out.iter()) {
                self.messages[i].2 = p.to_vec();
            }
        }
        Ok(self)
    }

    /// The same feed with only its label messages (`labels`) or only its transactions.
    pub fn only(&self, labels: bool) -> Feed {
        Feed {
            messages: self
                .messages
                .iter()
                .filter(|m| m.0 == labels)
                .cloned()
                .collect(),
            transactions: self.transactions,
            ids: self.ids.clone(),
            frauds: self.frauds.clone(),
        }
    }
}

/// The first `count` transactions after skipping `skip`, interleaved with the label events
/// whose label time is reached (labels first at equal times, as in replay).
pub fn feed(history: &History, cfg: &PipelineConfig, skip: usize, count: usize) -> Result<Feed> {
    feed_after(history, cfg, skip, skip, count)
}

/// [`feed`] for a pipeline whose state was warmed with the transactions from `warmed_from` up
/// to `skip` and the labels known by then ([`WarmUp::labels`]): the labels of those
/// transactions that come later are in the feed.
pub fn feed_after(
    history: &History,
    cfg: &PipelineConfig,
    warmed_from: usize,
    skip: usize,
    count: usize,
) -> Result<Feed> {
    let fraud = cfg.fraud()?;
    let t = &history.events;
    let end = (skip + count).min(t.num_rows());
    let start = skip.min(end);
    let id = columns::primitive::<Int64Type>(t, tx::TRANSACTION_ID)?;
    let customer = columns::primitive::<Int64Type>(t, tx::CUSTOMER_ID)?;
    let terminal = columns::primitive::<Int64Type>(t, tx::TERMINAL_ID)?;
    let amount = columns::primitive::<Float64Type>(t, tx::TX_AMOUNT)?;
    let time = columns::primitive::<TimestampNanosecondType>(t, &history.event_time)?;
    let truth = columns::i64_values(t, &fraud.replay.label)?;
    let empty = arrow::array::RecordBatch::new_empty(riskpipe_schemas::fraud_label_schema());
    let l = history.side.as_ref().unwrap_or(&empty);
    let l_id = columns::primitive::<Int64Type>(l, tx::TRANSACTION_ID)?;
    let l_customer = columns::primitive::<Int64Type>(l, tx::CUSTOMER_ID)?;
    let l_terminal = columns::primitive::<Int64Type>(l, tx::TERMINAL_ID)?;
    let l_time = columns::primitive::<TimestampNanosecondType>(l, &history.event_time)?;
    let l_label_time = columns::primitive::<TimestampNanosecondType>(l, label::LABEL_TIME)?;
    let l_flag = columns::i64_values(l, label::TX_FRAUD)?;
    let warmed = warmed_from < start;
    let first_time = if start < end {
        time.value(warmed_from.min(start))
    } else {
        0
    };
    let json = |e: serde_json::Error| PipelineError::Bug(format!("encoding JSON: {e}"));
    let mut out = Feed::default();
    // Labels of transactions before the slice would count frauds the windows never saw.
    let mut next_label = 0;
    #[allow(clippy::needless_range_loop)] // i indexes several Arrow columns at once
    for i in start..end {
        let t_i = time.value(i);
        while next_label < l.num_rows() && l_label_time.value(next_label) <= t_i {
            let j = next_label;
            next_label += 1;
            // Labels known by the first transaction went into the warm-up.
            if l_time.value(j) < first_time || (warmed && i == start) {
                continue;
            }
            let payload = serde_json::to_vec(&FraudLabel {
                transaction_id: l_id.value(j),
                customer_id: l_customer.value(j),
                terminal_id: l_terminal.value(j),
                tx_datetime: rfc3339(l_time.value(j)),
                label_time: rfc3339(l_label_time.value(j)),
                tx_fraud: l_flag.value(j),
            })
            .map_err(json)?;
            // Keyed by terminal: the label features' key, so a repartitioned topology finds a
            // terminal's labels in the partition its forwarded transactions go to.
            out.messages
                .push((true, l_terminal.value(j).to_string(), payload, usize::MAX));
        }
        let payload = serde_json::to_vec(&Transaction {
            transaction_id: id.value(i),
            tx_datetime: rfc3339(t_i),
            customer_id: customer.value(i),
            terminal_id: terminal.value(i),
            tx_amount: amount.value(i),
        })
        .map_err(json)?;
        out.messages.push((
            false,
            customer.value(i).to_string(),
            payload,
            out.transactions,
        ));
        out.ids.push(id.value(i));
        out.frauds.push(truth.value(i) != 0);
        out.transactions += 1;
    }
    Ok(out)
}

/// The history the demo's state is warmed with before its first scored transaction, as a
/// pipeline that had been running would hold it: the transactions within the job's horizon
/// (the features' reach, the drift window and the lateness) before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmUp {
    /// The first transaction of the warm-up.
    pub from: usize,
    /// The first scored transaction (the warm-up ends before it).
    pub scored_from: usize,
}

impl WarmUp {
    /// The warm-up before transaction `skip`; `None`: the first transaction that has the
    /// whole horizon before it in the history, so the state is complete from the first score.
    pub fn of(history: &History, cfg: &PipelineConfig, skip: Option<usize>) -> Result<WarmUp> {
        let times =
            columns::primitive::<TimestampNanosecondType>(&history.events, &history.event_time)?
                .values();
        let reach = cfg
            .job
            .kind()
            .rebuild_horizon(cfg)
            .map_or(0, |h| i64::try_from(h.reach.as_nanos()).unwrap_or(i64::MAX));
        let scored_from = match skip {
            Some(s) => s.min(times.len()),
            None => {
                let first = times.first().copied().unwrap_or_default();
                let s = times.partition_point(|&t| t < first.saturating_add(reach));
                if s >= times.len() {
                    return Err(PipelineError::BadInput(format!(
                        "the history ({} transactions) ends within the job's horizon of {} days: nothing is left to score after the warm-up (give --skip)",
                        times.len(),
                        reach / 86_400_000_000_000
                    )));
                }
                s
            }
        };
        let from = match times.get(scored_from) {
            Some(&t) => times.partition_point(|&x| x < t.saturating_sub(reach)),
            None => scored_from,
        };
        Ok(WarmUp { from, scored_from })
    }

    /// Transactions in the warm-up.
    pub fn transactions(&self) -> usize {
        self.scored_from - self.from
    }

    /// The labels the warm-up applies: of its transactions, known by the first scored one.
    pub fn labels(&self, history: &History) -> Result<Option<arrow::array::RecordBatch>> {
        let (Some(side), Some(times)) = (
            &history.side,
            columns::primitive::<TimestampNanosecondType>(&history.events, &history.event_time)?
                .values()
                .get(
                    self.from
                        ..=self
                            .scored_from
                            .min(history.events.num_rows().saturating_sub(1)),
                ),
        ) else {
            return Ok(None);
        };
        let (Some(&first), Some(&cut)) = (times.first(), times.last()) else {
            return Ok(None);
        };
        let of_tx = columns::primitive::<TimestampNanosecondType>(side, &history.event_time)?;
        let known = columns::primitive::<TimestampNanosecondType>(side, &history.side_time)?;
        let keep = arrow::array::BooleanArray::from_iter(
            of_tx
                .values()
                .iter()
                .zip(known.values())
                .map(|(&t, &k)| Some(t >= first && k <= cut)),
        );
        Ok(Some(arrow::compute::filter_record_batch(side, &keep)?))
    }

    /// Runs the warm-up through a new job's stages (the code a restarted pipeline brings its
    /// restored state up to its committed offsets with) and writes their state as checkpoint 1
    /// of `cfg.state`, at offset 0 of every partition of the job's input topics, whose
    /// offsets it commits for the group: the live pipeline then restores it as any restarted
    /// pipeline restores its newest checkpoint. Returns the warm-up's refused transactions.
    pub fn seed(
        &self,
        rt: &tokio::runtime::Runtime,
        cfg: &PipelineConfig,
        history: &History,
        partitions: i32,
    ) -> Result<usize> {
        let state = cfg.state.as_ref().ok_or_else(|| {
            PipelineError::Bug("the demo's warm-up needs a state directory".into())
        })?;
        let kafka = cfg
            .kafka
            .as_ref()
            .ok_or_else(|| PipelineError::Bug("the demo's warm-up needs [kafka]".into()))?;
        let mut job = crate::jobs::build(cfg)?;
        let input = crate::jobs::JobInput {
            side: self.labels(history)?,
            events: history.events.slice(self.from, self.transactions()),
            partitions: None,
        };
        let scoring: Option<&mut dyn crate::jobs::ScoreStage> = if job.scoring.has_state() {
            Some(job.scoring.as_mut())
        } else {
            None
        };
        let kind = cfg.job.kind();
        let refused =
            crate::jobs::warm_up(job.features.as_mut(), scoring, input, kind.batch_rows())?;
        let snapshot = crate::jobs::StateSnapshot::join(
            job.features.snapshot()?,
            match job.scoring.has_state() {
                true => Some(job.scoring.snapshot()?),
                false => None,
            },
        );
        let streams = cfg.streams();
        let mut topics: Vec<(&str, i32)> = vec![(kafka.events_topic(streams), partitions.max(1))];
        if let Some(side) = kafka.side_topic(streams) {
            topics.push((side, 1));
        }
        let mut positions = crate::state::Positions::new();
        let mut offsets = TopicPartitionList::new();
        for &(topic, n) in &topics {
            for p in 0..n {
                positions.entry(topic.to_string()).or_default().insert(p, 0);
                offsets
                    .add_partition_offset(topic, p, Offset::Offset(0))
                    .map_err(PipelineError::kafka("listing the offsets to commit"))?;
            }
        }
        let store = crate::state::CheckpointStore::open(state)?;
        rt.block_on(store.write(1, kind.name(), positions, snapshot))?;
        let mut client = kafka.client();
        client.set("group.id", &kafka.group_id);
        let group: BaseConsumer = client
            .create()
            .map_err(PipelineError::kafka("creating the offsets consumer"))?;
        group
            .commit(&offsets, rdkafka::consumer::CommitMode::Sync)
            .map_err(PipelineError::kafka("committing the warm-up's offsets"))?;
        Ok(refused)
    }
}

/// Publishes a [`Feed`] and records when each transaction was handed to the producer.
#[derive(Debug)]
pub struct Feeder {
    /// Send time of each transaction, µs since `epoch` (0 = not sent yet).
    pub sent_us: Arc<Vec<AtomicU64>>,
    /// The clock origin shared with the [`Watcher`].
    pub epoch: Instant,
}

/// Producer settings for feeding: zstd-compressed (the mock broker keeps ~5 MiB per partition).
pub fn feed_producer(kafka: &KafkaConfig) -> Result<ThreadedProducer<DefaultProducerContext>> {
    let mut c = kafka.client();
    c.set("compression.type", "zstd")
        .set("linger.ms", "1")
        .set("partitioner", "murmur2_random")
        // A retry during a broker outage would otherwise publish a transaction twice.
        .set("enable.idempotence", "true");
    c.create()
        .map_err(PipelineError::kafka("creating the feed producer"))
}

impl Feeder {
    /// A feeder for `feed`.
    pub fn new(feed: &Feed, epoch: Instant) -> Self {
        Self {
            sent_us: Arc::new((0..feed.transactions).map(|_| AtomicU64::new(0)).collect()),
            epoch,
        }
    }

    /// Publishes everything at `rate` transactions/s (0 = as fast as possible), then flushes.
    pub fn publish(
        &self,
        producer: &ThreadedProducer<DefaultProducerContext>,
        kafka: &KafkaConfig,
        feed: &Feed,
        rate: f64,
        stop: &AtomicBool,
    ) -> Result<()> {
        let streams = crate::jobs::fraud::STREAMS;
        let started = Instant::now();
        for (is_label, key, payload, index) in &feed.messages {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if !is_label && rate > 0.0 {
                let due = started + Duration::from_secs_f64(*index as f64 / rate);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            let topic = if *is_label {
                kafka.side_topic(streams).unwrap_or_default()
            } else {
                kafka.events_topic(streams)
            };
            if !is_label && let Some(slot) = self.sent_us.get(*index) {
                slot.store(
                    self.epoch.elapsed().as_micros().max(1) as u64,
                    Ordering::Relaxed,
                );
            }
            let mut record = BaseRecord::to(topic)
                .key(key.as_str())
                .payload(payload.as_slice());
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Err((e, _)) => return Err(PipelineError::kafka("publishing the feed")(e)),
                }
            }
        }
        producer
            .flush(Duration::from_secs(60))
            .map_err(PipelineError::kafka("flushing the feed"))
    }
}

/// Reads the scores and alerts topics from their start and measures latency.
#[derive(Debug)]
pub struct Watcher {
    /// Scores seen (duplicates included).
    pub scores: AtomicU64,
    /// Distinct transactions scored.
    pub distinct: AtomicU64,
    /// Alerts seen.
    pub alerts: AtomicU64,
    /// Alerts on fraudulent transactions.
    pub true_alerts: AtomicU64,
    /// Send-to-score latency, µs.
    pub latency: std::sync::Mutex<Histogram<u64>>,
}

impl Default for Watcher {
    fn default() -> Self {
        Self {
            scores: AtomicU64::new(0),
            distinct: AtomicU64::new(0),
            alerts: AtomicU64::new(0),
            true_alerts: AtomicU64::new(0),
            latency: std::sync::Mutex::new(
                Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant, valid bounds"),
            ),
        }
    }
}

/// An assigned consumer of every partition of `topics` from the start (no group join).
pub fn reader(kafka: &KafkaConfig, topics: &[&str]) -> Result<BaseConsumer> {
    let mut c = kafka.client();
    c.set("group.id", format!("{}-watch", kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "1");
    let consumer: BaseConsumer = c
        .create()
        .map_err(PipelineError::kafka("creating a reader"))?;
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        let md = consumer
            .fetch_metadata(Some(t), Duration::from_secs(10))
            .map_err(PipelineError::kafka("fetching metadata"))?;
        for topic in md.topics() {
            for p in topic.partitions() {
                tpl.add_partition_offset(t, p.id(), Offset::Beginning)
                    .map_err(PipelineError::kafka("assigning"))?;
            }
        }
    }
    consumer
        .assign(&tpl)
        .map_err(PipelineError::kafka("assigning"))?;
    Ok(consumer)
}

impl Watcher {
    /// Consumes until `done` is set; `feed` maps ids to send times and truth. The ids of a
    /// feed slice are contiguous, so a transaction's slot is its id minus the first id.
    pub fn watch(
        &self,
        consumer: &BaseConsumer,
        kafka: &KafkaConfig,
        feed: &Feed,
        feeder: &Feeder,
        done: &AtomicBool,
    ) -> Result<()> {
        let base = feed.ids.first().copied().unwrap_or(0);
        let mut seen = vec![false; feed.transactions];
        let [(_, scores_format), (_, alerts_format), _] = kafka.output_formats();
        while !done.load(Ordering::Relaxed) {
            let Some(m) = consumer.poll(Duration::from_millis(50)) else {
                continue;
            };
            let m = m.map_err(PipelineError::kafka("reading scores"))?;
            let now = feeder.epoch.elapsed().as_micros() as u64;
            let payload = m.payload().unwrap_or_default();
            if m.topic() == kafka.topics.alerts {
                self.alerts.fetch_add(1, Ordering::Relaxed);
                if let Some(id) = transaction_id(payload, alerts_format) {
                    let slot = usize::try_from(id - base).ok();
                    if slot
                        .and_then(|s| feed.frauds.get(s))
                        .copied()
                        .unwrap_or(false)
                    {
                        self.true_alerts.fetch_add(1, Ordering::Relaxed);
                    }
                }
                continue;
            }
            let Some(id) = transaction_id(payload, scores_format) else {
                continue;
            };
            self.scores.fetch_add(1, Ordering::Relaxed);
            let Some(slot) = usize::try_from(id - base).ok().filter(|&i| i < seen.len()) else {
                continue;
            };
            if !seen[slot] {
                seen[slot] = true;
                self.distinct.fetch_add(1, Ordering::Relaxed);
                let sent = feeder.sent_us[slot].load(Ordering::Relaxed);
                if sent > 0
                    && let Ok(mut h) = self.latency.lock()
                {
                    let _ = h.record(now.saturating_sub(sent).max(1));
                }
            }
        }
        Ok(())
    }

    /// Latency quantile in ms.
    pub fn latency_ms(&self, q: f64) -> f64 {
        self.latency
            .lock()
            .map(|h| h.value_at_quantile(q) as f64 / 1e3)
            .unwrap_or(f64::NAN)
    }
}

/// The `TRANSACTION_ID` of a score or alert payload (the first field of both, in either format:
/// in Avro the zig-zag varint right after the 5-byte frame).
fn transaction_id(payload: &[u8], format: crate::decoders::Format) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Id {
        #[serde(rename = "TRANSACTION_ID")]
        id: i64,
    }
    match format {
        crate::decoders::Format::Json => serde_json::from_slice::<Id>(payload).ok().map(|i| i.id),
        crate::decoders::Format::Avro => {
            let mut z: u64 = 0;
            for (i, b) in payload.get(5..)?.iter().take(10).enumerate() {
                z |= u64::from(b & 0x7f) << (7 * i);
                if b & 0x80 == 0 {
                    return Some(((z >> 1) as i64) ^ -((z & 1) as i64));
                }
            }
            None
        }
    }
}

/// Options of `riskpipe demo`.
#[derive(Debug)]
pub struct DemoOptions {
    /// Transactions to publish.
    pub transactions: usize,
    /// The first transaction scored; before it, the job's horizon is replayed into the state
    /// silently. `None`: the first with the whole horizon before it.
    pub skip: Option<usize>,
    /// Publishing rate, transactions/s (0 = as fast as possible).
    pub rate: f64,
    /// Partitions of the transactions topic.
    pub partitions: i32,
    /// Show the live status line.
    pub show_progress: bool,
    /// Where to serve metrics and health, if anywhere.
    pub metrics: Option<std::net::TcpListener>,
    /// Payload format of every topic; Avro runs an in-process schema registry beside the
    /// mock cluster.
    pub format: crate::decoders::Format,
    /// The history's file; `None`: simulated with this seed.
    pub input: std::result::Result<std::path::PathBuf, u64>,
}

/// What the demo measured.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    /// The pipeline's own counts.
    pub pipeline: Summary,
    /// Transactions replayed into the state before the first scored one.
    pub warmed: usize,
    /// The history's file, or the seed it was simulated with.
    pub input: std::result::Result<std::path::PathBuf, u64>,
    /// Distinct transactions whose score arrived.
    pub scored: u64,
    /// Alerts seen and how many were frauds.
    pub alerts: (u64, u64),
    /// Wall time from the first publish (after the consumer group formed) to the last score
    /// (within the status line's 250 ms polling).
    pub elapsed: Duration,
    /// Send-to-score-arrival latency at a downstream consumer, p50 / p99 / p99.9 (ms).
    pub latency_ms: [f64; 3],
    /// Produce-to-score-acknowledged latency inside the pipeline, p50 / p99 / p99.9 (ms).
    pub pipeline_latency_ms: [f64; 3],
}

/// Runs the demo on `rt`: mock cluster, feeder, live pipeline, watcher; returns when every
/// published transaction has its score (or on Ctrl-C).
pub fn run_demo(
    rt: &tokio::runtime::Runtime,
    cfg: &mut PipelineConfig,
    history: &History,
    opts: DemoOptions,
) -> Result<DemoSummary> {
    let streams = crate::jobs::fraud::STREAMS;
    let cluster = MockCluster::new(1).map_err(PipelineError::kafka("starting the mock cluster"))?;
    let bootstrap = cluster.bootstrap_servers();
    let mut kafka = cfg
        .kafka
        .clone()
        .unwrap_or_else(|| KafkaConfig::for_bootstrap(&bootstrap));
    kafka
        .properties
        .insert("bootstrap.servers".into(), bootstrap.clone());
    kafka.group_id = "riskpipe-demo".into();
    // The feed is written in one format, for every topic.
    kafka.format = opts.format;
    kafka.formats = crate::kafka::TopicFormats::default();
    let t = &kafka.topics;
    let create = PipelineError::kafka("creating a topic");
    cluster
        .create_topic(kafka.events_topic(streams), opts.partitions.max(1), 1)
        .map_err(create)?;
    // Scores are keyed by customer: 4 partitions keep each under the mock's 5 MiB retention.
    cluster
        .create_topic(&t.scores, 4, 1)
        .map_err(PipelineError::kafka("creating a topic"))?;
    let side = kafka.side_topic(streams).unwrap_or_default();
    for topic in [side, &t.alerts, &t.dead_letter] {
        if !topic.is_empty() {
            cluster
                .create_topic(topic, 1, 1)
                .map_err(PipelineError::kafka("creating a topic"))?;
        }
    }
    if opts.format == crate::decoders::Format::Avro {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(PipelineError::runtime("binding the schema registry"))?;
        let url = format!(
            "http://{}",
            listener
                .local_addr()
                .map_err(PipelineError::runtime("binding the schema registry"))?
        );
        listener
            .set_nonblocking(true)
            .map_err(PipelineError::runtime("the schema registry listener"))?;
        let _guard = rt.enter();
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(PipelineError::runtime("the schema registry listener"))?;
        rt.spawn(crate::schema_registry::memory::MemoryRegistry::new(None).serve(listener));
        kafka.schema_registry = Some(crate::schema_registry::RegistryConfig {
            url,
            username: None,
            password: None,
            ssl_ca_location: None,
            timeout: Duration::from_secs(10),
            subject_strategy: crate::schema_registry::SubjectStrategy::Topic,
        });
    }
    cfg.kafka = Some(kafka.clone());
    // The demo's cluster lives as long as the process: so does its state, which starts as a
    // restarted pipeline's would, from a checkpoint of the history before the first score.
    let state_dir = tempfile::tempdir().map_err(PipelineError::runtime("a state directory"))?;
    cfg.state = None;
    cfg.set_state_dir(state_dir.path().to_string_lossy().into_owned())?;
    let warm = WarmUp::of(history, cfg, opts.skip)?;
    let repartitioned = kafka.repartition.is_some();
    let warmed = if warm.transactions() > 0 && !repartitioned {
        warm.seed(rt, cfg, history, opts.partitions)?;
        warm.transactions()
    } else {
        0
    };
    let feed = match warmed {
        0 => feed(history, cfg, warm.scored_from, opts.transactions)?,
        _ => feed_after(history, cfg, warm.from, warm.scored_from, opts.transactions)?,
    };
    let feed = match kafka.format {
        crate::decoders::Format::Avro => feed.into_avro(&kafka)?,
        crate::decoders::Format::Json => feed,
    };
    let total = feed.transactions as u64;
    let epoch = Instant::now();
    let feeder = Feeder::new(&feed, epoch);
    let watcher = Watcher::default();
    let health = Arc::new(Health::default());
    let counters = Arc::new(Counters::default());
    if let Some(listener) = opts.metrics {
        let handle = crate::observe::install()?;
        let _guard = rt.enter();
        listener
            .set_nonblocking(true)
            .map_err(PipelineError::runtime("the metrics listener"))?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(PipelineError::runtime("the metrics listener"))?;
        rt.spawn(crate::observe::serve(listener, handle, health.clone()));
    }
    let done = AtomicBool::new(false);
    let pb = if opts.show_progress {
        let pb = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} live [{bar:30}] {human_pos}/{human_len} scored  {msg}",
        ) {
            pb.set_style(style.progress_chars("=> "));
        }
        pb
    } else {
        ProgressBar::hidden()
    };
    let producer = feed_producer(&kafka)?;
    let reader = reader(&kafka, &[&kafka.topics.scores, &kafka.topics.alerts])?;
    let publish_started = std::sync::OnceLock::new();
    let last_scored = std::sync::OnceLock::new();
    let pipeline = std::thread::scope(|scope| -> Result<Summary> {
        let feeding = scope.spawn(|| {
            // Wait for the consumer group before publishing, so latency counts work, not the join.
            while !health.ready.load(Ordering::Relaxed) && !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = publish_started.set(Instant::now());
            feeder.publish(&producer, &kafka, &feed, opts.rate, &done)
        });
        let watching = scope.spawn(|| watcher.watch(&reader, &kafka, &feed, &feeder, &done));
        let status = scope.spawn(|| {
            let mut last = (Instant::now(), 0u64);
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let n = watcher.distinct.load(Ordering::Relaxed);
                let dt = last.0.elapsed().as_secs_f64();
                let rate = (n - last.1) as f64 / dt.max(1e-9);
                last = (Instant::now(), n);
                pb.set_position(n);
                pb.set_message(format!(
                    "{rate:>8.0} ev/s  p50 {:.1} ms  p99 {:.1} ms  alerts {}",
                    watcher.latency_ms(0.5),
                    watcher.latency_ms(0.99),
                    watcher.alerts.load(Ordering::Relaxed)
                ));
                if n >= total {
                    let _ = last_scored.set(Instant::now());
                    done.store(true, Ordering::Relaxed);
                }
            }
        });
        let finished = async {
            loop {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => { done.store(true, Ordering::Relaxed); break; }
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        };
        let summary = rt.block_on(crate::live::run(
            cfg,
            health.clone(),
            counters.clone(),
            finished,
        ));
        done.store(true, Ordering::Relaxed);
        let fed = feeding
            .join()
            .map_err(|_| PipelineError::Bug("feeder panicked".into()))?;
        let watched = watching
            .join()
            .map_err(|_| PipelineError::Bug("watcher panicked".into()))?;
        status
            .join()
            .map_err(|_| PipelineError::Bug("status thread panicked".into()))?;
        fed?;
        watched?;
        summary
    })?;
    pb.finish_and_clear();
    Ok(DemoSummary {
        pipeline,
        warmed,
        input: opts.input.clone(),
        scored: watcher.distinct.load(Ordering::Relaxed),
        alerts: (
            watcher.alerts.load(Ordering::Relaxed),
            watcher.true_alerts.load(Ordering::Relaxed),
        ),
        elapsed: match (publish_started.get(), last_scored.get()) {
            (Some(a), Some(b)) => b.saturating_duration_since(*a),
            (Some(a), None) => a.elapsed(),
            _ => Duration::ZERO,
        },
        latency_ms: [
            watcher.latency_ms(0.5),
            watcher.latency_ms(0.99),
            watcher.latency_ms(0.999),
        ],
        pipeline_latency_ms: [
            counters.end_to_end_ms(0.5),
            counters.end_to_end_ms(0.99),
            counters.end_to_end_ms(0.999),
        ],
    })
}

impl std::fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let p = &self.pipeline;
        let history = match &self.input {
            Ok(path) => path.display().to_string(),
            Err(seed) => format!("simulated, seed {seed}"),
        };
        writeln!(
            f,
            "riskpipe demo (in-process Kafka mock cluster, live pipeline; history: {history})"
        )?;
        writeln!(
            f,
            "  state warmed with        {:>10}  transactions before the first scored one",
            self.warmed
        )?;
        writeln!(f, "  transactions published   {:>10}", p.events)?;
        writeln!(f, "  fraud labels published   {:>10}", p.side)?;
        writeln!(f, "  scores published         {:>10}", p.scores)?;
        writeln!(f, "  distinct scored          {:>10}", self.scored)?;
        writeln!(f, "  dead letters             {:>10}", p.dead_letters)?;
        writeln!(
            f,
            "  alerts                   {:>10}  ({} on frauds, precision {:.3})",
            self.alerts.0,
            self.alerts.1,
            self.alerts.1 as f64 / self.alerts.0.max(1) as f64
        )?;
        writeln!(f, "  wall time                {secs:>10.2} s")?;
        writeln!(
            f,
            "  throughput               {:>10.0} events/s",
            self.scored as f64 / secs
        )?;
        writeln!(
            f,
            "  latency produce->ack     p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  (transaction produced -> its score acknowledged)",
            self.pipeline_latency_ms[0], self.pipeline_latency_ms[1], self.pipeline_latency_ms[2]
        )?;
        writeln!(
            f,
            "  latency send->consumer   p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  (... -> score read by a downstream consumer)",
            self.latency_ms[0], self.latency_ms[1], self.latency_ms[2]
        )?;
        writeln!(f, "next:")?;
        match &self.input {
            Ok(path) => writeln!(
                f,
                "  riskpipe backtest --input {} --output out/backtest\n                                                                the same model over the whole history: report.json, curves.png, drift.png",
                path.display()
            )?,
            Err(seed) => writeln!(
                f,
                "  riskpipe simulate --seed {seed} --output sim.parquet\n  riskpipe backtest --input sim.parquet --output out/backtest   the same model over the whole history: report.json, curves.png, drift.png"
            )?,
        }
        writeln!(
            f,
            "  riskpipe run --config config/fraud-handbook.toml \\\n      --bootstrap-servers HOST:9092 --state-dir DIR             score your Kafka's transactions topic"
        )?;
        writeln!(
            f,
            "  README.md                                                     topics to create, payloads, state and delivery"
        )
    }
}
