//! Durable keyed state: checkpoints of a job's feature state, each tied to the input offsets it
//! reflects, in an object store (a local directory, or `s3://` with the `s3` cargo feature).
//!
//! ```text
//! <state.dir>/checkpoints/<id>/<table>.arrow   one Arrow IPC file per state table
//! <state.dir>/checkpoints/<id>/manifest.json   written last: offsets, tables, sizes
//! ```
//!
//! A checkpoint exists once its manifest does: the manifest is one atomic put written after
//! every table, so a write cut short (a crash, a full disk) leaves tables without a manifest,
//! which nothing reads and the next retention pass deletes. The manifest records, per input
//! topic and partition, the next offset the state has not seen; the live source commits those
//! offsets before the manifest is written, so the group's committed offsets are never behind a
//! checkpoint, and a restart replays exactly the messages between the two (see `live`).

mod store;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use store::{CheckpointStore, now_ms};

fn default_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_retain() -> usize {
    3
}

/// `[state]`: where checkpoints go and how often.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// A directory (relative to the config file) or an object-store URL (`file:///…`,
    /// `s3://bucket/prefix` with the `s3` cargo feature).
    #[serde(default)]
    pub dir: String,
    /// No checkpoints: every start of `riskpipe run` begins with empty state (windows that
    /// fill again over the features' reach, scores unlike the backtest's meanwhile), accepted
    /// by the user. Without `[state]` at all a job that keeps state refuses to start.
    #[serde(default)]
    pub ephemeral: bool,
    /// Time between checkpoints (default 60 s); one is also written on a clean shutdown.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Complete checkpoints kept (default 3); older ones, and torn ones, are deleted.
    #[serde(default = "default_retain")]
    pub retain: usize,
    /// Where the state of a partition no checkpoint covers is rebuilt from.
    #[serde(default)]
    pub rebuild: Rebuild,
}

/// `state.rebuild`: where a partition without a usable checkpoint is rebuilt from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rebuild {
    /// Back from the committed offsets by the job's reach in event time (its longest window,
    /// label delay, lateness and drift days, plus `max_future_skew`), found by the messages'
    /// timestamps; the earliest offsets for a job whose state has no bounded reach (market).
    #[default]
    Horizon,
    /// From the earliest retained offsets: also the explanation baseline, which sums every
    /// row ever scored, equals an uninterrupted run's.
    Earliest,
}

impl StateConfig {
    /// Every problem of the section.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.ephemeral {
            // Only reached with a dir: an ephemeral section alone is no [state] at all.
            p.push("state.ephemeral = true keeps no checkpoints, but state.dir is set: remove one of them".into());
        } else if self.dir.trim().is_empty() {
            p.push("state.dir is empty (where checkpoints go; or state.ephemeral = true to start with empty state every time)".into());
        }
        if self.interval.is_zero() {
            p.push("state.interval must be more than 0".into());
        }
        if self.retain == 0 {
            p.push("state.retain must be at least 1".into());
        }
        if let Some((scheme, _)) = self.dir.split_once("://")
            && !matches!(scheme, "file" | "s3")
        {
            p.push(format!(
                "state.dir: scheme {scheme:?} is not supported (a directory, file:// or s3://)"
            ));
        }
        #[cfg(not(feature = "s3"))]
        if self.dir.starts_with("s3://") {
            p.push("state.dir is an s3:// URL, but this build has no `s3` cargo feature".into());
        }
        p
    }

    /// `dir` resolved against the config file's directory when it is a relative path.
    pub fn resolve(&mut self, base_dir: &Path) {
        if !self.dir.contains("://") && Path::new(&self.dir).is_relative() {
            self.dir = base_dir.join(&self.dir).to_string_lossy().into_owned();
        }
    }
}

/// Next offset to read, per input topic and partition: what a state reflects.
pub type Positions = BTreeMap<String, BTreeMap<i32, i64>>;

/// One table of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableEntry {
    /// The table's name (the stage's, e.g. `features/1-window(CUSTOMER_ID)`).
    pub name: String,
    /// Its file, relative to the checkpoint's directory.
    pub file: String,
    /// Rows.
    pub rows: usize,
    /// Bytes of the Arrow IPC file.
    pub bytes: u64,
}

/// What a checkpoint holds: written last, read first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version of the checkpoint.
    pub version: u32,
    /// Increasing number of the checkpoint.
    pub id: u64,
    /// The job kind that wrote it.
    pub job: String,
    /// Fingerprint of the definitions the state was made by (the feature stage's, then `+` and
    /// the score stage's when it keeps state): state of other definitions is not restored.
    pub features: String,
    /// When it was written, ms since the epoch.
    pub created_ms: i64,
    /// Next offset per input topic and partition that the state has not seen.
    pub positions: Positions,
    /// The state tables.
    pub tables: Vec<TableEntry>,
}

impl Manifest {
    /// Total bytes of the tables.
    pub fn bytes(&self) -> u64 {
        self.tables.iter().map(|t| t.bytes).sum()
    }

    /// Total rows of the tables.
    pub fn rows(&self) -> usize {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

/// The current format version.
pub const VERSION: u32 = 1;

/// What `riskpipe state inspect` prints: every complete checkpoint, newest first, with its
/// offsets and tables; for the newest, the keys each table holds.
pub async fn inspect(store: &CheckpointStore) -> crate::Result<String> {
    use std::fmt::Write;
    let manifests = store.manifests().await?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {} complete checkpoint(s)",
        store.location(),
        manifests.len()
    );
    for (i, m) in manifests.iter().enumerate() {
        let created = chrono::DateTime::from_timestamp_millis(m.created_ms)
            .map_or_else(|| m.created_ms.to_string(), |t| t.to_rfc3339());
        let _ = writeln!(
            out,
            "\ncheckpoint {} ({} job, features {}), written {created}: {} rows, {} bytes",
            m.id,
            m.job,
            m.features,
            m.rows(),
            m.bytes()
        );
        for (topic, partitions) in &m.positions {
            let offsets: Vec<String> = partitions.iter().map(|(p, o)| format!("{p}:{o}")).collect();
            let _ = writeln!(out, "  next offsets {topic}: {}", offsets.join(" "));
        }
        let keys = if i == 0 {
            Some(store.read(m).await?)
        } else {
            None
        };
        for t in &m.tables {
            let held = keys
                .as_ref()
                .and_then(|s| s.tables.iter().find(|(n, _)| *n == t.name))
                .map(|(_, b)| {
                    // The event clock's table has no keys: its rows are partitions.
                    let keys = riskpipe_operators::state_table_keys(b).unwrap_or(b.num_rows());
                    format!(", {keys} keys")
                })
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  table {:<40} {:>10} rows {:>12} bytes{held}",
                t.name, t.rows, t.bytes
            );
        }
    }
    Ok(out)
}
