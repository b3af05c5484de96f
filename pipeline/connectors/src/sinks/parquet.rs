//! The one Parquet writer: backtest scores, training-set exports and simulated histories.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use parquet::arrow::ArrowWriter;

use crate::{PipelineError, Result};

/// Writes `batches` to `path`, each projected to `columns` (in that order) when given. No
/// batches give a file with an empty schema.
pub fn write(path: &Path, batches: &[RecordBatch], columns: Option<&[String]>) -> Result<()> {
    let project = |b: &RecordBatch| -> Result<RecordBatch> {
        match columns {
            None => Ok(b.clone()),
            Some(names) => {
                let idx = names
                    .iter()
                    .map(|c| b.schema().index_of(c))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Ok(b.project(&idx)?)
            }
        }
    };
    let file = File::create(path).map_err(PipelineError::io("creating", path))?;
    let schema = match batches.first() {
        Some(b) => project(b)?.schema(),
        None => Arc::new(Schema::empty()),
    };
    let mut writer = ArrowWriter::try_new(file, schema, None)?;
    for b in batches {
        writer.write(&project(b)?)?;
    }
    writer.close()?;
    Ok(())
}
