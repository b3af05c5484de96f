//! Exactly-once: each Kafka transaction call, retried, aborted or fatal as librdkafka says.

use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer as _;

use crate::events::{self};
use crate::sources::kafka::GroupMembership;
use crate::{PipelineError, Result};

use super::*;

/// How long one transaction call may take before librdkafka reports a (retriable) timeout.
pub(super) const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Retriable errors of one transaction call retried before giving up (aborting).
pub(super) const TRANSACTION_RETRIES: u32 = 10;

/// A transaction error of `op`: `aborted` when the transaction was aborted.
pub(super) fn transaction_error(
    op: &'static str,
    source: KafkaError,
    aborted: bool,
) -> PipelineError {
    PipelineError::Transaction {
        op,
        source: Box::new(source),
        aborted,
    }
}

/// What librdkafka says may be done after a failed transaction call.
pub(super) enum Next {
    Retry,
    Abort,
    Stop,
}

pub(super) fn next_after(e: &KafkaError) -> Next {
    match e {
        KafkaError::Transaction(t) if t.is_fatal() => Next::Stop,
        KafkaError::Transaction(t) if t.txn_requires_abort() => Next::Abort,
        KafkaError::Transaction(t) if t.is_retriable() => Next::Retry,
        _ => Next::Stop,
    }
}

/// Runs one transaction call, retrying what librdkafka calls retriable; an error that needs
/// an abort (or retries running out) aborts the transaction.
pub(super) fn transaction_call(
    producer: &Producer,
    op: &'static str,
    call: impl Fn() -> std::result::Result<(), KafkaError>,
) -> Result<()> {
    let mut retries = 0;
    loop {
        let Err(e) = call() else { return Ok(()) };
        match next_after(&e) {
            Next::Retry if retries < TRANSACTION_RETRIES => {
                retries += 1;
                tracing::warn!("kafka transaction: {op}: {e}; retrying ({retries})");
                std::thread::sleep(Duration::from_millis(100 * u64::from(retries)));
            }
            Next::Retry | Next::Abort => {
                if let Err(a) = producer.abort_transaction(TRANSACTION_TIMEOUT) {
                    // The next run's initialisation aborts it (same transactional.id).
                    tracing::warn!("kafka transaction: aborting after {op} failed: {a}");
                }
                events::transaction_aborted();
                return Err(transaction_error(op, e, true));
            }
            Next::Stop => return Err(transaction_error(op, e, false)),
        }
    }
}

/// Sends `offsets` into the open transaction, commits it and begins the next.
pub(super) fn commit_transaction(
    producer: &Producer,
    group: &GroupMembership,
    offsets: &TopicPartitionList,
) -> Result<()> {
    let started = Instant::now();
    if offsets.count() > 0 {
        let metadata = group.metadata().ok_or_else(|| {
            PipelineError::Bug("the consumer has no group metadata to commit with".into())
        })?;
        transaction_call(producer, "sending the input offsets", || {
            producer.send_offsets_to_transaction(offsets, &metadata, TRANSACTION_TIMEOUT)
        })?;
    }
    transaction_call(producer, "committing", || {
        producer.commit_transaction(TRANSACTION_TIMEOUT)
    })?;
    events::transaction_committed(started.elapsed().as_secs_f64());
    producer
        .begin_transaction()
        .map_err(|source| transaction_error("beginning a transaction", source, false))
}

/// How long a broker keeps a transaction open without a commit before it aborts it: what a
/// crashed instance's open transaction costs the readers of its outputs. `read_committed`
/// readers of a partition it wrote to (the repartition topic's, the scores') read nothing past
/// it until it ends, and its restart with the same id ends it at once. librdkafka's default is
/// 60 s; riskpipe takes 10 s as Kafka Streams does for exactly-once, or three commit intervals
/// if that is longer.
pub(super) fn transaction_timeout(commit_interval: Duration) -> Duration {
    (commit_interval * 3).max(Duration::from_secs(10))
}
