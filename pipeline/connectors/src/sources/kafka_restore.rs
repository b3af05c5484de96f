//! The gap a restarted live pipeline replays silently: for each input partition, the messages
//! between the offsets its restored state reflects and the consumer group's committed offsets.
//!
//! Checkpoints are written only after the group committed at least their offsets, so the gap
//! is never negative; a partition the state has never seen (no checkpoint, or a partition added
//! since) is rebuilt from where `sources::kafka_rebuild` says: back by the job's reach in event
//! time, or from its earliest retained offset.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::kafka_range::{partitions_of, range_consumer, read_ranges};
use super::kafka_rebuild::{RebuildFrom, rebuild_from};
use crate::decoders::Decoder;
use crate::kafka::KafkaConfig;
use crate::state::Positions;
use crate::{PipelineError, Result};
use riskpipe_core::Streams;
use riskpipe_core::{Horizon, Inputs, JobInput, Partitions};

const TIMEOUT: Duration = Duration::from_secs(30);

/// What to replay before going live, and where the state then stands.
#[derive(Debug)]
pub struct Gap {
    /// The gap's side events and events (each partition in offset order), decoded; messages
    /// that do not decode are left out, as live dead-lettered them.
    pub input: JobInput,
    /// Messages in the gap (decoded or not).
    pub messages: usize,
    /// Where the state stands after the gap: the group's committed offsets.
    pub positions: Positions,
}

/// A consumer of the pipeline's group that joins no generation: it only looks offsets up.
pub fn group_consumer(kafka: &KafkaConfig) -> Result<BaseConsumer> {
    let mut cfg = kafka.client();
    cfg.set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "false")
        .set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    if kafka.exactly_once() {
        // librdkafka then asks for stable offsets: a lookup waits while a transaction that
        // commits offsets of the partition is open, instead of answering the older ones.
        cfg.set("isolation.level", "read_committed");
    }
    cfg.create()
        .map_err(PipelineError::kafka("creating the offsets consumer"))
}

/// The group's committed offset of each partition of `topic` (`None`: never committed).
pub(crate) fn committed(
    group: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
) -> Result<Vec<(i32, Option<i64>)>> {
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition(topic, p);
    }
    // A coordinator that is moving or still loading the group (right after a broker start or
    // restart) answers with a retriable error: asked again until TIMEOUT has passed.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let got = loop {
        match group.committed_offsets(tpl.clone(), TIMEOUT) {
            Ok(got) => break got,
            Err(e)
                if std::time::Instant::now() < deadline
                    && matches!(
                        e.rdkafka_error_code(),
                        Some(
                            rdkafka::types::RDKafkaErrorCode::NotCoordinator
                                | rdkafka::types::RDKafkaErrorCode::CoordinatorLoadInProgress
                                | rdkafka::types::RDKafkaErrorCode::CoordinatorNotAvailable
                        )
                    ) =>
            {
                tracing::info!("looking up committed offsets again: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(PipelineError::kafka("looking up committed offsets")(e)),
        }
    };
    Ok(partitions
        .iter()
        .map(|&p| {
            let c = match got.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Some(o),
                _ => None,
            };
            (p, c)
        })
        .collect())
}

/// `(partition, first offset, end offset)` of a range to replay.
type Range = (i32, i64, i64);

/// Every partition of `topic`, the ranges to replay (a partition the state has not seen from
/// `rebuild`), and (into `after`) the positions after them.
fn ranges(
    kafka: &KafkaConfig,
    consumer: &BaseConsumer,
    topic: &str,
    committed: &[(i32, Option<i64>)],
    restored: &Positions,
    rebuild: RebuildFrom,
    after: &mut Positions,
) -> Result<Vec<Range>> {
    let mut out = Vec::new();
    for &(p, c) in committed {
        let state = restored.get(topic).and_then(|m| m.get(&p)).copied();
        match (state, c) {
            (Some(s), Some(c)) if s <= c => out.push((p, s, c)),
            (Some(s), c) => {
                return Err(PipelineError::Checkpoint {
                    id: 0,
                    reason: format!(
                        "the state has seen {topic}[{p}] up to offset {s}, but group {:?} committed {} there: the checkpoint belongs to another group, or the broker lost the group's offsets (delete state.dir to rebuild)",
                        kafka.group_id,
                        c.map_or("nothing".to_string(), |c| c.to_string())
                    ),
                });
            }
            (None, Some(c)) => out.push((p, rebuild.start(consumer, topic, p, c)?, c)),
            (None, None) => continue,
        }
        if let Some(c) = c {
            after.entry(topic.to_string()).or_default().insert(p, c);
        }
    }
    Ok(out)
}

/// Reads and decodes the gap between `restored` and the committed offsets of the job's input
/// topics; partitions the state has not seen are rebuilt from `horizon`'s reach back (the
/// earliest offsets without one).
pub fn gap(
    kafka: &KafkaConfig,
    streams: Streams,
    inputs: &Inputs,
    decoder: &dyn Decoder,
    restored: &Positions,
    horizon: Option<&Horizon>,
) -> Result<Gap> {
    let consumer = range_consumer(kafka)?;
    let group = group_consumer(kafka)?;
    let mut positions = Positions::new();
    let mut messages = 0;
    let topic = kafka.events_topic(streams);
    let all = partitions_of(&consumer, topic)?;
    let events_committed = committed(&group, topic, &all)?;
    // Partitions with committed offsets, and how many of them the state has not seen.
    let every: Vec<(i32, i64)> = events_committed
        .iter()
        .filter_map(|&(p, c)| Some((p, c?)))
        .collect();
    let unseen = every
        .iter()
        .filter(|(p, _)| restored.get(topic).and_then(|m| m.get(p)).is_none())
        .count();
    let rebuild = if unseen == 0 {
        RebuildFrom::Earliest
    } else {
        // The reference is the lowest over every partition, restored ones too: their events
        // to come may need the rebuilt partitions' older events.
        let from = rebuild_from(&consumer, topic, &every, decoder, &inputs.events, horizon)?;
        tracing::info!(
            topic,
            partitions = unseen,
            "partitions without state rebuilt from {}",
            from.describe()
        );
        from
    };
    let events = ranges(
        kafka,
        &consumer,
        topic,
        &events_committed,
        restored,
        rebuild,
        &mut positions,
    )?;
    let read = read_ranges(&consumer, topic, &events)?;
    messages += read.payloads.len();
    let (decoded, of_events) = read.decode(decoder, &inputs.events)?;
    let side = match (kafka.side_topic(streams), &inputs.side) {
        (Some(side_topic), Some(schema)) => {
            let side_partitions = partitions_of(&consumer, side_topic)?;
            let side = ranges(
                kafka,
                &consumer,
                side_topic,
                &committed(&group, side_topic, &side_partitions)?,
                restored,
                rebuild,
                &mut positions,
            )?;
            let read = read_ranges(&consumer, side_topic, &side)?;
            messages += read.payloads.len();
            Some(read.decode(decoder, schema)?.0.batch)
        }
        _ => None,
    };
    Ok(Gap {
        input: JobInput {
            side,
            events: decoded.batch,
            partitions: Some(Partitions {
                of_events,
                of_side: Vec::new(),
                held: all.into(),
            }),
        },
        messages,
        positions,
    })
}
