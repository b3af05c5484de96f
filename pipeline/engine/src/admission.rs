//! Admission: which of a batch's events a job's feature state may take in — each once, with
//! numbers in range, against the watermark; after a repartition, the rows its topic re-delivers
//! dropped. Any job whose events carry a time and an id admits through this; it names no column.

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, Int32Type};
use riskpipe_connectors::kafka::murmur2_partition;
use riskpipe_core::{JobInput, PipelineError, Reject, RejectKind, Result, events};
use riskpipe_operators::{FeatureChain, columns};
use riskpipe_schemas::repartition::ORIGIN_PARTITION;

use crate::event_time::{EventClock, EventTimeConfig};
use crate::repartition::Part;
use crate::value_range::OutOfRange;

/// What a job's events are called in reasons and logs (e.g. "transaction", "transactions").
#[derive(Debug, Clone, Copy)]
pub struct Noun {
    pub one: &'static str,
    pub many: &'static str,
}

/// The admission of one feature stage's events: its event clock, the columns holding each
/// event's time and id, and (with state per partition) the key its partitions are keyed by.
#[derive(Debug)]
pub struct Admission {
    pub clock: EventClock,
    event_time: String,
    /// The column ordering events of equal time: the event's id.
    id: String,
    part: Part,
    noun: Noun,
    /// After a repartition by this column into this many partitions: where each row must have
    /// been read from (see [`Admission::check_keys`]), and how many were not.
    copartition: Option<(String, i32)>,
    misrouted: u64,
}

/// A batch's events as admitted: the rows kept, their input partitions, the rows refused.
#[derive(Debug)]
pub struct Admitted {
    pub events: RecordBatch,
    /// The input partition of each kept row ([`Part::BeforeRepartition`] only).
    pub origins: Vec<i32>,
    pub rejects: Vec<Reject>,
}

impl Admission {
    pub fn new(clock: EventTimeConfig, event_time: &str, id: &str, part: Part, noun: Noun) -> Self {
        Self {
            clock: EventClock::new(clock),
            event_time: event_time.into(),
            id: id.into(),
            part,
            noun,
            copartition: None,
            misrouted: 0,
        }
    }

    /// Rows are expected only from the partition their `by` (as text) falls in among
    /// `partitions` by Java's murmur2; others are counted and reported.
    pub fn keyed_by(&mut self, by: String, partitions: i32) {
        self.copartition = Some((by, partitions));
    }

    pub fn part(&self) -> Part {
        self.part
    }

    /// Takes in `input`'s partitions and events: the events `chain` may take in, in order, and
    /// those refused with their reasons. The watermark moves on before the events are admitted,
    /// and `chain`'s state is freed up to where they can still look.
    pub fn admit(&mut self, input: &mut JobInput, chain: &mut FeatureChain) -> Result<Admitted> {
        if let Some(p) = &input.partitions
            && self.part != Part::AfterRepartition
        {
            self.clock.hold(&p.held);
        }
        // State is freed up to where the batch's events can still look: they are all at or
        // after the watermark as it stands before them, less the allowed lateness.
        chain.advance_watermark(self.clock.state_watermark());
        let empty = RecordBatch::new_empty(input.events.schema());
        let events = std::mem::replace(&mut input.events, empty);
        if events.num_rows() == 0 {
            return Ok(Admitted {
                events,
                origins: Vec::new(),
                rejects: Vec::new(),
            });
        }
        if self.part == Part::BeforeRepartition
            && let Some(p) = &input.partitions
        {
            self.check_keys(&events, &p.held, self.noun.many)?;
        }
        let mut rejects = Vec::new();
        if self.part == Part::AfterRepartition {
            let times = columns::event_times(&events, &self.event_time)?;
            let from = columns::primitive::<Int32Type>(&events, ORIGIN_PARTITION)?;
            for (&t, &p) in times.iter().zip(from.values().iter()) {
                self.clock.observe(p, t);
            }
            let events = self.drop_redelivered(chain, events, &mut rejects)?;
            return Ok(Admitted {
                events,
                origins: Vec::new(),
                rejects,
            });
        }
        let times = columns::event_times(&events, &self.event_time)?;
        // Read once, from offsets no earlier read covered (the source skips re-deliveries, a
        // restore stops at the committed offsets): an id taken in already was published twice.
        // Its copy would count twice in its keys' windows: refused, state untouched.
        let duplicates = self.taken_in(chain, &events)?;
        // A number no sum, mean or model input can take: refused before any state.
        let out_of_range = OutOfRange::of(&events);
        let mut keep = Vec::with_capacity(times.len());
        let mut origins = Vec::new();
        for (row, &t) in times.iter().enumerate() {
            if let Some(reason) = out_of_range.reason(row) {
                rejects.push(Reject {
                    row,
                    kind: RejectKind::Invalid,
                    reason: reason.to_string(),
                });
                continue;
            }
            if duplicates.as_ref().is_some_and(|d| d[row]) {
                rejects.push(Reject {
                    row,
                    kind: RejectKind::Duplicate,
                    reason: format!(
                        "{} taken in already: a {} published twice counts once",
                        self.id, self.noun.one
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
        let events = if rejects.is_empty() {
            events
        } else {
            take_record_batch(&events, &UInt32Array::from(keep))?
        };
        Ok(Admitted {
            events,
            origins,
            rejects,
        })
    }

    /// Checks the side input's rows (labels) against the partitions held, as the events':
    /// rows of a key another partition holds are counted and reported.
    pub fn check_side(
        &mut self,
        side: &RecordBatch,
        input: &JobInput,
        what: &'static str,
    ) -> Result<()> {
        match &input.partitions {
            Some(p) => self.check_keys(side, &p.held, what),
            None => Ok(()),
        }
    }

    /// Which rows of `events` were taken in before: a row whose id an operator remembers, or
    /// that appeared earlier in the batch (`None`: no operator remembers ids).
    fn taken_in(&self, chain: &FeatureChain, events: &RecordBatch) -> Result<Option<Vec<bool>>> {
        let Some(mut seen) = chain.seen(events)? else {
            return Ok(None);
        };
        let ids = columns::keys(events, &self.id)?;
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
        chain: &FeatureChain,
        events: RecordBatch,
        rejects: &mut Vec<Reject>,
    ) -> Result<RecordBatch> {
        let Some(seen) = self.taken_in(chain, &events)? else {
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
                    kind: RejectKind::Redelivered,
                    reason: "taken in already (re-delivered by the repartition topic)".into(),
                }),
        );
        Ok(take_record_batch(&events, &UInt32Array::from(keep))?)
    }

    /// With state per partition, a row counts only in the partition its key belongs to (Java's
    /// murmur2 of the key as text, over the partitions): a label read from another partition
    /// reaches none of its key's events, and an event read from another than its key's is
    /// computed with part of the key's history (its producer keyed it otherwise, or used another
    /// partitioner). Such rows are counted and reported.
    fn check_keys(&mut self, rows: &RecordBatch, held: &[i32], input: &'static str) -> Result<()> {
        let (Some((by, partitions)), [partition]) = (&self.copartition, held) else {
            return Ok(());
        };
        if rows.num_rows() == 0 {
            return Ok(());
        }
        let keys = arrow::compute::cast(
            columns::get(rows, by).map_err(PipelineError::produced)?,
            &DataType::Utf8,
        )?;
        let misrouted = keys
            .as_string::<i32>()
            .iter()
            .flatten()
            .filter(|k| murmur2_partition(k.as_bytes(), *partitions) != *partition)
            .count() as u64;
        if misrouted > 0 {
            events::misrouted(input, misrouted);
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
