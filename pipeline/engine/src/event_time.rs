//! Event time: a watermark per input partition, and the policy for events too far ahead of it
//! or too far behind it. Live, Kafka replay and file backtests run the same policy.
//!
//! - Each input partition's high mark is the latest event time accepted from it. The
//!   watermark is the minimum over the partitions the source holds (one that has sent nothing
//!   yet holds it back) and never moves back. A file history is one partition.
//! - An event more than `max_future_skew` after its partition's high mark (before the partition
//!   has one: after the latest over all partitions) is refused, kind `invalid`: one event
//!   dated in the future would otherwise push time on for everything after it.
//! - An event more than `allowed_lateness` before its partition's high mark is refused, kind
//!   `late`; events late by less are scored, slotted into their key's windows by time. Both
//!   checks look at the event's own partition only (its events in offset order), not at how
//!   partitions interleave, which differs from run to run: so a Kafka replay, reading each
//!   partition in offset order, refuses exactly what the live run refused.
//! - Feature state follows the watermark less `allowed_lateness`: no event still acceptable
//!   from any partition can see what is freed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, Int32Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema};
use serde::Deserialize;

use crate::{PipelineError, Result};
use riskpipe_core::RejectKind;

const LATEST: &str = "riskpipe.clock.latest";
const WATERMARK: &str = "riskpipe.clock.watermark";

fn default_max_future_skew() -> Duration {
    Duration::from_secs(86_400)
}
fn default_allowed_lateness() -> Duration {
    Duration::from_secs(3_600)
}

/// `[job.event_time]`: how far an event may be ahead of or behind the watermark.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTimeConfig {
    /// How far an event may be ahead of its partition's latest event time (default 1 day).
    #[serde(default = "default_max_future_skew", with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// How far an event may be behind its partition's latest event time and still be scored
    /// (default 1 hour).
    #[serde(default = "default_allowed_lateness", with = "humantime_serde")]
    pub allowed_lateness: Duration,
}

impl Default for EventTimeConfig {
    fn default() -> Self {
        Self {
            max_future_skew: default_max_future_skew(),
            allowed_lateness: default_allowed_lateness(),
        }
    }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// A duration in nanoseconds as people read it, to the second.
fn shown(ns: i64) -> String {
    let secs = u64::try_from(ns / 1_000_000_000).unwrap_or(0).max(1);
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// The watermark of one job's input and the checks against it.
#[derive(Debug, Clone)]
pub struct EventClock {
    skew: i64,
    lateness: i64,
    /// Latest accepted event time per input partition held.
    highs: BTreeMap<i32, Option<i64>>,
    /// Latest accepted event time over every partition.
    latest: Option<i64>,
    watermark: i64,
}

impl EventClock {
    /// A clock with no partition and no event yet.
    pub fn new(cfg: EventTimeConfig) -> Self {
        Self {
            skew: nanos(cfg.max_future_skew),
            lateness: nanos(cfg.allowed_lateness),
            highs: BTreeMap::new(),
            latest: None,
            watermark: i64::MIN,
        }
    }

    /// The input partitions the source holds now. A new one holds the watermark until it sends
    /// an event; one given up no longer counts.
    pub fn hold(&mut self, partitions: &[i32]) {
        if self.highs.len() == partitions.len()
            && partitions.iter().all(|p| self.highs.contains_key(p))
        {
            return;
        }
        let mut highs = BTreeMap::new();
        for &p in partitions {
            highs.insert(p, self.highs.get(&p).copied().flatten());
        }
        self.highs = highs;
    }

    /// The clock as a table for a checkpoint: each partition's high mark (null: none yet); the
    /// latest event time and the watermark in the metadata.
    pub fn snapshot(&self) -> Result<RecordBatch> {
        let partitions = Int32Array::from_iter_values(self.highs.keys().copied());
        let highs = Int64Array::from_iter(self.highs.values().copied());
        let mut meta = std::collections::HashMap::new();
        meta.insert(WATERMARK.to_string(), self.watermark.to_string());
        if let Some(l) = self.latest {
            meta.insert(LATEST.to_string(), l.to_string());
        }
        let schema = Schema::new_with_metadata(
            vec![
                Field::new("partition", DataType::Int32, false),
                Field::new("high", DataType::Int64, true),
            ],
            meta,
        );
        Ok(RecordBatch::try_new(
            Arc::new(schema),
            vec![Arc::new(partitions), Arc::new(highs)],
        )?)
    }

    /// Restores the clock from [`Self::snapshot`]'s table (the settings stay this clock's).
    pub fn restore(&mut self, table: &RecordBatch) -> Result<()> {
        let unfit = |what: &str| PipelineError::Checkpoint {
            id: 0,
            reason: format!("event clock table: {what}"),
        };
        let partitions = table
            .column_by_name("partition")
            .and_then(|c| c.as_primitive_opt::<Int32Type>())
            .ok_or_else(|| unfit("no Int32 column partition"))?;
        let highs = table
            .column_by_name("high")
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| unfit("no Int64 column high"))?;
        let meta = table.schema_ref().metadata();
        let read = |k: &str| -> Result<Option<i64>> {
            meta.get(k)
                .map(|v| v.parse().map_err(|_| unfit(&format!("{k} = {v:?}"))))
                .transpose()
        };
        self.watermark = read(WATERMARK)?.ok_or_else(|| unfit("no watermark"))?;
        self.latest = read(LATEST)?;
        self.highs = (0..table.num_rows())
            .map(|i| {
                (
                    partitions.value(i),
                    highs.is_valid(i).then(|| highs.value(i)),
                )
            })
            .collect();
        Ok(())
    }

    /// The watermark: no partition will send an event at or before it (ns since the epoch;
    /// `i64::MIN` until every partition held has sent one).
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Events at or before this can no longer be accepted: where feature state is freed.
    pub fn state_watermark(&self) -> i64 {
        self.watermark.saturating_sub(self.lateness)
    }

    /// Checks an event of `partition` at `t` (ns) and, when it is accepted, moves the
    /// partition's high mark and the watermark on.
    pub fn admit(&mut self, partition: i32, t: i64) -> Result<(), (RejectKind, String)> {
        // A partition not among those held (a history, or a source that names none) joins them.
        let high = *self.highs.entry(partition).or_default();
        if let Some(reference) = high.or(self.latest) {
            let ahead = t.saturating_sub(reference);
            if ahead > self.skew {
                return Err((
                    RejectKind::Invalid,
                    format!(
                        "event time is {} after the latest event time of its partition, more than job.event_time.max_future_skew ({})",
                        shown(ahead),
                        shown(self.skew)
                    ),
                ));
            }
        }
        if let Some(high) = high {
            let behind = high.saturating_sub(t);
            if behind > self.lateness {
                return Err((
                    RejectKind::Late,
                    format!(
                        "event time is {} before the latest event time of its partition, more than job.event_time.allowed_lateness ({})",
                        shown(behind),
                        shown(self.lateness)
                    ),
                ));
            }
        }
        self.observe(partition, t);
        Ok(())
    }

    /// Moves `partition`'s high mark and the watermark on with an event at `t` that was
    /// admitted already (by the stage before a repartition, against its own partition).
    pub fn observe(&mut self, partition: i32, t: i64) {
        let high = self.highs.get(&partition).copied().flatten();
        let high = high.map_or(t, |h| h.max(t));
        self.highs.insert(partition, Some(high));
        self.latest = Some(self.latest.map_or(t, |l| l.max(t)));
        let min = self
            .highs
            .values()
            .try_fold(i64::MAX, |m, h| h.map(|h| m.min(h)));
        if let Some(min) = min {
            self.watermark = self.watermark.max(min);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600 * 1_000_000_000;

    fn clock() -> EventClock {
        EventClock::new(EventTimeConfig {
            max_future_skew: Duration::from_secs(24 * 3_600),
            allowed_lateness: Duration::from_secs(3_600),
        })
    }

    #[test]
    fn one_partition_refuses_the_far_future_and_the_too_late() {
        let mut c = clock();
        assert_eq!(c.watermark(), i64::MIN);
        assert!(c.admit(0, 100 * H).is_ok());
        assert_eq!(c.watermark(), 100 * H);
        let (kind, reason) = c.admit(0, 125 * H).expect_err("25 h ahead");
        assert_eq!(kind, RejectKind::Invalid);
        assert!(reason.contains("max_future_skew (1day)"), "{reason}");
        assert_eq!(c.watermark(), 100 * H, "a refused event moves nothing");
        assert!(c.admit(0, 124 * H).is_ok(), "24 h ahead is within the skew");
        assert!(
            c.admit(0, 123 * H).is_ok(),
            "1 h late is within the lateness"
        );
        let (kind, reason) = c.admit(0, 122 * H - 1).expect_err("over 2 h late");
        assert_eq!(kind, RejectKind::Late);
        assert!(reason.contains("allowed_lateness (1h)"), "{reason}");
        assert_eq!(c.state_watermark(), 123 * H);
    }

    #[test]
    fn a_restored_clock_refuses_and_admits_what_the_original_does() {
        let mut c = clock();
        c.hold(&[0, 1, 2]);
        assert!(c.admit(0, 50 * H).is_ok());
        assert!(c.admit(1, 60 * H).is_ok());
        let mut back = clock();
        back.restore(&c.snapshot().expect("snapshot"))
            .expect("restore");
        for (p, t) in [
            (2, 100 * H),
            (2, 40 * H),
            (0, 48 * H),
            (0, 75 * H),
            (1, 58 * H),
        ] {
            assert_eq!(c.admit(p, t), back.admit(p, t), "partition {p} at {t}");
            assert_eq!(c.watermark(), back.watermark());
        }
        assert_eq!(c.snapshot().expect("a"), back.snapshot().expect("b"));
    }

    #[test]
    fn the_watermark_is_the_slowest_partition_held() {
        let mut c = clock();
        c.hold(&[0, 1, 2]);
        assert!(c.admit(0, 50 * H).is_ok());
        assert!(c.admit(1, 60 * H).is_ok());
        assert_eq!(c.watermark(), i64::MIN, "partition 2 has sent nothing");
        // Far behind partition 1, but lateness is within a partition: partitions interleave
        // differently from run to run.
        assert!(c.admit(2, 10 * H).is_ok());
        assert_eq!(c.watermark(), 10 * H);
        // Partition 0 runs days ahead of partition 2: not future, its own high mark is the
        // reference.
        for t in (51..=120).map(|h| h * H) {
            assert!(c.admit(0, t).is_ok());
        }
        assert_eq!(c.watermark(), 10 * H);
        // A new partition's first event is checked against the latest over all partitions.
        c.hold(&[0, 1, 2, 3]);
        assert!(c.admit(3, 200 * H).is_err());
        assert!(c.admit(3, 30 * H).is_ok());
        assert!(c.admit(2, 32 * H).is_ok());
        assert_eq!(c.watermark(), 30 * H);
        assert_eq!(
            c.admit(3, 28 * H).map_err(|e| e.0),
            Err(RejectKind::Late),
            "2 h behind its own partition"
        );
        // Giving partitions up lets the watermark move on, never back.
        c.hold(&[0]);
        assert!(c.admit(0, 121 * H).is_ok());
        assert_eq!(c.watermark(), 121 * H);
        c.hold(&[0, 5]);
        assert!(c.admit(0, 122 * H).is_ok());
        assert_eq!(
            c.watermark(),
            121 * H,
            "held back by partition 5, not moved back"
        );
    }
}
