//! Where a state-less rebuild starts reading an input partition: back from the group's committed
//! offsets by the job's reach in event time (found with Kafka's offsets-for-times), or at the
//! earliest retained offset when the job's state has no bounded reach or `state.rebuild` asks.
//!
//! The reference time is the latest event time among the last messages before each committed
//! offset, the lowest over the partitions one state holds (the watermark is the lowest
//! partition's).
//! Kafka indexes messages by their timestamps, which producers stamp at or after an event
//! happens; the seek therefore goes back the reach plus `max_future_skew` from the reference,
//! and every message it leaves out has a timestamp, so an event time, before anything the
//! restored state can still use.

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Int64Type};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::kafka_range::{earliest, read_ranges};
use crate::decoders::Decoder;
use crate::{PipelineError, Result};
use riskpipe_core::Horizon;

/// Messages read back from each committed offset to find the partition's latest event time
/// (more than one: the last may be a dead letter, and events arrive slightly out of order).
const LOOK_BACK: i64 = 64;

/// Where a rebuild of a topic's partitions starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RebuildFrom {
    /// The earliest retained offset.
    Earliest,
    /// The first message stamped at or after this time (ms since the epoch).
    TimeMs(i64),
}

impl RebuildFrom {
    /// The first offset of `partition` to read, at most `end`.
    pub(crate) fn start(
        self,
        consumer: &BaseConsumer,
        topic: &str,
        partition: i32,
        end: i64,
    ) -> Result<i64> {
        let low = earliest(consumer, topic, partition)?;
        let at = match self {
            Self::Earliest => low,
            Self::TimeMs(ms) => match offset_for_time(consumer, topic, partition, ms)? {
                Some(at) => at.max(low),
                // No message stamped at or after the time, though the last ones carry events
                // after it: the stamps do not follow event time (or the broker cannot look
                // offsets up by time: librdkafka's mock answers none), so read everything.
                None => {
                    tracing::warn!(
                        "{topic}[{partition}]: the broker finds no offset for {}: rebuilding from the earliest offset",
                        self.describe()
                    );
                    low
                }
            },
        };
        Ok(at.min(end))
    }

    /// For log lines.
    pub(crate) fn describe(self) -> String {
        match self {
            Self::Earliest => "the earliest offsets".into(),
            Self::TimeMs(ms) => match chrono::DateTime::from_timestamp_millis(ms) {
                Some(t) => format!(
                    "messages stamped from {}",
                    t.format("%Y-%m-%d %H:%M:%S UTC")
                ),
                None => format!("messages stamped from {ms} ms"),
            },
        }
    }
}

/// Where to rebuild the partitions `(partition, committed offset)` of the events `topic` from:
/// `horizon`'s reach before their reference time, or the earliest offsets without a horizon or
/// when some partition's last messages hold no event to take the time of.
pub(crate) fn rebuild_from(
    consumer: &BaseConsumer,
    topic: &str,
    committed: &[(i32, i64)],
    decoder: &dyn Decoder,
    schema: &arrow::datatypes::SchemaRef,
    horizon: Option<&Horizon>,
) -> Result<RebuildFrom> {
    let Some(horizon) = horizon else {
        return Ok(RebuildFrom::Earliest);
    };
    let mut reference: Option<i64> = None;
    for &(p, c) in committed {
        let low = earliest(consumer, topic, p)?;
        if c <= low {
            continue; // nothing before the committed offset to rebuild from
        }
        let read = read_ranges(consumer, topic, &[(p, (c - LOOK_BACK).max(low), c)])?;
        let (decoded, _) = read.decode(decoder, schema)?;
        let latest = latest_time(&decoded.batch, &horizon.time_column)?;
        let Some(latest) = latest else {
            tracing::warn!(
                "{topic}[{p}]: no event among the last {LOOK_BACK} messages before offset {c} to take the time of: rebuilding from the earliest offsets"
            );
            return Ok(RebuildFrom::Earliest);
        };
        reference = Some(reference.map_or(latest, |r| r.min(latest)));
    }
    let Some(reference_ns) = reference else {
        return Ok(RebuildFrom::Earliest);
    };
    let back = horizon.reach.saturating_add(horizon.skew);
    let back_ms = i64::try_from(back.as_millis()).unwrap_or(i64::MAX);
    Ok(RebuildFrom::TimeMs(
        (reference_ns / 1_000_000).saturating_sub(back_ms),
    ))
}

/// The first offset of `partition` stamped at or after `ms`, `None` when the broker finds none.
fn offset_for_time(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    ms: i64,
) -> Result<Option<i64>> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(ms))
        .map_err(PipelineError::kafka("looking up offsets for times"))?;
    let found = consumer
        .offsets_for_times(tpl, std::time::Duration::from_secs(30))
        .map_err(PipelineError::kafka("looking up offsets for times"))?;
    Ok(
        match found.find_partition(topic, partition).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        },
    )
}

/// The latest value (ns) of the timestamp column `column` in `batch`, `None` if it has no rows
/// (or no such column: the rebuild then reads from the earliest offsets).
fn latest_time(batch: &arrow::array::RecordBatch, column: &str) -> Result<Option<i64>> {
    let Some(col) = batch.column_by_name(column) else {
        tracing::warn!("the decoded events have no column {column:?} to take the time of");
        return Ok(None);
    };
    let ns = arrow::compute::cast(
        &arrow::compute::cast(
            col,
            &DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, None),
        )?,
        &DataType::Int64,
    )?;
    Ok(arrow::compute::max(ns.as_primitive::<Int64Type>()))
}
