//! Acknowledged batches' offsets: stored for librdkafka's commits, or kept for the sink's
//! transactions in exactly-once mode.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::events;
use crate::sources::{Acker, Handover};
use crate::state::Positions;
use crate::{PipelineError, Result};

use super::*;

/// Stores acknowledged offsets; commits on the way out. In exactly-once mode it only keeps the
/// positions: the sink's transactions commit them.
pub struct KafkaAcker {
    pub(super) consumer: Arc<Consumer_>,
    pub(super) positions: Arc<Mutex<Positions>>,
    pub(super) transactional: bool,
}

impl Drop for KafkaAcker {
    fn drop(&mut self) {
        // The run is over: a revoke (the consumer closing) has no commit to wait for.
        self.consumer.context().handover.close();
    }
}

impl std::fmt::Debug for KafkaAcker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaAcker").finish_non_exhaustive()
    }
}

impl Acker for KafkaAcker {
    type Ack = Offsets;

    fn ack(&mut self, offsets: Offsets) {
        if let Ok(mut positions) = self.positions.lock() {
            for ((topic, partition), offset) in &offsets {
                if !positions.contains_key(&**topic) {
                    positions.insert(topic.to_string(), Default::default());
                }
                if let Some(partitions) = positions.get_mut(&**topic) {
                    let next = partitions.entry(*partition).or_insert(0);
                    *next = (*next).max(offset + 1);
                }
            }
        }
        for ((topic, partition), offset) in &offsets {
            if self.transactional {
                continue;
            }
            if let Err(e) = self.consumer.store_offset(topic, *partition, *offset) {
                // The partition moved to another member in a rebalance: it re-processes from
                // the last commit, which is still at-least-once.
                tracing::warn!(%topic, partition, offset, "offset not stored: {e}");
            }
        }
        // Counted for the source, which waits for them before following an assignment.
        self.consumer.context().handover.ack();
    }

    fn finish(&mut self) -> Result<bool> {
        if self.transactional {
            return Ok(true);
        }
        match commit_stored(&self.consumer, "final offset commit") {
            // Stopping while the group rebalances (instances stopped one after another): the
            // partitions' next owner reads the uncommitted tail again, as after a crash.
            Err(e) if refused_in_rebalance(&e) => {
                tracing::warn!(
                    "final offset commit refused while the group rebalances ({e}): the next owner of the partitions re-reads the uncommitted tail; no checkpoint at shutdown"
                );
                Ok(false)
            }
            other => other.map(|()| true),
        }
    }

    fn positions(&self) -> Positions {
        self.positions.lock().map(|p| p.clone()).unwrap_or_default()
    }

    fn handover(&self) -> Option<Arc<Handover>> {
        let context = self.consumer.context();
        context
            .handing_over
            .load(Ordering::Acquire)
            .then(|| context.handover.clone())
    }

    fn commit(&self) -> Option<crate::sources::Commit> {
        if self.transactional {
            return None;
        }
        let consumer = self.consumer.clone();
        Some(Box::new(move || {
            commit_stored(&consumer, "offset commit before a checkpoint")
        }))
    }
}

/// Commits the stored offsets synchronously.
/// Whether a commit failed because the group is rebalancing (this member's generation is over).
fn refused_in_rebalance(e: &PipelineError) -> bool {
    let PipelineError::Kafka { source, .. } = e else {
        return false;
    };
    matches!(
        source.downcast_ref::<KafkaError>(),
        Some(KafkaError::ConsumerCommit(
            RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::IllegalGeneration
        ))
    )
}

pub(super) fn commit_stored(consumer: &Consumer_, op: &'static str) -> Result<()> {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => events::commit(true),
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => return Err(PipelineError::kafka(op)(e)),
    }
    Ok(())
}
