//! The riskpipe runtime: one engine that runs every job live, over a Kafka range and over
//! files, so a backtest measures exactly what runs live.
//!
//! # Layout
//!
//! The flow `source → decode → features → score → sink → ack`, one folder or file per stage:
//!
//! - [`sources`] — where micro-batches come from: the live Kafka consumer
//!   ([`sources::kafka`]), a topic range ([`sources::kafka_range`]), history files
//!   ([`sources::file`], [`sources::ticks`]) replayed in micro-batches ([`sources::history`]);
//! - [`decoders`] — payloads to Arrow rows of the job's input schemas (JSON), rejects kept;
//! - [`jobs`] — what runs after decoding, knowing neither Kafka, files nor formats: the
//!   [`fraud`](jobs::fraud) and [`market`](jobs::market) jobs, each a feature stage and a score
//!   stage, built by one registry ([`jobs::build`]);
//! - [`encoders`] — output records (Arrow, in the published schemas) to payloads;
//! - [`sinks`] — where outputs and dead letters go: Kafka ([`sinks::kafka`]), memory
//!   ([`sinks::collect`]), Parquet files ([`sinks::parquet`]);
//! - [`driver`] — the one loop that joins them, pipelined, acknowledging input only after every
//!   output derived from it is delivered.
//!
//! Around it: [`config`] (the one config root), [`kafka`] (the `[kafka]` section shared by the
//! Kafka source, sink and range reader), [`schema_registry`] (the Avro format's schemas),
//! [`live`] (`riskpipe run`), [`reload`] (model hot reload), [`backtest`] (files and
//! Kafka ranges through the driver, then the job's report), [`export`] (training sets),
//! [`demo`] (everything on an in-process mock cluster), [`bench`](mod@bench), [`observe`] (metrics and
//! health endpoints), [`events`] (every metric name), [`error`].

pub mod backtest;
pub mod bench;
pub mod config;
pub mod demo;
pub mod export;
pub mod jobs;
pub mod live;
pub mod observe;
pub mod reload;

pub use config::PipelineConfig;
// The core crate's errors and metric names, under the paths every layer has used.
pub use riskpipe_core::{PipelineError, Result, error, events};
// The formats crate's modules, under the paths every layer has used.
pub use riskpipe_formats::{decoders, encoders, schema_registry};
// The connectors crate's modules, likewise.
pub use riskpipe_connectors::{kafka, sinks, sources, state};
// The engine's driver, likewise.
pub use riskpipe_engine::driver;
