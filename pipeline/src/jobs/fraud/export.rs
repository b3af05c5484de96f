//! The training set's label columns: what a model is trained to predict, and from when a
//! training split may use it.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, TimestampNanosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit, TimestampNanosecondType};
use riskpipe_operators::columns;
use riskpipe_schemas::score;

use crate::{PipelineError, Result};

/// `batch` (featured events) with `LABEL` (the truth column `truth` as 1 or 0) and
/// `LABEL_KNOWN_AT` (the event time `time` plus `delay_ns`: when a chargeback would have
/// arrived, after which no chargeback means genuine).
pub(super) fn with_labels(
    batch: &RecordBatch,
    truth: &str,
    time: &str,
    delay_ns: i64,
) -> Result<RecordBatch> {
    let label = arrow::compute::cast(
        &arrow::compute::cast(columns::get(batch, truth)?, &DataType::Boolean)?,
        &DataType::Int8,
    )?;
    if label.null_count() > 0 {
        return Err(PipelineError::BadInput(format!(
            "the truth column {truth:?} has nulls"
        )));
    }
    let times = columns::primitive::<TimestampNanosecondType>(batch, time)?;
    let known: TimestampNanosecondArray = times
        .unary::<_, TimestampNanosecondType>(|t| t.saturating_add(delay_ns))
        .with_timezone_opt(times.timezone().map(Arc::<str>::from));
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(score::LABEL, DataType::Int8, false));
    fields.push(Field::new(
        score::LABEL_KNOWN_AT,
        DataType::Timestamp(TimeUnit::Nanosecond, times.timezone().map(Arc::<str>::from)),
        false,
    ));
    let mut arrays: Vec<ArrayRef> = batch.columns().to_vec();
    arrays.push(label);
    arrays.push(Arc::new(known));
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}
