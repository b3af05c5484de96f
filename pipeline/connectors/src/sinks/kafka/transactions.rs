//! Exactly-once: each Kafka transaction call, retried, aborted or fatal as librdkafka says.

use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer as _;

use crate::events::{self};
use crate::sources::kafka::GroupMembership;
use crate::{PipelineError, Result};
use riskpipe_core::error::SourceError;

use super::*;

/// How long one transaction call may take before librdkafka reports a (retriable) timeout.
pub(super) const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Retriable errors of one transaction call retried before giving up (aborting).
pub(super) const TRANSACTION_RETRIES: u32 = 10;

/// How long riskpipe waits for a transaction call before it gives the call up. librdkafka can
/// leave a call waiting for good, past its own timeout, on a coordinator whose broker left the
/// cluster (librdkafka issues 5456 and 5511: `send_offsets_to_transaction` after a broker of
/// three was killed for good hung the pipeline here).
pub(super) const GIVEN_UP_AFTER: Duration =
    TRANSACTION_TIMEOUT.saturating_add(Duration::from_secs(10));

/// Runs `call` on a thread of its own and waits for it at most `limit`: its result, or `None`
/// when it has not returned by then (the thread is left to it, with what it holds).
pub(super) fn within<T: Send + 'static>(
    op: &'static str,
    limit: Duration,
    call: impl FnOnce() -> T + Send + 'static,
) -> Result<Option<T>> {
    let (done, result) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("kafka-transaction".into())
        .spawn(move || {
            // The receiver is gone once the call was given up: nobody to tell.
            let _ = done.send(call());
        })
        .map_err(|source| PipelineError::Runtime { what: op, source })?;
    Ok(result.recv_timeout(limit).ok())
}

/// The error of a call given up after `waited`: the transaction is abandoned, and the run
/// starts again from the last committed one, its producer initialised anew with the same
/// `transactional.id`, which aborts the abandoned transaction and fences the stuck producer.
fn given_up(op: &'static str, waited: Duration) -> PipelineError {
    counted_abort(
        op,
        format!(
            "librdkafka did not return within {waited:?} (a coordinator whose broker left the cluster can hold a call for good); the transaction is abandoned and the next run's producer aborts it"
        )
        .into(),
    )
}

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

/// Counts an aborted transaction (or one abandoned to the next run's producer) and returns
/// the error of `op` that ends its run.
fn counted_abort(op: &'static str, source: SourceError) -> PipelineError {
    events::transaction_aborted();
    PipelineError::Transaction {
        op,
        source,
        aborted: true,
    }
}

/// Aborts the open transaction, giving up after [`GIVEN_UP_AFTER`]: either way the next run's
/// initialisation (same `transactional.id`) ends whatever is left open.
pub(super) fn abort(producer: &Producer, why: &str) -> bool {
    let p = producer.clone();
    let failed = match within("aborting a transaction", GIVEN_UP_AFTER, move || {
        p.abort_transaction(TRANSACTION_TIMEOUT)
    }) {
        Ok(Some(Ok(()))) => return true,
        Ok(Some(Err(e))) => e.to_string(),
        Ok(None) => {
            format!("no answer within {GIVEN_UP_AFTER:?}; the next run's producer aborts it")
        }
        Err(e) => e.to_string(),
    };
    tracing::warn!("kafka transaction: aborting {why}: {failed}");
    false
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
/// an abort (or retries running out) aborts the transaction; a call that does not return
/// within [`GIVEN_UP_AFTER`] is given up and its transaction abandoned (see [`given_up`]).
pub(super) fn transaction_call(
    producer: &Producer,
    op: &'static str,
    call: impl Fn(&Producer) -> std::result::Result<(), KafkaError> + Send + Sync + 'static,
) -> Result<()> {
    transaction_call_within(producer, op, GIVEN_UP_AFTER, call)
}

/// [`transaction_call`] giving a call up after `patience`.
pub(super) fn transaction_call_within(
    producer: &Producer,
    op: &'static str,
    patience: Duration,
    call: impl Fn(&Producer) -> std::result::Result<(), KafkaError> + Send + Sync + 'static,
) -> Result<()> {
    let call = Arc::new(call);
    let mut retries = 0;
    loop {
        let (p, c) = (producer.clone(), call.clone());
        let Some(result) = within(op, patience, move || c(&p))? else {
            return Err(given_up(op, patience));
        };
        let Err(e) = result else { return Ok(()) };
        match next_after(&e) {
            Next::Retry if retries < TRANSACTION_RETRIES => {
                retries += 1;
                tracing::warn!("kafka transaction: {op}: {e}; retrying ({retries})");
                std::thread::sleep(Duration::from_millis(100 * u64::from(retries)));
            }
            Next::Retry | Next::Abort => {
                // Should the abort fail too, the next run's initialisation ends the transaction.
                abort(producer, &format!("after {op} failed"));
                return Err(counted_abort(op, Box::new(e)));
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
        let offsets = offsets.clone();
        transaction_call(producer, "sending the input offsets", move |p| {
            p.send_offsets_to_transaction(&offsets, &metadata, TRANSACTION_TIMEOUT)
        })?;
    }
    transaction_call(producer, "committing", |p| {
        p.commit_transaction(TRANSACTION_TIMEOUT)
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
