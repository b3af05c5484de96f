//! `riskpipe replay`: a topic range read back from Kafka into the same backtest as a file.
//!
//! Transactions between two bounds (offsets, or timestamps resolved with the broker's
//! offsets-for-times) and the fraud labels of those transactions are read with an assigned
//! consumer that commits nothing, decoded with the live path's decoder, ordered by
//! (event time, id) and handed to [`crate::backtest_history`]: the same operators, model and
//! report as `riskpipe backtest`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, Int64Array, RecordBatch};
use arrow::compute::{filter_record_batch, sort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use riskpipe_schemas::{fraud_label_schema, label, transaction_schema, tx};

use super::KafkaConfig;
use super::decode::decode;
use crate::source::History;
use crate::{PipelineConfig, PipelineError, Result};

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
    /// Payloads, partition by partition, each in offset order.
    pub payloads: Vec<Vec<u8>>,
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
        let (low, high) = consumer.fetch_watermarks(topic, p, TIMEOUT)?;
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
                tpl.add_partition_offset(topic, p, Offset::Offset(ms))?;
                let found = consumer.offsets_for_times(tpl, TIMEOUT)?;
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

/// Reads `[from, to)` of every partition of `topic`.
pub fn read_topic(kafka: &KafkaConfig, topic: &str, from: Bound, to: Bound) -> Result<TopicRead> {
    let mut cfg = kafka.client();
    cfg.set("group.id", format!("{}-replay", kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    let consumer: BaseConsumer = cfg.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(PipelineError::External(format!(
            "topic {topic:?} has no partitions (does it exist?)"
        )));
    }
    let starts = resolve(&consumer, topic, &partitions, from, false)?;
    let ends = resolve(&consumer, topic, &partitions, to, true)?;
    let mut payloads = Vec::new();
    for ((&p, &start), &end) in partitions.iter().zip(&starts).zip(&ends) {
        if start >= end {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(start))?;
        consumer.assign(&tpl)?;
        let mut next = start;
        let mut idle = Instant::now();
        while next < end {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    idle = Instant::now();
                    if m.offset() >= end {
                        break;
                    }
                    next = m.offset() + 1;
                    payloads.push(m.payload().map(<[u8]>::to_vec).unwrap_or_default());
                }
                Some(Err(e)) => return Err(e.into()),
                None if idle.elapsed() > TIMEOUT => {
                    return Err(PipelineError::External(format!(
                        "{topic}[{p}]: no message for {TIMEOUT:?} at offset {next} (range ends at {end})"
                    )));
                }
                None => {}
            }
        }
    }
    Ok(TopicRead { payloads })
}

/// A history from Kafka: the transactions of the range, ordered like a file replay, with the
/// label column set from the fraud-label topic, and those labels as label events.
pub fn history_from_kafka(
    cfg: &PipelineConfig,
    from: Bound,
    to: Bound,
) -> Result<(History, usize)> {
    let kafka = cfg.kafka.as_ref().ok_or_else(|| {
        PipelineError::Config(vec!["no [kafka] section: replay reads from Kafka".into()])
    })?;
    let read = read_topic(kafka, &kafka.topics.transactions, from, to)?;
    let refs: Vec<&[u8]> = read.payloads.iter().map(Vec::as_slice).collect();
    let decoded = decode(&transaction_schema(), &refs, kafka.max_message_bytes);
    let rejected = decoded.rejected.len();
    for r in decoded.rejected.iter().take(5) {
        tracing::warn!(
            "skipping undecodable transaction #{}: {}",
            r.index,
            r.reason
        );
    }
    let transactions = decoded.batch;
    let labels = if kafka.topics.labels.is_empty() {
        RecordBatch::new_empty(fraud_label_schema())
    } else {
        let read = read_topic(kafka, &kafka.topics.labels, Bound::Edge, Bound::Edge)?;
        let refs: Vec<&[u8]> = read.payloads.iter().map(Vec::as_slice).collect();
        let d = decode(&fraud_label_schema(), &refs, kafka.max_message_bytes);
        d.batch
    };
    // Only labels of transactions in the range: others would count frauds whose transactions
    // the windows never saw.
    let ids: HashSet<i64> = transactions
        .column_by_name(tx::TRANSACTION_ID)
        .map(|c| {
            c.as_primitive::<Int64Type>()
                .values()
                .iter()
                .copied()
                .collect()
        })
        .unwrap_or_default();
    let label_ids = labels
        .column_by_name(tx::TRANSACTION_ID)
        .ok_or_else(|| PipelineError::Bug("label batch without id".into()))?
        .as_primitive::<Int64Type>()
        .clone();
    let keep = arrow::array::BooleanArray::from_iter(
        label_ids.values().iter().map(|id| Some(ids.contains(id))),
    );
    let labels = filter_record_batch(&labels, &keep)?;
    let frauds: HashSet<i64> = {
        let id = labels
            .column_by_name(tx::TRANSACTION_ID)
            .ok_or_else(|| PipelineError::Bug("label batch without id".into()))?
            .as_primitive::<Int64Type>();
        let flag = labels
            .column_by_name(label::TX_FRAUD)
            .ok_or_else(|| PipelineError::Bug("label batch without TX_FRAUD".into()))?
            .as_primitive::<Int64Type>();
        (0..labels.num_rows())
            .filter(|&i| flag.value(i) != 0)
            .map(|i| id.value(i))
            .collect()
    };
    // The truth column the backtest report reads, from the labels.
    let truth: Int64Array = transactions
        .column_by_name(tx::TRANSACTION_ID)
        .ok_or_else(|| PipelineError::Bug("transactions without id".into()))?
        .as_primitive::<Int64Type>()
        .values()
        .iter()
        .map(|id| Some(i64::from(frauds.contains(id))))
        .collect();
    let mut fields: Vec<Arc<Field>> = transactions.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(
        &cfg.replay.label,
        DataType::Int64,
        false,
    )));
    let mut columns = transactions.columns().to_vec();
    columns.push(Arc::new(truth));
    let with_truth = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    let mut history = crate::source::prepare(
        std::path::Path::new(&kafka.topics.transactions),
        with_truth,
        &cfg.features,
        &cfg.replay,
    )?;
    // The label events as they were published (their own label times), in label-time order.
    let label_time = labels
        .column_by_name(label::LABEL_TIME)
        .ok_or_else(|| PipelineError::Bug("label batch without LABEL_TIME".into()))?;
    let order = sort_to_indices(label_time, None, None)?;
    history.labels = take_record_batch(&labels, &order)?;
    Ok((history, rejected))
}
