//! Records: what flows between the stages — a decoded micro-batch ([`JobInput`]), the rows a
//! stage refused ([`Reject`]), the featured rows ([`Featured`]) and what scoring produced
//! ([`JobOutput`], its output streams as [`Records`]).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};

/// One micro-batch as a job sees it.
#[derive(Debug, Clone)]
pub struct JobInput {
    /// Side-input rows (fraud labels), applied to the keyed state before `events`.
    pub side: Option<RecordBatch>,
    /// The events to score, in order.
    pub events: RecordBatch,
    /// Where each event came from, for the watermark; `None` for a history, read in event-time
    /// order as one partition.
    pub partitions: Option<Partitions>,
}

/// The input partition of each event, and every partition of the events' topic the source
/// holds now.
#[derive(Debug, Clone)]
pub struct Partitions {
    /// Partition of each row of [`JobInput::events`].
    pub of_events: Vec<i32>,
    /// Partition of each row of [`JobInput::side`], where the source knows it (live); empty
    /// otherwise.
    pub of_side: Vec<i32>,
    /// Partitions held (assigned); the watermark waits for each of them.
    pub held: Arc<[i32]>,
}

impl Partitions {
    /// The partitions of events `start..start + len` (clamped to the events there are).
    pub fn slice(&self, start: usize, len: usize) -> Partitions {
        let n = self.of_events.len();
        Partitions {
            of_events: self.of_events[start.min(n)..(start + len).min(n)].to_vec(),
            of_side: Vec::new(),
            held: self.held.clone(),
        }
    }
}

/// Why an input was refused: the dead letter's `riskpipe.error.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    /// Larger than the configured maximum.
    Oversized,
    /// No payload.
    Empty,
    /// Not decodable at all (broken JSON, truncated).
    Malformed,
    /// Decodable, but not the published schema (missing, unknown or mistyped field).
    Schema,
    /// In the schema, but a value the job cannot take (a non-positive price, a late tick, an
    /// event time too far in the future, a number no sum or model input can hold).
    Invalid,
    /// Behind the watermark by more than the allowed lateness.
    Late,
    /// A transaction whose id the job has taken in already (its producer published it twice):
    /// counting it again would change its key's features, so the copy is refused.
    Duplicate,
    /// Admitted, but the model's answer for it is no probability (not finite, or outside
    /// [0, 1]): never published as a score; its features stay counted (they were valid).
    Model,
    /// A row of a repartition topic taken in already (the topic is at-least-once): dropped,
    /// not dead-lettered (the first copy was scored).
    Redelivered,
}

impl RejectKind {
    /// The header / metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectKind::Oversized => "oversized",
            RejectKind::Empty => "empty",
            RejectKind::Malformed => "malformed",
            RejectKind::Schema => "schema",
            RejectKind::Invalid => "invalid",
            RejectKind::Late => "late",
            RejectKind::Duplicate => "duplicate",
            RejectKind::Model => "model",
            RejectKind::Redelivered => "redelivered",
        }
    }
}

/// An input event the job refused, by its row in [`JobInput::events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// Row in the batch's events.
    pub row: usize,
    /// Class of the problem.
    pub kind: RejectKind,
    /// What is wrong, naming the field.
    pub reason: String,
}

/// What the feature stage hands to the score stage.
#[derive(Debug, Clone)]
pub struct Featured {
    /// The accepted events with their feature columns.
    pub batch: RecordBatch,
    /// Events refused before they touched any state.
    pub rejects: Vec<Reject>,
}

/// Records for one output stream: rows in the stream's published Arrow schema
/// (`riskpipe_schemas::*_schema`) and one message key per row.
#[derive(Debug, Clone)]
pub struct Records {
    /// The rows.
    pub batch: RecordBatch,
    /// A `Utf8` array of message keys (customer, instrument or portfolio id).
    pub keys: ArrayRef,
    /// The column the keys are the text of, if they are one column's (a sink that replaces
    /// that column's values, e.g. with pseudonyms, derives the keys again from it).
    pub key_column: Option<std::sync::Arc<str>>,
}

/// What one micro-batch produced.
#[derive(Debug, Clone, Default)]
pub struct JobOutput {
    /// Every accepted event with its features and scores: what a backtest evaluates and writes.
    pub scored: Option<RecordBatch>,
    /// Records for the scores output.
    pub scores: Option<Records>,
    /// Records for the alerts output (fraud alerts, limit breaches).
    pub alerts: Option<Records>,
    /// The challenger's score records (shadow scoring; never alerts).
    pub challenger: Option<Records>,
    /// Decision records (`[decisions]`): one per scored event, its outcome and matching rules.
    pub decisions: Option<Records>,
    /// Rows for the next stage of a repartitioned topology (scale-out), keyed by its key.
    pub forward: Option<Records>,
    /// Events refused while scoring.
    pub rejects: Vec<Reject>,
}

/// A column holding one repeated string, grown on demand and sliced per batch, so the model
/// name is not copied once per record.
#[derive(Debug, Default)]
pub struct Repeated {
    value: String,
    array: Option<ArrayRef>,
}

impl Repeated {
    /// A column of `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            array: None,
        }
    }

    /// `rows` rows of the value.
    pub fn column(&mut self, rows: usize) -> ArrayRef {
        match &self.array {
            Some(a) if a.len() >= rows => a.slice(0, rows),
            _ => {
                let a: ArrayRef = Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    self.value.as_str(),
                    rows.max(1024),
                )));
                self.array = Some(a.clone());
                a.slice(0, rows)
            }
        }
    }
}
