//! JSON payloads (one object per message) to Arrow batches with arrow-json, strictly: unknown
//! fields, wrong types, missing or null required fields and trailing data are all rejections.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::json::ReaderBuilder;
use arrow::json::reader::Decoder as ArrowJsonDecoder;

use super::{DecodedPayloads, Decoder, Rejection};
use crate::jobs::RejectKind;

/// The JSON decoder.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    max_bytes: usize,
}

impl JsonDecoder {
    /// A decoder refusing payloads over `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self { max_bytes }
    }
}

impl Decoder for JsonDecoder {
    fn decode(&self, schema: &SchemaRef, payloads: &[&[u8]]) -> DecodedPayloads {
        decode(schema, payloads, self.max_bytes)
    }
}

fn decoder(schema: &SchemaRef, rows: usize) -> Result<ArrowJsonDecoder, arrow::error::ArrowError> {
    ReaderBuilder::new(schema.clone())
        .with_strict_mode(true)
        .with_batch_size(rows.max(1) + 1)
        .build_decoder()
}

/// The fast path decodes the whole micro-batch at once; only when that fails are the messages
/// decoded one by one to find the bad ones, so valid neighbours are never lost.
fn decode(schema: &SchemaRef, payloads: &[&[u8]], max_bytes: usize) -> DecodedPayloads {
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
    if let Some(batch) = decode_all(schema, payloads, &candidates) {
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

/// Arrow names the column when a value does not fit the schema ("column 'x' not found",
/// "non-nullable", "cannot parse"); anything else is broken JSON.
fn classify(message: &str) -> (RejectKind, String) {
    let schema = ["column", "nullable", "parse", "not found"]
        .iter()
        .any(|w| message.contains(w));
    (
        if schema {
            RejectKind::Schema
        } else {
            RejectKind::Malformed
        },
        message.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    use riskpipe_schemas::transaction_schema;

    const GOOD: &str = r#"{"TRANSACTION_ID":1,"TX_DATETIME":"2018-04-01T00:00:31Z","CUSTOMER_ID":596,"TERMINAL_ID":3156,"TX_AMOUNT":57.16}"#;

    fn ids(d: &DecodedPayloads) -> Vec<i64> {
        d.batch
            .column(0)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec()
    }

    #[test]
    fn valid_messages_decode_in_one_batch() {
        let other = GOOD.replace("\"TRANSACTION_ID\":1", "\"TRANSACTION_ID\":2");
        let d = decode(
            &transaction_schema(),
            &[GOOD.as_bytes(), other.as_bytes()],
            1 << 16,
        );
        assert!(d.rejected.is_empty(), "{:?}", d.rejected);
        assert_eq!(ids(&d), vec![1, 2]);
        assert_eq!(d.accepted, vec![0, 1]);
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
        let kinds: Vec<RejectKind> = d.rejected.iter().map(|r| r.kind).collect();
        assert_eq!(kinds[6], RejectKind::Oversized);
        assert_eq!(kinds[7], RejectKind::Empty);
        assert!(d.rejected.iter().all(|r| !r.reason.is_empty()));
        assert!(
            d.rejected[1].reason.contains("lots") || d.rejected[1].reason.contains("TX_AMOUNT"),
            "{}",
            d.rejected[1].reason
        );
    }
}
