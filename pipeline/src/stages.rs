//! The stages every pipeline runs after its source: features, then scoring. Replay and live
//! scoring both drive these, so a backtest measures exactly what runs live.

use std::sync::Arc;

use arrow::array::{BooleanArray, Float32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use crossbeam_channel::bounded;
use indicatif::ProgressBar;
use riskpipe_models::Scorer;
use riskpipe_operators::{FeatureChain, FeatureConfig};
use riskpipe_schemas::{Reason, score};

use crate::source::{History, labels_until};
use crate::{PipelineError, Result};

/// Scores feature batches and appends `SCORE` (f32) and `ALERT` (score >= threshold).
#[derive(Debug)]
pub struct ScoringStage {
    scorer: Scorer,
    threshold: f32,
    schemas: Option<(SchemaRef, SchemaRef)>,
    /// The last batch's model inputs (row-major), kept for [`ScoringStage::explain`].
    matrix: Vec<f32>,
    /// Running sums of every model input over all rows scored: the attribution baseline.
    sums: Vec<f64>,
    seen: u64,
}

impl ScoringStage {
    /// A stage alerting at `threshold`.
    pub fn new(scorer: Scorer, threshold: f64) -> Self {
        let inputs = scorer.features().len();
        Self {
            scorer,
            threshold: threshold as f32,
            schemas: None,
            matrix: Vec::new(),
            sums: vec![0.0; inputs],
            seen: 0,
        }
    }

    /// The alert threshold.
    pub fn threshold(&self) -> f64 {
        f64::from(self.threshold)
    }

    /// The model.
    pub fn scorer(&self) -> &Scorer {
        &self.scorer
    }

    /// Scores `batch` and appends the score columns.
    pub fn process(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let mut matrix = std::mem::take(&mut self.matrix);
        self.scorer.feature_matrix(&batch, &mut matrix)?;
        let scores = self.scorer.score_matrix(&matrix, batch.num_rows())?;
        let width = self.sums.len();
        if width > 0 {
            for row in matrix.chunks_exact(width) {
                for (s, v) in self.sums.iter_mut().zip(row) {
                    *s += f64::from(*v);
                }
            }
        }
        self.seen += batch.num_rows() as u64;
        self.matrix = matrix;
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

impl ScoringStage {
    /// Top `top` reasons for each of `rows` of the batch last given to [`Self::process`]:
    /// occlusion attribution, i.e. for each model input, the score minus the score with that
    /// input alone replaced by its running mean over everything scored so far. Model-agnostic
    /// and exact for the model in use; alerts are rare, so the extra inferences are cheap.
    pub fn explain(&mut self, rows: &[usize], top: usize) -> Result<Vec<Vec<Reason>>> {
        let width = self.sums.len();
        if rows.is_empty() || width == 0 || self.seen == 0 {
            return Ok(vec![Vec::new(); rows.len()]);
        }
        let means: Vec<f32> = self
            .sums
            .iter()
            .map(|s| (s / self.seen as f64) as f32)
            .collect();
        let mut probe = Vec::with_capacity(rows.len() * (width + 1) * width);
        for &r in rows {
            let x = self
                .matrix
                .get(r * width..(r + 1) * width)
                .ok_or_else(|| PipelineError::Bug(format!("explain row {r} not in last batch")))?;
            probe.extend_from_slice(x);
            for (j, mean) in means.iter().enumerate() {
                probe.extend_from_slice(x);
                let at = probe.len() - width + j;
                probe[at] = *mean;
            }
        }
        let scores = self.scorer.score_matrix(&probe, rows.len() * (width + 1))?;
        let names = self.scorer.features();
        let mut out = Vec::with_capacity(rows.len());
        for (k, &r) in rows.iter().enumerate() {
            let base = &scores[k * (width + 1)..(k + 1) * (width + 1)];
            let mut reasons: Vec<Reason> = (0..width)
                .map(|j| Reason {
                    feature: names[j].clone(),
                    value: f64::from(self.matrix[r * width + j]),
                    contribution: f64::from(base[0] - base[j + 1]),
                })
                .filter(|reason| reason.contribution > 0.0)
                .collect();
            reasons.sort_by(|a, b| b.contribution.total_cmp(&a.contribution));
            reasons.truncate(top);
            out.push(reasons);
        }
        Ok(out)
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
