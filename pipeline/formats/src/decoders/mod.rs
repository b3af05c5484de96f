//! Decoders: message payloads to Arrow rows of a job's input schemas, every undecodable message
//! kept with its reason for the dead-letter topic. A format is one file here, a [`Format`] variant,
//! and one line where a `[kafka]` section builds its decoder (the pipeline's `kafka/formats.rs`).
//!
//! - [`json`](JsonDecoder): one JSON object per message;
//! - [`avro`](AvroDecoder): Avro in the schema registry's wire format.

mod avro;
mod avro_declared;
mod declared;
mod declared_rows;
mod events;
mod json;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use serde::Deserialize;

pub use avro::AvroDecoder;
pub use declared::DeclaredJsonDecoder;
pub use json::JsonDecoder;

use riskpipe_core::RejectKind;

/// A field name as a reason may show it: at most 64 printable ASCII characters (field names come
/// from the payload too).
pub(crate) fn shown_name(raw: &str) -> String {
    raw.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
}

/// Every published schema is a JSON object (`"type": "object"`), but serde's derived structs
/// also take an array of the field values in order: a payload must open with `{`. (serde_json
/// itself is strict JSON; arrow-json's tape reader is not, see [`strict_json_object`].)
pub(crate) fn opens_an_object(payload: &[u8]) -> Result<(), (RejectKind, String)> {
    if payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return Ok(());
    }
    strict_json_object(payload)
}

/// One strict JSON value that is an object: arrow-json's tape reader takes control characters
/// in strings, numbers with leading zeros and numbers beyond f64 (`1e999`), which JSON or the
/// JSON Schemas forbid.
pub(crate) fn strict_json_object(payload: &[u8]) -> Result<(), (RejectKind, String)> {
    match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err((RejectKind::Schema, "not a JSON object".into())),
        Err(e) if e.classify() == serde_json::error::Category::Eof => {
            Err((RejectKind::Malformed, "truncated JSON".into()))
        }
        Err(e) if e.to_string().contains("out of range") => {
            Err((RejectKind::Schema, "number out of range".into()))
        }
        Err(_) => Err((RejectKind::Malformed, "malformed JSON".into())),
    }
}

/// Why a message was rejected; becomes the dead letter's `riskpipe.error` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Index of the message among those given to [`Decoder::decode`].
    pub index: usize,
    /// Human-readable reason, naming the broken part.
    pub reason: String,
    /// Class of the problem.
    pub kind: RejectKind,
}

/// The decoded rows (one per accepted message, in order) and the rejected messages.
#[derive(Debug)]
pub struct DecodedPayloads {
    /// Accepted messages as rows of the schema.
    pub batch: RecordBatch,
    /// Index (into the input) of each row of `batch`.
    pub accepted: Vec<usize>,
    /// Messages that could not become a row.
    pub rejected: Vec<Rejection>,
}

/// Turns payloads into rows of a schema.
pub trait Decoder: Send + Sync + std::fmt::Debug {
    /// Decodes one row per payload read from `topic` against `schema`; a payload that does not
    /// give exactly one valid row is rejected, and its valid neighbours are still decoded. An
    /// error is no payload's fault (the schema registry cannot be reached): the batch fails.
    fn decode(
        &self,
        topic: &str,
        schema: &SchemaRef,
        payloads: &[&[u8]],
    ) -> crate::Result<DecodedPayloads>;

    /// As [`decode`](Decoder::decode), with each record's Kafka timestamp (ms since the
    /// epoch, `None` where it has none), for events whose declared time is that timestamp
    /// (`format = "kafka_timestamp"`): a source of Kafka records calls this.
    fn decode_records(
        &self,
        topic: &str,
        schema: &SchemaRef,
        payloads: &[&[u8]],
        stamps: &[Option<i64>],
    ) -> crate::Result<DecodedPayloads> {
        let _ = stamps;
        self.decode(topic, schema, payloads)
    }
}

/// Each topic decoded in its own format (`[kafka.formats]`).
#[derive(Debug)]
pub struct ByTopic {
    /// The decoder of each named topic.
    pub topics: Vec<(String, Box<dyn Decoder>)>,
    /// The decoder of every other topic.
    pub other: Box<dyn Decoder>,
}

impl Decoder for ByTopic {
    fn decode(
        &self,
        topic: &str,
        schema: &SchemaRef,
        payloads: &[&[u8]],
    ) -> crate::Result<DecodedPayloads> {
        self.decode_records(topic, schema, payloads, &[])
    }

    fn decode_records(
        &self,
        topic: &str,
        schema: &SchemaRef,
        payloads: &[&[u8]],
        stamps: &[Option<i64>],
    ) -> crate::Result<DecodedPayloads> {
        let decoder = self
            .topics
            .iter()
            .find(|(t, _)| t == topic)
            .map_or(&self.other, |(_, d)| d);
        decoder.decode_records(topic, schema, payloads, stamps)
    }
}

/// Payload formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per message (`schemas/json/*.schema.json`).
    #[default]
    Json,
    /// Avro in the Confluent wire format, schemas from `kafka.schema_registry`
    /// (`schemas/avro/*.avsc`).
    Avro,
}

/// The JSON decoder, refusing payloads over `max_bytes` (files, tests).
pub fn json(max_bytes: usize) -> Box<dyn Decoder> {
    Box::new(JsonDecoder::new(max_bytes))
}
