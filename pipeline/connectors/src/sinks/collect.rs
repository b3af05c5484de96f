//! Everything into memory: the sink of backtests, exports and tests. Its delivery is immediate.

use std::future::Ready;
use std::sync::{Arc, Mutex};

use indicatif::ProgressBar;

use super::{DeadLetter, Delivered, Sink, SinkBatch};
use crate::{PipelineError, Result};
use riskpipe_core::JobOutput;

/// What a [`CollectSink`] received, in batch order.
#[derive(Debug, Default)]
pub struct Collected {
    /// Each batch's output.
    pub outputs: Vec<JobOutput>,
    /// Every dead letter.
    pub dead: Vec<DeadLetter>,
}

/// Keeps every batch; a clone shares the same store.
#[derive(Debug, Clone, Default)]
pub struct CollectSink {
    store: Arc<Mutex<Collected>>,
    progress: Option<ProgressBar>,
}

impl CollectSink {
    /// A sink advancing `progress` by each batch's events.
    pub fn with_progress(progress: ProgressBar) -> Self {
        Self {
            store: Arc::default(),
            progress: Some(progress),
        }
    }

    /// Takes what was collected so far.
    pub fn take(&self) -> Result<Collected> {
        let mut store = self
            .store
            .lock()
            .map_err(|_| PipelineError::Bug("collect sink lock poisoned".into()))?;
        Ok(std::mem::take(&mut *store))
    }
}

fn rows(r: Option<&riskpipe_core::Records>) -> u64 {
    r.map_or(0, |r| r.batch.num_rows() as u64)
}

impl Sink for CollectSink {
    type Delivery = Ready<Result<Delivered>>;

    async fn send(&mut self, batch: SinkBatch) -> Result<Self::Delivery> {
        let delivered = Delivered {
            scores: rows(batch.output.scores.as_ref()),
            alerts: rows(batch.output.alerts.as_ref()),
            challenger: rows(batch.output.challenger.as_ref()),
            decisions: rows(batch.output.decisions.as_ref()),
            forwarded: rows(batch.output.forward.as_ref()),
            dead_letters: batch.dead.len() as u64,
        };
        if let Some(p) = &self.progress {
            let scored = batch.output.scored.as_ref().map_or(0, |s| s.num_rows());
            p.inc((scored + batch.dead.len()) as u64);
        }
        let mut store = self
            .store
            .lock()
            .map_err(|_| PipelineError::Bug("collect sink lock poisoned".into()))?;
        store.outputs.push(batch.output);
        store.dead.extend(batch.dead);
        Ok(std::future::ready(Ok(delivered)))
    }
}
