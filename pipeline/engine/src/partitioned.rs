//! Keyed state organised by input partition: one feature stage per partition the source holds,
//! so a partition's state can move between instances on its own (scale-out). Rows go to the
//! stage of the partition they were read from (labels, read from a partition of the labels
//! topic numbered like the events', to that number's stage), and the stages' output is merged
//! back into the input's order.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::{interleave_record_batch, take_record_batch};

use crate::{PipelineError, Result};
use riskpipe_core::{FeatureStage, Featured, JobInput, Partitions, Reject, StateSnapshot};
pub use riskpipe_core::{Installs, MakeStage};

/// One feature stage per input partition.
pub struct PerPartition {
    make: MakeStage,
    stages: BTreeMap<i32, Box<dyn FeatureStage>>,
    /// The stages' definitions (every stage has the same).
    fingerprint: String,
    /// Set when partitions come and go with the group's assignment: stages of newly assigned
    /// partitions come restored from here, and those of partitions given up go.
    installs: Option<Arc<Installs>>,
}

impl std::fmt::Debug for PerPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerPartition")
            .field("partitions", &self.stages.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The table-name prefix of partition `p`'s state in a snapshot.
fn prefix(p: i32) -> String {
    format!("p{p}/")
}

/// The partition and the stage's own table name of a snapshot table.
pub fn partition_of_table(name: &str) -> Option<(i32, &str)> {
    let (p, rest) = name.strip_prefix('p')?.split_once('/')?;
    Some((p.parse().ok()?, rest))
}

impl PerPartition {
    /// Stages made by `make`, none yet.
    pub fn new(make: MakeStage) -> Result<Self> {
        let fingerprint = make()?.snapshot()?.fingerprint;
        Ok(Self {
            make,
            stages: BTreeMap::new(),
            fingerprint,
            installs: None,
        })
    }

    /// The partitions with a stage.
    pub fn partitions(&self) -> Vec<i32> {
        self.stages.keys().copied().collect()
    }

    fn stage(&mut self, p: i32) -> Result<&mut Box<dyn FeatureStage>> {
        if !self.stages.contains_key(&p) {
            self.stages.insert(p, (self.make)()?);
        }
        self.stages
            .get_mut(&p)
            .ok_or_else(|| PipelineError::Bug(format!("no stage for partition {p}")))
    }
}

/// `rows` of `batch` (all of it when they are all its rows, in order).
fn rows_of(batch: &RecordBatch, rows: &[u32]) -> Result<RecordBatch> {
    if rows.len() == batch.num_rows() && rows.iter().enumerate().all(|(i, &r)| i as u32 == r) {
        return Ok(batch.clone());
    }
    Ok(take_record_batch(batch, &UInt32Array::from(rows.to_vec()))?)
}

impl FeatureStage for PerPartition {
    fn process(&mut self, input: JobInput) -> Result<Featured> {
        let JobInput {
            side,
            events,
            partitions,
        } = input;
        let parts = partitions.ok_or_else(|| {
            PipelineError::Bug("state per partition needs each event's partition".into())
        })?;
        if let Some(installs) = &self.installs {
            for (p, stage) in installs.take() {
                match stage {
                    Some(stage) => self.stages.insert(p, stage),
                    None => self.stages.remove(&p),
                };
            }
        }
        let mut events_of: BTreeMap<i32, Vec<u32>> = BTreeMap::new();
        for (row, &p) in parts.of_events.iter().enumerate() {
            events_of.entry(p).or_default().push(row as u32);
        }
        let mut side_of: BTreeMap<i32, Vec<u32>> = BTreeMap::new();
        if let Some(s) = side.as_ref().filter(|s| s.num_rows() > 0) {
            if parts.of_side.len() != s.num_rows() {
                return Err(PipelineError::Bug(format!(
                    "{} side rows, {} side partitions",
                    s.num_rows(),
                    parts.of_side.len()
                )));
            }
            for (row, &p) in parts.of_side.iter().enumerate() {
                side_of.entry(p).or_default().push(row as u32);
            }
        }
        let mut partitions: Vec<i32> = events_of.keys().chain(side_of.keys()).copied().collect();
        partitions.sort_unstable();
        partitions.dedup();
        let mut outputs: Vec<RecordBatch> = Vec::new();
        // (original row, output batch, row in it) of every kept event.
        let mut kept: Vec<(u32, usize, usize)> = Vec::with_capacity(events.num_rows());
        let mut rejects: Vec<Reject> = Vec::new();
        for p in partitions {
            let rows = events_of.remove(&p).unwrap_or_default();
            let sub_events = rows_of(&events, &rows)?;
            let sub_side = match (&side, side_of.get(&p)) {
                (Some(s), Some(r)) => Some(rows_of(s, r)?),
                _ => None,
            };
            let sub = JobInput {
                side: sub_side,
                partitions: Some(Partitions {
                    of_side: vec![p; side_of.get(&p).map_or(0, Vec::len)],
                    of_events: vec![p; rows.len()],
                    held: Arc::from([p]),
                }),
                events: sub_events,
            };
            let featured = self.stage(p)?.process(sub)?;
            let mut refused = vec![false; rows.len()];
            for r in featured.rejects {
                let row = *rows.get(r.row).ok_or_else(|| {
                    PipelineError::Bug(format!("partition {p}'s stage refused row {}", r.row))
                })?;
                if let Some(f) = refused.get_mut(r.row) {
                    *f = true;
                }
                rejects.push(Reject {
                    row: row as usize,
                    ..r
                });
            }
            if featured.batch.num_rows() > 0 {
                let at = outputs.len();
                let mut out_row = 0;
                for (i, &row) in rows.iter().enumerate() {
                    if !refused[i] {
                        kept.push((row, at, out_row));
                        out_row += 1;
                    }
                }
                if out_row != featured.batch.num_rows() {
                    return Err(PipelineError::Bug(format!(
                        "partition {p}'s stage kept {} rows of {out_row}",
                        featured.batch.num_rows()
                    )));
                }
                outputs.push(featured.batch);
            }
        }
        rejects.sort_by_key(|r| r.row);
        let batch = match outputs.len() {
            0 => events.slice(0, 0),
            1 => outputs.swap_remove(0),
            _ => {
                kept.sort_unstable_by_key(|k| k.0);
                let indices: Vec<(usize, usize)> = kept.iter().map(|k| (k.1, k.2)).collect();
                let refs: Vec<&RecordBatch> = outputs.iter().collect();
                interleave_record_batch(&refs, &indices)?
            }
        };
        Ok(Featured { batch, rejects })
    }

    fn state_keys(&self) -> Option<usize> {
        Some(self.stages.values().filter_map(|s| s.state_keys()).sum())
    }

    fn adopt(&mut self, installs: Arc<Installs>) -> bool {
        self.installs = Some(installs);
        true
    }

    /// Every partition's tables, prefixed `p<partition>/`.
    fn snapshot(&self) -> Result<StateSnapshot> {
        let mut tables = Vec::new();
        for (&p, stage) in &self.stages {
            for (name, t) in stage.snapshot()?.tables {
                tables.push((format!("{}{name}", prefix(p)), t));
            }
        }
        Ok(StateSnapshot {
            tables,
            fingerprint: self.fingerprint.clone(),
        })
    }

    /// Replaces every partition's state with the snapshot's partitions.
    fn restore(&mut self, state: StateSnapshot) -> Result<()> {
        if state.fingerprint != self.fingerprint {
            return Err(PipelineError::Checkpoint {
                id: 0,
                reason: "written for other feature definitions ([job.features] changed)".into(),
            });
        }
        let mut by_partition: BTreeMap<i32, Vec<(String, RecordBatch)>> = BTreeMap::new();
        for (name, t) in state.tables {
            let (p, own) = partition_of_table(&name).ok_or_else(|| PipelineError::Checkpoint {
                id: 0,
                reason: format!("table {name:?} belongs to no partition"),
            })?;
            by_partition
                .entry(p)
                .or_default()
                .push((own.to_string(), t));
        }
        let mut stages = BTreeMap::new();
        for (p, tables) in by_partition {
            let mut stage = (self.make)()?;
            stage.restore(StateSnapshot {
                tables,
                fingerprint: self.fingerprint.clone(),
            })?;
            stages.insert(p, stage);
        }
        self.stages = stages;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::Int64Type;

    /// Counts its events and labels; appends `N`, the events seen so far including this one,
    /// and refuses events whose `X` is negative.
    #[derive(Debug, Default)]
    struct Counting {
        seen: i64,
        labels: i64,
    }

    impl FeatureStage for Counting {
        fn process(&mut self, input: JobInput) -> Result<Featured> {
            self.labels += input.side.as_ref().map_or(0, |s| s.num_rows() as i64);
            let x = input.events.column(0).as_primitive::<Int64Type>().clone();
            let mut keep = Vec::new();
            let mut rejects = Vec::new();
            let mut n = Vec::new();
            for (row, v) in x.values().iter().enumerate() {
                if *v < 0 {
                    rejects.push(Reject {
                        row,
                        kind: riskpipe_core::RejectKind::Invalid,
                        reason: "negative".into(),
                    });
                } else {
                    self.seen += 1;
                    keep.push(row as u32);
                    n.push(self.seen * 1000 + self.labels);
                }
            }
            let kept = take_record_batch(&input.events, &UInt32Array::from(keep))?;
            let batch = RecordBatch::try_from_iter([
                ("X", kept.column(0).clone()),
                ("N", Arc::new(Int64Array::from(n)) as arrow::array::ArrayRef),
            ])?;
            Ok(Featured { batch, rejects })
        }

        fn snapshot(&self) -> Result<StateSnapshot> {
            Ok(StateSnapshot {
                tables: vec![(
                    "n".into(),
                    RecordBatch::try_from_iter([(
                        "n",
                        Arc::new(Int64Array::from(vec![self.seen, self.labels]))
                            as arrow::array::ArrayRef,
                    )])?,
                )],
                fingerprint: "counting".into(),
            })
        }

        fn restore(&mut self, state: StateSnapshot) -> Result<()> {
            let n = state.tables[0]
                .1
                .column(0)
                .as_primitive::<Int64Type>()
                .clone();
            (self.seen, self.labels) = (n.value(0), n.value(1));
            Ok(())
        }
    }

    fn input(x: &[i64], of: &[i32], labels: &[i32]) -> JobInput {
        let events = RecordBatch::try_from_iter([(
            "X",
            Arc::new(Int64Array::from(x.to_vec())) as arrow::array::ArrayRef,
        )])
        .expect("events");
        let side = RecordBatch::try_from_iter([(
            "L",
            Arc::new(Int64Array::from(vec![0; labels.len()])) as arrow::array::ArrayRef,
        )])
        .expect("labels");
        JobInput {
            side: Some(side),
            events,
            partitions: Some(Partitions {
                of_events: of.to_vec(),
                of_side: labels.to_vec(),
                held: Arc::from([0, 1, 2]),
            }),
        }
    }

    fn n(f: &Featured) -> Vec<i64> {
        f.batch
            .column(1)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec()
    }

    #[test]
    fn rows_go_to_their_partitions_stage_and_come_back_in_order() {
        let make: MakeStage =
            Arc::new(|| Ok(Box::new(Counting::default()) as Box<dyn FeatureStage>));
        let mut stages = PerPartition::new(make).expect("stages");
        // Partition 1 gets a label first; the refused row (-1) counts nowhere.
        let f = stages
            .process(input(&[10, 11, -1, 12, 13], &[0, 1, 0, 0, 1], &[1]))
            .expect("process");
        assert_eq!(
            f.batch
                .column(0)
                .as_primitive::<Int64Type>()
                .values()
                .to_vec(),
            [10, 11, 12, 13]
        );
        assert_eq!(n(&f), [1000, 1001, 2000, 2001]);
        assert_eq!(f.rejects.len(), 1);
        assert_eq!(f.rejects[0].row, 2);
        assert_eq!(stages.partitions(), [0, 1]);

        // A snapshot restored elsewhere goes on where this one is.
        let snapshot = stages.snapshot().expect("snapshot");
        assert!(snapshot.tables.iter().any(|(t, _)| t == "p1/n"));
        let make: MakeStage =
            Arc::new(|| Ok(Box::new(Counting::default()) as Box<dyn FeatureStage>));
        let mut other = PerPartition::new(make).expect("stages");
        other.restore(snapshot).expect("restore");
        let next = input(&[20, 21, 22], &[1, 2, 0], &[]);
        let here = stages.process(next.clone()).expect("process");
        let there = other.process(next).expect("process");
        assert_eq!(n(&here), [3001, 1000, 3000]);
        assert_eq!(n(&there), n(&here));
        assert_eq!(other.partitions(), [0, 1, 2]);
    }

    /// A batch issued between a revoke and the next assignment holds no partition; the stages
    /// stay until the source gives a partition up, so one assigned again keeps its state.
    #[test]
    fn stages_go_only_when_their_partition_is_given_up() {
        let make: MakeStage =
            Arc::new(|| Ok(Box::new(Counting::default()) as Box<dyn FeatureStage>));
        let mut stages = PerPartition::new(make).expect("stages");
        let installs = Arc::new(Installs::default());
        assert!(stages.adopt(installs.clone()));
        stages
            .process(input(&[10, 11], &[0, 1], &[]))
            .expect("process");
        let mut revoked = input(&[12], &[0], &[]);
        if let Some(p) = revoked.partitions.as_mut() {
            p.held = Arc::from([]);
        }
        stages.process(revoked).expect("process");
        assert_eq!(stages.partitions(), [0, 1]);
        installs.give_up(1);
        let f = stages.process(input(&[13], &[0], &[])).expect("process");
        assert_eq!(stages.partitions(), [0]);
        assert_eq!(
            n(&f),
            [3000],
            "partition 0 kept its state through the revoke"
        );
    }
}
