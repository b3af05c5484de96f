//! Scored event rows to score and alert records, as Arrow: columnar, one key per record. Their
//! shape follows the declared events ([`RecordShapes`]); for the handbook's declaration it is
//! the published `schemas/json/score.schema.json` and `alert.schema.json`.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, ListArray, RecordBatch, StringArray, StructArray, UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Field, FieldRef, Float32Type, Schema, SchemaRef};
use riskpipe_operators::columns;
use riskpipe_schemas::declared::EventSchema;
use riskpipe_schemas::declared::Sensitive;
use riskpipe_schemas::{Reason, reason_fields, reason_fields_with_text, score};

use super::OutputsConfig;
use crate::jobs::{Records, Repeated};
use crate::{PipelineError, Result};

/// What score and alert records carry, from the declared events. A score: the event's id, its
/// entity (where declared), its time, then `SCORE`, `ALERT`, `MODEL`. An alert: the id, the
/// entity, every other declared field in declaration order, the time, the amount (where
/// declared), then `SCORE`, `THRESHOLD`, `MODEL`, `REASONS`. Both are keyed by the entity (the
/// id where no entity is declared).
#[derive(Debug, Clone)]
pub(crate) struct RecordShapes {
    pub(crate) score: SchemaRef,
    pub(crate) alert: SchemaRef,
    /// A decision (`[decisions]`): the score's event columns, then `SCORE`, `DECISION`,
    /// `RULES`, `RULES_VERSION`, `MODEL`, `REASONS` (empty for the default outcome).
    pub(crate) decision: SchemaRef,
    key: Arc<str>,
    /// Whether reasons carry a `text` value (the model reads text).
    text_reasons: bool,
    /// Event columns of a score record and of an alert record, in order.
    score_columns: Vec<String>,
    alert_columns: Vec<String>,
}

impl RecordShapes {
    /// The records of `declared`'s events; `text_reasons` when the model reads text (its
    /// alerts' reasons then carry a `text` value beside the numeric one). `outputs` lists what
    /// they carry instead and what they are keyed by; a listed feature's column is among
    /// `features` (the feature chain's).
    pub(crate) fn of(
        declared: &EventSchema,
        text_reasons: bool,
        outputs: Option<&OutputsConfig>,
        features: &[FieldRef],
    ) -> Self {
        let events = declared.arrow_schema();
        let name = |i: usize| declared.fields[i].name.clone();
        let (id, time) = (name(declared.id), name(declared.time));
        let entity = declared.entity.map(name);
        let amount = declared.amount.map(name);
        let listed = |list: Option<&Vec<String>>| -> Option<Vec<String>> {
            list.map(|names| {
                let mut columns = vec![id.clone()];
                columns.extend(names.iter().cloned());
                columns.push(time.clone());
                columns
            })
        };
        let score_columns = listed(outputs.and_then(|o| o.scores.as_ref())).unwrap_or_else(|| {
            let mut columns = vec![id.clone()];
            columns.extend(entity.clone());
            columns.push(time.clone());
            columns
        });
        let mut alert_columns =
            listed(outputs.and_then(|o| o.alerts.as_ref())).unwrap_or_else(|| {
                let mut columns = vec![id.clone()];
                columns.extend(entity.clone());
                columns.extend(declared.fields.iter().map(|f| f.name.clone()).filter(|n| {
                    ![Some(&id), Some(&time), entity.as_ref(), amount.as_ref()].contains(&Some(n))
                }));
                columns.push(time.clone());
                columns.extend(amount.clone());
                columns
            });
        // A field declared sensitive "drop" is published nowhere.
        alert_columns.retain(|n| {
            declared
                .index_of(n)
                .is_none_or(|i| declared.fields[i].sensitive != Some(Sensitive::Drop))
        });
        let key = outputs.and_then(|o| o.key.clone()).or(entity).unwrap_or(id);
        let event_fields = |names: &[String]| -> Vec<Field> {
            names
                .iter()
                .filter_map(|n| {
                    events.field_with_name(n).ok().cloned().or_else(|| {
                        features
                            .iter()
                            .find(|f| f.name() == n)
                            .map(|f| f.as_ref().clone())
                    })
                })
                .collect()
        };
        let mut score_fields = event_fields(&score_columns);
        score_fields.extend([
            Field::new(score::SCORE, DataType::Float64, false),
            Field::new(score::ALERT, DataType::Boolean, false),
            Field::new(score::MODEL, DataType::Utf8, false),
        ]);
        let mut alert_fields = event_fields(&alert_columns);
        alert_fields.extend([
            Field::new(score::SCORE, DataType::Float64, false),
            Field::new(score::THRESHOLD, DataType::Float64, false),
            Field::new(score::MODEL, DataType::Utf8, false),
            Field::new_list(
                score::REASONS,
                Field::new_struct("item", reasons_of(text_reasons), false),
                false,
            ),
        ]);
        let mut decision_fields = event_fields(&score_columns);
        decision_fields.extend([
            Field::new(score::SCORE, DataType::Float64, false),
            Field::new(score::DECISION, DataType::Utf8, false),
            Field::new_list(
                score::RULES,
                Field::new_struct("item", riskpipe_schemas::rule_fields(), false),
                false,
            ),
            Field::new(score::RULES_VERSION, DataType::Utf8, false),
            Field::new(score::MODEL, DataType::Utf8, false),
            Field::new_list(
                score::REASONS,
                Field::new_struct("item", reasons_of(text_reasons), false),
                false,
            ),
        ]);
        let record = |fields: Vec<Field>, name: &str| -> SchemaRef {
            let metadata = [(
                riskpipe_schemas::avro::RECORD_NAME.to_string(),
                name.to_string(),
            )];
            Arc::new(Schema::new(fields).with_metadata(metadata.into_iter().collect()))
        };
        Self {
            score: record(score_fields, "Score"),
            alert: record(alert_fields, "Alert"),
            decision: record(decision_fields, "Decision"),
            key: key.into(),
            text_reasons,
            score_columns,
            alert_columns,
        }
    }
}

fn column(batch: &RecordBatch, name: &str) -> Result<ArrayRef> {
    Ok(columns::get(batch, name)
        .map_err(PipelineError::produced)?
        .clone())
}

impl RecordShapes {
    /// Whether alerts' reasons carry text values.
    pub(crate) fn reads_text(&self) -> bool {
        self.text_reasons
    }

    /// The column both records are keyed by.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }
}

/// One score record per row of `scored` (events with `SCORE` and `ALERT`).
pub(crate) fn scores(
    shapes: &RecordShapes,
    scored: &RecordBatch,
    model: &mut Repeated,
) -> Result<Records> {
    let n = scored.num_rows();
    let value =
        columns::primitive::<Float32Type>(scored, score::SCORE).map_err(PipelineError::produced)?;
    let mut arrays = shapes
        .score_columns
        .iter()
        .map(|c| column(scored, c))
        .collect::<Result<Vec<_>>>()?;
    arrays.extend([
        Arc::new(Float64Array::from_unary(value, f64::from)) as ArrayRef,
        Arc::new(
            columns::boolean(scored, score::ALERT)
                .map_err(PipelineError::produced)?
                .clone(),
        ),
        model.column(n),
    ]);
    let batch = RecordBatch::try_new(shapes.score.clone(), arrays)?;
    Ok(Records {
        keys: cast(&column(scored, &shapes.key)?, &DataType::Utf8)?,
        batch,
        key_column: Some(shapes.key.clone()),
    })
}

/// One alert record per row of `alerted` (rows of `scored`), with `reasons[k]` for the k-th.
pub(crate) fn alerts(
    shapes: &RecordShapes,
    scored: &RecordBatch,
    alerted: &[usize],
    reasons: Vec<Vec<Reason>>,
    threshold: f64,
    model: &mut Repeated,
) -> Result<Records> {
    let rows = UInt32Array::from_iter_values(alerted.iter().map(|&i| i as u32));
    let pick =
        |name: &str| -> Result<ArrayRef> { Ok(take(column(scored, name)?.as_ref(), &rows, None)?) };
    let n = alerted.len();
    let value = take(
        columns::primitive::<Float32Type>(scored, score::SCORE).map_err(PipelineError::produced)?,
        &rows,
        None,
    )?;
    let mut arrays = shapes
        .alert_columns
        .iter()
        .map(|c| pick(c))
        .collect::<Result<Vec<_>>>()?;
    arrays.extend([
        cast(&value, &DataType::Float64)?,
        Arc::new(Float64Array::from(vec![threshold; n])) as ArrayRef,
        model.column(n),
        Arc::new(reason_lists(reasons, shapes.text_reasons)?),
    ]);
    let batch = RecordBatch::try_new(shapes.alert.clone(), arrays)?;
    Ok(Records {
        keys: cast(&pick(&shapes.key)?, &DataType::Utf8)?,
        batch,
        key_column: Some(shapes.key.clone()),
    })
}

/// What the decision records of one batch carry beside the scored rows.
pub(crate) struct Decided<'a> {
    /// Each row's outcome.
    pub(crate) outcome: ArrayRef,
    /// Each row's matching rules (`{rule, outcome, shadow}`).
    pub(crate) rules: ArrayRef,
    /// The rules' version.
    pub(crate) version: &'a mut Repeated,
    /// The rows explained, each with its reasons (rows of the default outcome have none).
    pub(crate) explained: &'a [usize],
    pub(crate) reasons: &'a [Vec<Reason>],
}

/// One decision record per row of `scored`.
pub(crate) fn decisions(
    shapes: &RecordShapes,
    scored: &RecordBatch,
    decided: Decided<'_>,
    model: &mut Repeated,
) -> Result<Records> {
    let n = scored.num_rows();
    let value =
        columns::primitive::<Float32Type>(scored, score::SCORE).map_err(PipelineError::produced)?;
    let mut arrays = shapes
        .score_columns
        .iter()
        .map(|c| column(scored, c))
        .collect::<Result<Vec<_>>>()?;
    let mut reasons = vec![Vec::new(); n];
    for (&row, r) in decided.explained.iter().zip(decided.reasons) {
        if let Some(slot) = reasons.get_mut(row) {
            slot.clone_from(r);
        }
    }
    arrays.extend([
        Arc::new(Float64Array::from_unary(value, f64::from)) as ArrayRef,
        decided.outcome,
        decided.rules,
        decided.version.column(n),
        model.column(n),
        Arc::new(reason_lists(reasons, shapes.text_reasons)?),
    ]);
    let batch = RecordBatch::try_new(shapes.decision.clone(), arrays)?;
    Ok(Records {
        keys: cast(&column(scored, &shapes.key)?, &DataType::Utf8)?,
        batch,
        key_column: Some(shapes.key.clone()),
    })
}

/// `REASONS`: a list of `{feature, value, contribution}` structs per alert; with
/// `text_reasons`, `{feature, value, text, contribution}`, `value` null for a text input.
fn reason_lists(reasons: Vec<Vec<Reason>>, text_reasons: bool) -> Result<ListArray> {
    let lengths: Vec<usize> = reasons.iter().map(Vec::len).collect();
    let all: Vec<Reason> = reasons.into_iter().flatten().collect();
    let feature: ArrayRef = Arc::new(StringArray::from_iter_values(
        all.iter().map(|r| r.feature.as_str()),
    ));
    let contribution: ArrayRef = Arc::new(Float64Array::from_iter_values(
        all.iter().map(|r| r.contribution),
    ));
    let columns = match text_reasons {
        false => vec![
            feature,
            Arc::new(Float64Array::from_iter_values(all.iter().map(|r| r.value))) as ArrayRef,
            contribution,
        ],
        true => vec![
            feature,
            Arc::new(Float64Array::from_iter(
                all.iter().map(|r| r.text.is_none().then_some(r.value)),
            )) as ArrayRef,
            Arc::new(StringArray::from_iter(
                all.iter().map(|r| r.text.as_deref()),
            )),
            contribution,
        ],
    };
    let fields = reasons_of(text_reasons);
    let items = StructArray::try_new(fields.clone(), columns, None)?;
    Ok(ListArray::try_new(
        Arc::new(Field::new_struct("item", fields, false)),
        OffsetBuffer::from_lengths(lengths),
        Arc::new(items),
        None,
    )?)
}

fn reasons_of(text_reasons: bool) -> arrow::datatypes::Fields {
    match text_reasons {
        true => reason_fields_with_text(),
        false => reason_fields(),
    }
}
