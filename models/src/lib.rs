//! Scoring with ONNX Runtime: a [`Scorer`] turns feature columns of an Arrow `RecordBatch` into
//! one score per row.
//!
//! The runtime library is found by [`runtime_library`] (`ORT_DYLIB_PATH`, then a library beside
//! the executable, then the one the build provisioned) and loaded once per process. A model's
//! inputs are bound to columns ([`bindings`]): several named float, double, int64 or string
//! tensors, from the config or from the model's own metadata, so a model trained on riskpipe's
//! feature export carries its bindings with it. Execution providers are tried in the configured
//! order and the first that registers is used, announced in one log line.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use std::collections::BTreeMap;

use arrow::array::{ArrayRef, RecordBatch};
use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::session::builder::SessionBuilder;
use ort::session::{Session, SessionInputValue};
use riskpipe_schemas::Fault;
use serde::Deserialize;

pub mod bindings;
mod ensemble;

pub use bindings::{BoundColumns, Element, INPUTS_METADATA_KEY, InputColumn, Inputs};
use bindings::{Naming, OutputPick, TensorBinding};

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
    /// The model's inputs or outputs do not fit its bindings: every problem.
    #[error("model {path}: {}", problems.join("; "))]
    Bindings {
        /// Model path.
        path: String,
        /// Each mismatch.
        problems: Vec<String>,
        /// The columns whose bindings fit the graph, with their element types.
        columns: Vec<InputColumn>,
    },
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
            ModelError::Model { .. } | ModelError::Bindings { .. } => Fault::Bug,
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
    /// Columns of the model's one input, in order; default: the model's `riskpipe.features`
    /// metadata.
    #[serde(default)]
    pub features: Option<Vec<String>>,
    /// Each named input's columns (declared fields or features), in order; default: the
    /// model's `riskpipe.inputs` metadata, else `features`.
    #[serde(default)]
    pub inputs: Option<BTreeMap<String, BoundColumns>>,
    /// Output holding the scores: a float or double tensor `[rows, 2]` of class probabilities
    /// (column 1 is taken), `[rows, 1]` or `[rows]`.
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
            inputs: None,
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
    tensors: Vec<TensorBinding>,
    columns: Vec<InputColumn>,
    names: Vec<String>,
    output: OutputPick,
    provider: Provider,
}

impl Scorer {
    /// Loads the model, checks its bindings against its graph and picks an execution provider.
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
        let meta_inputs = metadata.custom(INPUTS_METADATA_KEY);
        let meta_features = metadata.custom(FEATURES_METADATA_KEY);
        let name = metadata
            .custom("riskpipe.model")
            .or_else(|| {
                cfg.path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
            })
            .unwrap_or_default();
        drop(metadata);
        let naming = match (&cfg.inputs, &cfg.features) {
            (Some(_), Some(_)) => {
                return Err(model_err(
                    "`inputs` and `features` both name the model's columns: keep one (`features` is the columns of a model with one input)".into(),
                ));
            }
            (Some(inputs), None) => Naming::Inputs(inputs.clone()),
            (None, Some(features)) => Naming::Features(features.clone()),
            (None, None) => match (meta_inputs, meta_features) {
                (Some(json), _) => Naming::Inputs(serde_json::from_str(&json).map_err(|e| {
                    model_err(format!(
                        "its `{INPUTS_METADATA_KEY}` metadata is no JSON object of input name -> columns: {e}"
                    ))
                })?),
                (None, Some(list)) => Naming::Features(
                    list.split(',')
                        .map(|c| c.trim().to_string())
                        .filter(|c| !c.is_empty())
                        .collect(),
                ),
                (None, None) => {
                    return Err(model_err(format!(
                        "nothing binds its inputs ({}): configure `inputs` (or `features` for one input), or give the model `{INPUTS_METADATA_KEY}` or `{FEATURES_METADATA_KEY}` metadata",
                        session
                            .inputs()
                            .iter()
                            .map(bindings::describe)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            },
        };
        let resolved = bindings::resolve(session.inputs(), session.outputs(), &naming, &cfg.output)
            .map_err(|(problems, columns)| ModelError::Bindings {
                path: path_str.clone(),
                problems,
                columns,
            })?;
        Ok(Self {
            session,
            path: cfg.path.clone(),
            name,
            version,
            names: resolved.columns.iter().map(|c| c.name.clone()).collect(),
            tensors: resolved.tensors,
            columns: resolved.columns,
            output: resolved.output,
            provider,
        })
    }

    /// Columns the model reads, in order.
    pub fn features(&self) -> &[String] {
        &self.names
    }

    /// Columns the model reads and how it reads each.
    pub fn columns(&self) -> &[InputColumn] {
        &self.columns
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

    /// Reads the model's columns of `batch`.
    pub fn inputs(&self, batch: &RecordBatch) -> Result<Inputs> {
        Inputs::read(&self.columns, batch)
    }

    /// Scores `rows` rows of `columns`: the model's columns in order, each of its element type
    /// (as [`Inputs::read`] makes them).
    pub fn score_columns(&mut self, columns: &[&ArrayRef], rows: usize) -> Result<Vec<f32>> {
        if rows == 0 {
            return Ok(Vec::new());
        }
        // A row's score must not depend on how rows were batched, but some ONNX Runtime
        // kernels take another path for a single row (LinearClassifier's, as skl2onnx exports
        // a logistic regression, rounds differently): one row is scored as two copies of it.
        let doubled: Vec<ArrayRef>;
        let (columns, batch_rows): (Vec<&ArrayRef>, usize) = if rows == 1 {
            doubled = columns
                .iter()
                .map(|c| arrow::compute::concat(&[c.as_ref(), c.as_ref()]))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| ModelError::BadInput(e.to_string()))?;
            (doubled.iter().collect(), 2)
        } else {
            (columns.to_vec(), rows)
        };
        let mut feed: Vec<(String, SessionInputValue<'static>)> =
            Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let cols: Vec<&ArrayRef> =
                t.columns
                    .iter()
                    .map(|&c| {
                        columns.get(c).copied().ok_or_else(|| {
                            ModelError::BadInput(format!("model column {c} not given"))
                        })
                    })
                    .collect::<Result<_>>()?;
            feed.push((t.name.clone(), bindings::tensor(t, &cols, batch_rows)?));
        }
        let outputs = self.session.run(feed)?;
        let picked = &outputs[self.output.name.as_str()];
        let (shape, scores): (Vec<usize>, Vec<f32>) = if self.output.double {
            let a = picked.try_extract_array::<f64>()?;
            (a.shape().to_vec(), a.iter().map(|&v| v as f32).collect())
        } else {
            let a = picked.try_extract_array::<f32>()?;
            (a.shape().to_vec(), a.iter().copied().collect())
        };
        let mut scores = match shape.as_slice() {
            [r] | [r, 1] if *r == batch_rows => scores,
            [r, 2] if *r == batch_rows => scores.chunks_exact(2).map(|row| row[1]).collect(),
            _ => Err(ModelError::Model {
                path: self.path.display().to_string(),
                reason: format!(
                    "output {:?} has shape {shape:?}, expected [{batch_rows}], [{batch_rows}, 1] or [{batch_rows}, 2]",
                    self.output.name
                ),
            })?,
        };
        scores.truncate(rows);
        Ok(scores)
    }

    /// Scores the rows of `inputs` (read by [`Self::inputs`]).
    pub fn score_inputs(&mut self, inputs: &Inputs) -> Result<Vec<f32>> {
        let cols: Vec<&ArrayRef> = inputs.columns.iter().collect();
        self.score_columns(&cols, inputs.rows)
    }

    /// Scores every row of `batch`.
    pub fn score(&mut self, batch: &RecordBatch) -> Result<Vec<f32>> {
        let inputs = self.inputs(batch)?;
        self.score_inputs(&inputs)
    }
}

/// Path of a model shipped in this crate's directory (for tests, benches and defaults).
pub fn shipped_model(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(file)
}
