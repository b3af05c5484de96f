//! Keyed pseudonyms for published ids: an opt-in for downstream systems that must not see raw
//! ids (cards, customers, terminals, merchants). Each configured integer column's values become
//! `HMAC-SHA256(secret, id)` cut to 63 bits (a non-negative Int64, so the records' schemas stay
//! as they are), each text column's the first 16 bytes of `HMAC-SHA256(secret, text)` in hex;
//! the same id gets the same pseudonym in every record and every run with the same
//! secret, so records can still be joined, and without the secret they cannot be reversed by
//! trying ids. Message keys that are a pseudonymised column's text follow it. Dead letters keep
//! their original bytes, but for the fields a stream declares sensitive ([`super::redact`]):
//! the dead-letter topic needs its own access control.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::{PipelineError, Result};
use riskpipe_core::Records;

/// `[kafka.pseudonyms]`: which ids to replace and where the secret is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PseudonymConfig {
    /// Environment variable holding the secret key (never the key itself in the file).
    pub secret_env: String,
    /// Id columns of the published records to replace (integer or text; declared field names),
    /// beside the fields declared sensitive `"pseudonymize"`.
    #[serde(default)]
    pub columns: Vec<String>,
}

impl PseudonymConfig {
    /// Every problem, naming the variable, never a value.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        match std::env::var(&self.secret_env) {
            Ok(v) if v.len() >= 16 => {}
            Ok(_) => p.push(format!(
                "kafka.pseudonyms: the secret in {} is shorter than 16 bytes",
                self.secret_env
            )),
            Err(_) => p.push(format!(
                "kafka.pseudonyms: environment variable {} is not set",
                self.secret_env
            )),
        }
        p
    }
}

/// Replaces ids with their keyed pseudonyms.
#[derive(Clone)]
pub struct Pseudonyms {
    mac: Hmac<Sha256>,
    columns: Vec<String>,
}

impl std::fmt::Debug for Pseudonyms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Pseudonyms")
            .field("columns", &self.columns)
            .finish_non_exhaustive()
    }
}

impl Pseudonyms {
    /// Pseudonyms under `secret` for `columns`.
    pub fn new(secret: &[u8], columns: Vec<String>) -> Result<Self> {
        let mac = Hmac::<Sha256>::new_from_slice(secret)
            .map_err(|e| PipelineError::Config(vec![format!("kafka.pseudonyms: {e}")]))?;
        Ok(Self { mac, columns })
    }

    /// From the configuration, reading the secret from the environment.
    pub fn from_config(cfg: &PseudonymConfig) -> Result<Self> {
        let problems = cfg.problems();
        if !problems.is_empty() {
            return Err(PipelineError::Config(problems));
        }
        let secret = std::env::var(&cfg.secret_env).unwrap_or_default();
        Self::new(secret.as_bytes(), cfg.columns.clone())
    }

    /// These pseudonyms for `columns` too (declared sensitive fields).
    pub fn also(mut self, columns: impl IntoIterator<Item = String>) -> Self {
        for c in columns {
            if !self.columns.contains(&c) {
                self.columns.push(c);
            }
        }
        self
    }

    /// The pseudonym of `id`: the first 63 bits of HMAC-SHA256(secret, id as 8 big-endian
    /// bytes).
    pub fn of(&self, id: i64) -> i64 {
        let mut mac = self.mac.clone();
        mac.update(&id.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        (u64::from_be_bytes(first) >> 1) as i64
    }

    /// The pseudonym of a text id: the first 16 bytes of HMAC-SHA256(secret, its UTF-8 bytes),
    /// as 32 lowercase hex digits.
    pub fn of_text(&self, id: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(id.as_bytes());
        let digest = mac.finalize().into_bytes();
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(32);
        for b in &digest[..16] {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
        out
    }

    /// `records` with the configured columns (those it has) replaced, and its
    /// keys derived again when they are one of those columns.
    pub fn apply(&self, records: &Records) -> Result<Records> {
        let schema = records.batch.schema();
        let mut columns: Vec<ArrayRef> = records.batch.columns().to_vec();
        for name in &self.columns {
            let Ok(index) = schema.index_of(name) else {
                continue;
            };
            let column = &columns[index];
            columns[index] = if let Some(ids) = column.as_primitive_opt::<Int64Type>() {
                Arc::new(ids.unary::<_, Int64Type>(|id| self.of(id)))
            } else if let Some(ids) = column.as_string_opt::<i32>() {
                Arc::new(
                    ids.iter()
                        .map(|id| id.map(|id| self.of_text(id)))
                        .collect::<StringArray>(),
                )
            } else {
                return Err(PipelineError::Config(vec![format!(
                    "kafka.pseudonyms: column {name} is {}, not an integer or text id",
                    column.data_type()
                )]));
            };
        }
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        let keys = match records.key_column.as_deref() {
            Some(c) if self.columns.iter().any(|p| p == c) => {
                let column = batch.column_by_name(c).ok_or_else(|| {
                    PipelineError::Bug(format!("key column {c} not in its records"))
                })?;
                cast(column, &DataType::Utf8)?
            }
            _ => records.keys.clone(),
        };
        Ok(Records {
            batch,
            keys,
            key_column: records.key_column.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{Field, Schema};

    fn records() -> Records {
        let schema = Arc::new(Schema::new(vec![
            Field::new("TRANSACTION_ID", DataType::Int64, false),
            Field::new("CUSTOMER_ID", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(Int64Array::from(vec![7, 8, 7])),
            ],
        )
        .expect("batch");
        let keys = cast(batch.column(1), &DataType::Utf8).expect("keys");
        Records {
            batch,
            keys,
            key_column: Some("CUSTOMER_ID".into()),
        }
    }

    #[test]
    fn ids_become_keyed_stable_pseudonyms_and_keys_follow() {
        let p = Pseudonyms::new(b"0123456789abcdef", vec!["CUSTOMER_ID".into()]).expect("p");
        let out = p.apply(&records()).expect("apply");
        let ids = out.batch.column(1).as_primitive::<Int64Type>();
        assert_eq!(
            ids.value(0),
            ids.value(2),
            "the same id, the same pseudonym"
        );
        assert_ne!(ids.value(0), ids.value(1));
        assert!(ids.values().iter().all(|&v| v >= 0 && v != 7 && v != 8));
        assert_eq!(ids.value(0), p.of(7));
        // Untouched columns stay; keys are the pseudonyms' text.
        let tx = out.batch.column(0).as_primitive::<Int64Type>();
        assert_eq!(tx.values().to_vec(), vec![1, 2, 3]);
        let keys = out.keys.as_string::<i32>();
        assert_eq!(keys.value(1), p.of(8).to_string());
        // Another secret, other pseudonyms.
        let q = Pseudonyms::new(b"fedcba9876543210", vec!["CUSTOMER_ID".into()]).expect("q");
        assert_ne!(p.of(7), q.of(7));
    }

    #[test]
    fn text_ids_become_keyed_hex_pseudonyms_and_keys_follow() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("payment_id", DataType::Utf8, false),
            Field::new("card.id", DataType::Utf8, true),
        ]));
        let cards = StringArray::from(vec![Some("card-7"), Some("card-8"), None, Some("card-7")]);
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["p1", "p2", "p3", "p4"])),
                Arc::new(cards.clone()),
            ],
        )
        .expect("batch");
        let records = Records {
            batch,
            keys: Arc::new(cards),
            key_column: Some("card.id".into()),
        };
        let p = Pseudonyms::new(b"0123456789abcdef", vec!["card.id".into()]).expect("p");
        let out = p.apply(&records).expect("apply");
        let cards = out.batch.column(1).as_string::<i32>();
        assert_eq!(
            cards.value(0),
            cards.value(3),
            "the same id, the same pseudonym"
        );
        assert_ne!(cards.value(0), cards.value(1));
        assert_eq!(cards.value(0).len(), 32);
        assert!(cards.value(0).chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(cards.value(1), p.of_text("card-8"));
        assert!(cards.is_null(2), "a missing id stays missing");
        assert_eq!(out.keys.as_string::<i32>().value(1), p.of_text("card-8"));
        assert_eq!(out.batch.column(0).as_string::<i32>().value(0), "p1");
        // A column of another type is refused, naming it.
        let floats = Records {
            batch: RecordBatch::try_new(
                Arc::new(Schema::new(vec![Field::new(
                    "card.id",
                    DataType::Float64,
                    false,
                )])),
                vec![Arc::new(arrow::array::Float64Array::from(vec![1.0]))],
            )
            .expect("batch"),
            keys: Arc::new(StringArray::from(vec!["1"])),
            key_column: None,
        };
        let e = p.apply(&floats).expect_err("floats are no ids").to_string();
        assert!(e.contains("card.id") && e.contains("Float64"), "{e}");
    }
}
