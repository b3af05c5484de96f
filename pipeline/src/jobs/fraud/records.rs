//! Scored transaction rows to the score and alert records of `schemas/json/score.schema.json`
//! and `alert.schema.json`, as Arrow: columnar, one key per record (the customer id).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, ListArray, RecordBatch, StringArray, StructArray, UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::compute::{cast, take};
use arrow::datatypes::SchemaRef;
use arrow::datatypes::{DataType, Field, Float32Type};
use riskpipe_operators::columns;
use riskpipe_schemas::{Reason, reason_fields, score, tx};

use crate::jobs::{Records, Repeated};
use crate::{PipelineError, Result};

fn column(batch: &RecordBatch, name: &str) -> Result<ArrayRef> {
    Ok(columns::get(batch, name)
        .map_err(PipelineError::produced)?
        .clone())
}

/// One score record per row of `scored` (transactions with `SCORE` and `ALERT`), keyed by
/// customer. `event_time` names the event-time column.
pub(crate) fn scores(
    schema: &SchemaRef,
    scored: &RecordBatch,
    event_time: &str,
    model: &mut Repeated,
) -> Result<Records> {
    let n = scored.num_rows();
    let customer = column(scored, tx::CUSTOMER_ID)?;
    let value =
        columns::primitive::<Float32Type>(scored, score::SCORE).map_err(PipelineError::produced)?;
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            column(scored, tx::TRANSACTION_ID)?,
            customer.clone(),
            column(scored, event_time)?,
            Arc::new(Float64Array::from_unary(value, f64::from)),
            Arc::new(
                columns::boolean(scored, score::ALERT)
                    .map_err(PipelineError::produced)?
                    .clone(),
            ),
            model.column(n),
        ],
    )?;
    Ok(Records {
        keys: cast(&customer, &DataType::Utf8)?,
        batch,
        key_column: Some(tx::CUSTOMER_ID),
    })
}

/// One alert record per row of `alerted` (rows of `scored`), with `reasons[k]` for the k-th.
pub(crate) fn alerts(
    schema: &SchemaRef,
    scored: &RecordBatch,
    event_time: &str,
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
    let value = cast(&value, &DataType::Float64)?;
    let customer = pick(tx::CUSTOMER_ID)?;
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            pick(tx::TRANSACTION_ID)?,
            customer.clone(),
            pick(tx::TERMINAL_ID)?,
            pick(event_time)?,
            pick(tx::TX_AMOUNT)?,
            value,
            Arc::new(Float64Array::from(vec![threshold; n])),
            model.column(n),
            Arc::new(reason_lists(reasons)?),
        ],
    )?;
    Ok(Records {
        keys: cast(&customer, &DataType::Utf8)?,
        batch,
        key_column: Some(tx::CUSTOMER_ID),
    })
}

/// `REASONS`: a list of `{feature, value, contribution}` structs per alert.
fn reason_lists(reasons: Vec<Vec<Reason>>) -> Result<ListArray> {
    let lengths: Vec<usize> = reasons.iter().map(Vec::len).collect();
    let all: Vec<Reason> = reasons.into_iter().flatten().collect();
    let items = StructArray::try_new(
        reason_fields(),
        vec![
            Arc::new(StringArray::from_iter_values(
                all.iter().map(|r| r.feature.as_str()),
            )),
            Arc::new(Float64Array::from_iter_values(all.iter().map(|r| r.value))),
            Arc::new(Float64Array::from_iter_values(
                all.iter().map(|r| r.contribution),
            )),
        ],
        None,
    )?;
    Ok(ListArray::try_new(
        Arc::new(Field::new_struct("item", reason_fields(), false)),
        OffsetBuffer::from_lengths(lengths),
        Arc::new(items),
        None,
    )?)
}
