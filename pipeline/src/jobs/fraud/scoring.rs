//! The fraud job's score stage: the model, the challenger beside it, alerts and their
//! reasons, drift, and the explanation baseline that survives checkpoints.

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use riskpipe_models::Model;
use riskpipe_operators::columns;
use riskpipe_schemas::score;

use super::model::{self, FraudModel};
use super::records;
use crate::jobs::Repeated;
use crate::jobs::{Featured, JobOutput, Reject, ScoreStage, StateSnapshot};
use crate::{PipelineError, Result};

/// The model, the alerts and their reasons, the output records.
#[derive(Debug)]
pub(super) struct FraudScoring {
    pub(super) model: FraudModel,
    pub(super) reasons: usize,
    /// The `MODEL` of every record: `<file>@<version>` of the model scoring.
    pub(super) model_name: Repeated,
    pub(super) label: String,
    /// Where reloaded models come from (`riskpipe run`).
    pub(super) updates: Option<std::sync::Arc<crate::reload::ModelSlot>>,
    /// Live drift of the inputs and the score (`[drift]`).
    pub(super) drift: Option<crate::jobs::drift::Monitor>,
    pub(super) challenger: Option<Challenger>,
    /// The shapes of the score and alert records.
    pub(super) records: records::RecordShapes,
    /// The decisions: which rows are alerts, and with `[decisions]` the decision records.
    pub(super) decide: super::decide::Decide,
}

/// A second model scored on the same rows: its own score records, never alerts.
#[derive(Debug)]
pub(super) struct Challenger {
    pub(super) model: FraudModel,
    pub(super) name: Repeated,
    /// The champion's scored schema and that schema with `CHALLENGER_SCORE`, built once.
    pub(super) schemas: Option<(arrow::datatypes::SchemaRef, arrow::datatypes::SchemaRef)>,
}

impl Challenger {
    /// Scores `batch` (the rows the champion scored as `ours`): the challenger's score
    /// records, and `ours` with the challenger's score as one more column.
    fn score(
        &mut self,
        batch: RecordBatch,
        ours: RecordBatch,
        shapes: &records::RecordShapes,
    ) -> Result<(RecordBatch, crate::jobs::Records)> {
        let started = std::time::Instant::now();
        let (theirs, unfit) = self.model.process(batch)?;
        let seconds = started.elapsed().as_secs_f64();
        // Rows the challenger answered with no probability: no record, no comparison, a null
        // challenger score in the scored batch.
        let fit = match unfit.is_empty() {
            true => Vec::new(),
            false => model::fit_rows(ours.num_rows(), &unfit),
        };
        if !unfit.is_empty() {
            crate::events::challenger_unfit(unfit.len() as u64);
            tracing::warn!(
                rows = unfit.len(),
                "the challenger answered no probability: {}",
                unfit[0].1
            );
        }
        let ours_fit = match unfit.is_empty() {
            true => ours.clone(),
            false => take_record_batch(&ours, &UInt32Array::from(fit.clone()))?,
        };
        let score_of = |b: &RecordBatch| {
            columns::primitive::<arrow::datatypes::Float32Type>(b, score::SCORE)
                .cloned()
                .map_err(PipelineError::produced)
        };
        let alert_of = |b: &RecordBatch| {
            columns::boolean(b, score::ALERT)
                .cloned()
                .map_err(PipelineError::produced)
        };
        let (our_alerts, their_alerts) = (alert_of(&ours_fit)?, alert_of(&theirs)?);
        let agree = our_alerts
            .iter()
            .zip(their_alerts.iter())
            .filter(|(a, b)| a == b)
            .count();
        let (our_scores, their_scores) = (score_of(&ours_fit)?, score_of(&theirs)?);
        let difference: f64 = our_scores
            .values()
            .iter()
            .zip(their_scores.values().iter())
            .map(|(a, b)| f64::from((a - b).abs()))
            .sum();
        let rows = ours_fit.num_rows();
        crate::events::challenger_scored(
            seconds,
            agree as u64,
            (rows - agree) as u64,
            difference / rows.max(1) as f64,
        );
        let records = records::scores(shapes, &theirs, &mut self.name)?;
        let input = ours.schema();
        let output = match &self.schemas {
            Some((i, o)) if i == &input => o.clone(),
            _ => {
                let mut fields: Vec<arrow::datatypes::FieldRef> =
                    input.fields().iter().cloned().collect();
                fields.push(std::sync::Arc::new(arrow::datatypes::Field::new(
                    score::CHALLENGER_SCORE,
                    arrow::datatypes::DataType::Float32,
                    true,
                )));
                let o = std::sync::Arc::new(arrow::datatypes::Schema::new(fields));
                self.schemas = Some((input, o.clone()));
                o
            }
        };
        let their_scores: arrow::array::ArrayRef = match unfit.is_empty() {
            true => std::sync::Arc::new(their_scores),
            // Each row's challenger score by its row among `ours`, null where unfit.
            false => {
                let mut all = vec![None; ours.num_rows()];
                for (&row, &v) in fit.iter().zip(their_scores.values().iter()) {
                    all[row as usize] = Some(v);
                }
                std::sync::Arc::new(arrow::array::Float32Array::from(all))
            }
        };
        let mut columns = ours.columns().to_vec();
        columns.push(their_scores);
        let ours = RecordBatch::try_new(output, columns)?;
        Ok((ours, records))
    }
}

impl FraudScoring {
    /// Swaps `next` in if it scores `batch` (the batch it is about to score) with
    /// probabilities; else keeps the model scoring now.
    fn swap(&mut self, mut next: Model, batch: &RecordBatch) {
        let started = std::time::Instant::now();
        let label = next.label().to_string();
        let check = if next.reads_text() && !self.records.reads_text() {
            // The alert records' shape (reasons with text values) is fixed at start.
            Err("it reads text inputs, which the model scoring at start did not: the alerts' reasons would change shape; restart riskpipe to score it".to_string())
        } else {
            next.score(batch)
                .map_err(|e| e.to_string())
                .and_then(|scores| crate::reload::check_scores(&scores))
        };
        match check {
            Ok(()) => {
                let before = std::mem::replace(&mut self.label, label);
                self.model.replace_model(next);
                self.model_name = Repeated::new(self.label.clone());
                if let Some(slot) = &self.updates {
                    slot.scoring(self.model.model().version());
                }
                let seconds = started.elapsed().as_secs_f64();
                crate::events::model_scoring(&self.label, Some(&before), seconds);
                tracing::info!(
                    seconds,
                    "model swapped: {before} -> {} from this batch on",
                    self.label
                );
            }
            Err(why) => {
                crate::events::model_reload("refused_live");
                tracing::error!(
                    "model {label} refused on a live batch, {} keeps scoring: {why}",
                    self.label
                );
            }
        }
    }
}

/// The score stage's tables in a snapshot, and what their layout is.
pub(super) const BASELINE: &str = "explain_baseline";
/// The text inputs' value counts (only for a model that reads text).
pub(super) const CATEGORIES: &str = "explain_categories";
pub(super) const DRIFT: &str = "drift";
pub(super) const DRIFT_SINCE: &str = "drift_since";
pub(super) const SCORE_STATE: &str = "fraud-score-1";

pub(super) fn baseline_schema() -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    std::sync::Arc::new(Schema::new(vec![
        Field::new("feature", DataType::Utf8, false),
        Field::new("sum", DataType::Decimal128(38, 0), false),
        Field::new("rows", DataType::UInt64, false),
    ]))
}

pub(super) fn baseline_table(b: &model::Baseline) -> Result<RecordBatch> {
    use arrow::array::{Decimal128Array, StringArray, UInt64Array};
    Ok(RecordBatch::try_new(
        baseline_schema(),
        vec![
            std::sync::Arc::new(StringArray::from_iter_values(&b.features)),
            std::sync::Arc::new(
                Decimal128Array::from(b.sums.clone()).with_precision_and_scale(38, 0)?,
            ),
            std::sync::Arc::new(UInt64Array::from(vec![b.rows; b.features.len()])),
        ],
    )?)
}

fn categories_schema() -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    std::sync::Arc::new(Schema::new(vec![
        Field::new("feature", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
        Field::new("count", DataType::UInt64, false),
    ]))
}

/// The text inputs' counts as a table; `None` when the model reads no text.
pub(super) fn categories_table(b: &model::Baseline) -> Result<Option<RecordBatch>> {
    use arrow::array::{StringArray, UInt64Array};
    if b.counts.iter().all(Option::is_none) {
        return Ok(None);
    }
    let (mut features, mut values, mut counts) = (Vec::new(), Vec::new(), Vec::new());
    for (f, c) in b.features.iter().zip(&b.counts) {
        for (v, n) in c.iter().flatten() {
            features.push(f.as_str());
            values.push(v.as_str());
            counts.push(*n);
        }
    }
    Ok(Some(RecordBatch::try_new(
        categories_schema(),
        vec![
            std::sync::Arc::new(StringArray::from(features)),
            std::sync::Arc::new(StringArray::from(values)),
            std::sync::Arc::new(UInt64Array::from(counts)),
        ],
    )?))
}

/// The baseline of a checkpoint's tables: its sums and, for a model that reads text, the
/// counts (`categories`) of the inputs the counts name.
pub(super) fn baseline_of(
    t: &RecordBatch,
    categories: Option<&RecordBatch>,
) -> Result<model::Baseline> {
    use arrow::array::AsArray;
    use arrow::datatypes::{Decimal128Type, UInt64Type};
    let bad = |what: &str| PipelineError::Checkpoint {
        id: 0,
        reason: format!("the explanation {what} table has another schema"),
    };
    if t.schema() != baseline_schema() {
        return Err(bad("baseline"));
    }
    let rows = t.column(2).as_primitive::<UInt64Type>();
    let features: Vec<String> = t
        .column(0)
        .as_string::<i32>()
        .iter()
        .map(|f| f.unwrap_or_default().to_string())
        .collect();
    let mut counts: Vec<Option<std::collections::BTreeMap<String, u64>>> =
        vec![None; features.len()];
    if let Some(c) = categories {
        if c.schema() != categories_schema() {
            return Err(bad("categories"));
        }
        let (f, v, n) = (
            c.column(0).as_string::<i32>(),
            c.column(1).as_string::<i32>(),
            c.column(2).as_primitive::<UInt64Type>(),
        );
        for i in 0..c.num_rows() {
            if let Some(j) = features.iter().position(|x| x == f.value(i)) {
                counts[j]
                    .get_or_insert_with(Default::default)
                    .insert(v.value(i).to_string(), n.value(i));
            }
        }
    }
    Ok(model::Baseline {
        features,
        sums: t
            .column(1)
            .as_primitive::<Decimal128Type>()
            .values()
            .to_vec(),
        rows: rows.values().first().copied().unwrap_or(0),
        counts,
    })
}

impl ScoreStage for FraudScoring {
    fn has_state(&self) -> bool {
        true
    }

    fn model_inputs(&self) -> Vec<String> {
        self.model.model().features().to_vec()
    }

    /// The explanation baseline and the drift counts.
    fn snapshot(&self) -> Result<StateSnapshot> {
        let mut tables = vec![(BASELINE.to_string(), baseline_table(self.model.baseline())?)];
        if let Some(t) = categories_table(self.model.baseline())? {
            tables.push((CATEGORIES.to_string(), t));
        }
        if let Some(d) = &self.drift {
            tables.push((DRIFT.to_string(), d.snapshot()?));
            tables.push((DRIFT_SINCE.to_string(), d.since_snapshot()?));
        }
        Ok(StateSnapshot {
            tables,
            fingerprint: SCORE_STATE.into(),
        })
    }

    /// A baseline over other model inputs, or drift counts of another reference, are left out
    /// (they start again); a checkpoint without the score stage's state (written before it had
    /// one) restores nothing here.
    fn restore(&mut self, state: StateSnapshot) -> Result<()> {
        if state.tables.is_empty() {
            return Ok(());
        }
        if state.fingerprint != SCORE_STATE {
            return Err(PipelineError::Checkpoint {
                id: 0,
                reason: format!(
                    "score state {:?}, this version writes {SCORE_STATE:?}",
                    state.fingerprint
                ),
            });
        }
        for (name, t) in &state.tables {
            match name.as_str() {
                BASELINE => {
                    let categories = state
                        .tables
                        .iter()
                        .find_map(|(n, t)| (n == CATEGORIES).then_some(t));
                    if !self.model.restore_baseline(baseline_of(t, categories)?) {
                        tracing::info!(
                            "the checkpoint's explanation baseline is over other model inputs: it starts again"
                        );
                    }
                }
                DRIFT => {
                    if let Some(d) = &mut self.drift {
                        if !d.restore(t)? {
                            tracing::info!(
                                "the checkpoint's drift counts are of another reference: the window fills again"
                            );
                        }
                        if !state.tables.iter().any(|(n, _)| n == DRIFT_SINCE) {
                            d.assume_covered();
                        }
                    }
                }
                DRIFT_SINCE => {
                    if let Some(d) = &mut self.drift {
                        d.restore_since(t)?;
                    }
                }
                // Read with the baseline.
                CATEGORIES => {}
                other => {
                    return Err(PipelineError::Checkpoint {
                        id: 0,
                        reason: format!("unknown score table {other:?}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// The baseline (and with `[drift]`, the counts, which need the scores) without reasons
    /// or records.
    fn warm(&mut self, featured: Featured) -> Result<usize> {
        match &mut self.drift {
            Some(d) => {
                let (scored, _unfit) = self.model.process(featured.batch)?;
                d.observe(&scored)?;
            }
            None => self.model.observe(&featured.batch)?,
        }
        Ok(featured.rejects.len())
    }

    fn follow_models(&mut self, slot: std::sync::Arc<crate::reload::ModelSlot>) -> bool {
        slot.scoring(self.model.model().version());
        slot.deciding(self.decide.version());
        crate::events::model_scoring(&self.label, None, 0.0);
        self.updates = Some(slot);
        true
    }

    fn process(&mut self, featured: Featured) -> Result<JobOutput> {
        if let Some(next) = self.updates.as_ref().and_then(|s| s.take()) {
            self.swap(next, &featured.batch);
        }
        if let Some((rules, trigger)) = self.updates.as_ref().and_then(|s| s.take_rules()) {
            self.decide.swap(&rules, trigger);
            if let Some(slot) = &self.updates {
                slot.deciding(self.decide.version());
            }
        }
        let shadow = self.challenger.as_ref().map(|_| featured.batch.clone());
        let (scored, unfit) = self.model.process(featured.batch)?;
        // An answer that is no probability is never published: a `model` dead letter.
        let shadow = match shadow {
            Some(batch) if !unfit.is_empty() => {
                let keep = model::fit_rows(batch.num_rows(), &unfit);
                Some(take_record_batch(&batch, &UInt32Array::from(keep))?)
            }
            shadow => shadow,
        };
        let mut rejects = featured.rejects;
        rejects.extend(unfit.into_iter().map(|(row, reason)| Reject {
            row,
            kind: crate::jobs::RejectKind::Model,
            reason,
        }));
        if let Some(d) = &mut self.drift {
            d.observe(&scored)?;
            d.report();
        }
        let decided = self.decide.decide(&scored)?;
        let reasons = self.model.explain(&decided.explained, self.reasons)?;
        let alert_reasons = reasons_of(&decided.explained, &reasons, &decided.alerted);
        // With [decisions], `ALERT` says whether the event's decision is an alert; without,
        // the shipped rule makes it exactly the model's threshold flag.
        let columns = self.decide.declared.then(|| {
            let (outcome, rules) = self.decide.columns(&decided.decisions);
            (
                outcome,
                rules,
                alert_flags(scored.num_rows(), &decided.alerted),
            )
        });
        let published = match &columns {
            Some((_, _, flags)) => with_alert(&scored, flags.clone())?,
            None => scored.clone(),
        };
        let scores = records::scores(&self.records, &published, &mut self.model_name)?;
        let alerts = records::alerts(
            &self.records,
            &published,
            &decided.alerted,
            alert_reasons,
            self.model.threshold(),
            &mut self.model_name,
        )?;
        let decisions = match &columns {
            Some((outcome, rules, _)) => Some(records::decisions(
                &self.records,
                &published,
                records::Decided {
                    outcome: outcome.clone(),
                    rules: rules.clone(),
                    version: &mut self.decide.version,
                    explained: &decided.explained,
                    reasons: &reasons,
                },
                &mut self.model_name,
            )?),
            None => None,
        };
        let (scored, challenger) = match (&mut self.challenger, shadow) {
            (Some(c), Some(batch)) => {
                let (scored, records) = c.score(batch, scored, &self.records)?;
                (scored, Some(records))
            }
            _ => (scored, None),
        };
        let scored = match columns {
            Some((outcome, rules, flags)) => {
                let scored = with_alert(&scored, flags)?;
                append(
                    &scored,
                    [(score::DECISION, outcome), (score::RULES, rules)],
                    self.decide.version.column(scored.num_rows()),
                )?
            }
            None => scored,
        };
        Ok(JobOutput {
            scored: Some(scored),
            scores: Some(scores),
            alerts: Some(alerts),
            challenger,
            decisions,
            forward: None,
            rejects,
        })
    }
}

/// The reasons of `rows` (a subset of `explained`, both ascending), from `reasons` (those of
/// `explained`, in order).
fn reasons_of(
    explained: &[usize],
    reasons: &[Vec<riskpipe_schemas::Reason>],
    rows: &[usize],
) -> Vec<Vec<riskpipe_schemas::Reason>> {
    let mut at = 0;
    rows.iter()
        .map(|row| {
            while explained.get(at).is_some_and(|e| e < row) {
                at += 1;
            }
            reasons.get(at).cloned().unwrap_or_default()
        })
        .collect()
}

/// An `ALERT` column of `rows` rows, set exactly on `alerted`.
fn alert_flags(rows: usize, alerted: &[usize]) -> arrow::array::ArrayRef {
    let mut flags = vec![false; rows];
    for &row in alerted {
        flags[row] = true;
    }
    std::sync::Arc::new(arrow::array::BooleanArray::from(flags))
}

/// `batch` with `flags` as its `ALERT` column.
fn with_alert(batch: &RecordBatch, flags: arrow::array::ArrayRef) -> Result<RecordBatch> {
    let index = batch
        .schema()
        .index_of(score::ALERT)
        .map_err(|e| PipelineError::Bug(format!("a scored batch without ALERT: {e}")))?;
    let mut columns = batch.columns().to_vec();
    columns[index] = flags;
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// `batch` with `DECISION`, `RULES` and `RULES_VERSION` appended.
fn append(
    batch: &RecordBatch,
    columns: [(&str, arrow::array::ArrayRef); 2],
    version: arrow::array::ArrayRef,
) -> Result<RecordBatch> {
    use arrow::datatypes::{Field, Schema};
    let mut fields: Vec<arrow::datatypes::FieldRef> =
        batch.schema().fields().iter().cloned().collect();
    let mut arrays = batch.columns().to_vec();
    for (name, array) in columns.into_iter().chain([(score::RULES_VERSION, version)]) {
        fields.push(std::sync::Arc::new(Field::new(
            name,
            array.data_type().clone(),
            false,
        )));
        arrays.push(array);
    }
    Ok(RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(fields)),
        arrays,
    )?)
}
