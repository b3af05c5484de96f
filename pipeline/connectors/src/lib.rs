//! riskpipe's connectors: the only code that knows Kafka, files and object stores. It knows no
//! job and no config root: each connector takes its own section and the job's inputs.
//!
//! # Layout
//!
//! - [`sources`] — where micro-batches come from: the live Kafka consumer
//!   ([`sources::kafka`]), a topic range ([`sources::kafka_range`]), the restore gap and a
//!   partition's state rebuilt from the topic, history files ([`sources::file`],
//!   [`sources::ticks`]) replayed in micro-batches ([`sources::history`]);
//! - [`sinks`] — where outputs and dead letters go: Kafka ([`sinks::kafka`], at-least-once or
//!   transactional), memory ([`sinks::collect`]), Parquet files ([`sinks::parquet`]);
//! - [`kafka`] — the `[kafka]` section shared by the Kafka source, sink and range reader, the
//!   librdkafka client configs made from it, its formats, Kafka's partitioner;
//! - [`state`] — checkpoints: Arrow IPC tables and a manifest in an object store.

pub mod kafka;
pub mod sinks;
pub mod sources;
pub mod state;

use riskpipe_core::{PipelineError, Result, events};
use riskpipe_formats::{decoders, encoders, schema_registry};
