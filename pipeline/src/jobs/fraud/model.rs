//! The fraud model stage: scores feature rows, flags alerts at the threshold and explains them.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float32Array, Float64Array, Int64Array, RecordBatch,
    Scalar, StringArray,
};
use arrow::datatypes::{
    DataType, Field, FieldRef, Float32Type, Float64Type, Int64Type, Schema, SchemaRef,
};
use riskpipe_models::{Element, InputColumn, Inputs, Model};
use riskpipe_schemas::{Reason, score};

use crate::{PipelineError, Result};

/// Scores feature batches and appends `SCORE` (f32) and `ALERT` (score >= threshold); for an
/// ensemble, each member's score too ([`score::member`]).
#[derive(Debug)]
pub struct FraudModel {
    model: Model,
    threshold: f32,
    schemas: Option<(SchemaRef, SchemaRef)>,
    /// The last batch's model inputs, kept for [`FraudModel::explain`].
    inputs: Inputs,
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

/// Exact sums of the numeric model inputs over every row scored, and counts of each text
/// input's values: each number is rounded once to a multiple of 2⁻³² and added as an integer,
/// so the sums (and the means the reasons are measured against) do not depend on how rows were
/// batched or ordered: a restored baseline plus a replay of the rows after its checkpoint is
/// the baseline of an uninterrupted run. A text input's baseline is its most frequent value
/// (ties: the first in byte order), the categorical counterpart of the mean: "what this input
/// usually is".
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    /// The model inputs, in order.
    pub features: Vec<String>,
    /// Each numeric input's sum, in units of 2⁻³² (0 for a text input).
    pub sums: Vec<i128>,
    /// Rows summed.
    pub rows: u64,
    /// Each text input's count by value (`None` for a numeric input). At most
    /// [`MAX_CATEGORIES`] values are counted per input; values first seen after that are not.
    pub counts: Vec<Option<BTreeMap<String, u64>>>,
}

/// The most values of one text input the baseline counts (bounded state).
pub(super) const MAX_CATEGORIES: usize = 10_000;

/// Values are clamped to ±2⁵⁰ before summing (2⁸² units), so 2⁴⁴ rows cannot overflow; to the
/// reference's range first, where the input has one ([`FraudModel::clamp_baseline`]).
const BASELINE_LIMIT: f64 = (1u64 << 50) as f64;
const BASELINE_UNIT: f64 = (1u64 << 32) as f64;

impl Baseline {
    /// Nothing summed yet over `columns`.
    pub fn new(columns: &[InputColumn]) -> Self {
        Self {
            features: columns.iter().map(|c| c.name.clone()).collect(),
            sums: vec![0; columns.len()],
            rows: 0,
            counts: columns
                .iter()
                .map(|c| c.element.is_text().then(BTreeMap::new))
                .collect(),
        }
    }

    /// Adds the rows of `inputs` (the model's columns), each number clamped to its input's
    /// `[low, high]` (an empty slice: no clamp but ±2⁵⁰).
    pub fn add(&mut self, inputs: &Inputs, clamp: &[[f64; 2]]) {
        if self.sums.is_empty() {
            return;
        }
        for (j, col) in inputs.columns.iter().enumerate().take(self.sums.len()) {
            let [low, high] = clamp
                .get(j)
                .copied()
                .unwrap_or([-BASELINE_LIMIT, BASELINE_LIMIT]);
            // NaN (which admission and scoring refuse before this) would count as 0.
            let units = |v: f64| (v.clamp(low, high) * BASELINE_UNIT).round() as i128;
            let s = &mut self.sums[j];
            match col.data_type() {
                DataType::Float32 => {
                    for &v in col.as_primitive::<Float32Type>().values().iter() {
                        *s = s.saturating_add(units(f64::from(v)));
                    }
                }
                DataType::Float64 => {
                    for &v in col.as_primitive::<Float64Type>().values().iter() {
                        *s = s.saturating_add(units(v));
                    }
                }
                DataType::Int64 => {
                    for &v in col.as_primitive::<Int64Type>().values().iter() {
                        *s = s.saturating_add(units(v as f64));
                    }
                }
                DataType::Utf8 => {
                    if let Some(Some(counts)) = self.counts.get_mut(j) {
                        for v in col.as_string::<i32>().iter().flatten() {
                            if let Some(n) = counts.get_mut(v) {
                                *n += 1;
                            } else if counts.len() < MAX_CATEGORIES {
                                counts.insert(v.to_string(), 1);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        self.rows += inputs.rows as u64;
    }

    /// Each numeric input's mean (NaN for a text input), `None` before the first row.
    pub fn means(&self) -> Option<Vec<f64>> {
        (self.rows > 0).then(|| {
            self.sums
                .iter()
                .map(|&s| s as f64 / BASELINE_UNIT / self.rows as f64)
                .collect()
        })
    }

    /// Each text input's most frequent value (ties: the first in byte order).
    fn most_frequent(&self, j: usize) -> Option<&str> {
        let counts = self.counts.get(j)?.as_ref()?;
        let mut best: Option<(&str, u64)> = None;
        for (v, &n) in counts {
            if best.is_none_or(|(_, b)| n > b) {
                best = Some((v, n));
            }
        }
        best.map(|(v, _)| v)
    }

    /// What each input is replaced by when it is occluded, as one value of the type the model
    /// reads it as: the mean (rounded once to the input's type) or the most frequent value;
    /// `None` before the first row.
    pub fn values(&self, columns: &[InputColumn]) -> Option<Vec<ArrayRef>> {
        let means = self.means()?;
        columns
            .iter()
            .enumerate()
            .map(|(j, c)| -> Option<ArrayRef> {
                let mean = means.get(j).copied()?;
                Some(match c.element {
                    Element::Float => Arc::new(Float32Array::from(vec![mean as f32])),
                    Element::Double => Arc::new(Float64Array::from(vec![mean])),
                    Element::Int64 => Arc::new(Int64Array::from(vec![mean.round() as i64])),
                    Element::String => Arc::new(StringArray::from(vec![
                        self.most_frequent(j).unwrap_or_default(),
                    ])),
                })
            })
            .collect()
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
        let baseline = Baseline::new(model.columns());
        Self {
            model,
            threshold: threshold as f32,
            schemas: None,
            inputs: Inputs::default(),
            members: Vec::new(),
            baseline,
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
        if model.columns() != self.model.columns() {
            self.baseline = Baseline::new(model.columns());
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
        let mut inputs = self.model.inputs(&batch)?;
        let ensemble = self.model.is_ensemble();
        let mut scores = self
            .model
            .score_members(&inputs, ensemble.then_some(&mut self.members))?;
        let unfit = unfit_rows(&scores, if ensemble { &self.members } else { &[] });
        let batch = if unfit.is_empty() {
            batch
        } else {
            let keep = fit_rows(batch.num_rows(), &unfit);
            inputs = inputs.take(&keep)?;
            scores = keep.iter().map(|&r| scores[r as usize]).collect();
            if ensemble {
                for m in &mut self.members {
                    *m = keep.iter().map(|&r| m[r as usize]).collect();
                }
            }
            arrow::compute::take_record_batch(&batch, &arrow::array::UInt32Array::from(keep))?
        };
        self.baseline.add(&inputs, &self.clamp);
        self.inputs = inputs;
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
            && baseline.sums.len() == baseline.features.len()
            && baseline.counts.iter().map(Option::is_some).eq(self
                .model
                .columns()
                .iter()
                .map(|c| c.element.is_text()));
        if fits {
            self.baseline = baseline;
        }
        fits
    }

    /// Adds `batch`'s rows to the baseline without scoring them (the silent replay after a
    /// restore, when nothing needs the scores).
    pub fn observe(&mut self, batch: &RecordBatch) -> Result<()> {
        let inputs = self.model.inputs(batch)?;
        self.baseline.add(&inputs, &self.clamp);
        Ok(())
    }

    /// Top `top` reasons for each of `rows` of the batch last given to [`Self::process`]:
    /// occlusion attribution, i.e. for each model input, the score minus the score with that
    /// input alone replaced by its baseline over everything scored so far (a number's running
    /// mean, a text input's most frequent value). Model-agnostic and exact for the model in
    /// use; alerts are rare, so the extra inferences are cheap.
    pub fn explain(&mut self, rows: &[usize], top: usize) -> Result<Vec<Vec<Reason>>> {
        let width = self.baseline.sums.len();
        let baseline = match self.baseline.values(self.model.columns()) {
            Some(b) if !rows.is_empty() && width > 0 && top > 0 => b,
            _ => return Ok(vec![Vec::new(); rows.len()]),
        };
        if let Some(&r) = rows.iter().find(|&&r| r >= self.inputs.rows) {
            return Err(PipelineError::Bug(format!(
                "explain row {r} not in last batch"
            )));
        }
        // Per alert row: the row itself, then one copy per input with that input occluded.
        let indices: Vec<u32> = rows
            .iter()
            .flat_map(|&r| std::iter::repeat_n(r as u32, width + 1))
            .collect();
        let mut probe = self.inputs.take(&indices)?;
        for (j, (column, value)) in probe.columns.iter_mut().zip(&baseline).enumerate() {
            let occluded =
                BooleanArray::from_iter((0..indices.len()).map(|i| Some(i % (width + 1) == j + 1)));
            *column =
                arrow::compute::kernels::zip::zip(&occluded, &Scalar::new(value.clone()), column)?;
        }
        let scores = self.model.score_inputs(&probe)?;
        let names = self.model.features();
        let mut out = Vec::with_capacity(rows.len());
        for (k, &r) in rows.iter().enumerate() {
            let base = &scores[k * (width + 1)..(k + 1) * (width + 1)];
            let mut reasons: Vec<Reason> = (0..width)
                .map(|j| {
                    let text = self.inputs.text(j, r).map(str::to_string);
                    Reason {
                        feature: names[j].clone(),
                        value: self.inputs.number(j, r).unwrap_or(f64::NAN),
                        text,
                        contribution: f64::from(base[0] - base[j + 1]),
                    }
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
