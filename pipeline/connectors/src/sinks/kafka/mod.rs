//! The Kafka sink: scores, alerts and dead letters to their topics. A batch's delivery resolves
//! once the broker acknowledged every one of its records; a record the broker refuses for good
//! fails the delivery, so the driver stops without acknowledging the batch's input.
//!
//! In exactly-once mode ([`KafkaSink::transactional`]) every record goes into the open Kafka
//! transaction, and [`Sink::commit`] sends the input offsets into it and commits: outputs and
//! offsets become visible together or not at all. A commit error librdkafka calls retriable is
//! retried; one that requires an abort aborts and reports [`PipelineError::Transaction`] with
//! `aborted`, after which the run starts again from the last committed transaction; a fatal one
//! (another producer with the same `transactional.id` fenced this one) stops the pipeline.
//!
//! A dead letter always fits: when its original bytes are more than the producer or the
//! dead-letter topic takes, a reference goes in their place (no payload; headers with the
//! source coordinates, the size and the SHA-256 of the bytes), so a poison pill can neither stop
//! the pipeline nor make it loop on restart.
//!
//! Here the sink; `dead_letter`: a dead letter's headers and its stand-in; `transactions`:
//! the exactly-once transaction calls and what each error leads to.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, StringArray};
use futures::FutureExt;
use futures::future::BoxFuture;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer as _, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use super::{DeadLetter, Delivered, Origin, Sink, SinkBatch};

mod dead_letter;
mod transactions;

use crate::encoders::{self, Encoder, Payloads};
use crate::events::{self, Stage};
use crate::kafka::KafkaConfig;
use crate::sources::kafka::GroupMembership;
use crate::state::Positions;
use crate::{PipelineError, Result};
use dead_letter::{Reference, headers, too_large};
use riskpipe_core::Records;
use transactions::{
    GIVEN_UP_AFTER, TRANSACTION_TIMEOUT, abort, commit_transaction, transaction_error,
    transaction_timeout, within,
};

/// Which output a record belongs to.
#[derive(Debug, Clone)]
enum Output {
    Score,
    Alert,
    Challenger,
    Decision,
    /// A row for the next stage of a repartitioned topology.
    Forward,
    /// A dead letter, with the reference to send should its bytes turn out too large.
    DeadLetter(Option<Box<Reference>>),
}

/// The producer's client context: librdkafka's repeated complaints about a dead broker are
/// throttled like the consumer's, and each record's acknowledgement is counted into its batch.
struct Quiet {
    errors: crate::kafka::Throttle,
}

impl Output {
    /// The slot of [`Acks::delivered`] this output counts in.
    fn slot(&self) -> usize {
        match self {
            Output::Score => 0,
            Output::Alert => 1,
            Output::Challenger => 2,
            Output::Forward => 3,
            Output::DeadLetter(_) => 4,
            Output::Decision => 5,
        }
    }
}

/// The acknowledgements one batch waits for: a count for all its records, not a future per
/// record (a oneshot channel, a boxed future and a task in a join set each cost more than
/// encoding the record).
#[derive(Default)]
struct Acks {
    /// Records handed to librdkafka and not acknowledged yet.
    pending: AtomicUsize,
    /// Records delivered, per [`Output::slot`].
    delivered: [AtomicUsize; 6],
    /// Records the broker or the client refused for good.
    failures: Mutex<Vec<Failure>>,
    /// Signalled when `pending` falls to zero.
    settled: tokio::sync::Notify,
}

/// A record refused for good.
struct Failure {
    source: KafkaError,
    topic: String,
    /// A dead letter's stand-in, should the refusal be its size.
    reference: Option<Box<Reference>>,
}

impl Acks {
    /// Waits until every record handed over is acknowledged or refused.
    async fn settled(&self) {
        while self.pending.load(Ordering::Acquire) > 0 {
            // A notification between the check and the wait is kept as a permit.
            self.settled.notified().await;
        }
    }

    fn delivered(&self) -> Delivered {
        let n = |slot: usize| self.delivered[slot].load(Ordering::Acquire) as u64;
        Delivered {
            scores: n(0),
            alerts: n(1),
            challenger: n(2),
            forwarded: n(3),
            dead_letters: n(4),
            decisions: n(5),
        }
    }

    fn failures(&self) -> Vec<Failure> {
        self.failures
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default()
    }
}

/// What a record's acknowledgement counts for: its batch and its output. One ticket serves
/// every record of an output in a batch (each record holds a reference to it).
struct Ticket {
    acks: Arc<Acks>,
    output: Output,
}

impl rdkafka::producer::ProducerContext for Quiet {
    type DeliveryOpaque = Arc<Ticket>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Arc<Ticket>) {
        let acks = &ticket.acks;
        match result {
            Ok(_) => {
                acks.delivered[ticket.output.slot()].fetch_add(1, Ordering::AcqRel);
            }
            Err((source, m)) => {
                let reference = match &ticket.output {
                    Output::DeadLetter(Some(r)) => Some(r.clone()),
                    _ => None,
                };
                if let Ok(mut f) = acks.failures.lock() {
                    f.push(Failure {
                        source: source.clone(),
                        topic: rdkafka::message::Message::topic(m).to_string(),
                        reference,
                    });
                }
            }
        }
        if acks.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            acks.settled.notify_one();
        }
    }
}

impl rdkafka::ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        self.errors
            .warn(&format_args!("kafka producer: {error}: {reason}"));
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.errors.librdkafka(level, facility, message);
    }
}

type Producer = Arc<ThreadedProducer<Quiet>>;

/// Publishes to the topics of a `[kafka]` section.
pub struct KafkaSink {
    producer: Producer,
    pseudonyms: Option<super::pseudonyms::Pseudonyms>,
    /// What dead letters may carry of their messages.
    redactor: super::redact::Redactor,
    encoder: Box<dyn Encoder>,
    scores_topic: String,
    alerts_topic: String,
    challenger_topic: String,
    decisions_topic: String,
    /// The repartition topic the forwarded rows go to (always JSON: riskpipe's own format).
    forward_topic: Option<String>,
    dead_letter_topic: String,
    payloads: Payloads,
    /// Exactly-once: transactions, with the consumer whose offsets go into each (once named).
    transactions: Option<Option<GroupMembership>>,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("scores_topic", &self.scores_topic)
            .field("alerts_topic", &self.alerts_topic)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// A producer with the section's properties (and its producer-only ones), publishing
    /// at-least-once.
    pub fn new(kafka: &KafkaConfig) -> Result<Self> {
        Self::build(kafka, None)
    }

    /// A transactional producer (`kafka.transactional_id`). Initialising it aborts whatever a
    /// previous run with the same id left open and fences that run's producer, should it still
    /// be alive; so it comes before the committed offsets are looked up, which a broker holds
    /// back while a transaction that commits offsets is open. [`Self::committing_for`] names
    /// the consumer whose offsets its transactions carry.
    pub async fn transactional(kafka: &KafkaConfig) -> Result<Self> {
        let id = kafka.transactional_id.as_deref().ok_or_else(|| {
            PipelineError::Config(vec!["exactly-once needs kafka.transactional_id".into()])
        })?;
        let sink = Self::build(kafka, Some(id))?;
        let producer = sink.producer.clone();
        const OP: &str = "initialising transactions";
        let initialised = tokio::task::spawn_blocking(move || {
            // Bounded as every transaction call is (see `GIVEN_UP_AFTER`).
            within(OP, GIVEN_UP_AFTER, move || {
                producer
                    .init_transactions(TRANSACTION_TIMEOUT)
                    .map_err(|source| transaction_error(OP, source, false))?;
                producer
                    .begin_transaction()
                    .map_err(|source| transaction_error("beginning a transaction", source, false))
            })
        })
        .await
        .map_err(|e| PipelineError::Bug(format!("transaction task: {e}")))??;
        initialised.ok_or_else(|| PipelineError::Kafka {
            op: OP,
            source: format!("librdkafka did not return within {GIVEN_UP_AFTER:?}").into(),
        })??;
        tracing::info!(
            transactional_id = id,
            "exactly-once: transactions initialised"
        );
        Ok(Self {
            transactions: Some(None),
            ..sink
        })
    }

    /// Sensitive fields kept out of dead letters by `redactor`; the fields declared
    /// `pseudonymize` (`pseudonymized`) published as their pseudonyms in every record too.
    pub fn redacting(
        mut self,
        redactor: super::redact::Redactor,
        pseudonymized: Vec<String>,
    ) -> Self {
        if !pseudonymized.is_empty() {
            self.pseudonyms = self.pseudonyms.map(|p| p.also(pseudonymized));
        }
        self.redactor = redactor.with_pseudonyms(self.pseudonyms.clone());
        self
    }

    /// Forwarded rows (a stage before a repartition) go to `topic`.
    pub fn forwarding_to(mut self, topic: &str) -> Self {
        self.forward_topic = Some(topic.to_string());
        self
    }

    /// Transactions carry the input offsets of `group`'s consumer.
    pub fn committing_for(mut self, group: GroupMembership) -> Self {
        if let Some(g) = self.transactions.as_mut() {
            *g = Some(group);
        }
        self
    }

    fn build(kafka: &KafkaConfig, transactional_id: Option<&str>) -> Result<Self> {
        let mut cfg = kafka.client();
        if cfg.get("partitioner").is_none() {
            // Java's partitioner: keyed records land where Kafka's Java clients (and Kafka
            // Streams) put the same key, so topics keyed by riskpipe and by Java services line up.
            cfg.set("partitioner", "murmur2_random");
        }
        if cfg.get("linger.ms").is_none() {
            // librdkafka's 5 ms default would spend half of a 10 ms latency budget waiting.
            cfg.set("linger.ms", "1");
        }
        if cfg.get("enable.idempotence").is_none() {
            // A retry after a lost acknowledgement (a broker outage) neither writes a record
            // twice nor reorders a partition: the repartition topic's rows stay in offset order.
            cfg.set("enable.idempotence", "true");
        }
        for (k, v) in &kafka.producer_properties {
            cfg.set(k, v);
        }
        if let Some(id) = transactional_id {
            cfg.set("transactional.id", id);
            if cfg.get("transaction.timeout.ms").is_none() {
                cfg.set(
                    "transaction.timeout.ms",
                    transaction_timeout(kafka.commit_interval)
                        .as_millis()
                        .to_string(),
                );
            }
        }
        Ok(Self {
            producer: Arc::new(
                cfg.create_with_context(Quiet {
                    errors: crate::kafka::Throttle::new(Duration::from_secs(10)),
                })
                .map_err(PipelineError::kafka("creating the producer"))?,
            ),
            pseudonyms: kafka
                .pseudonyms
                .as_ref()
                .map(super::pseudonyms::Pseudonyms::from_config)
                .transpose()?,
            redactor: super::redact::Redactor::default(),
            encoder: kafka.encoder()?,
            scores_topic: kafka.topics.scores.clone(),
            alerts_topic: kafka.topics.alerts.clone(),
            challenger_topic: kafka.topics.challenger.clone(),
            decisions_topic: kafka.topics.decisions.clone(),
            forward_topic: None,
            dead_letter_topic: kafka.topics.dead_letter.clone(),
            payloads: Payloads::default(),
            transactions: None,
        })
    }

    /// Encodes `records` and hands each to librdkafka.
    async fn publish(&mut self, records: &Records, topic: Output, acks: &Arc<Acks>) -> Result<()> {
        let started = Instant::now();
        // Pseudonyms are for what leaves riskpipe; the next stage needs the real keys.
        let pseudonymised = match &self.pseudonyms {
            Some(p) if !matches!(topic, Output::Forward) => Some(p.apply(records)?),
            _ => None,
        };
        let records = pseudonymised.as_ref().unwrap_or(records);
        let name = match (&topic, &self.forward_topic) {
            (Output::Alert, _) => &self.alerts_topic,
            (Output::Challenger, _) => &self.challenger_topic,
            (Output::Decision, _) => &self.decisions_topic,
            (Output::Forward, Some(t)) => t,
            (Output::Forward, None) => {
                return Err(PipelineError::Bug(
                    "rows to forward, but no repartition topic".into(),
                ));
            }
            _ => &self.scores_topic,
        };
        self.payloads.clear();
        match topic {
            Output::Forward => {
                encoders::JsonEncoder.encode(name, &records.batch, &mut self.payloads)?
            }
            _ => self
                .encoder
                .encode(name, &records.batch, &mut self.payloads)?,
        }
        events::stage_time(Stage::Encode, started.elapsed().as_secs_f64());
        let keys = records
            .keys
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| PipelineError::Bug("record keys are not Utf8".into()))?;
        let ticket = Arc::new(Ticket {
            acks: acks.clone(),
            output: topic,
        });
        for (i, payload) in self.payloads.iter().enumerate() {
            let key = keys.is_valid(i).then(|| keys.value(i).as_bytes());
            send(&self.producer, name, key, payload, None, &ticket)
                .await
                .map_err(|source| PipelineError::Delivery {
                    topic: name.clone(),
                    source: Box::new(source),
                })?;
        }
        Ok(())
    }

    async fn dead_letter(&self, d: &DeadLetter, acks: &Arc<Acks>) -> Result<()> {
        let Origin::Message(m) = &d.origin else {
            return Err(PipelineError::Bug(
                "a row of a file reached the Kafka dead-letter topic".into(),
            ));
        };
        // What the message's sensitive fields leave of it.
        let (m, withheld) = match self.redactor.redact(m) {
            super::redact::Redacted::Unchanged => (std::borrow::Cow::Borrowed(m), false),
            super::redact::Redacted::Rewritten { payload, key } => (
                std::borrow::Cow::Owned(crate::sources::Message {
                    payload,
                    key,
                    ..m.clone()
                }),
                false,
            ),
            super::redact::Redacted::Withheld => (
                std::borrow::Cow::Owned(crate::sources::Message {
                    payload: Vec::new(),
                    key: None,
                    ..m.clone()
                }),
                true,
            ),
        };
        let m = m.as_ref();
        let mut headers = headers(&m.topic, m.partition, m.offset, d.kind.as_str(), &d.reason);
        if withheld {
            headers = headers.insert(rdkafka::message::Header {
                key: riskpipe_core::dead_letters::PAYLOAD,
                value: Some(b"withheld: its stream declares sensitive fields riskpipe could not remove from it"),
            });
        }
        let topic = &self.dead_letter_topic;
        let failed = |source: KafkaError| PipelineError::Delivery {
            topic: topic.clone(),
            source: Box::new(source),
        };
        // The reference is kept in case the broker finds the bytes too large for the topic.
        let ticket = Arc::new(Ticket {
            acks: acks.clone(),
            output: Output::DeadLetter(Some(Box::new(Reference::of(d, m)))),
        });
        match send(
            &self.producer,
            topic,
            m.key.as_deref(),
            &m.payload,
            Some(headers),
            &ticket,
        )
        .await
        {
            Ok(()) => {}
            Err(e) if too_large(&e) => {
                let reference = Reference::of(d, m);
                tracing::warn!(
                    size = reference.size,
                    "dead letter too large to forward: sending a reference in its place"
                );
                let ticket = Arc::new(Ticket {
                    acks: acks.clone(),
                    output: Output::DeadLetter(None),
                });
                send_reference(&self.producer, topic, &reference, &ticket)
                    .await
                    .map_err(failed)?;
            }
            Err(e) => return Err(failed(e)),
        }
        Ok(())
    }
}

async fn send_reference(
    producer: &Producer,
    topic: &str,
    reference: &Reference,
    ticket: &Arc<Ticket>,
) -> Result<(), KafkaError> {
    send(
        producer,
        topic,
        reference.key.as_deref(),
        &[],
        Some(reference.headers()),
        ticket,
    )
    .await
}

/// Hands a record to librdkafka, waiting while its queue is full (backpressure); its
/// acknowledgement counts into `ticket`'s batch.
async fn send(
    producer: &Producer,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: Option<OwnedHeaders>,
    ticket: &Arc<Ticket>,
) -> std::result::Result<(), KafkaError> {
    let mut record: BaseRecord<'_, [u8], [u8], Arc<Ticket>> =
        BaseRecord::with_opaque_to(topic, ticket.clone()).payload(payload);
    record.key = key;
    record.headers = headers;
    // Counted before the hand-over: the acknowledgement may come before `send` returns.
    ticket.acks.pending.fetch_add(1, Ordering::AcqRel);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err((e, _)) => {
                // Never handed over: no acknowledgement will come (the batch fails anyway).
                ticket.acks.pending.fetch_sub(1, Ordering::AcqRel);
                return Err(e);
            }
        }
    }
}

impl Sink for KafkaSink {
    type Delivery = BoxFuture<'static, Result<Delivered>>;

    fn transactional(&self) -> bool {
        self.transactions.is_some()
    }

    async fn commit(&mut self, positions: &Positions) -> Result<()> {
        let Some(group) = self.transactions.clone() else {
            return Ok(());
        };
        let group = group.ok_or_else(|| {
            PipelineError::Bug("a transactional sink without a consumer to commit for".into())
        })?;
        let mut offsets = TopicPartitionList::new();
        for (topic, partitions) in positions {
            for (&partition, &next) in partitions {
                offsets
                    .add_partition_offset(topic, partition, Offset::Offset(next))
                    .map_err(PipelineError::kafka("listing the input offsets"))?;
            }
        }
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || commit_transaction(&producer, &group, &offsets))
            .await
            .map_err(|e| PipelineError::Bug(format!("transaction task: {e}")))?
    }

    async fn abort(&mut self) {
        if self.transactions.is_none() {
            return;
        }
        let producer = self.producer.clone();
        match tokio::task::spawn_blocking(move || abort(&producer, "on the way out")).await {
            Ok(true) => events::transaction_aborted(),
            Ok(false) => {}
            Err(e) => tracing::warn!("kafka transaction: abort task: {e}"),
        }
    }

    async fn send(&mut self, batch: SinkBatch) -> Result<Self::Delivery> {
        let acks = Arc::new(Acks::default());
        if let Some(r) = &batch.output.scores {
            self.publish(r, Output::Score, &acks).await?;
        }
        if let Some(r) = &batch.output.alerts {
            self.publish(r, Output::Alert, &acks).await?;
        }
        if let Some(r) = &batch.output.challenger {
            self.publish(r, Output::Challenger, &acks).await?;
        }
        if let Some(r) = &batch.output.decisions {
            self.publish(r, Output::Decision, &acks).await?;
        }
        if let Some(r) = &batch.output.forward {
            self.publish(r, Output::Forward, &acks).await?;
        }
        for d in &batch.dead {
            self.dead_letter(d, &acks).await?;
        }
        let producer = self.producer.clone();
        let dead_letter_topic = self.dead_letter_topic.clone();
        Ok(async move {
            acks.settled().await;
            let mut delivered = acks.delivered();
            for failure in acks.failures() {
                let Failure {
                    source,
                    topic,
                    reference,
                } = failure;
                // The broker refused a dead letter as too large for the topic.
                let Some(reference) = reference.filter(|_| too_large(&source)) else {
                    return Err(PipelineError::Delivery {
                        topic,
                        source: Box::new(source),
                    });
                };
                tracing::warn!(
                    size = reference.size,
                    "dead letter too large for its topic: sending a reference in its place"
                );
                let failed = |source: KafkaError| PipelineError::Delivery {
                    topic: dead_letter_topic.clone(),
                    source: Box::new(source),
                };
                let retry = Arc::new(Acks::default());
                let ticket = Arc::new(Ticket {
                    acks: retry.clone(),
                    output: Output::DeadLetter(None),
                });
                send_reference(&producer, &dead_letter_topic, &reference, &ticket)
                    .await
                    .map_err(failed)?;
                drop(ticket);
                retry.settled().await;
                if let Some(f) = retry.failures().into_iter().next() {
                    return Err(failed(f.source));
                }
                delivered.dead_letters += 1;
            }
            Ok(delivered)
        }
        .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_call_that_never_returns_is_given_up_and_its_transaction_abandoned() {
        let sink = KafkaSink::new(&KafkaConfig::for_bootstrap("127.0.0.1:1")).expect("producer");
        let patience = Duration::from_millis(200);
        let started = Instant::now();
        let stuck = transactions::transaction_call_within(
            &sink.producer,
            "sending the input offsets",
            patience,
            |_| {
                // As librdkafka's call waiting on a coordinator that left the cluster.
                std::thread::sleep(Duration::from_secs(5));
                Ok(())
            },
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "given up after its patience, not after the call: {:?}",
            started.elapsed()
        );
        match stuck {
            Err(PipelineError::Transaction {
                op,
                aborted,
                source,
            }) => {
                assert_eq!(op, "sending the input offsets");
                assert!(aborted, "the run starts again from the last commit");
                assert!(
                    source.to_string().contains("did not return within 200ms"),
                    "{source}"
                );
            }
            other => panic!("expected a given-up transaction, got {other:?}"),
        }
        let answered =
            transactions::transaction_call_within(&sink.producer, "committing", patience, |_| {
                Ok(())
            });
        assert!(answered.is_ok(), "{answered:?}");
    }

    #[test]
    fn a_crashed_instances_transaction_ends_within_ten_seconds_or_three_commit_intervals() {
        assert_eq!(
            transaction_timeout(Duration::from_secs(1)),
            Duration::from_secs(10)
        );
        assert_eq!(
            transaction_timeout(Duration::from_secs(5)),
            Duration::from_secs(15)
        );
    }
}
