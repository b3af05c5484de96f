//! The repartitioned topology's seam, for any job: which part of the features a stage computes,
//! the rows the first part forwards (with their partition of origin) and the stage that keys
//! them for the repartition topic.

use std::sync::Arc;

use arrow::array::{Int32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, FieldRef, Schema};
use riskpipe_core::{Featured, JobOutput, PipelineError, Records, Result, ScoreStage};
use riskpipe_operators::columns;
use riskpipe_schemas::repartition::ORIGIN_PARTITION;

/// Which part of a job's features a stage computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// All of them (one stage).
    Whole,
    /// Before a repartition: admits the events, appends each row's input partition.
    BeforeRepartition,
    /// After it: the rows were admitted before; the watermark is kept per their partition of
    /// origin, whose events arrive here in their own order (a subsequence of it), so it never
    /// runs ahead of the first stage's.
    AfterRepartition,
}

/// The column a row forwarded to a repartition topic carries its input partition in.
pub fn origin_field() -> FieldRef {
    Arc::new(Field::new(ORIGIN_PARTITION, DataType::Int32, false))
}

/// `batch` (the features of admitted rows) with each row's partition of origin appended, as
/// the stage before a repartition forwards it.
pub fn with_origins(batch: RecordBatch, origins: Vec<i32>) -> Result<RecordBatch> {
    let mut fields: Vec<FieldRef> = batch.schema().fields().iter().cloned().collect();
    fields.push(origin_field());
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(Int32Array::from(origins)));
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// The first part's "score" stage: its rows forwarded to the repartition topic, keyed by the
/// next part's key.
#[derive(Debug)]
pub struct Forward {
    pub key: String,
}

impl ScoreStage for Forward {
    fn process(&mut self, featured: Featured) -> Result<JobOutput> {
        let column = columns::get(&featured.batch, &self.key).map_err(PipelineError::produced)?;
        let keys = arrow::compute::cast(column, &DataType::Utf8)?;
        Ok(JobOutput {
            forward: Some(Records {
                batch: featured.batch,
                keys,
                key_column: None,
            }),
            rejects: featured.rejects,
            ..JobOutput::default()
        })
    }
}
