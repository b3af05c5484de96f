//! The published market ticks decoded strictly (events a job declares are read by their
//! declaration instead, [`super::DeclaredJsonDecoder`]): each payload through its serde type (unknown, missing and mistyped fields refused; `1.5` is no customer id
//! and `"57"` no amount), then through the value rules its JSON Schema states (`minimum`,
//! `exclusiveMinimum`, `enum`, `date-time` with an offset). What the schema forbids is a dead
//! letter: `schema` for the wrong shape or type, `invalid` for a value the rules refuse.
//! A property test holds this decoder and the JSON Schemas to the same verdicts.

use std::sync::Arc;

use arrow::array::TimestampNanosecondArray;
use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::SchemaRef;
use riskpipe_schemas::MarketTick;
use serde::de::DeserializeOwned;

use super::{DecodedPayloads, Rejection};
use riskpipe_core::RejectKind;

/// A value rule broken: the field and what is wrong, in riskpipe's words (never the value).
pub(crate) type Broken = (&'static str, &'static str);

/// An event decoded through its serde type and checked against its schema's value rules.
/// The rules are stated once ([`StrictEvent::rules`]) for every format; JSON carries
/// date-times as RFC 3339 text ([`StrictEvent::times`]), Avro as numbers.
pub(crate) trait StrictEvent: DeserializeOwned + Sized {
    /// The event's date-times as nanoseconds, parsed once.
    type Times;
    /// The event's RFC 3339 date-times, or the first that is not one.
    fn times(&self) -> Result<Self::Times, Broken>;
    /// The first value rule (besides the date-times' form) the event breaks.
    fn rules(&self) -> Result<(), Broken>;
    /// The first rule the event breaks, or its parsed date-times.
    fn check(&self) -> Result<Self::Times, Broken> {
        let times = self.times()?;
        self.rules()?;
        Ok(times)
    }
    /// The accepted events, with their date-times, as rows of `schema` (their Arrow schema).
    fn batch(rows: &[(Self, Self::Times)], schema: &SchemaRef) -> Result<RecordBatch, String>;
}

/// Nanoseconds since the epoch of an RFC 3339 date-time with an offset (`T` or `t`, `Z`, `z` or
/// `±HH:MM`): the JSON Schema `date-time` format, nothing looser (no space separator, no
/// missing offset, no epoch numbers).
pub(crate) fn date_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let shape = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && matches!(b[10], b'T' | b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !shape {
        return None;
    }
    let mut i = 19;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset_ok = match b.get(i) {
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            i + 6 == b.len() && digits(i + 1..i + 3) && b[i + 3] == b':' && digits(i + 4..i + 6)
        }
        _ => false,
    };
    if !offset_ok {
        return None;
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()?
        .timestamp_nanos_opt()
}

fn time_column(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampNanosecondArray::from_iter_values(values).with_timezone("UTC"))
}

/// `field` as nanoseconds, or the rule it breaks.
fn date_time_of(field: &'static str, value: &str) -> Result<i64, Broken> {
    date_time(value).ok_or((field, "not an RFC 3339 date-time with an offset"))
}

fn floats(values: impl Iterator<Item = f64>) -> ArrayRef {
    Arc::new(Float64Array::from_iter_values(values))
}

fn build(schema: &SchemaRef, columns: Vec<ArrayRef>) -> Result<RecordBatch, String> {
    RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())
}

impl StrictEvent for MarketTick {
    type Times = i64;

    fn times(&self) -> Result<i64, Broken> {
        date_time_of("TIME", &self.time)
    }

    fn rules(&self) -> Result<(), Broken> {
        if let Some(problem) = riskpipe_schemas::out_of_range(self.price) {
            return Err(("PRICE", problem));
        }
        if self.price <= 0.0 {
            return Err(("PRICE", "not positive (must be > 0)"));
        }
        if let Some(problem) = self.size.and_then(riskpipe_schemas::out_of_range) {
            return Err(("SIZE", problem));
        }
        Ok(())
    }

    fn batch(rows: &[(Self, i64)], schema: &SchemaRef) -> Result<RecordBatch, String> {
        build(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|(r, _)| r.instrument.as_str()),
                )),
                time_column(rows.iter().map(|&(_, t)| t)),
                floats(rows.iter().map(|(r, _)| r.price)),
                Arc::new(rows.iter().map(|(r, _)| r.size).collect::<Float64Array>()),
            ],
        )
    }
}

/// The name in backticks of a serde message (`unknown field \`X\``).
fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = message[start..].find('`')? + start;
    Some(super::shown_name(&message[start..end]))
}

/// Why serde refused `payload`, without its values.
fn reason(
    e: &serde_path_to_error::Error<serde_json::Error>,
    payload: &[u8],
) -> (RejectKind, String) {
    let inner = e.inner();
    let field = match e.path().to_string() {
        p if p == "." => None,
        p => Some(p),
    };
    match inner.classify() {
        serde_json::error::Category::Eof => (RejectKind::Malformed, "truncated JSON".into()),
        // 1e999: valid JSON, but no finite number.
        serde_json::error::Category::Syntax if inner.to_string().contains("out of range") => (
            RejectKind::Schema,
            match field {
                Some(f) => format!("field {f}: number out of range"),
                None => "number out of range".into(),
            },
        ),
        serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
            (RejectKind::Malformed, "malformed JSON".into())
        }
        // Broken JSON is malformed, whatever field serde stumbled on first.
        serde_json::error::Category::Data
            if serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_err() =>
        {
            (RejectKind::Malformed, "malformed JSON".into())
        }
        serde_json::error::Category::Data => {
            let message = inner.to_string();
            let text = if message.starts_with("unknown field") {
                format!("unknown field {}", backticked(&message).unwrap_or_default())
            } else if message.starts_with("missing field") {
                format!("missing field {}", backticked(&message).unwrap_or_default())
            } else if message.starts_with("duplicate field") {
                format!(
                    "duplicate field {}",
                    backticked(&message).unwrap_or_default()
                )
            } else {
                let what = if message.contains("out of range") {
                    "number out of range".to_string()
                } else if let Some(at) = message.find(", expected ") {
                    // serde's "expected" names our type, not the payload.
                    let expected = message[at + 11..]
                        .split(" at line")
                        .next()
                        .unwrap_or_default();
                    format!("wrong type or value, expected {expected}")
                } else if message.starts_with("invalid type") || message.contains("not an integer")
                {
                    "wrong type".to_string()
                } else {
                    "does not fit the schema".to_string()
                };
                match field {
                    Some(f) => format!("field {f}: {what}"),
                    None => what,
                }
            };
            (RejectKind::Schema, text)
        }
    }
}

/// Decodes each payload as one `T`; rejects say which field is wrong and how.
pub(crate) fn decode<T: StrictEvent>(
    schema: &SchemaRef,
    payloads: &[&[u8]],
    candidates: Vec<usize>,
    mut rejected: Vec<Rejection>,
) -> DecodedPayloads {
    let mut rows = Vec::with_capacity(candidates.len());
    let mut accepted = Vec::with_capacity(candidates.len());
    for index in candidates {
        if let Err((kind, reason)) = super::opens_an_object(payloads[index]) {
            rejected.push(Rejection {
                index,
                reason,
                kind,
            });
            continue;
        }
        let mut de = serde_json::Deserializer::from_slice(payloads[index]);
        let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
        let result = match parsed {
            Ok(row) => match de.end() {
                Err(_) => Err((
                    RejectKind::Malformed,
                    "more than one JSON value".to_string(),
                )),
                Ok(()) => match row.check() {
                    Ok(times) => Ok((row, times)),
                    Err((field, problem)) => {
                        Err((RejectKind::Invalid, format!("field {field}: {problem}")))
                    }
                },
            },
            Err(e) => Err(reason(&e, payloads[index])),
        };
        match result {
            Ok(row) => {
                rows.push(row);
                accepted.push(index);
            }
            Err((kind, reason)) => rejected.push(Rejection {
                index,
                reason,
                kind,
            }),
        }
    }
    rejected.sort_by_key(|r| r.index);
    match T::batch(&rows, schema) {
        Ok(batch) => DecodedPayloads {
            batch,
            accepted,
            rejected,
        },
        Err(e) => {
            // Checked rows that do not build a batch: a bug; never drop them silently.
            for index in accepted.drain(..) {
                rejected.push(Rejection {
                    index,
                    reason: format!("could not be converted: {e}"),
                    kind: RejectKind::Schema,
                });
            }
            rejected.sort_by_key(|r| r.index);
            DecodedPayloads {
                batch: RecordBatch::new_empty(schema.clone()),
                accepted,
                rejected,
            }
        }
    }
}
