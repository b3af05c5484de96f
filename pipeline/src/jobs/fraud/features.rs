//! The fraud job's feature stage: transactions admitted against the watermark (and the value
//! range, and once each), labels into the operators' state, then the feature chain.

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use riskpipe_operators::{FeatureChain, columns};
use riskpipe_schemas::repartition;

use super::config::FraudConfig;
use crate::jobs::event_time::EventClock;
use crate::jobs::{FeatureStage, Featured, JobInput, Reject, StateSnapshot};
use crate::{PipelineError, Result};

/// Transactions checked against the watermark; labels into the operators' state; then the
/// accepted transactions through the feature chain.
#[derive(Debug)]
pub(super) struct FraudFeatures {
    pub(super) chain: FeatureChain,
    pub(super) clock: EventClock,
    pub(super) event_time: String,
    pub(super) fingerprint: String,
    pub(super) part: Part,
    /// The column ordering events of equal time: the transaction id.
    pub(super) order_by: String,
    /// After a repartition by this column into this many partitions: where each label must
    /// have been read from (see [`FraudFeatures::check_labels`]), and how many were not.
    pub(super) copartition: Option<(String, i32)>,
    pub(super) misrouted: u64,
}

/// Which part of the features a stage computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    /// All of them (one stage).
    Whole,
    /// Before a repartition: admits the transactions, appends each row's input partition.
    BeforeRepartition,
    /// After it: the rows were admitted before; the watermark is kept per their partition of
    /// origin, whose events arrive here in their own order (a subsequence of it), so it never
    /// runs ahead of the first stage's.
    AfterRepartition,
}

impl FraudFeatures {
    pub(super) fn new(
        cfg: &FraudConfig,
        features: &riskpipe_operators::FeatureConfig,
        part: Part,
    ) -> Result<Self> {
        Ok(Self {
            chain: features.build_chain_for(cfg.labels_name_the_event())?,
            clock: EventClock::new(cfg.event_time),
            event_time: features.event_time.clone(),
            fingerprint: crate::jobs::fingerprint(features),
            part,
            order_by: features.order_by.clone(),
            copartition: None,
            misrouted: 0,
        })
    }

    /// Which rows of `events` were taken in before: a row whose id an operator remembers, or
    /// that appeared earlier in the batch (`None`: no operator remembers ids).
    fn taken_in(&self, events: &RecordBatch) -> Result<Option<Vec<bool>>> {
        let Some(mut seen) = self.chain.seen(events)? else {
            return Ok(None);
        };
        let ids = columns::keys(events, &self.order_by)?;
        let mut in_batch = std::collections::HashSet::with_capacity_and_hasher(
            events.num_rows(),
            ahash::RandomState::new(),
        );
        for (row, s) in seen.iter_mut().enumerate() {
            *s = *s || !in_batch.insert(ids.id(row));
        }
        Ok(Some(seen))
    }

    /// The rows of `events` not taken in before (the first stage re-forwards its uncommitted
    /// tail after a crash or a rebalance: at-least-once): a row taken in already is dropped
    /// silently (its first copy was scored), so nothing counts twice and every score stays the
    /// backtest's.
    fn drop_redelivered(
        &self,
        events: RecordBatch,
        rejects: &mut Vec<Reject>,
    ) -> Result<RecordBatch> {
        let Some(seen) = self.taken_in(&events)? else {
            return Ok(events);
        };
        if !seen.contains(&true) {
            return Ok(events);
        }
        let keep: Vec<u32> = (0..events.num_rows() as u32)
            .filter(|&r| !seen[r as usize])
            .collect();
        rejects.extend(
            seen.iter()
                .enumerate()
                .filter(|(_, s)| **s)
                .map(|(row, _)| Reject {
                    row,
                    kind: crate::jobs::RejectKind::Redelivered,
                    reason: "taken in already (re-delivered by the repartition topic)".into(),
                }),
        );
        Ok(take_record_batch(&events, &UInt32Array::from(keep))?)
    }

    /// With state per partition, a row counts only in the partition its key belongs to (Java's
    /// murmur2 of the key as text, over the partitions): a label read from another partition
    /// reaches none of its terminal's transactions, and a transaction read from another than its
    /// customer's is scored with part of the customer's history (its producer keyed it
    /// otherwise, or used another partitioner). Such rows are counted and reported.
    fn check_keys(&mut self, rows: &RecordBatch, held: &[i32], input: &'static str) -> Result<()> {
        let (Some((by, partitions)), [partition]) = (&self.copartition, held) else {
            return Ok(());
        };
        let keys = arrow::compute::cast(
            columns::get(rows, by).map_err(PipelineError::produced)?,
            &arrow::datatypes::DataType::Utf8,
        )?;
        let keys = arrow::array::AsArray::as_string::<i32>(&keys);
        let misrouted = keys
            .iter()
            .flatten()
            .filter(|k| crate::kafka::murmur2_partition(k.as_bytes(), *partitions) != *partition)
            .count() as u64;
        if misrouted > 0 {
            crate::events::misrouted(input, misrouted);
            let before = self.misrouted;
            self.misrouted += misrouted;
            if before == 0 || before / 10_000 != self.misrouted / 10_000 {
                tracing::warn!(
                    partition,
                    input,
                    "{} {input} so far read from a partition their {by} does not belong to: produce them keyed by {by} (as text) with Java's murmur2 partitioner, or their features miss part of their key's history",
                    self.misrouted
                );
            }
        }
        Ok(())
    }
}

/// The clock's table in a snapshot; the operators' tables are prefixed [`FEATURES`].
pub(super) const CLOCK: &str = "event_clock";
pub(super) const FEATURES: &str = "features/";

impl FeatureStage for FraudFeatures {
    fn process(&mut self, input: JobInput) -> Result<Featured> {
        if let Some(p) = &input.partitions
            && self.part != Part::AfterRepartition
        {
            self.clock.hold(&p.held);
        }
        // State is freed up to where the batch's events can still look: they are all at or
        // after the watermark as it stands before them, less the allowed lateness.
        self.chain.advance_watermark(self.clock.state_watermark());
        if self.part == Part::BeforeRepartition
            && input.events.num_rows() > 0
            && let Some(p) = &input.partitions
        {
            self.check_keys(&input.events, &p.held, "transactions")?;
        }
        let mut rejects = Vec::new();
        let mut origins = Vec::new();
        let events = if input.events.num_rows() > 0 && self.part == Part::AfterRepartition {
            let times = columns::event_times(&input.events, &self.event_time)?;
            let from = columns::primitive::<arrow::datatypes::Int32Type>(
                &input.events,
                repartition::ORIGIN_PARTITION,
            )?;
            for (&t, &p) in times.iter().zip(from.values().iter()) {
                self.clock.observe(p, t);
            }
            self.drop_redelivered(input.events, &mut rejects)?
        } else if input.events.num_rows() > 0 {
            let times = columns::event_times(&input.events, &self.event_time)?;
            // Read once, from offsets no earlier read covered (the source skips re-deliveries,
            // a restore stops at the committed offsets): an id taken in already was published
            // twice. Its copy would count twice in its keys' windows: refused, state untouched.
            let duplicates = self.taken_in(&input.events)?;
            // A number no sum, mean or model input can take: refused before any state.
            let out_of_range = crate::jobs::value_range::OutOfRange::of(&input.events);
            let mut keep = Vec::with_capacity(times.len());
            for (row, &t) in times.iter().enumerate() {
                if let Some(reason) = out_of_range.reason(row) {
                    rejects.push(Reject {
                        row,
                        kind: crate::jobs::RejectKind::Invalid,
                        reason: reason.to_string(),
                    });
                    continue;
                }
                if duplicates.as_ref().is_some_and(|d| d[row]) {
                    rejects.push(Reject {
                        row,
                        kind: crate::jobs::RejectKind::Duplicate,
                        reason: format!(
                            "{} taken in already: a transaction published twice counts once",
                            self.order_by
                        ),
                    });
                    continue;
                }
                let partition = input
                    .partitions
                    .as_ref()
                    .and_then(|p| p.of_events.get(row).copied())
                    .unwrap_or(0);
                match self.clock.admit(partition, t) {
                    Ok(()) => {
                        keep.push(row as u32);
                        if self.part == Part::BeforeRepartition {
                            origins.push(partition);
                        }
                    }
                    Err((kind, reason)) => rejects.push(Reject { row, kind, reason }),
                }
            }
            if rejects.is_empty() {
                input.events
            } else {
                take_record_batch(&input.events, &UInt32Array::from(keep))?
            }
        } else {
            input.events
        };
        // Labels first: operators use a label only from its label time on.
        if let Some(labels) = input.side.as_ref().filter(|l| l.num_rows() > 0) {
            if let Some(p) = &input.partitions {
                self.check_keys(labels, &p.held, "labels")?;
            }
            self.chain.observe_labels(labels)?;
        }
        let mut batch = if events.num_rows() > 0 {
            self.chain.process(events)?
        } else {
            events
        };
        if self.part == Part::BeforeRepartition {
            let mut fields: Vec<arrow::datatypes::FieldRef> =
                batch.schema().fields().iter().cloned().collect();
            fields.push(std::sync::Arc::new(arrow::datatypes::Field::new(
                repartition::ORIGIN_PARTITION,
                arrow::datatypes::DataType::Int32,
                false,
            )));
            let mut columns = batch.columns().to_vec();
            columns.push(std::sync::Arc::new(arrow::array::Int32Array::from(origins)));
            batch = RecordBatch::try_new(
                std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
                columns,
            )?;
        }
        crate::events::event_time(self.clock.watermark(), self.chain.keys());
        Ok(Featured { batch, rejects })
    }

    fn state_keys(&self) -> Option<usize> {
        Some(self.chain.keys())
    }

    fn snapshot(&self) -> Result<StateSnapshot> {
        let mut tables = vec![(CLOCK.to_string(), self.clock.snapshot()?)];
        for (name, t) in self.chain.snapshot()? {
            tables.push((format!("{FEATURES}{name}"), t));
        }
        Ok(StateSnapshot {
            tables,
            fingerprint: self.fingerprint.clone(),
        })
    }

    fn restore(&mut self, state: StateSnapshot) -> Result<()> {
        if state.fingerprint != self.fingerprint {
            return Err(PipelineError::Checkpoint {
                id: 0,
                reason: "written for other feature definitions ([job.features] changed)".into(),
            });
        }
        let mut chain = Vec::new();
        let mut clock = None;
        for (name, t) in state.tables {
            match name.strip_prefix(FEATURES) {
                Some(op) => chain.push((op.to_string(), t)),
                None if name == CLOCK => clock = Some(t),
                None => {
                    return Err(PipelineError::Checkpoint {
                        id: 0,
                        reason: format!("unknown table {name:?}"),
                    });
                }
            }
        }
        let clock = clock.ok_or_else(|| PipelineError::Checkpoint {
            id: 0,
            reason: "no event clock table".into(),
        })?;
        self.clock.restore(&clock)?;
        self.chain.restore(&chain)?;
        Ok(())
    }
}
