//! Training-set exports: every configured feature over a whole history, written to Parquet, by
//! the feature stage that scores live (on the driver, as a backtest replays). A fraud job adds
//! the label and when it is known. DataFusion's batch twin (`sql` cargo feature) proves the
//! streaming operators equal to a batch definition in tests; the export does not need it.

use std::path::Path;

use crate::config::PipelineConfig;
use crate::{PipelineError, Result};

/// Writes the input columns plus every feature of `input` to `output`; returns the rows.
pub fn features(cfg: &PipelineConfig, input: &Path, output: &Path) -> Result<usize> {
    // No model is needed (the export is how one gets trained): check only the job.
    let kind = cfg.job.kind();
    let problems = kind.problems(cfg);
    if !problems.is_empty() {
        return Err(PipelineError::Config(problems));
    }
    kind.export(cfg, input, output)
}
