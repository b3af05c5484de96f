//! Errors: typed variants that say whose fault they are, which decides dead-letter (bad input),
//! or stop without committing (outside system, bug). The outside systems' own errors (Kafka's,
//! the object store's, the metrics exporter's) are kept as their sources, boxed, so this crate
//! depends on none of their clients.

use std::path::PathBuf;

use riskpipe_schemas::Fault;

/// A source error of an outside system's client, kept whole for its message and chain.
pub type SourceError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of every riskpipe layer.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The configuration is invalid; every problem is listed.
    #[error("invalid config:\n  - {}", .0.join("\n  - "))]
    Config(Vec<String>),
    /// Input data is malformed (a history file, a batch the job cannot take).
    #[error("bad input: {0}")]
    BadInput(String),
    /// A file could not be read or written.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("reading", "creating", ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A Kafka client call failed (after librdkafka's own retries).
    #[error("kafka: {op}: {source}")]
    Kafka {
        /// The call ("creating consumer", "fetching watermarks", ...).
        op: &'static str,
        /// librdkafka's error.
        source: SourceError,
    },
    /// The broker did not acknowledge an output record: the batch's offsets stay uncommitted.
    #[error(
        "broker did not acknowledge a record for {topic}: {source}; offsets of this batch stay uncommitted"
    )]
    Delivery {
        /// The output topic.
        topic: String,
        /// librdkafka's error.
        source: SourceError,
    },
    /// A Kafka transaction (exactly-once mode) failed. `aborted`: it was aborted, and the run
    /// restarts from the last committed transaction (its state restored to that point);
    /// otherwise the producer cannot go on (fenced by another producer with the same
    /// `transactional.id`, or by the broker ending its transaction after
    /// `transaction.timeout.ms`, or refused by the broker) and the pipeline stops.
    #[error("kafka transaction: {op}: {source}{}", if *aborted { "; aborted: the run restarts from the last committed transaction" } else { "; this producer cannot go on (another instance took its transactional.id, or the broker ended its transaction after transaction.timeout.ms, e.g. while unreachable): what it did not commit stays invisible to read_committed readers; start riskpipe again, one instance per transactional.id" })]
    Transaction {
        /// The call ("committing", "sending the input offsets", ...).
        op: &'static str,
        /// librdkafka's error.
        source: SourceError,
        /// Whether the transaction was aborted and the run can start again from the last
        /// committed one.
        aborted: bool,
    },
    /// The schema registry could not be reached or answered with an error (not a 404 for a
    /// schema id, which is the message's fault).
    #[error("schema registry: {op} ({url}): {reason}")]
    SchemaRegistry {
        /// What was being done.
        op: &'static str,
        /// The URL called.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The consumer never got a partition assignment: Kafka is unreachable, or the group never
    /// formed.
    #[error(
        "no partition assignment within {timeout:?} (kafka.startup_timeout): is Kafka reachable at kafka.properties.\"bootstrap.servers\"? Last client error: {last_error}"
    )]
    Startup {
        /// `kafka.startup_timeout`.
        timeout: std::time::Duration,
        /// The last error the client reported.
        last_error: String,
    },
    /// A thread, the async runtime or a listener could not start.
    #[error("{what}: {source}")]
    Runtime {
        /// What was started.
        what: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A chart could not be drawn.
    #[error("drawing {}: {reason}", path.display())]
    Plot {
        /// The image file.
        path: PathBuf,
        /// plotters' error, as text (its error type is generic over the backend).
        reason: String,
    },
    /// The Prometheus recorder could not be installed.
    #[error("metrics: {0}")]
    Metrics(SourceError),
    /// A stage was asked for its keyed state, which it cannot snapshot yet.
    #[error("{stage}: keyed-state snapshots are not implemented yet")]
    StateNotSupported {
        /// The stage.
        stage: &'static str,
    },
    /// The checkpoint store failed (object store I/O).
    #[error("checkpoint store: {op}: {source}")]
    CheckpointStore {
        /// What was being done.
        op: &'static str,
        /// The object store's error.
        source: SourceError,
    },
    /// A checkpoint cannot be used: unreadable, of another job or feature definition, or ahead
    /// of the group's committed offsets.
    #[error("checkpoint {id}: {reason}")]
    Checkpoint {
        /// The checkpoint's id.
        id: u64,
        /// Why.
        reason: String,
    },
    /// riskpipe broke an invariant.
    #[error("bug: {0}")]
    Bug(String),
    /// From the feature operators.
    #[error(transparent)]
    Operator(#[from] riskpipe_operators::OperatorError),
    /// From the scoring stage.
    #[error(transparent)]
    Model(#[from] riskpipe_models::ModelError),
    /// From Arrow, on data that passed the checks.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// From Parquet.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// From DataFusion (the `sql` feature's batch twin).
    #[error("datafusion: {0}")]
    DataFusion(SourceError),
}

impl PipelineError {
    /// The problems a user fixes in their config or model, one per line: every listed one of
    /// a config error or of a model's bindings, else the error itself.
    pub fn problems(self) -> Vec<String> {
        match self {
            PipelineError::Config(each) => each,
            PipelineError::Model(riskpipe_models::ModelError::Bindings {
                path, problems, ..
            }) => problems
                .into_iter()
                .map(|p| format!("model {path}: {p}"))
                .collect(),
            other => vec![other.to_string()],
        }
    }

    /// Whose fault the error is. The driver dead-letters the batch behind a
    /// [`Fault::BadInput`] and goes on; anything else stops the pipeline without committing.
    pub fn fault(&self) -> Fault {
        match self {
            PipelineError::BadInput(_) => Fault::BadInput,
            PipelineError::Io { .. }
            | PipelineError::Kafka { .. }
            | PipelineError::Delivery { .. }
            | PipelineError::Transaction { .. }
            | PipelineError::SchemaRegistry { .. }
            | PipelineError::Startup { .. }
            | PipelineError::Runtime { .. }
            | PipelineError::Plot { .. }
            | PipelineError::Metrics(_)
            | PipelineError::CheckpointStore { .. }
            | PipelineError::Checkpoint { .. }
            | PipelineError::Parquet(_) => Fault::External,
            PipelineError::Config(_)
            | PipelineError::Bug(_)
            | PipelineError::Arrow(_)
            | PipelineError::StateNotSupported { .. } => Fault::Bug,
            PipelineError::DataFusion(_) => Fault::Bug,
            PipelineError::Operator(e) => e.fault(),
            PipelineError::Model(e) => e.fault(),
        }
    }

    /// A Kafka error of `op`, for `map_err`.
    pub fn kafka<E: std::error::Error + Send + Sync + 'static>(
        op: &'static str,
    ) -> impl FnOnce(E) -> Self {
        move |source| PipelineError::Kafka {
            op,
            source: Box::new(source),
        }
    }

    /// A checkpoint store error of `op`, for `map_err`.
    pub fn checkpoint_store<E: std::error::Error + Send + Sync + 'static>(
        op: &'static str,
    ) -> impl FnOnce(E) -> Self {
        move |source| PipelineError::CheckpointStore {
            op,
            source: Box::new(source),
        }
    }

    /// A file error of `op` on `path`, for `map_err`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| PipelineError::Io { op, path, source }
    }

    /// An error reading a column riskpipe produced itself (a score, a feature) or checked at
    /// its source: a bug, never bad input, so the pipeline stops instead of dead-lettering.
    pub fn produced(e: riskpipe_operators::OperatorError) -> Self {
        PipelineError::Bug(format!("a column riskpipe produced or checked: {e}"))
    }

    /// A start-up error of `what`, for `map_err`.
    pub fn runtime(what: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| PipelineError::Runtime { what, source }
    }
}

/// Result of every riskpipe layer.
pub type Result<T, E = PipelineError> = std::result::Result<T, E>;
