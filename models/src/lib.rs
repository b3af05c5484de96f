//! Scoring with ONNX Runtime: a [`Scorer`] turns feature columns of an Arrow `RecordBatch` into
//! one score per row.
//!
//! The runtime library is found by [`runtime_library`] (`ORT_DYLIB_PATH`, then a library beside
//! the executable, then the one the build provisioned) and loaded once per process. A model's
//! input is one float tensor `[rows, features]`; which columns feed it comes from the config or
//! from the model's `riskpipe.features` metadata, so a model trained on riskpipe's own feature
//! export carries its column order with it. Execution providers are tried in the configured
//! order and the first that registers is used, announced in one log line.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float32Type};
use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::session::Session;
use ort::session::builder::SessionBuilder;
use ort::value::TensorRef;
use riskpipe_schemas::Fault;
use serde::Deserialize;

mod ensemble;

pub use ensemble::{
    Combine, EnsembleConfig, MemberQuantiles, Model, RANK_QUANTILES, RankReference,
};

/// ONNX Runtime version the build provisions and `ort` targets.
pub const ORT_VERSION: &str = "1.31.1";

/// Metadata key listing the model's input feature columns, comma-separated.
pub const FEATURES_METADATA_KEY: &str = "riskpipe.features";

/// Errors of the models crate.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The ONNX Runtime library cannot be found or loaded.
    #[error("ONNX Runtime unavailable: {0}")]
    Runtime(String),
    /// The model file or its configuration does not fit.
    #[error("model {path}: {reason}")]
    Model {
        /// Model path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A batch cannot be scored (missing or non-numeric feature, null value).
    #[error("bad input: {0}")]
    BadInput(String),
    /// ONNX Runtime failed while scoring.
    #[error("onnx runtime: {0}")]
    Ort(#[from] ort::Error),
}

impl ModelError {
    /// Whose fault the error is.
    pub fn fault(&self) -> Fault {
        match self {
            ModelError::BadInput(_) => Fault::BadInput,
            ModelError::Runtime(_) | ModelError::Ort(_) => Fault::External,
            ModelError::Model { .. } => Fault::Bug,
        }
    }
}

/// Result of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// An ONNX Runtime execution provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// The default CPU provider.
    Cpu,
    /// NVIDIA CUDA (needs an `onnxruntime-gpu` library).
    Cuda,
    /// NVIDIA TensorRT (needs an `onnxruntime-gpu` library with TensorRT).
    Tensorrt,
}

fn default_providers() -> Vec<Provider> {
    vec![Provider::Cpu]
}
fn default_threads() -> usize {
    1
}
fn default_output() -> String {
    "probabilities".into()
}

/// How to load and feed one model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Path of the `.onnx` file (relative paths are resolved from the working directory).
    pub path: PathBuf,
    /// Feature columns for the model's input, in order; default: the model's
    /// `riskpipe.features` metadata.
    #[serde(default)]
    pub features: Option<Vec<String>>,
    /// Output holding the scores: `[rows, 2]` class probabilities (column 1 is taken) or `[rows]`.
    #[serde(default = "default_output")]
    pub output: String,
    /// Execution providers in order of preference, e.g. `["tensorrt", "cuda", "cpu"]`.
    #[serde(default = "default_providers")]
    pub providers: Vec<Provider>,
    /// Threads ONNX Runtime may use for one batch.
    #[serde(default = "default_threads")]
    pub threads: usize,
    /// An ensemble member's weight (`ensemble.combine = "weighted_mean"` or `"rank_average"`).
    #[serde(default)]
    pub weight: Option<f64>,
}

impl ModelConfig {
    /// A CPU config for `path` with defaults.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            features: None,
            output: default_output(),
            providers: default_providers(),
            threads: default_threads(),
            weight: None,
        }
    }
}

/// Where the ONNX Runtime library is: `ORT_DYLIB_PATH`, else `libonnxruntime.so*` beside the
/// executable, else the library the build provisioned. Errors (rather than letting `ort` panic)
/// when none exists.
pub fn runtime_library() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(ModelError::Runtime(format!(
                "ORT_DYLIB_PATH={} is not a file",
                p.display()
            )))
        };
    }
    let beside_exe = std::env::current_exe().ok().and_then(|exe| {
        let dir = exe.parent()?.to_path_buf();
        [
            format!("libonnxruntime.so.{ORT_VERSION}"),
            "libonnxruntime.so".to_string(),
        ]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
    });
    if let Some(p) = beside_exe {
        return Ok(p);
    }
    let bundled = PathBuf::from(env!("RISKPIPE_BUNDLED_ORT"));
    if bundled.is_file() {
        return Ok(bundled);
    }
    Err(ModelError::Runtime(format!(
        "no ONNX Runtime library found: set ORT_DYLIB_PATH to libonnxruntime.so ({ORT_VERSION}), \
         put it beside the riskpipe executable, or rebuild so the build provisions it (looked for {})",
        bundled.display()
    )))
}

/// The process-wide ONNX Runtime environment, created on first use.
pub fn environment() -> Result<Environment> {
    static ENV: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let lib = runtime_library().map_err(|e| e.to_string())?;
        let builder =
            ort::init_from(&lib).map_err(|e| format!("loading {}: {e}", lib.display()))?;
        builder
            .with_name("riskpipe")
            .build()
            .map_err(|e| format!("creating the environment from {}: {e}", lib.display()))
    })
    .clone()
    .map_err(ModelError::Runtime)
}

fn try_provider(
    builder: &mut SessionBuilder,
    provider: Provider,
) -> std::result::Result<(), String> {
    fn register<E: ExecutionProvider>(
        ep: E,
        b: &mut SessionBuilder,
    ) -> std::result::Result<(), String> {
        match E::is_available() {
            Ok(true) => ep.register(b).map_err(|e| e.to_string()),
            Ok(false) => Err("not compiled into this ONNX Runtime library".into()),
            Err(e) => Err(e.to_string()),
        }
    }
    match provider {
        Provider::Cpu => Ok(()),
        Provider::Cuda => register(ep::CUDA::default(), builder),
        Provider::Tensorrt => register(ep::TensorRT::default(), builder),
    }
}

/// The first 12 hex digits of the SHA-256 of a model file.
pub fn version_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A loaded model that scores batches.
#[derive(Debug)]
pub struct Scorer {
    session: Session,
    path: PathBuf,
    name: String,
    version: String,
    input: String,
    output: String,
    features: Vec<String>,
    provider: Provider,
    /// Row-major input buffer, reused across batches.
    buffer: Vec<f32>,
}

impl Scorer {
    /// Loads the model, resolves its feature columns and picks an execution provider.
    pub fn load(cfg: &ModelConfig) -> Result<Self> {
        let env = environment()?;
        let path_str = cfg.path.display().to_string();
        let model_err = |reason: String| ModelError::Model {
            path: path_str.clone(),
            reason,
        };
        if !cfg.path.is_file() {
            return Err(model_err("file not found".into()));
        }
        let mut builder = Session::builder(&env)?
            .with_intra_threads(cfg.threads.max(1))
            .map_err(|e| model_err(e.to_string()))?;
        let mut skipped = Vec::new();
        let mut active = None;
        for &p in &cfg.providers {
            match try_provider(&mut builder, p) {
                Ok(()) => {
                    active = Some(p);
                    break;
                }
                Err(why) => skipped.push(format!("{p:?}: {why}")),
            }
        }
        // CPU is always there, also when the list names only unavailable accelerators.
        let provider = active.unwrap_or(Provider::Cpu);
        // One read: the session and the version come from the same bytes, also when the file
        // is being replaced (hot reload).
        let bytes = std::fs::read(&cfg.path).map_err(|e| model_err(e.to_string()))?;
        let version = version_of(&bytes);
        let session = builder
            .commit_from_memory(&bytes)
            .map_err(|e| model_err(e.to_string()))?;
        if skipped.is_empty() {
            tracing::info!(model = %path_str, provider = ?provider, "scoring with execution provider {provider:?}");
        } else {
            tracing::warn!(model = %path_str, provider = ?provider, skipped = %skipped.join("; "),
                "scoring with execution provider {provider:?}; unavailable: {}", skipped.join("; "));
        }
        let metadata = session.metadata()?;
        let features = match &cfg.features {
            Some(f) => f.clone(),
            None => metadata
                .custom(FEATURES_METADATA_KEY)
                .map(|s| s.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect())
                .ok_or_else(|| model_err(format!("no `features` configured and no `{FEATURES_METADATA_KEY}` metadata in the model")))?,
        };
        let name = metadata
            .custom("riskpipe.model")
            .or_else(|| {
                cfg.path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
            })
            .unwrap_or_default();
        drop(metadata);
        let [input] = session.inputs() else {
            return Err(model_err(format!(
                "expected one input tensor, found {}",
                session.inputs().len()
            )));
        };
        if let Some(dims) = input.dtype().tensor_shape()
            && let Some(&width) = dims.get(1)
            && width > 0
            && width as usize != features.len()
        {
            return Err(model_err(format!(
                "input {:?} takes {width} features but {} are configured: {}",
                input.name(),
                features.len(),
                features.join(", ")
            )));
        }
        let input = input.name().to_string();
        if !session.outputs().iter().any(|o| o.name() == cfg.output) {
            let names: Vec<_> = session
                .outputs()
                .iter()
                .map(|o| o.name().to_string())
                .collect();
            return Err(model_err(format!(
                "no output {:?} (outputs: {})",
                cfg.output,
                names.join(", ")
            )));
        }
        Ok(Self {
            session,
            path: cfg.path.clone(),
            name,
            version,
            input,
            output: cfg.output.clone(),
            features,
            provider,
            buffer: Vec::new(),
        })
    }

    /// Feature columns the model reads, in order.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// The model's name (its `riskpipe.model` metadata or file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The model's version: the first 12 hex digits of the SHA-256 of its file.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// What score records name the model by: `<file name>@<version>`.
    pub fn label(&self) -> String {
        let file = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("{file}@{}", self.version)
    }

    /// The execution provider in use.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Copies the model's feature columns of `batch` into a row-major f32 matrix.
    pub fn feature_matrix(&self, batch: &RecordBatch, out: &mut Vec<f32>) -> Result<()> {
        feature_matrix(&self.features, batch, out)
    }

    /// Scores a row-major matrix of `rows` × features.
    pub fn score_matrix(&mut self, matrix: &[f32], rows: usize) -> Result<Vec<f32>> {
        if rows == 0 {
            return Ok(Vec::new());
        }
        let tensor = TensorRef::from_array_view(([rows, self.features.len()], matrix))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => tensor])?;
        let scores = outputs[self.output.as_str()].try_extract_array::<f32>()?;
        let shape = scores.shape().to_vec();
        match shape.as_slice() {
            [r] if *r == rows => Ok(scores.iter().copied().collect()),
            [r, 1] if *r == rows => Ok(scores.iter().copied().collect()),
            [r, 2] if *r == rows => Ok(scores.rows().into_iter().map(|row| row[1]).collect()),
            _ => Err(ModelError::Model {
                path: self.path.display().to_string(),
                reason: format!(
                    "output {:?} has shape {shape:?}, expected [{rows}], [{rows}, 1] or [{rows}, 2]",
                    self.output
                ),
            }),
        }
    }

    /// Scores every row of `batch`.
    pub fn score(&mut self, batch: &RecordBatch) -> Result<Vec<f32>> {
        let mut buffer = std::mem::take(&mut self.buffer);
        let result = self
            .feature_matrix(batch, &mut buffer)
            .and_then(|()| self.score_matrix(&buffer, batch.num_rows()));
        self.buffer = buffer;
        result
    }
}

/// Copies the `features` columns of `batch` into a row-major f32 matrix.
fn feature_matrix(features: &[String], batch: &RecordBatch, out: &mut Vec<f32>) -> Result<()> {
    let (n, f) = (batch.num_rows(), features.len());
    out.clear();
    out.resize(n * f, 0.0);
    for (j, name) in features.iter().enumerate() {
        let col = batch
            .column_by_name(name)
            .ok_or_else(|| ModelError::BadInput(format!("missing feature column {name:?}")))?;
        if col.null_count() > 0 {
            return Err(ModelError::BadInput(format!(
                "feature column {name:?} has nulls"
            )));
        }
        if !col.data_type().is_numeric() {
            return Err(ModelError::BadInput(format!(
                "feature column {name:?} is {}, not numeric",
                col.data_type()
            )));
        }
        let values = cast(col, &DataType::Float32)
            .map_err(|e| ModelError::BadInput(format!("feature {name:?}: {e}")))?;
        for (i, v) in values
            .as_primitive::<Float32Type>()
            .values()
            .iter()
            .enumerate()
        {
            out[i * f + j] = *v;
        }
    }
    Ok(())
}

/// Path of a model shipped in this crate's directory (for tests, benches and defaults).
pub fn shipped_model(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(file)
}
