//! Encoders: output records (Arrow rows in the published schemas) to message payloads. A format
//! is one file here plus one line where a `[kafka]` section builds its encoder (the pipeline's
//! `kafka/formats.rs`); jobs never see payloads.

mod avro;
mod json;

use arrow::array::RecordBatch;
use chrono::{DateTime, SecondsFormat};

pub use avro::AvroEncoder;
pub use json::JsonEncoder;

use crate::Result;

/// One payload per record, in one buffer.
#[derive(Debug, Default)]
pub struct Payloads {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Payloads {
    /// Empties the buffer for reuse.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
    }

    /// Appends one payload written by `write`.
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        write(&mut self.buf);
        self.ends.push(self.buf.len());
    }

    /// Number of payloads.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The payloads in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter()).map(|(s, &e)| &self.buf[s..e])
    }
}

/// Turns records into payloads.
pub trait Encoder: Send + Sync + std::fmt::Debug {
    /// Appends one payload per row of `records`, bound for `topic`, to `out`.
    fn encode(&mut self, topic: &str, records: &RecordBatch, out: &mut Payloads) -> Result<()>;
}

/// Each output topic encoded in its own format (`[kafka.formats]`).
#[derive(Debug)]
pub struct ByTopic {
    /// The encoder of each output topic.
    pub topics: Vec<(String, Box<dyn Encoder>)>,
}

impl Encoder for ByTopic {
    fn encode(&mut self, topic: &str, records: &RecordBatch, out: &mut Payloads) -> Result<()> {
        let (_, encoder) = self
            .topics
            .iter_mut()
            .find(|(t, _)| t == topic)
            .ok_or_else(|| {
                crate::PipelineError::Bug(format!("{topic:?} is not an output topic"))
            })?;
        encoder.encode(topic, records, out)
    }
}

/// RFC 3339 in UTC with as many fractional digits as needed (0, 3, 6 or 9), as every time in a
/// payload is written.
pub fn rfc3339(ns: i64) -> String {
    DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}
