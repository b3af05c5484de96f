//! The gap a restarted live pipeline replays silently: for each input partition, the messages
//! between the offsets its restored state reflects and the consumer group's committed offsets.
//!
//! Checkpoints are written only after the group committed at least their offsets, so the gap
//! is never negative; a partition the state has never seen (no checkpoint, or a partition added
//! since) is rebuilt from its earliest retained offset.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::kafka_range::{earliest, partitions_of, range_consumer, read_ranges};
use crate::config::Streams;
use crate::decoders::Decoder;
use crate::jobs::{Inputs, JobInput, Partitions};
use crate::kafka::KafkaConfig;
use crate::state::Positions;
use crate::{PipelineError, Result};

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
pub(crate) fn group_consumer(kafka: &KafkaConfig) -> Result<BaseConsumer> {
    let mut cfg = kafka.client();
    cfg.set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "false")
        .set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
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
    let got = group
        .committed_offsets(tpl, TIMEOUT)
        .map_err(PipelineError::kafka("looking up committed offsets"))?;
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

/// Every partition of `topic`, the ranges to replay, and (into `after`) the positions after them.
fn ranges(
    kafka: &KafkaConfig,
    group: &BaseConsumer,
    consumer: &BaseConsumer,
    topic: &str,
    restored: &Positions,
    after: &mut Positions,
) -> Result<(Vec<i32>, Vec<Range>)> {
    let partitions = partitions_of(consumer, topic)?;
    let mut out = Vec::new();
    for (p, c) in committed(group, topic, &partitions)? {
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
            (None, Some(c)) => out.push((p, earliest(consumer, topic, p)?, c)),
            (None, None) => continue,
        }
        if let Some(c) = c {
            after.entry(topic.to_string()).or_default().insert(p, c);
        }
    }
    Ok((partitions, out))
}

/// Reads and decodes the gap between `restored` and the committed offsets of the job's input
/// topics.
pub fn gap(
    kafka: &KafkaConfig,
    streams: Streams,
    inputs: &Inputs,
    decoder: &dyn Decoder,
    restored: &Positions,
) -> Result<Gap> {
    let consumer = range_consumer(kafka)?;
    let group = group_consumer(kafka)?;
    let mut positions = Positions::new();
    let mut messages = 0;
    let topic = kafka.events_topic(streams);
    let (all, events) = ranges(kafka, &group, &consumer, topic, restored, &mut positions)?;
    let read = read_ranges(&consumer, topic, &events)?;
    messages += read.payloads.len();
    let (decoded, of_events) = read.decode(decoder, &inputs.events)?;
    let side = match (kafka.side_topic(streams), &inputs.side) {
        (Some(side_topic), Some(schema)) => {
            let (_, side) = ranges(
                kafka,
                &group,
                &consumer,
                side_topic,
                restored,
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
