//! The stages every pipeline runs after its source: features, then scoring. Replay and live
//! scoring both drive these, so a backtest measures exactly what runs live.

use std::sync::Arc;

use arrow::array::{BooleanArray, Float32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use crossbeam_channel::bounded;
use indicatif::ProgressBar;
use riskpipe_models::Scorer;
use riskpipe_operators::{FeatureChain, FeatureConfig};
use riskpipe_schemas::score;

use crate::source::{History, labels_until};
use crate::{PipelineError, Result};

/// Scores feature batches and appends `SCORE` (f32) and `ALERT` (score >= threshold).
#[derive(Debug)]
pub struct ScoringStage {
    scorer: Scorer,
    threshold: f32,
    schemas: Option<(SchemaRef, SchemaRef)>,
}

impl ScoringStage {
    /// A stage alerting at `threshold`.
    pub fn new(scorer: Scorer, threshold: f64) -> Self {
        Self {
            scorer,
            threshold: threshold as f32,
            schemas: None,
        }
    }

    /// The model.
    pub fn scorer(&self) -> &Scorer {
        &self.scorer
    }

    /// Scores `batch` and appends the score columns.
    pub fn process(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let scores = self.scorer.score(&batch)?;
        let alerts = BooleanArray::from_iter(scores.iter().map(|s| Some(*s >= self.threshold)));
        let input = batch.schema();
        let output = match &self.schemas {
            Some((i, o)) if i == &input => o.clone(),
            _ => {
                let mut fields: Vec<FieldRef> = input.fields().iter().cloned().collect();
                fields.push(Arc::new(Field::new(score::SCORE, DataType::Float32, false)));
                fields.push(Arc::new(Field::new(score::ALERT, DataType::Boolean, false)));
                let o = Arc::new(Schema::new(fields));
                self.schemas = Some((input, o.clone()));
                o
            }
        };
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(Float32Array::from(scores)));
        columns.push(Arc::new(alerts));
        Ok(RecordBatch::try_new(output, columns)?)
    }
}

/// Replays a history through the feature chain and the scoring stage, in micro-batches of
/// `batch_rows`, features and scoring on two threads joined by a bounded queue. Each batch's
/// label events (label time up to the batch's last event) reach the operators first; operators
/// only use a label from its label time on, so the result does not depend on `batch_rows`.
pub fn replay(
    history: &History,
    features: &FeatureConfig,
    mut chain: FeatureChain,
    mut scoring: ScoringStage,
    batch_rows: usize,
    progress: &ProgressBar,
) -> Result<Vec<RecordBatch>> {
    let label_time = features
        .label_risk
        .first()
        .map(|r| r.label_time.clone())
        .unwrap_or_else(|| riskpipe_schemas::label::LABEL_TIME.into());
    let tx = &history.transactions;
    let times = tx
        .column_by_name(&features.event_time)
        .ok_or_else(|| PipelineError::Bug("history without event time".into()))?
        .as_any()
        .downcast_ref::<arrow::array::TimestampNanosecondArray>()
        .ok_or_else(|| PipelineError::Bug("history event time is not UTC nanoseconds".into()))?
        .values()
        .clone();
    let (send, recv) = bounded::<RecordBatch>(4);
    std::thread::scope(|scope| {
        let feature_thread = scope.spawn(move || -> Result<()> {
            let mut next_label = 0;
            let mut start = 0;
            while start < tx.num_rows() {
                let len = batch_rows.min(tx.num_rows() - start);
                let last_time = times[start + len - 1];
                let (labels, next) =
                    labels_until(&history.labels, next_label, last_time, &label_time);
                next_label = next;
                chain.observe_labels(&labels)?;
                let out = chain.process(tx.slice(start, len))?;
                if send.send(out).is_err() {
                    break; // the scoring side stopped on an error it reports itself
                }
                start += len;
            }
            Ok(())
        });
        let mut scored = Vec::new();
        let mut failure = None;
        for batch in recv.iter() {
            let rows = batch.num_rows() as u64;
            match scoring.process(batch) {
                Ok(b) => scored.push(b),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            progress.inc(rows);
        }
        drop(recv);
        let features_result = feature_thread
            .join()
            .map_err(|_| PipelineError::Bug("feature thread panicked".into()))?;
        if let Some(e) = failure {
            return Err(e);
        }
        features_result?;
        Ok(scored)
    })
}
