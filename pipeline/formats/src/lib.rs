//! riskpipe's formats: the only code that knows how a payload is written. It knows no Kafka,
//! file, job or config section: a connector hands it payloads and Arrow schemas.
//!
//! # Layout
//!
//! - [`decoders`] — payloads to Arrow rows of a job's input schemas (JSON, Avro in the
//!   Confluent wire format), every refused payload kept with its reason;
//! - [`encoders`] — output records (Arrow, in the published schemas) to payloads;
//! - [`schema_registry`] — the Avro format's schemas: a Confluent-compatible registry client,
//!   and an in-memory registry for tests and the demo.

pub mod decoders;
pub mod encoders;
pub mod schema_registry;

use riskpipe_core::{PipelineError, Result};
