//! The fraud model stage: scores feature rows, flags alerts at the threshold and explains them.

use std::sync::Arc;

use arrow::array::{BooleanArray, Float32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use riskpipe_models::Scorer;
use riskpipe_schemas::{Reason, score};

use crate::{PipelineError, Result};

/// Scores feature batches and appends `SCORE` (f32) and `ALERT` (score >= threshold).
#[derive(Debug)]
pub struct FraudModel {
    scorer: Scorer,
    threshold: f32,
    schemas: Option<(SchemaRef, SchemaRef)>,
    /// The last batch's model inputs (row-major), kept for [`FraudModel::explain`].
    matrix: Vec<f32>,
    /// Running sums of every model input over all rows scored: the attribution baseline.
    sums: Vec<f64>,
    seen: u64,
}

impl FraudModel {
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

    /// Scores with `scorer` from the next batch on; the explanation baseline (the running
    /// means of the inputs) carries over when the inputs are the same.
    pub fn replace_scorer(&mut self, scorer: Scorer) {
        if scorer.features() != self.scorer.features() {
            self.sums = vec![0.0; scorer.features().len()];
            self.seen = 0;
        }
        self.scorer = scorer;
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

    /// Top `top` reasons for each of `rows` of the batch last given to [`Self::process`]:
    /// occlusion attribution, i.e. for each model input, the score minus the score with that
    /// input alone replaced by its running mean over everything scored so far. Model-agnostic
    /// and exact for the model in use; alerts are rare, so the extra inferences are cheap.
    pub fn explain(&mut self, rows: &[usize], top: usize) -> Result<Vec<Vec<Reason>>> {
        let width = self.sums.len();
        if rows.is_empty() || width == 0 || self.seen == 0 || top == 0 {
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
