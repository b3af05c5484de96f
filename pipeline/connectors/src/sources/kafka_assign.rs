//! State that follows a partition between instances (scale-out): when the group assigns this
//! instance a partition, its state is read from the partition's newest checkpoint in the shared
//! store (one at or behind the group's committed offsets) and brought up to those offsets by
//! replaying the messages between them, silently; then the partition is consumed from there.
//!
//! The feature state is kept per input partition (see `jobs::partitioned`), and each
//! partition's checkpoints record its offsets in every input topic (the events, and the labels
//! of the same partition number).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::kafka_range::{range_consumer, read_ranges};
use super::kafka_rebuild::{RebuildFrom, rebuild_from};
use super::kafka_restore::{committed, group_consumer};
use crate::decoders::Decoder;
use crate::kafka::KafkaConfig;
use crate::state::{CheckpointStore, Positions};
use crate::{PipelineError, Result};
use riskpipe_core::MakeStage;
use riskpipe_core::Streams;
use riskpipe_core::{FeatureStage, Horizon, Inputs, JobInput, Partitions, warm_up};

/// A partition's state, restored.
pub struct Restored {
    /// The partition.
    pub partition: i32,
    /// Its feature stage, at `positions`.
    pub stage: Box<dyn FeatureStage>,
    /// The group's committed offsets of the partition in each input topic (none: nothing
    /// committed there yet): where the state stands and consumption goes on.
    pub positions: Positions,
}

impl std::fmt::Debug for Restored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restored")
            .field("partition", &self.partition)
            .field("positions", &self.positions)
            .finish_non_exhaustive()
    }
}

/// Restores the state of assigned partitions.
pub struct PartitionRestore {
    kafka: KafkaConfig,
    streams: Streams,
    inputs: Inputs,
    decoder: Mutex<Box<dyn Decoder>>,
    store: CheckpointStore,
    make: MakeStage,
    /// What the partitions' checkpoints must have been written by.
    job: &'static str,
    fingerprint: String,
    batch_rows: usize,
    /// How far back a partition without a checkpoint is rebuilt (`None`: from the earliest).
    horizon: Option<Horizon>,
}

impl std::fmt::Debug for PartitionRestore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionRestore")
            .field("store", &self.store.location())
            .finish_non_exhaustive()
    }
}

impl PartitionRestore {
    /// A restorer of the partitions of `kafka`'s input topics (for a job reading `streams`
    /// into `inputs`), from `store`, with stages made by `make`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kafka: &KafkaConfig,
        streams: Streams,
        inputs: Inputs,
        decoder: Box<dyn Decoder>,
        store: CheckpointStore,
        make: MakeStage,
        job: &'static str,
        batch_rows: usize,
        horizon: Option<Horizon>,
    ) -> Result<Arc<Self>> {
        let fingerprint = make()?.snapshot()?.fingerprint;
        Ok(Arc::new(Self {
            kafka: kafka.clone(),
            streams,
            inputs,
            decoder: Mutex::new(decoder),
            store,
            make,
            job,
            fingerprint,
            batch_rows,
            horizon,
        }))
    }

    /// The input topics, events first.
    fn topics(&self) -> Vec<String> {
        self.kafka
            .inputs(self.streams)
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    /// Restores each of `partitions` (blocking: run off the async reactor).
    pub fn restore(&self, partitions: &[i32]) -> Result<Vec<Restored>> {
        let group = group_consumer(&self.kafka)?;
        let consumer = range_consumer(&self.kafka)?;
        let rt = tokio::runtime::Handle::current();
        let topics = self.topics();
        let mut out = Vec::with_capacity(partitions.len());
        for &p in partitions {
            let started = Instant::now();
            let mut commit = Positions::new();
            for topic in &topics {
                if let Some((_, Some(c))) = committed(&group, topic, &[p])?.first() {
                    commit.entry(topic.clone()).or_default().insert(p, *c);
                }
            }
            let at = |pos: &Positions, topic: &str| pos.get(topic).and_then(|m| m.get(&p)).copied();
            let store = self.store.partition(p);
            let mut stage = (self.make)()?;
            let mut from: Option<(u64, Positions)> = None;
            for m in rt.block_on(store.manifests())? {
                // Only a checkpoint the committed offsets have reached: one ahead of them was
                // written by an instance that lost the partition before its commit.
                let usable = m.job == self.job
                    && m.features == self.fingerprint
                    && topics
                        .iter()
                        .all(|t| match (at(&m.positions, t), at(&commit, t)) {
                            (Some(s), Some(c)) => s <= c,
                            (Some(_), None) => false,
                            (None, _) => true,
                        });
                if !usable {
                    continue;
                }
                let restored = rt.block_on(store.read(&m)).and_then(|s| {
                    let mut fresh = (self.make)()?;
                    fresh.restore(s)?;
                    Ok(fresh)
                });
                match restored {
                    Ok(s) => {
                        stage = s;
                        from = Some((m.id, m.positions.clone()));
                        break;
                    }
                    Err(e) => tracing::warn!(
                        partition = p,
                        id = m.id,
                        "checkpoint not used, trying an older one: {e}"
                    ),
                }
            }
            let state = from
                .as_ref()
                .map(|(_, pos)| pos.clone())
                .unwrap_or_default();
            // A partition no checkpoint covers: rebuilt from its events' reach back.
            let events_topic = topics.first().map(String::as_str).unwrap_or_default();
            let rebuild = match (at(&state, events_topic), at(&commit, events_topic)) {
                (None, Some(c)) => {
                    let decoder = self
                        .decoder
                        .lock()
                        .map_err(|_| PipelineError::Bug("decoder lock poisoned".into()))?;
                    rebuild_from(
                        &consumer,
                        events_topic,
                        &[(p, c)],
                        decoder.as_ref(),
                        &self.inputs.events,
                        self.horizon.as_ref(),
                    )?
                }
                _ => RebuildFrom::Earliest,
            };
            let mut inputs = Vec::new();
            let mut replayed = 0;
            for topic in &topics {
                let Some(end) = at(&commit, topic) else {
                    inputs.push(None);
                    continue;
                };
                let start = match at(&state, topic) {
                    Some(s) => s,
                    None => rebuild.start(&consumer, topic, p, end)?,
                };
                let read = read_ranges(&consumer, topic, &[(p, start, end)])?;
                replayed += read.payloads.len();
                let decoder = self
                    .decoder
                    .lock()
                    .map_err(|_| PipelineError::Bug("decoder lock poisoned".into()))?;
                let schema = match inputs.is_empty() {
                    true => &self.inputs.events,
                    false => self.inputs.side.as_ref().ok_or_else(|| {
                        PipelineError::Bug("a side topic without a side schema".into())
                    })?,
                };
                inputs.push(Some(read.decode(decoder.as_ref(), schema)?.0.batch));
            }
            let mut inputs = inputs.into_iter();
            let events = inputs.next().flatten().unwrap_or_else(|| {
                arrow::array::RecordBatch::new_empty(self.inputs.events.clone())
            });
            let side = inputs.next().flatten();
            let input = JobInput {
                partitions: Some(Partitions {
                    of_events: vec![p; events.num_rows()],
                    of_side: vec![p; side.as_ref().map_or(0, |s| s.num_rows())],
                    held: Arc::from([p]),
                }),
                side,
                events,
            };
            let refused = warm_up(stage.as_mut(), None, input, self.batch_rows)?;
            tracing::info!(
                partition = p,
                checkpoint = from.as_ref().map(|(id, _)| *id),
                rebuilt_from = (from.is_none()).then(|| rebuild.describe()),
                replayed,
                refused,
                seconds = started.elapsed().as_secs_f64(),
                "partition {p}: state restored from {}",
                store.location()
            );
            crate::events::restored(started.elapsed().as_secs_f64(), replayed);
            crate::events::state_origin(match from {
                Some(_) => "checkpoint",
                None => "rebuilt",
            });
            out.push(Restored {
                partition: p,
                stage,
                positions: commit,
            });
        }
        Ok(out)
    }
}
