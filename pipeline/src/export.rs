//! Training-set exports: every configured feature over a whole history, written to Parquet.
//! Market jobs run their feature stage on the driver (the very code that scores); fraud jobs
//! compile their features to one DataFusion query (the batch twin, `sql` cargo feature), which
//! the full-history test proves equal to the streaming operators.

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

/// Without the `sql` feature there is no batch twin.
#[cfg(not(feature = "sql"))]
pub fn fraud(
    _features: &riskpipe_operators::FeatureConfig,
    _input: &Path,
    _output: &Path,
) -> Result<usize> {
    Err(PipelineError::Config(vec![
        "the fraud training-set export runs on DataFusion: build riskpipe with `--features sql` \
         (models/train/run.sh does)"
            .into(),
    ]))
}

/// Computes every configured feature over a whole history with DataFusion (the batch twin of
/// the streaming chain) and writes the input columns plus the features, ordered by event time.
#[cfg(feature = "sql")]
pub fn fraud(
    features: &riskpipe_operators::FeatureConfig,
    input: &Path,
    output: &Path,
) -> Result<usize> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(PipelineError::runtime("starting the async runtime"))?;
    runtime.block_on(async {
        let ctx = riskpipe_operators::batch::session();
        let path = input.to_string_lossy().to_string();
        if path.to_lowercase().ends_with(".csv") {
            ctx.register_csv("history", &path, datafusion::prelude::CsvReadOptions::new())
                .await
                .map_err(datafusion_error)?;
        } else {
            ctx.register_parquet(
                "history",
                &path,
                datafusion::prelude::ParquetReadOptions::default(),
            )
            .await
            .map_err(datafusion_error)?;
        }
        let schema = ctx
            .table("history")
            .await
            .map_err(datafusion_error)?
            .schema()
            .as_arrow()
            .clone();
        let keep: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let df =
            riskpipe_operators::batch::batch_features(&ctx, features, "history", &keep).await?;
        let batches = df.collect().await.map_err(datafusion_error)?;
        crate::sinks::parquet::write(output, &batches, None)?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    })
}

#[cfg(feature = "sql")]
fn datafusion_error(e: datafusion::error::DataFusionError) -> PipelineError {
    PipelineError::DataFusion(Box::new(e))
}
