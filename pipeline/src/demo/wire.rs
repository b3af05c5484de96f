//! The demo's two ends on the wire: the [`Feeder`] publishing a feed at a rate, the
//! [`Watcher`] reading scores and alerts back and measuring latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use super::Feed;
use crate::kafka::KafkaConfig;
use crate::{PipelineError, Result};

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
        let [(_, scores_format), (_, alerts_format), ..] = kafka.output_formats();
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
