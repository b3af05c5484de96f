//! The checkpoint store: Arrow IPC tables and a JSON manifest per checkpoint, through the
//! `object_store` crate.

use std::io::Cursor;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arrow::array::RecordBatch;
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::{Manifest, Positions, StateConfig, TableEntry, VERSION};
use crate::events;
use crate::{PipelineError, Result};
use riskpipe_core::StateSnapshot;

const CHECKPOINTS: &str = "checkpoints";
const MANIFEST: &str = "manifest.json";

fn unusable(id: u64, reason: impl std::fmt::Display) -> PipelineError {
    PipelineError::Checkpoint {
        id,
        reason: reason.to_string(),
    }
}

/// Checkpoints of one pipeline.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    root: Path,
    retain: usize,
    /// Where it is, for messages.
    location: String,
    /// The directory, for a local store (which leaves directories behind when files go).
    local: Option<std::path::PathBuf>,
}

impl CheckpointStore {
    /// Opens (creating a local directory if needed) the store of `cfg` (`dir` already resolved).
    pub fn open(cfg: &StateConfig) -> Result<Self> {
        let (store, root, local): (Arc<dyn ObjectStore>, Path, Option<std::path::PathBuf>) =
            if cfg.dir.contains("://") && !cfg.dir.starts_with("file://") {
                let url = url::Url::parse(&cfg.dir)
                    .map_err(|e| PipelineError::Config(vec![format!("state.dir: {e}")]))?;
                // Credentials and region from the usual environment variables (AWS_*).
                let (store, root) = object_store::parse_url_opts(
                    &url,
                    std::env::vars().filter(|(k, _)| k.starts_with("AWS_")),
                )
                .map_err(PipelineError::checkpoint_store(
                    "opening the checkpoint store",
                ))?;
                (Arc::from(store), root, None)
            } else {
                let dir = cfg.dir.strip_prefix("file://").unwrap_or(&cfg.dir);
                std::fs::create_dir_all(dir).map_err(PipelineError::io("creating", dir))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(
                    PipelineError::checkpoint_store("opening the checkpoint directory"),
                )?;
                (Arc::new(store), Path::from(""), Some(dir.into()))
            };
        Ok(Self {
            store,
            root,
            retain: cfg.retain.max(1),
            location: cfg.dir.clone(),
            local,
        })
    }

    /// The store of input partition `p`'s own checkpoints (`p<partition>/checkpoints/...`), for
    /// state kept per partition: each partition's state moves between instances on its own.
    pub fn partition(&self, p: i32) -> Self {
        let name = format!("p{p}");
        Self {
            store: self.store.clone(),
            root: self.root.clone().join(name.as_str()),
            retain: self.retain,
            location: format!("{}/{name}", self.location.trim_end_matches('/')),
            local: self.local.as_ref().map(|l| l.join(&name)),
        }
    }

    /// Where the checkpoints are.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn dir(&self, id: u64) -> Path {
        self.root
            .clone()
            .join(CHECKPOINTS)
            .join(format!("{id:020}"))
    }

    /// Ids of the checkpoint directories (complete or not), ascending.
    async fn ids(&self) -> Result<Vec<u64>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&self.root.clone().join(CHECKPOINTS)))
            .await
            .map_err(PipelineError::checkpoint_store("listing checkpoints"))?;
        let mut ids: Vec<u64> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename()?.parse().ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The manifest of checkpoint `id`; `None` if it has none (never finished).
    pub async fn manifest(&self, id: u64) -> Result<Option<Manifest>> {
        let path = self.dir(id).join(MANIFEST);
        let bytes = match self.store.get(&path).await {
            Ok(got) => got
                .bytes()
                .await
                .map_err(PipelineError::checkpoint_store("reading a manifest"))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(PipelineError::checkpoint_store("reading a manifest")(e)),
        };
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| unusable(id, format!("manifest: {e}")))?;
        if manifest.version != VERSION {
            return Err(unusable(
                id,
                format!(
                    "format version {} (this riskpipe reads {VERSION})",
                    manifest.version
                ),
            ));
        }
        Ok(Some(manifest))
    }

    /// Every complete checkpoint's manifest, newest first (unreadable ones are logged and left
    /// out).
    pub async fn manifests(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for id in self.ids().await?.into_iter().rev() {
            match self.manifest(id).await {
                Ok(Some(m)) => out.push(m),
                Ok(None) => {}
                Err(e) => tracing::warn!("skipping checkpoint {id}: {e}"),
            }
        }
        Ok(out)
    }

    /// The next checkpoint id.
    pub async fn next_id(&self) -> Result<u64> {
        Ok(self.ids().await?.last().map_or(1, |id| id + 1))
    }

    /// Writes checkpoint `id`: every table, then the manifest; then deletes what retention
    /// no longer keeps. Returns the manifest.
    pub async fn write(
        &self,
        id: u64,
        job: &str,
        positions: Positions,
        snapshot: StateSnapshot,
    ) -> Result<Manifest> {
        let started = Instant::now();
        let dir = self.dir(id);
        let fingerprint = snapshot.fingerprint.clone();
        // Arrow IPC encoding is CPU work: off the reactor.
        let files = tokio::task::spawn_blocking(move || encode(snapshot))
            .await
            .map_err(|e| PipelineError::Bug(format!("checkpoint encoder: {e}")))??;
        let mut tables = Vec::with_capacity(files.len());
        for (i, (name, rows, bytes)) in files.into_iter().enumerate() {
            let file = format!("{i}.arrow");
            tables.push(TableEntry {
                name,
                file: file.clone(),
                rows,
                bytes: bytes.len() as u64,
            });
            self.store
                .put(&dir.clone().join(file), PutPayload::from(bytes))
                .await
                .map_err(PipelineError::checkpoint_store("writing a state table"))?;
        }
        let manifest = Manifest {
            version: VERSION,
            id,
            job: job.to_string(),
            features: fingerprint,
            created_ms: now_ms(),
            positions,
            tables,
        };
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| PipelineError::Bug(format!("encoding a manifest: {e}")))?;
        self.store
            .put(&dir.clone().join(MANIFEST), PutPayload::from(json))
            .await
            .map_err(PipelineError::checkpoint_store("writing a manifest"))?;
        events::checkpoint_written(
            started.elapsed().as_secs_f64(),
            manifest.bytes(),
            manifest.created_ms,
        );
        self.prune(id).await?;
        Ok(manifest)
    }

    /// Deletes checkpoints older than the `retain` newest complete ones, and torn ones before
    /// `newest`.
    async fn prune(&self, newest: u64) -> Result<()> {
        let mut complete = 0;
        for id in self.ids().await?.into_iter().rev() {
            if id > newest {
                continue; // a later writer's
            }
            let keep = matches!(self.manifest(id).await, Ok(Some(_))) && complete < self.retain;
            if keep {
                complete += 1;
                continue;
            }
            let dir = self.dir(id);
            let files: Vec<Path> = self
                .store
                .list(Some(&dir))
                .map_ok(|m| m.location)
                .try_collect()
                .await
                .map_err(PipelineError::checkpoint_store("listing an old checkpoint"))?;
            // The manifest first: a half-deleted checkpoint must not look complete.
            let (manifest, tables): (Vec<Path>, Vec<Path>) = files
                .into_iter()
                .partition(|p| p.filename() == Some(MANIFEST));
            for p in manifest.into_iter().chain(tables) {
                self.store
                    .delete(&p)
                    .await
                    .map_err(PipelineError::checkpoint_store(
                        "deleting an old checkpoint",
                    ))?;
            }
            if let Some(local) = &self.local {
                let _ = std::fs::remove_dir(local.join(CHECKPOINTS).join(format!("{id:020}")));
            }
        }
        Ok(())
    }

    /// The tables of `manifest`'s checkpoint.
    pub async fn read(&self, manifest: &Manifest) -> Result<StateSnapshot> {
        let dir = self.dir(manifest.id);
        let mut tables = Vec::with_capacity(manifest.tables.len());
        for t in &manifest.tables {
            let bytes = self
                .store
                .get(&dir.clone().join(t.file.as_str()))
                .await
                .map_err(PipelineError::checkpoint_store("reading a state table"))?
                .bytes()
                .await
                .map_err(PipelineError::checkpoint_store("reading a state table"))?;
            if bytes.len() as u64 != t.bytes {
                return Err(unusable(
                    manifest.id,
                    format!(
                        "{} has {} bytes, the manifest says {}",
                        t.file,
                        bytes.len(),
                        t.bytes
                    ),
                ));
            }
            let batch = decode(&bytes).map_err(|e| unusable(manifest.id, e))?;
            if batch.num_rows() != t.rows {
                return Err(unusable(manifest.id, format!("{} rows differ", t.file)));
            }
            tables.push((t.name.clone(), batch));
        }
        Ok(StateSnapshot {
            tables,
            fingerprint: manifest.features.clone(),
        })
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Each table as an Arrow IPC file: (name, rows, bytes).
fn encode(snapshot: StateSnapshot) -> Result<Vec<(String, usize, Vec<u8>)>> {
    let mut out = Vec::with_capacity(snapshot.tables.len());
    for (name, batch) in snapshot.tables {
        let mut bytes = Vec::new();
        let mut w = FileWriter::try_new(&mut bytes, batch.schema_ref())?;
        w.write(&batch)?;
        w.finish()?;
        drop(w);
        out.push((name, batch.num_rows(), bytes));
    }
    Ok(out)
}

/// One table back from its IPC file (all its batches as one).
fn decode(bytes: &[u8]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let reader = FileReader::try_new(Cursor::new(bytes), None)?;
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>()?;
    arrow::compute::concat_batches(&schema, &batches)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn table(n: i64) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from_iter_values(0..n))],
        )
        .expect("table")
    }

    fn snapshot(n: i64) -> StateSnapshot {
        StateSnapshot {
            tables: vec![("t".into(), table(n))],
            fingerprint: "f".into(),
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_torn_checkpoint_is_ignored_and_retention_keeps_the_newest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = StateConfig {
            dir: dir.path().to_string_lossy().into_owned(),
            interval: std::time::Duration::from_secs(1),
            retain: 2,
            rebuild: Default::default(),
            ephemeral: false,
        };
        let store = CheckpointStore::open(&cfg).expect("store");
        rt().block_on(async {
            assert!(store.manifests().await.expect("list").is_empty());
            for n in 1..=3 {
                let id = store.next_id().await.expect("id");
                assert_eq!(id, n as u64);
                let positions: Positions = [("tx".to_string(), [(0, n * 10)].into())].into();
                store
                    .write(id, "fraud", positions, snapshot(n))
                    .await
                    .expect("write");
            }
            let ms = store.manifests().await.expect("list");
            assert_eq!(ms.iter().map(|m| m.id).collect::<Vec<_>>(), [3, 2]);
            assert_eq!(ms[0].positions["tx"][&0], 30);
            let back = store.read(&ms[0]).await.expect("read");
            assert_eq!(back.tables[0].1, table(3));
            assert_eq!(back.fingerprint, "f");

            // A crash during checkpoint 4: its table is written, its manifest never.
            let torn = dir.path().join("checkpoints").join(format!("{:020}", 4));
            std::fs::create_dir_all(&torn).expect("dir");
            std::fs::write(torn.join("0.arrow"), b"half a table").expect("torn table");
            let ms = store.manifests().await.expect("list");
            assert_eq!(ms[0].id, 3, "the torn checkpoint is not used");
            // A corrupt table of a complete checkpoint: reading it fails, saying which.
            std::fs::write(
                dir.path()
                    .join("checkpoints")
                    .join(format!("{:020}", 3))
                    .join("0.arrow"),
                b"garbage",
            )
            .expect("corrupt");
            let e = store.read(&ms[0]).await.expect_err("corrupt table");
            assert!(e.to_string().contains("checkpoint 3"), "{e}");
            // The next write goes past the torn id and prunes it.
            let id = store.next_id().await.expect("id");
            assert_eq!(id, 5);
            store
                .write(id, "fraud", Positions::new(), snapshot(5))
                .await
                .expect("write");
            assert!(!torn.exists(), "torn checkpoint pruned");
            let ms = store.manifests().await.expect("list");
            assert_eq!(ms.iter().map(|m| m.id).collect::<Vec<_>>(), [5, 3]);
        });
    }
}
