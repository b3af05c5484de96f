//! Keyed pseudonyms for published ids: an opt-in for downstream systems that must not see raw
//! customer or terminal ids. Each configured Int64 column's values become
//! `HMAC-SHA256(secret, id)` cut to 63 bits (a non-negative Int64, so the published schemas stay
//! as they are); the same id gets the same pseudonym in every record and every run with the same
//! secret, so records can still be joined, and without the secret they cannot be reversed by
//! trying ids. Message keys that are a pseudonymised column's text follow it. Dead letters keep
//! their original bytes: the dead-letter topic needs its own access control.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::{PipelineError, Result};
use riskpipe_core::Records;

fn default_columns() -> Vec<String> {
    vec![
        riskpipe_schemas::tx::CUSTOMER_ID.into(),
        riskpipe_schemas::tx::TERMINAL_ID.into(),
    ]
}

/// `[kafka.pseudonyms]`: which ids to replace and where the secret is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PseudonymConfig {
    /// Environment variable holding the secret key (never the key itself in the file).
    pub secret_env: String,
    /// Int64 id columns of the published records to replace.
    #[serde(default = "default_columns")]
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
        if self.columns.is_empty() {
            p.push("kafka.pseudonyms.columns is empty".into());
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

    /// `records` with the configured columns (those it has, of Int64 type) replaced, and its
    /// keys derived again when they are one of those columns.
    pub fn apply(&self, records: &Records) -> Result<Records> {
        let schema = records.batch.schema();
        let mut columns: Vec<ArrayRef> = records.batch.columns().to_vec();
        for name in &self.columns {
            let Ok(index) = schema.index_of(name) else {
                continue;
            };
            let Some(ids) = columns[index].as_primitive_opt::<Int64Type>() else {
                return Err(PipelineError::Config(vec![format!(
                    "kafka.pseudonyms: column {name} is {}, not Int64",
                    columns[index].data_type()
                )]));
            };
            let replaced: Int64Array = ids.unary(|id| self.of(id));
            columns[index] = Arc::new(replaced);
        }
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        let keys = match records.key_column {
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
            key_column: records.key_column,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            key_column: Some("CUSTOMER_ID"),
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
}
