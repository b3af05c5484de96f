//! `riskpipe replay`: a topic range read back from Kafka ([`read`]), which the job kind makes
//! into a history the backtest then replays exactly like a file.
//!
//! Events between two bounds (offsets, or timestamps resolved with the broker's
//! offsets-for-times) are read with an assigned consumer that commits nothing, decoded with the
//! live path's decoder and ordered by the job kind (for a fraud job: each partition in offset
//! order, merged by event time, so the event-time policy sees each partition as live did; the
//! fraud labels of those transactions become the label events and the truth column the report
//! evaluates).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use arrow::array::RecordBatch;
use riskpipe_core::{Inputs, Partitions, Streams};

use crate::decoders::{DecodedPayloads, Decoder};
use crate::kafka::KafkaConfig;
use crate::{PipelineError, Result};

/// One end of a topic range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The partition's first retained offset / its end when the replay started.
    Edge,
    /// An offset (applied to every partition).
    Offset(i64),
    /// A timestamp, ms since the epoch: the first message at or after it.
    TimeMs(i64),
}

/// What was read.
#[derive(Debug)]
pub struct TopicRead {
    /// The topic.
    pub topic: String,
    /// Payloads, partition by partition, each in offset order.
    pub payloads: Vec<Vec<u8>>,
    /// The partition of each payload.
    pub partitions: Vec<i32>,
    /// The Kafka timestamp of each payload (ms since the epoch), where it has one.
    pub stamps: Vec<Option<i64>>,
    /// Every partition of the topic.
    pub all: Vec<i32>,
}

impl TopicRead {
    /// The payloads decoded against `schema`, and the partition of each accepted row.
    pub(crate) fn decode(
        &self,
        decoder: &dyn Decoder,
        schema: &arrow::datatypes::SchemaRef,
    ) -> Result<(DecodedPayloads, Vec<i32>)> {
        let refs: Vec<&[u8]> = self.payloads.iter().map(Vec::as_slice).collect();
        let decoded = decoder.decode_records(&self.topic, schema, &refs, &self.stamps)?;
        let partitions = decoded
            .accepted
            .iter()
            .filter_map(|&i| self.partitions.get(i).copied())
            .collect();
        Ok((decoded, partitions))
    }
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn resolve(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    bound: Bound,
    is_end: bool,
) -> Result<Vec<i64>> {
    let mut out = Vec::with_capacity(partitions.len());
    for &p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, TIMEOUT)
            .map_err(PipelineError::kafka("fetching watermarks"))?;
        let at = match bound {
            Bound::Edge => {
                if is_end {
                    high
                } else {
                    low
                }
            }
            Bound::Offset(o) => o.clamp(low, high),
            Bound::TimeMs(ms) => {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(topic, p, Offset::Offset(ms))
                    .map_err(PipelineError::kafka("looking up offsets for times"))?;
                let found = consumer
                    .offsets_for_times(tpl, TIMEOUT)
                    .map_err(PipelineError::kafka("looking up offsets for times"))?;
                match found.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => high, // no message at or after the time
                }
            }
        };
        out.push(at);
    }
    Ok(out)
}

/// A consumer that reads ranges by assignment and commits nothing.
pub(crate) fn range_consumer(kafka: &KafkaConfig) -> Result<BaseConsumer> {
    let mut cfg = kafka.client();
    cfg.set("group.id", format!("{}-replay", kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    if cfg.get("fetch.queue.backoff.ms").is_none() {
        cfg.set(
            "fetch.queue.backoff.ms",
            super::kafka::FETCH_QUEUE_BACKOFF_MS,
        );
    }
    if kafka.exactly_once() {
        // A replay reads what the live consumer reads: no aborted record into the state.
        cfg.set("isolation.level", "read_committed");
    }
    cfg.create()
        .map_err(PipelineError::kafka("creating the replay consumer"))
}

/// Every partition of `topic`.
pub(crate) fn partitions_of(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(PipelineError::kafka("fetching metadata"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(PipelineError::BadInput(format!(
            "topic {topic:?} has no partitions (does it exist?)"
        )));
    }
    Ok(partitions)
}

/// The partition count of `source`; `repartition` is created with as many partitions when it
/// does not exist (run off the async reactor: it blocks), and refused when it has another
/// count (rows keyed alike must land in the partitions numbered alike).
pub fn ensure_copartitioned(
    kafka: &KafkaConfig,
    source: &str,
    repartition: &str,
    replication_factor: Option<i32>,
    beside: Option<&str>,
) -> Result<i32> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let consumer = range_consumer(kafka)?;
    let partitions = i32::try_from(partitions_of(&consumer, source)?.len())
        .map_err(|_| PipelineError::BadInput(format!("topic {source:?}: too many partitions")))?;
    // The topic read beside the repartition topic (the labels): keyed alike, numbered alike.
    if let Some(beside) = beside {
        let n = partitions_of(&consumer, beside)?.len();
        if i32::try_from(n).ok() != Some(partitions) {
            return Err(PipelineError::Config(vec![format!(
                "the topic {beside:?} has {n} partitions, the transactions topic {source:?} {partitions}: with kafka.repartition they must be equal (a terminal's labels and rows share a partition number)"
            )]));
        }
    }
    if let Ok(existing) = partitions_of(&consumer, repartition) {
        return match i32::try_from(existing.len()) {
            Ok(n) if n == partitions => Ok(partitions),
            _ => Err(PipelineError::Config(vec![format!(
                "the repartition topic {repartition:?} has {} partitions, the transactions topic {source:?} {partitions}: they must be equal (delete it, or give kafka.repartition.topic another name)",
                existing.len()
            )])),
        };
    }
    let admin: AdminClient<DefaultClientContext> = kafka
        .client()
        .create()
        .map_err(PipelineError::kafka("creating the admin client"))?;
    let topic = NewTopic::new(
        repartition,
        partitions,
        TopicReplication::Fixed(replication_factor.unwrap_or(-1)),
    );
    let created = tokio::runtime::Handle::current()
        .block_on(admin.create_topics([&topic], &AdminOptions::new()))
        .map_err(PipelineError::kafka("creating the repartition topic"))?;
    for result in created {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(PipelineError::Config(vec![format!(
                    "creating the repartition topic {name:?}: {code}"
                )]));
            }
        }
    }
    tracing::info!(
        topic = repartition,
        partitions,
        "repartition topic ready ({partitions} partitions, as {source:?})"
    );
    Ok(partitions)
}

/// The earliest retained offset of `partition`.
pub(crate) fn earliest(consumer: &BaseConsumer, topic: &str, partition: i32) -> Result<i64> {
    Ok(resolve(consumer, topic, &[partition], Bound::Edge, false)?[0])
}

/// Reads `[from, to)` of every partition of `topic`.
pub fn read_topic(kafka: &KafkaConfig, topic: &str, from: Bound, to: Bound) -> Result<TopicRead> {
    let consumer = range_consumer(kafka)?;
    let partitions = partitions_of(&consumer, topic)?;
    let starts = resolve(&consumer, topic, &partitions, from, false)?;
    let ends = resolve(&consumer, topic, &partitions, to, true)?;
    let ranges: Vec<(i32, i64, i64)> = partitions
        .iter()
        .zip(starts.iter().zip(&ends))
        .map(|(&p, (&s, &e))| (p, s, e))
        .collect();
    let mut read = read_ranges(&consumer, topic, &ranges)?;
    read.all = partitions;
    Ok(read)
}

/// Reads `[start, end)` of each `(partition, start, end)` of `topic`, partition by partition.
pub(crate) fn read_ranges(
    consumer: &BaseConsumer,
    topic: &str,
    ranges: &[(i32, i64, i64)],
) -> Result<TopicRead> {
    let mut payloads = Vec::new();
    let mut of_payloads = Vec::new();
    let mut stamps = Vec::new();
    for &(p, start, end) in ranges {
        if start >= end {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(start))
            .map_err(PipelineError::kafka("assigning"))?;
        consumer
            .assign(&tpl)
            .map_err(PipelineError::kafka("assigning"))?;
        let mut next = start;
        let mut idle = Instant::now();
        while next < end {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    idle = Instant::now();
                    // The consumer is reused over partitions and topics: a message of an
                    // earlier assignment, or one before the range, is no part of this range.
                    if m.topic() != topic || m.partition() != p || m.offset() < next {
                        continue;
                    }
                    if m.offset() >= end {
                        break;
                    }
                    next = m.offset() + 1;
                    payloads.push(m.payload().map(<[u8]>::to_vec).unwrap_or_default());
                    of_payloads.push(p);
                    stamps.push(m.timestamp().to_millis());
                }
                // A lost broker, a leader moving to another: librdkafka reconnects and fetches
                // from the new leader by itself, so the read waits (bounded by the idle
                // deadline) instead of failing a restore over one broker of several.
                Some(Err(e)) if is_transient(&e) => {
                    tracing::warn!("{topic}[{p}]: {e} at offset {next}; waiting for the broker");
                }
                Some(Err(e)) => return Err(PipelineError::kafka("reading the range")(e)),
                // A transaction's commit or abort marker (and, read_committed, an aborted
                // record) is never handed to the application, but the position moves past it:
                // a range that ends with one is read to its end.
                None if position(consumer, topic, p).is_some_and(|at| at >= end) => break,
                None if idle.elapsed() > TIMEOUT => {
                    tracing::error!(
                        "{topic}[{p}]: no message for {TIMEOUT:?} at offset {next} (range ends at {end})"
                    );
                    return Err(PipelineError::Kafka {
                        op: "reading the range",
                        source: Box::new(rdkafka::error::KafkaError::MessageConsumption(
                            rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
                        )),
                    });
                }
                None => {}
            }
        }
    }
    Ok(TopicRead {
        topic: topic.to_string(),
        payloads,
        partitions: of_payloads,
        stamps,
        all: ranges.iter().map(|r| r.0).collect(),
    })
}

/// Whether a consume error is one librdkafka recovers from by itself (a connection, a leader
/// election, a timeout) rather than one about the request (an unknown topic, an offset out of
/// range, no authorisation).
fn is_transient(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::BrokerTransportFailure
                | Code::AllBrokersDown
                | Code::Resolve
                | Code::OperationTimedOut
                | Code::RequestTimedOut
                | Code::LeaderNotAvailable
                | Code::NotLeaderForPartition
                | Code::NotCoordinator
                | Code::CoordinatorNotAvailable
                | Code::NetworkException
                | Code::BrokerNotAvailable
                | Code::ReplicaNotAvailable
                | Code::NotEnoughReplicas
                | Code::FencedLeaderEpoch
                | Code::UnknownLeaderEpoch
                | Code::OffsetNotAvailable
                | Code::PartitionEOF
        )
    )
}

/// The consumer's position in `partition` of `topic` (the offset it reads next), if it has one.
fn position(consumer: &BaseConsumer, topic: &str, partition: i32) -> Option<i64> {
    let positions = consumer.position().ok()?;
    match positions.find_partition(topic, partition)?.offset() {
        Offset::Offset(at) => Some(at),
        _ => None,
    }
}

/// What a range read holds: the decoded events of the range (each partition in offset order)
/// with their partitions, and every side event.
#[derive(Debug)]
pub struct RangeRead {
    /// The events topic.
    pub topic: String,
    /// The decoded events.
    pub events: RecordBatch,
    /// Every side event (the side topic read whole), if the job has a side input.
    pub side: Option<RecordBatch>,
    /// Each event's partition, and every partition of the topic.
    pub partitions: Partitions,
}

/// Reads the events of a range and every side event, decoded against the job's `inputs`; also
/// the event messages that could not be decoded, with their reasons (they are skipped, with a
/// log line each for the first five).
pub fn read(
    kafka: &KafkaConfig,
    streams: Streams,
    inputs: &Inputs,
    decoder: &dyn Decoder,
    from: Bound,
    to: Bound,
) -> Result<(RangeRead, Vec<crate::decoders::Rejection>)> {
    let topic = kafka.events_topic(streams);
    let read = read_topic(kafka, topic, from, to)?;
    let (mut decoded, of_events) = read.decode(decoder, &inputs.events)?;
    let rejected = std::mem::take(&mut decoded.rejected);
    for r in rejected.iter().take(5) {
        tracing::warn!("skipping undecodable event #{}: {}", r.index, r.reason);
    }
    let side = match (kafka.side_topic(streams), &inputs.side) {
        (Some(side_topic), Some(schema)) => {
            let read = read_topic(kafka, side_topic, Bound::Edge, Bound::Edge)?;
            Some(read.decode(decoder, schema)?.0.batch)
        }
        _ => None,
    };
    // Each event's partition: the history keeps every partition in offset order, as live read it.
    let partitions = Partitions {
        of_events,
        of_side: Vec::new(),
        held: read.all.into(),
    };
    Ok((
        RangeRead {
            topic: topic.to_string(),
            events: decoded.batch,
            side,
            partitions,
        },
        rejected,
    ))
}

#[cfg(test)]
mod tests {
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode as Code;

    /// A lost broker or a moved leader is waited out; a request the broker refuses is not.
    #[test]
    fn a_lost_broker_is_waited_out_and_a_refused_request_is_not() {
        let consume = |code| KafkaError::MessageConsumption(code);
        for code in [
            Code::BrokerTransportFailure,
            Code::AllBrokersDown,
            Code::NotLeaderForPartition,
            Code::LeaderNotAvailable,
        ] {
            assert!(super::is_transient(&consume(code)), "{code:?}");
        }
        for code in [
            Code::UnknownTopicOrPartition,
            Code::OffsetOutOfRange,
            Code::TopicAuthorizationFailed,
            Code::MessageSizeTooLarge,
        ] {
            assert!(!super::is_transient(&consume(code)), "{code:?}");
        }
    }
}
