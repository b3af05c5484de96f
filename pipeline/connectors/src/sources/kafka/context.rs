//! The live consumer's callbacks: readiness and broker health, rebalances (and the handover
//! of a revoked partition's state), statistics, commits.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};

use crate::events;
use crate::kafka::Throttle;
use crate::sources::Handover;
use crate::state::Positions;
use riskpipe_core::Health;

use super::*;

/// The consumer's view of its own health: readiness is holding partitions while a broker is up.
pub(crate) struct Context {
    pub(super) health: Arc<Health>,
    pub(super) assigned: AtomicBool,
    pub(super) ever_assigned: AtomicBool,
    pub(super) brokers_up: AtomicBool,
    pub(super) last_error: Mutex<Option<String>>,
    pub(super) errors: Throttle,
    /// The events topic, and its partitions this consumer holds.
    pub(super) events_topic: String,
    pub(super) held: Mutex<Arc<[i32]>>,
    /// State per partition that follows the assignment (see [`Follow`]).
    pub(super) following: AtomicBool,
    /// Partition numbers assigned but not restored yet: paused, their messages dropped.
    pub(super) restoring: Mutex<BTreeSet<i32>>,
    /// Partition numbers whose state this process holds.
    pub(super) owned: Mutex<BTreeSet<i32>>,
    /// The latest assignment, until the source has followed it.
    pub(super) assignment: Mutex<Option<Vec<(String, i32)>>>,
    /// Wakes the source when an assignment arrives (its new partitions are paused: no
    /// message would).
    pub(super) assigned_now: tokio::sync::Notify,
    /// Batches handed on and acknowledged; with exactly-once and state that follows the
    /// assignment (`handing_over`), the commit a revoke waits for.
    pub(super) handover: Arc<Handover>,
    pub(super) handing_over: AtomicBool,
    /// The acker's positions (exactly-once: an assignment drops those of partitions given up,
    /// so that no later transaction commits their offsets over their next owner's).
    pub(super) positions: Arc<Mutex<Positions>>,
}

impl Context {
    fn hold(&self, partitions: Arc<[i32]>) {
        if let Ok(mut held) = self.held.lock() {
            *held = partitions;
        }
    }

    pub(super) fn held(&self) -> Arc<[i32]> {
        self.held
            .lock()
            .map_or_else(|_| Arc::from([]), |h| h.clone())
    }

    fn update_ready(&self) {
        self.health.set_ready(
            self.assigned.load(Ordering::Relaxed) && self.brokers_up.load(Ordering::Relaxed),
        );
    }

    /// A new assignment while following: partitions whose state this process does not hold
    /// are paused until the source has restored it.
    fn follow(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let owned = self.owned.lock().map(|o| o.clone()).unwrap_or_default();
        let mut pause = TopicPartitionList::new();
        let mut new = BTreeSet::new();
        let mut all = Vec::new();
        for e in tpl.elements() {
            all.push((e.topic().to_string(), e.partition()));
            if !owned.contains(&e.partition()) {
                new.insert(e.partition());
                pause.add_partition(e.topic(), e.partition());
            }
        }
        if pause.count() > 0
            && let Err(e) = consumer.pause(&pause)
        {
            tracing::warn!("pausing newly assigned partitions: {e}");
        }
        if let Ok(mut r) = self.restoring.lock() {
            *r = new;
        }
        if self.handing_over.load(Ordering::Acquire)
            && let Ok(mut positions) = self.positions.lock()
        {
            // Every batch handed on was committed when the partitions were revoked.
            for (topic, partitions) in positions.iter_mut() {
                partitions.retain(|p, _| all.iter().any(|(t, q)| t == topic && q == p));
            }
        }
        if let Ok(mut a) = self.assignment.lock() {
            *a = Some(all);
        }
        self.assigned_now.notify_one();
    }

    pub(super) fn remember(&self, error: String) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error);
        }
    }
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions {
                if partition >= 0 && p.consumer_lag >= 0 {
                    events::consumer_lag(&topic, partition, p.consumer_lag);
                }
            }
        }
        let up = statistics.brokers.values().any(|b| b.state == "UP");
        self.brokers_up.store(up, Ordering::Relaxed);
        self.update_ready();
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.brokers_up.store(false, Ordering::Relaxed);
            self.update_ready();
        }
        self.remember(format!("{error}: {reason}"));
        self.errors
            .warn(&format_args!("kafka client: {error}: {reason}"));
    }

    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.errors.librdkafka(level, facility, message);
    }
}

impl ConsumerContext for Context {
    /// Before librdkafka gives the partitions up: the consumer rejoins the group as soon as
    /// they are unassigned, whatever the callback does after that, so the hand-over's commit
    /// must come first (as Kafka Streams commits in `onPartitionsRevoked`).
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if matches!(rebalance, Rebalance::Revoke(_)) && self.handing_over.load(Ordering::Acquire) {
            let started = Instant::now();
            if self.handover.revoked(HANDOVER_TIMEOUT) {
                tracing::info!(
                    took = ?started.elapsed(),
                    "exactly-once: every batch read committed before the partitions go"
                );
            } else {
                tracing::warn!(
                    "exactly-once: the commit before the partitions go did not come within {HANDOVER_TIMEOUT:?}: the open transaction will be aborted"
                );
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned");
                let mut events: Vec<i32> = tpl
                    .elements_for_topic(&self.events_topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                events.sort_unstable();
                self.hold(Arc::from(events));
                if self.following.load(Ordering::Relaxed) {
                    self.follow(consumer, tpl);
                }
                self.assigned.store(tpl.count() > 0, Ordering::Relaxed);
                self.ever_assigned.store(true, Ordering::Relaxed);
                // An assignment comes through a live coordinator.
                self.brokers_up.store(true, Ordering::Relaxed);
                self.update_ready();
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions revoked");
                self.hold(Arc::from([]));
                self.assigned.store(false, Ordering::Relaxed);
                self.update_ready();
            }
            Rebalance::Error(e) => tracing::warn!("rebalance error: {e}"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) => events::commit(true),
            // Nothing stored since the last commit: not a failure.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                events::commit(false);
                tracing::warn!("offset commit failed (will be retried with the next): {e}");
            }
        }
    }
}
