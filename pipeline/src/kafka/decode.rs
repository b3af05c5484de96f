//! Kafka JSON payloads to Arrow batches, with every rejected message kept for the dead-letter
//! topic together with its reason.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::json::ReaderBuilder;
use arrow::json::reader::Decoder;

/// Why a message was rejected; becomes the dead letter's `riskpipe.error` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Index of the message among those given to [`decode`].
    pub index: usize,
    /// Human-readable reason, naming the broken part.
    pub reason: String,
    /// Short machine-readable class: `oversized`, `empty`, `malformed`, `schema`.
    pub kind: &'static str,
}

/// The decoded rows (one per accepted message, in order) and the rejected messages.
#[derive(Debug)]
pub struct Decoded {
    /// Accepted messages as rows of the schema.
    pub batch: RecordBatch,
    /// Index (into the input) of each row of `batch`.
    pub accepted: Vec<usize>,
    /// Messages that could not become a row.
    pub rejected: Vec<Rejection>,
}

fn decoder(schema: &SchemaRef, rows: usize) -> Result<Decoder, arrow::error::ArrowError> {
    ReaderBuilder::new(schema.clone())
        .with_strict_mode(true)
        .with_batch_size(rows.max(1) + 1)
        .build_decoder()
}

/// Decodes one JSON object per message against `schema` (strict: unknown fields, wrong types,
/// missing or null required fields and trailing data are all rejections).
///
/// The fast path decodes the whole micro-batch at once; only when that fails are the messages
/// decoded one by one to find the bad ones, so valid neighbours are never lost.
pub fn decode(schema: &SchemaRef, payloads: &[&[u8]], max_bytes: usize) -> Decoded {
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
                kind: "oversized",
            });
        } else if p.iter().all(u8::is_ascii_whitespace) {
            rejected.push(Rejection {
                index,
                reason: "empty payload".into(),
                kind: "empty",
            });
        } else {
            candidates.push(index);
        }
    }
    if let Some(batch) = decode_all(schema, payloads, &candidates) {
        return Decoded {
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
    rejected.sort_by_key(|r| r.index);
    let batch = decode_all(schema, payloads, &accepted)
        .unwrap_or_else(|| RecordBatch::new_empty(schema.clone()));
    Decoded {
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

fn decode_one(schema: &SchemaRef, payload: &[u8]) -> Result<(), (&'static str, String)> {
    let mut d = decoder(schema, 1).map_err(|e| ("schema", e.to_string()))?;
    let used = d.decode(payload).map_err(|e| classify(&e.to_string()))?;
    if used != payload.len() || d.len() > 1 {
        return Err((
            "malformed",
            "more than one JSON value in the message".to_string(),
        ));
    }
    if d.has_partial_record() {
        return Err(("malformed", "truncated JSON (record not closed)".into()));
    }
    match d.flush() {
        Ok(Some(b)) if b.num_rows() == 1 => Ok(()),
        Ok(_) => Err(("malformed", "no JSON object in the message".into())),
        Err(e) => Err(classify(&e.to_string())),
    }
}

/// Arrow names the column when a value does not fit the schema ("column 'x' not found",
/// "non-nullable", "cannot parse"); anything else is broken JSON.
fn classify(message: &str) -> (&'static str, String) {
    let schema = ["column", "nullable", "parse", "not found"]
        .iter()
        .any(|w| message.contains(w));
    (
        if schema { "schema" } else { "malformed" },
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

    fn ids(d: &Decoded) -> Vec<i64> {
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
        let kinds: Vec<&str> = d.rejected.iter().map(|r| r.kind).collect();
        assert_eq!(kinds[6], "oversized");
        assert_eq!(kinds[7], "empty");
        assert!(d.rejected.iter().all(|r| !r.reason.is_empty()));
        assert!(
            d.rejected[1].reason.contains("lots") || d.rejected[1].reason.contains("TX_AMOUNT"),
            "{}",
            d.rejected[1].reason
        );
    }
}
