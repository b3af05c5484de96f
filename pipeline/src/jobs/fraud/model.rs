//! The fraud model stage: scores feature rows, flags alerts at the threshold and explains them.

use std::sync::Arc;

use arrow::array::{BooleanArray, Float32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use riskpipe_models::Model;
use riskpipe_schemas::{Reason, score};

use crate::{PipelineError, Result};

/// Scores feature batches and appends `SCORE` (f32) and `ALERT` (score >= threshold); for an
/// ensemble, each member's score too ([`score::member`]).
#[derive(Debug)]
pub struct FraudModel {
    model: Model,
    threshold: f32,
    schemas: Option<(SchemaRef, SchemaRef)>,
    /// The last batch's model inputs (row-major), kept for [`FraudModel::explain`].
    matrix: Vec<f32>,
    /// An ensemble's member scores of the last batch.
    members: Vec<Vec<f32>>,
    /// The attribution baseline: every model input's sum over all rows scored, exactly
    /// ([`Baseline`]).
    baseline: Baseline,
    /// Reference ranges by column (the drift reference's), and each model input's range
    /// from them: what a value is clamped to before the baseline takes it.
    ranges: Vec<(String, [f64; 2])>,
    clamp: Vec<[f64; 2]>,
}

/// Exact sums of the model inputs over every row scored: each value is rounded once to a
/// multiple of 2⁻³² and added as an integer, so the sums (and the means the reasons are
/// measured against) do not depend on how rows were batched or ordered: a restored baseline
/// plus a replay of the rows after its checkpoint is the baseline of an uninterrupted run.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    /// The model inputs, in order.
    pub features: Vec<String>,
    /// Each input's sum, in units of 2⁻³².
    pub sums: Vec<i128>,
    /// Rows summed.
    pub rows: u64,
}

/// Values are clamped to ±2⁵⁰ before summing (2⁸² units), so 2⁴⁴ rows cannot overflow; to the
/// reference's range first, where the input has one ([`FraudModel::clamp_baseline`]).
const BASELINE_LIMIT: f64 = (1u64 << 50) as f64;
const BASELINE_UNIT: f64 = (1u64 << 32) as f64;

impl Baseline {
    /// Nothing summed yet over `features`.
    pub fn new(features: &[String]) -> Self {
        Self {
            features: features.to_vec(),
            sums: vec![0; features.len()],
            rows: 0,
        }
    }

    /// Adds the rows of a row-major matrix of the inputs, each value clamped to its input's
    /// `[low, high]` (an empty slice: no clamp but ±2⁵⁰).
    pub fn add(&mut self, matrix: &[f32], clamp: &[[f64; 2]]) {
        let width = self.sums.len();
        if width == 0 {
            return;
        }
        for row in matrix.chunks_exact(width) {
            for (j, (s, &v)) in self.sums.iter_mut().zip(row).enumerate() {
                let [low, high] = clamp
                    .get(j)
                    .copied()
                    .unwrap_or([-BASELINE_LIMIT, BASELINE_LIMIT]);
                // NaN (which admission and scoring refuse before this) would count as 0.
                let units = (f64::from(v).clamp(low, high) * BASELINE_UNIT).round() as i128;
                *s = s.saturating_add(units);
            }
        }
        self.rows += (matrix.len() / width) as u64;
    }

    /// Each input's mean, `None` before the first row.
    pub fn means(&self) -> Option<Vec<f32>> {
        (self.rows > 0).then(|| {
            self.sums
                .iter()
                .map(|&s| (s as f64 / BASELINE_UNIT / self.rows as f64) as f32)
                .collect()
        })
    }
}

/// The rows of `0..rows` not in `unfit` (sorted by row), as indices for `take`.
pub(super) fn fit_rows(rows: usize, unfit: &[(usize, String)]) -> Vec<u32> {
    (0..rows)
        .filter(|r| unfit.binary_search_by_key(r, |(u, _)| *u).is_err())
        .map(|r| r as u32)
        .collect()
}

/// Each input's clamp: its range in `ranges`, else ±2⁵⁰.
fn clamp_of(features: &[String], ranges: &[(String, [f64; 2])]) -> Vec<[f64; 2]> {
    features
        .iter()
        .map(|f| {
            ranges
                .iter()
                .find(|(c, _)| c == f)
                .map(|&(_, [low, high])| [low.max(-BASELINE_LIMIT), high.min(BASELINE_LIMIT)])
                .filter(|[low, high]| low <= high)
                .unwrap_or([-BASELINE_LIMIT, BASELINE_LIMIT])
        })
        .collect()
}

/// Rows whose score, or an ensemble member's, is no probability, with the reason, by row.
fn unfit_rows(scores: &[f32], members: &[Vec<f32>]) -> Vec<(usize, String)> {
    let probability = |s: f32| (0.0..=1.0).contains(&s);
    let mut unfit = Vec::new();
    for (row, &s) in scores.iter().enumerate() {
        if !probability(s) {
            unfit.push((
                row,
                format!("the model's score {s} is no probability in [0, 1]"),
            ));
        } else if let Some((m, v)) = members.iter().enumerate().find_map(|(m, scores)| {
            scores
                .get(row)
                .filter(|&&v| !probability(v))
                .map(|v| (m, *v))
        }) {
            unfit.push((
                row,
                format!(
                    "ensemble member {} scored {v}, no probability in [0, 1]",
                    m + 1
                ),
            ));
        }
    }
    unfit
}

impl FraudModel {
    /// A stage alerting at `threshold`.
    pub fn new(model: Model, threshold: f64) -> Self {
        let features = model.features().to_vec();
        Self {
            model,
            threshold: threshold as f32,
            schemas: None,
            matrix: Vec::new(),
            members: Vec::new(),
            baseline: Baseline::new(&features),
            ranges: Vec::new(),
            clamp: Vec::new(),
        }
    }

    /// Clamps what the explanation baseline takes to `ranges` (column → the reference's
    /// smallest and largest value), for every model input that has one, from now on and
    /// for models swapped in later.
    pub fn clamp_baseline(&mut self, ranges: Vec<(String, [f64; 2])>) {
        self.ranges = ranges;
        self.clamp = clamp_of(self.model.features(), &self.ranges);
    }

    /// The alert threshold.
    pub fn threshold(&self) -> f64 {
        f64::from(self.threshold)
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Scores with `model` from the next batch on; the explanation baseline (the running
    /// means of the inputs) carries over when the inputs are the same.
    pub fn replace_model(&mut self, model: Model) {
        if model.features() != self.model.features() {
            self.baseline = Baseline::new(model.features());
            self.clamp = clamp_of(model.features(), &self.ranges);
        }
        self.schemas = None;
        self.model = model;
    }

    /// Scores `batch` and appends the score columns. Rows the model answers with no
    /// probability (not finite, or outside [0, 1], for the score or an ensemble member's) are
    /// left out of the scored batch, of the baseline and of what [`Self::explain`] reads;
    /// they come back by their row in `batch`, with the reason.
    pub fn process(&mut self, batch: RecordBatch) -> Result<(RecordBatch, Vec<(usize, String)>)> {
        let mut matrix = std::mem::take(&mut self.matrix);
        self.model.feature_matrix(&batch, &mut matrix)?;
        let ensemble = self.model.is_ensemble();
        let mut scores = self.model.score_members(
            &matrix,
            batch.num_rows(),
            ensemble.then_some(&mut self.members),
        )?;
        let unfit = unfit_rows(&scores, if ensemble { &self.members } else { &[] });
        let batch = if unfit.is_empty() {
            batch
        } else {
            let keep = fit_rows(batch.num_rows(), &unfit);
            let width = self.model.features().len();
            matrix = keep
                .iter()
                .flat_map(|&r| {
                    matrix[r as usize * width..(r as usize + 1) * width]
                        .iter()
                        .copied()
                })
                .collect();
            scores = keep.iter().map(|&r| scores[r as usize]).collect();
            if ensemble {
                for m in &mut self.members {
                    *m = keep.iter().map(|&r| m[r as usize]).collect();
                }
            }
            arrow::compute::take_record_batch(&batch, &arrow::array::UInt32Array::from(keep))?
        };
        self.baseline.add(&matrix, &self.clamp);
        self.matrix = matrix;
        let alerts = BooleanArray::from_iter(scores.iter().map(|s| Some(*s >= self.threshold)));
        let input = batch.schema();
        let output = match &self.schemas {
            Some((i, o)) if i == &input => o.clone(),
            _ => {
                let mut fields: Vec<FieldRef> = input.fields().iter().cloned().collect();
                fields.push(Arc::new(Field::new(score::SCORE, DataType::Float32, false)));
                fields.push(Arc::new(Field::new(score::ALERT, DataType::Boolean, false)));
                if ensemble {
                    for i in 0..self.members.len() {
                        fields.push(Arc::new(Field::new(
                            score::member(i),
                            DataType::Float32,
                            false,
                        )));
                    }
                }
                let o = Arc::new(Schema::new(fields));
                self.schemas = Some((input, o.clone()));
                o
            }
        };
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(Float32Array::from(scores)));
        columns.push(Arc::new(alerts));
        if ensemble {
            for m in &self.members {
                columns.push(Arc::new(Float32Array::from(m.clone())));
            }
        }
        Ok((RecordBatch::try_new(output, columns)?, unfit))
    }

    /// The explanation baseline.
    pub fn baseline(&self) -> &Baseline {
        &self.baseline
    }

    /// Takes `baseline` (a checkpoint's) when it is over the model's inputs; false otherwise.
    pub fn restore_baseline(&mut self, baseline: Baseline) -> bool {
        let fits = baseline.features == self.model.features()
            && baseline.sums.len() == baseline.features.len();
        if fits {
            self.baseline = baseline;
        }
        fits
    }

    /// Adds `batch`'s rows to the baseline without scoring them (the silent replay after a
    /// restore, when nothing needs the scores).
    pub fn observe(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut matrix = std::mem::take(&mut self.matrix);
        let read = self.model.feature_matrix(batch, &mut matrix);
        if read.is_ok() {
            self.baseline.add(&matrix, &self.clamp);
        }
        self.matrix = matrix;
        Ok(read?)
    }

    /// Top `top` reasons for each of `rows` of the batch last given to [`Self::process`]:
    /// occlusion attribution, i.e. for each model input, the score minus the score with that
    /// input alone replaced by its running mean over everything scored so far. Model-agnostic
    /// and exact for the model in use; alerts are rare, so the extra inferences are cheap.
    pub fn explain(&mut self, rows: &[usize], top: usize) -> Result<Vec<Vec<Reason>>> {
        let width = self.baseline.sums.len();
        let means = match self.baseline.means() {
            Some(m) if !rows.is_empty() && width > 0 && top > 0 => m,
            _ => return Ok(vec![Vec::new(); rows.len()]),
        };
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
        let scores = self.model.score_matrix(&probe, rows.len() * (width + 1))?;
        let names = self.model.features();
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
