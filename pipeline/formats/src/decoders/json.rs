//! JSON payloads (one object per message) to Arrow batches. Declared events go through their
//! declaration ([`super::DeclaredJsonDecoder`]); the published market ticks through their serde
//! type and their JSON Schema's value rules ([`super::events`]); any other schema through
//! arrow-json in strict mode. Either
//! way unknown fields, wrong types, missing or null required fields and trailing data are
//! rejections, and valid neighbours of a bad message are kept.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::json::ReaderBuilder;
use arrow::json::reader::Decoder as ArrowJsonDecoder;
use riskpipe_schemas::MarketTick;

use super::{DecodedPayloads, Decoder, Rejection, events};
use riskpipe_core::RejectKind;

/// The JSON decoder.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    max_bytes: usize,
    /// Declared events, each read by its declaration (before the published schemas).
    declared: Vec<std::sync::Arc<super::DeclaredJsonDecoder>>,
    tick: SchemaRef,
}

impl JsonDecoder {
    /// A decoder refusing payloads over `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            declared: Vec::new(),
            tick: riskpipe_schemas::market_tick_schema(),
        }
    }
}

impl JsonDecoder {
    /// This decoder reading the events of `declared` by their declaration (as well as those
    /// declared before).
    pub fn declaring(mut self, declared: riskpipe_schemas::declared::EventSchema) -> Self {
        self.declared
            .push(std::sync::Arc::new(super::DeclaredJsonDecoder::new(
                declared,
                self.max_bytes,
            )));
        self
    }
}

impl Decoder for JsonDecoder {
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
        if let Some(declared) = self.declared.iter().find(|d| d.schema() == schema) {
            return declared.decode_records(topic, schema, payloads, stamps);
        }
        let (candidates, rejected) = precheck(payloads, self.max_bytes);
        Ok(if schema == &self.tick {
            events::decode::<MarketTick>(schema, payloads, candidates, rejected)
        } else {
            decode_with_arrow(schema, payloads, candidates, rejected)
        })
    }
}

/// Oversized and empty payloads are rejected before any parsing.
pub(super) fn precheck(payloads: &[&[u8]], max_bytes: usize) -> (Vec<usize>, Vec<Rejection>) {
    let mut rejected = Vec::new();
    let mut candidates = Vec::with_capacity(payloads.len());
    for (index, p) in payloads.iter().enumerate() {
        if p.len() > max_bytes {
            rejected.push(Rejection {
                index,
                reason: format!(
                    "payload of {} bytes exceeds max_message_bytes {max_bytes}",
                    p.len()
                ),
                kind: RejectKind::Oversized,
            });
        } else if p.iter().all(u8::is_ascii_whitespace) {
            rejected.push(Rejection {
                index,
                reason: "empty payload".into(),
                kind: RejectKind::Empty,
            });
        } else {
            candidates.push(index);
        }
    }
    (candidates, rejected)
}

fn decoder(schema: &SchemaRef, rows: usize) -> Result<ArrowJsonDecoder, arrow::error::ArrowError> {
    ReaderBuilder::new(schema.clone())
        .with_strict_mode(true)
        .with_batch_size(rows.max(1) + 1)
        .build_decoder()
}

/// arrow-json's fast path decodes the whole micro-batch at once; only when that fails are the
/// messages decoded one by one to find the bad ones, so valid neighbours are never lost.
fn decode_with_arrow(
    schema: &SchemaRef,
    payloads: &[&[u8]],
    candidates: Vec<usize>,
    mut rejected: Vec<Rejection>,
) -> DecodedPayloads {
    let mut strict = Vec::with_capacity(candidates.len());
    for index in candidates {
        match super::strict_json_object(payloads[index]) {
            Ok(()) => strict.push(index),
            Err((kind, reason)) => rejected.push(Rejection {
                index,
                reason,
                kind,
            }),
        }
    }
    let candidates = strict;
    if let Some(batch) = decode_all(schema, payloads, &candidates) {
        rejected.sort_by_key(|r| r.index);
        return DecodedPayloads {
            batch,
            accepted: candidates,
            rejected,
        };
    }
    // Slow path: find the culprits one message at a time.
    let mut accepted = Vec::with_capacity(candidates.len());
    for index in candidates {
        match decode_one(schema, payloads[index]) {
            Ok(()) => accepted.push(index),
            Err((kind, reason)) => rejected.push(Rejection {
                index,
                reason,
                kind,
            }),
        }
    }
    let batch = match decode_all(schema, payloads, &accepted) {
        Some(batch) => batch,
        None => {
            // Each decoded alone but not together: never drop them silently.
            for index in accepted.drain(..) {
                rejected.push(Rejection {
                    index,
                    reason: "decodes alone but not together with its batch".into(),
                    kind: RejectKind::Malformed,
                });
            }
            RecordBatch::new_empty(schema.clone())
        }
    };
    rejected.sort_by_key(|r| r.index);
    DecodedPayloads {
        batch,
        accepted,
        rejected,
    }
}

/// Decodes the chosen messages together; `None` unless each gave exactly one valid row.
fn decode_all(schema: &SchemaRef, payloads: &[&[u8]], chosen: &[usize]) -> Option<RecordBatch> {
    if chosen.is_empty() {
        return Some(RecordBatch::new_empty(schema.clone()));
    }
    let mut d = decoder(schema, chosen.len()).ok()?;
    for (k, &i) in chosen.iter().enumerate() {
        let p = payloads[i];
        if d.decode(p).ok()? != p.len() || d.has_partial_record() {
            return None;
        }
        // A message holding two objects would shift every later row onto the wrong message.
        if d.len() != k + 1 {
            return None;
        }
    }
    let batch = d.flush().ok()??;
    (batch.num_rows() == chosen.len()).then_some(batch)
}

fn decode_one(schema: &SchemaRef, payload: &[u8]) -> Result<(), (RejectKind, String)> {
    let mut d = decoder(schema, 1).map_err(|e| (RejectKind::Schema, e.to_string()))?;
    let used = d.decode(payload).map_err(|e| classify(&e.to_string()))?;
    if used != payload.len() || d.len() > 1 {
        return Err((
            RejectKind::Malformed,
            "more than one JSON value in the message".to_string(),
        ));
    }
    if d.has_partial_record() {
        return Err((
            RejectKind::Malformed,
            "truncated JSON (record not closed)".into(),
        ));
    }
    match d.flush() {
        Ok(Some(b)) if b.num_rows() == 1 => Ok(()),
        Ok(_) => Err((
            RejectKind::Malformed,
            "no JSON object in the message".into(),
        )),
        Err(e) => Err(classify(&e.to_string())),
    }
}

/// A rejection from arrow-json's message, in riskpipe's words: the field and what is wrong
/// with it, never the value (a dead letter's reason goes into headers and logs, which must not
/// carry payload bytes such as card numbers). Arrow names the column when a value does not fit
/// the schema; anything else is broken JSON.
fn classify(message: &str) -> (RejectKind, String) {
    let field = quoted_after(message, "field '", '\'')
        .or_else(|| quoted_after(message, "column '", '\''))
        .or_else(|| quoted_after(message, "Field { \"", '"'));
    let schema = ["column", "nullable", "parse", "not found", "field"]
        .iter()
        .any(|w| message.contains(w));
    if !schema {
        return (RejectKind::Malformed, "malformed JSON".into());
    }
    let reason = match field {
        Some(f) if message.contains("missing from schema") => format!("unknown field {f}"),
        Some(f) if message.contains("failed to parse") => {
            format!("field {f}: not a valid {}", expected_type(message))
        }
        Some(f)
            if message.contains("nullable")
                || message.contains("not found")
                || message.contains("null") =>
        {
            format!("field {f}: missing or null")
        }
        Some(f) => format!("field {f}: does not fit the schema"),
        None => "does not fit the schema".into(),
    };
    (RejectKind::Schema, reason)
}

/// The name between `prefix` and the next `close`.
fn quoted_after(message: &str, prefix: &str, close: char) -> Option<String> {
    let start = message.find(prefix)? + prefix.len();
    let end = message[start..].find(close)? + start;
    Some(super::shown_name(&message[start..end]))
}

/// What arrow-json tried to parse a value as (`… as Float64`), in JSON terms.
fn expected_type(message: &str) -> &'static str {
    let Some(at) = message.rfind(" as ") else {
        return "value";
    };
    let ty = &message[at + 4..];
    if ty.starts_with("Float") {
        "number"
    } else if ty.starts_with("Int") || ty.starts_with("UInt") {
        "integer"
    } else if ty.starts_with("Timestamp") {
        "RFC 3339 date-time"
    } else if ty.starts_with("Boolean") {
        "boolean"
    } else if ty.starts_with("Utf8") {
        "string"
    } else {
        "value"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use riskpipe_schemas::transaction_schema;
    use std::sync::Arc;

    const GOOD: &str = r#"{"TRANSACTION_ID":1,"TX_DATETIME":"2018-04-01T00:00:31Z","CUSTOMER_ID":596,"TERMINAL_ID":3156,"TX_AMOUNT":57.16}"#;

    fn ids(d: &DecodedPayloads) -> Vec<i64> {
        d.batch
            .column(0)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec()
    }

    /// The shipped config's declared transactions.
    fn handbook() -> riskpipe_schemas::declared::EventSchema {
        #[derive(serde::Deserialize)]
        struct Shipped {
            job: Job,
        }
        #[derive(serde::Deserialize)]
        struct Job {
            events: riskpipe_schemas::declared::EventsConfig,
        }
        let shipped: Shipped =
            toml::from_str(include_str!("../../../../config/fraud-handbook.toml")).expect("toml");
        shipped.job.events.check().expect("declaration")
    }

    fn decode(schema: &SchemaRef, payloads: &[&[u8]], max_bytes: usize) -> DecodedPayloads {
        JsonDecoder::new(max_bytes)
            .declaring(handbook())
            .decode("transactions", schema, payloads)
            .expect("JSON decoding never fails as a whole")
    }

    #[test]
    fn valid_messages_decode_in_one_batch() {
        let other = GOOD
            .replace("\"TRANSACTION_ID\":1", "\"TRANSACTION_ID\":2")
            .replace("31Z", "31.250+02:00");
        let d = decode(
            &transaction_schema(),
            &[GOOD.as_bytes(), other.as_bytes()],
            1 << 16,
        );
        assert!(d.rejected.is_empty(), "{:?}", d.rejected);
        assert_eq!(ids(&d), vec![1, 2]);
        assert_eq!(d.accepted, vec![0, 1]);
        let t = d
            .batch
            .column(1)
            .as_primitive::<arrow::datatypes::TimestampNanosecondType>();
        // 00:00:31.250 at +02:00 is 22:00:31.250 the day before, UTC.
        assert_eq!(
            t.value(1) - t.value(0),
            -2 * 3_600_000_000_000 + 250_000_000
        );
    }

    #[test]
    fn each_bad_message_is_rejected_with_a_reason_and_neighbours_survive() {
        let truncated = &GOOD[..40];
        let wrong_type = GOOD.replace("57.16", "\"lots\"");
        let missing = GOOD.replace(",\"TX_AMOUNT\":57.16", "");
        let unknown = GOOD.replace("}", ",\"EXTRA\":1}");
        let two = format!("{GOOD}{GOOD}");
        let big = format!("{GOOD}{}", " ".repeat(300));
        let last = GOOD.replace("\"TRANSACTION_ID\":1", "\"TRANSACTION_ID\":9");
        let payloads: Vec<&[u8]> = vec![
            GOOD.as_bytes(),
            truncated.as_bytes(),
            wrong_type.as_bytes(),
            b"not json at all",
            missing.as_bytes(),
            unknown.as_bytes(),
            two.as_bytes(),
            big.as_bytes(),
            b"",
            last.as_bytes(),
        ];
        let d = decode(&transaction_schema(), &payloads, 200);
        assert_eq!(ids(&d), vec![1, 9]);
        assert_eq!(d.accepted, vec![0, 9]);
        let rejected: Vec<usize> = d.rejected.iter().map(|r| r.index).collect();
        assert_eq!(rejected, vec![1, 2, 3, 4, 5, 6, 7, 8]);
        let got: Vec<(RejectKind, &str)> = d
            .rejected
            .iter()
            .map(|r| (r.kind, r.reason.as_str()))
            .collect();
        assert_eq!(got[0], (RejectKind::Malformed, "truncated JSON"));
        assert_eq!(
            got[1],
            (
                RejectKind::Schema,
                "field TX_AMOUNT: wrong type, expected a number"
            )
        );
        assert_eq!(got[2], (RejectKind::Malformed, "malformed JSON"));
        assert_eq!(got[3], (RejectKind::Schema, "missing field TX_AMOUNT"));
        assert_eq!(got[4], (RejectKind::Schema, "unknown field EXTRA"));
        assert_eq!(got[5].0, RejectKind::Oversized);
        assert_eq!(got[6].0, RejectKind::Oversized);
        assert_eq!(got[7].0, RejectKind::Empty);
        for r in &d.rejected {
            assert!(!r.reason.contains("lots") && r.reason.len() <= 256, "{r:?}");
        }
    }

    /// What JSON allows and the schema forbids: coerced before, refused now, naming the field
    /// and never the value.
    #[test]
    fn values_the_schema_forbids_are_refused_not_coerced() {
        let cases = [
            (
                "5.5",
                "596",
                RejectKind::Schema,
                "field CUSTOMER_ID: wrong type",
            ),
            ("\"596\"", "596", RejectKind::Schema, "field CUSTOMER_ID"),
            (
                "596",
                "-3",
                RejectKind::Invalid,
                "field TX_AMOUNT: below the minimum 0",
            ),
            ("596", "1e999", RejectKind::Schema, "number out of range"),
            (
                "596",
                "\"4111111111111111\"",
                RejectKind::Schema,
                "field TX_AMOUNT",
            ),
        ];
        for (customer, amount, kind, reason) in cases {
            let p = GOOD.replace("596", customer).replace("57.16", amount);
            let d = decode(&transaction_schema(), &[p.as_bytes()], 1 << 16);
            assert_eq!(d.batch.num_rows(), 0, "{p}");
            let r = &d.rejected[0];
            assert_eq!(r.kind, kind, "{p}: {r:?}");
            assert!(
                r.reason.starts_with(reason) || r.reason.contains(reason),
                "{p}: {r:?}"
            );
            assert!(
                !r.reason.contains("4111") && !r.reason.contains("5.5"),
                "{r:?}"
            );
        }
        for time in [
            "1522540831",
            "\"2018-04-01T00:00:31\"",
            "\"2018-04-01 00:00:31Z\"",
        ] {
            let p = GOOD.replace("\"2018-04-01T00:00:31Z\"", time);
            let d = decode(&transaction_schema(), &[p.as_bytes()], 1 << 16);
            assert_eq!(d.batch.num_rows(), 0, "{p}");
            assert!(
                d.rejected[0].reason.contains("TX_DATETIME"),
                "{:?}",
                d.rejected
            );
        }
        let trailing = format!("{GOOD} 1");
        let d = decode(&transaction_schema(), &[trailing.as_bytes()], 1 << 16);
        assert_eq!(d.rejected[0].reason, "more than one JSON value");
        // An integer written with a zero fraction is that integer, as JSON Schema says.
        let d = decode(
            &transaction_schema(),
            &[GOOD.replace("596", "596.0").as_bytes()],
            1 << 16,
        );
        assert!(d.rejected.is_empty(), "{:?}", d.rejected);
    }

    /// Schemas without a serde type go through arrow-json's strict mode, with the same kind of
    /// reasons.
    #[test]
    fn other_schemas_decode_with_arrow_json_and_name_the_field() {
        let schema = Arc::new(Schema::new(vec![Field::new("X", DataType::Int64, false)]));
        let payloads: Vec<&[u8]> = vec![
            br#"{"X": 1}"#,
            br#"{"X": "lots"}"#,
            br#"{"Y": 1}"#,
            br#"{}"#,
        ];
        let d = decode(&schema, &payloads, 1 << 16);
        assert_eq!(d.accepted, vec![0]);
        let reasons: Vec<&str> = d.rejected.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(
            reasons,
            vec![
                "field X: not a valid integer",
                "unknown field Y",
                "field X: missing or null"
            ]
        );
    }

    /// Found by fuzzing (`fuzz/seeds/regressions`): serde's derived structs took an array of the
    /// field values, and arrow-json took raw control characters and leading zeros. The JSON
    /// Schemas allow neither.
    #[test]
    fn arrays_and_json_that_is_not_json_are_refused() {
        let d = decode(
            &transaction_schema(),
            &[
                br#"[1,"2018-04-01T00:00:01Z",7,9,12.5]"#,
                b" 7",
                GOOD.as_bytes(),
            ],
            1 << 16,
        );
        assert_eq!(d.accepted, vec![2]);
        let got: Vec<(RejectKind, &str)> = d
            .rejected
            .iter()
            .map(|r| (r.kind, r.reason.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (RejectKind::Schema, "not a JSON object"),
                (RejectKind::Schema, "not a JSON object"),
            ]
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new("P", DataType::Utf8, false),
            Field::new("Q", DataType::Int64, false),
        ]));
        let payloads: Vec<&[u8]> = vec![
            b"{\"P\": \"p\x01\", \"Q\": 1}",
            br#"{"P": "p", "Q": 007}"#,
            br#"[{"P": "p", "Q": 1}]"#,
            br#"{"P": "p", "Q": 1}"#,
        ];
        let d = decode(&schema, &payloads, 1 << 16);
        assert_eq!(d.accepted, vec![3]);
        let kinds: Vec<RejectKind> = d.rejected.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            vec![
                RejectKind::Malformed,
                RejectKind::Malformed,
                RejectKind::Schema
            ]
        );
    }
}
