//! Live drift: day counts of the scored rows, the PSI over the window after each batch, the
//! warm-up before rows count, and the tables a checkpoint keeps.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{
    Array, AsArray, Int64Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampNanosecondType};
use riskpipe_operators::columns;
use serde::Deserialize;

use super::{DAY_NS, DRIFTED, Reference, WINDOW_DAYS, day_text, days_of};
use riskpipe_core::{PipelineError, Result, events};

/// Bin counts of every monitored column per event day: what the backtest's report and the live
/// monitor both take their PSIs from (integer counts, so the result does not depend on how the
/// rows were batched or ordered).
#[derive(Debug, Clone)]
pub struct DayCounts {
    reference: Reference,
    /// day → column → count per bin.
    pub(super) slots: BTreeMap<i64, Vec<Vec<u64>>>,
    empty: Vec<Vec<u64>>,
}

impl DayCounts {
    /// No counts yet, for the columns and bins of `reference`.
    pub fn new(reference: &Reference) -> Self {
        Self {
            slots: BTreeMap::new(),
            empty: reference
                .columns
                .iter()
                .map(|(_, b)| vec![0; b.shares.len()])
                .collect(),
            reference: reference.clone(),
        }
    }

    /// The reference the counts are binned by.
    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// Counts the rows of `scored` (which holds every column of the reference) by their day
    /// of `time`.
    pub fn add(&mut self, scored: &RecordBatch, time: &str) -> Result<()> {
        let day = days_of(scored, time)?;
        let binned = self
            .reference
            .columns
            .iter()
            .map(|(name, bins)| {
                let column = scored.column_by_name(name).ok_or_else(|| {
                    PipelineError::Bug(format!("drift: no column {name:?} in the scored rows"))
                })?;
                bins.bins_of(column)
            })
            .collect::<Result<Vec<_>>>()?;
        // Rows mostly come in event-time order: one day's slot per run of rows.
        let mut start = 0;
        while start < day.len() {
            let end = start
                + day[start..]
                    .iter()
                    .take_while(|&&d| d == day[start])
                    .count();
            let slot = self
                .slots
                .entry(day[start])
                .or_insert_with(|| self.empty.clone());
            for (c, bins) in binned.iter().enumerate() {
                for b in bins[start..end].iter().flatten() {
                    slot[c][*b] += 1;
                }
            }
            start = end;
        }
        Ok(())
    }

    /// The days counted, in order.
    pub fn days(&self) -> impl Iterator<Item = i64> + '_ {
        self.slots.keys().copied()
    }

    /// Each column's PSI over the `window_days` days up to `day` (`None` for a column with no
    /// value there) and the values it counted there.
    pub fn window(&self, day: i64, window_days: i64) -> Vec<(Option<f64>, u64)> {
        let mut totals = self.empty.clone();
        for (_, d) in self.slots.range(day - window_days + 1..=day) {
            for (t, counts) in totals.iter_mut().zip(d) {
                for (w, n) in t.iter_mut().zip(counts) {
                    *w += n;
                }
            }
        }
        self.reference
            .columns
            .iter()
            .zip(&totals)
            .map(|((_, bins), t)| (bins.psi(t), t.iter().sum()))
            .collect()
    }

    /// Drops the days before `day`.
    pub fn forget_before(&mut self, day: i64) {
        self.slots = self.slots.split_off(&day);
    }

    /// Every non-zero count as (day, column, bin, count): a checkpoint's table.
    pub fn entries(&self) -> Vec<(i64, u32, u32, u64)> {
        let mut out = Vec::new();
        for (&day, columns) in &self.slots {
            for (c, bins) in columns.iter().enumerate() {
                for (b, &n) in bins.iter().enumerate() {
                    if n > 0 {
                        out.push((day, c as u32, b as u32, n));
                    }
                }
            }
        }
        out
    }

    /// Replaces the counts with `entries`; false (and nothing changed) when one does not fit
    /// the reference's columns and bins.
    pub fn set_entries(&mut self, entries: &[(i64, u32, u32, u64)]) -> bool {
        let fits = entries.iter().all(|&(_, c, b, _)| {
            self.empty
                .get(c as usize)
                .is_some_and(|bins| (b as usize) < bins.len())
        });
        if !fits {
            return false;
        }
        self.slots.clear();
        for &(day, c, b, n) in entries {
            let slot = self.slots.entry(day).or_insert_with(|| self.empty.clone());
            slot[c as usize][b as usize] += n;
        }
        true
    }
}

/// `[drift]`: live drift monitoring of the model inputs and the score (fraud jobs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    /// The reference bins: a `drift_reference.json` as `riskpipe backtest` writes it (the
    /// split's training days), e.g. `models/fraud_blend.drift.json`.
    pub reference: PathBuf,
    /// PSI over which a column counts as drifted (a log line and a count when it crosses).
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Days of event time in each PSI's window (the latest event's day and those before it).
    #[serde(default = "default_window_days")]
    pub window_days: u32,
    /// Values a column needs in the window before its PSI is reported (a few rows say little).
    #[serde(default = "default_min_rows")]
    pub min_rows: u64,
    /// Event time from a state's first row before rows are counted (default: the features'
    /// reach): rows featured by windows still filling are unlike a long-running pipeline's,
    /// and judging them would report a drift the empty start caused. `"0s"` counts every row.
    #[serde(default, with = "humantime_serde")]
    pub warm_up: Option<std::time::Duration>,
}

fn default_threshold() -> f64 {
    DRIFTED
}
fn default_window_days() -> u32 {
    WINDOW_DAYS as u32
}
fn default_min_rows() -> u64 {
    1000
}

impl DriftConfig {
    /// Every problem of the section.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.reference.is_file() {
            p.push(format!(
                "drift.reference {} does not exist (riskpipe backtest writes drift_reference.json)",
                self.reference.display()
            ));
        }
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            p.push(format!(
                "drift.threshold must be a positive number, not {}",
                self.threshold
            ));
        }
        if self.window_days == 0 {
            p.push("drift.window_days must be at least 1".into());
        }
        p
    }
}

/// Live drift: bin counts of the scored rows per event day, the PSI of each column over the
/// window ending on the latest day after every batch, as gauges, and a log line and a count
/// when a column crosses the threshold (either way).
#[derive(Debug)]
pub struct Monitor {
    counts: DayCounts,
    threshold: f64,
    window_days: i64,
    min_rows: u64,
    time: String,
    latest: Option<i64>,
    /// Whether each column was over the threshold at the last report.
    above: Vec<bool>,
    /// What the counts' reference is, to tell whether a checkpoint's counts fit.
    fingerprint: String,
    /// How far back the features look (nanoseconds): a row is counted only once the state
    /// has seen that much history before it.
    reach_ns: i64,
    /// The event time of the first row this state saw (`None`: none yet). Rows before it plus
    /// the reach were featured from windows still filling: unlike a long-running pipeline's,
    /// so not counted.
    since: Option<i64>,
}

impl Monitor {
    /// A monitor of the columns in `cfg.reference`, by the event times in `time`, of rows
    /// featured by windows that look back `reach` (unless `cfg.warm_up` says otherwise).
    pub fn new(cfg: &DriftConfig, time: &str, reach: std::time::Duration) -> Result<Self> {
        let reach = cfg.warm_up.unwrap_or(reach);
        let reference = Reference::read(&cfg.reference)?;
        events::drift_columns(reference.columns.iter().map(|(c, _)| c.as_str()));
        Ok(Self {
            above: vec![false; reference.columns.len()],
            fingerprint: riskpipe_core::snapshot::fingerprint(&reference),
            counts: DayCounts::new(&reference),
            threshold: cfg.threshold,
            window_days: i64::from(cfg.window_days),
            min_rows: cfg.min_rows,
            time: time.to_string(),
            latest: None,
            reach_ns: i64::try_from(reach.as_nanos()).unwrap_or(i64::MAX),
            since: None,
        })
    }

    /// Whether the window ending on `day` lies wholly after the warm-up: a window that is
    /// partly within it holds a few days standing for a week (a weekday alone has no weekend
    /// payments). Without a warm-up, every window is judged.
    fn covers(&self, day: i64) -> bool {
        match (self.reach_ns, self.counted_from()) {
            (0, _) => true,
            (_, Some(from)) => {
                let first_whole_day =
                    from.div_euclid(DAY_NS) + i64::from(from.rem_euclid(DAY_NS) != 0);
                day - self.window_days + 1 >= first_whole_day
            }
            (_, None) => false,
        }
    }

    /// From when rows are counted (UTC nanoseconds): the first row seen plus the reach.
    pub fn counted_from(&self) -> Option<i64> {
        self.since.map(|s| s.saturating_add(self.reach_ns))
    }

    /// The reference the counts are compared with.
    pub fn reference(&self) -> &Reference {
        self.counts.reference()
    }

    /// The monitored columns.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.counts
            .reference()
            .columns
            .iter()
            .map(|(n, _)| n.as_str())
    }

    /// Counts `scored`'s rows whose features saw their whole reach; the days that left the
    /// window are dropped.
    pub fn observe(&mut self, scored: &RecordBatch) -> Result<()> {
        if scored.num_rows() == 0 {
            return Ok(());
        }
        let times = columns::primitive::<TimestampNanosecondType>(scored, &self.time)?.values();
        let (Some(&first), Some(&last)) = (times.iter().min(), times.iter().max()) else {
            return Ok(());
        };
        let from = self
            .since
            .get_or_insert(first)
            .saturating_add(self.reach_ns);
        if last < from {
            return Ok(());
        }
        let filtered;
        let counted = if first < from {
            let keep =
                arrow::array::BooleanArray::from_iter(times.iter().map(|&t| Some(t >= from)));
            filtered = arrow::compute::filter_record_batch(scored, &keep)?;
            &filtered
        } else {
            scored
        };
        self.counts.add(counted, &self.time)?;
        self.latest = self.latest.max(Some(last.div_euclid(DAY_NS)));
        if let Some(day) = self.latest {
            self.counts.forget_before(day - self.window_days + 1);
        }
        Ok(())
    }

    /// Each column's PSI over the window ending on the latest day (`None` below `min_rows`,
    /// or while part of the window is still within the warm-up).
    pub fn psi(&self) -> Vec<(&str, Option<f64>)> {
        let window = match self.latest {
            Some(day) if self.covers(day) => self.counts.window(day, self.window_days),
            _ => vec![(None, 0); self.above.len()],
        };
        self.columns()
            .zip(window)
            .map(|(c, (p, n))| (c, p.filter(|_| n >= self.min_rows)))
            .collect()
    }

    /// Sets the gauges; logs and counts the columns that crossed the threshold since the last
    /// report, and returns them (`true`: went over).
    pub fn report(&mut self) -> Vec<(String, bool)> {
        let mut crossed = Vec::new();
        let day = self.latest.map(day_text).unwrap_or_default();
        let psi: Vec<(String, Option<f64>)> = self
            .psi()
            .into_iter()
            .map(|(c, p)| (c.to_string(), p))
            .collect();
        for (i, (column, p)) in psi.into_iter().enumerate() {
            let Some(p) = p else { continue };
            events::drift_psi(&column, p);
            let above = p > self.threshold;
            if above != self.above[i] {
                self.above[i] = above;
                events::drift_crossed(&column, above);
                crossed.push((column.clone(), above));
                match above {
                    true => tracing::warn!(
                        column,
                        psi = p,
                        "drift: {column} PSI {p:.3} over {} in the {} days to {day} against {}",
                        self.threshold,
                        self.window_days,
                        self.counts.reference().period
                    ),
                    false => tracing::info!(
                        column,
                        psi = p,
                        "drift: {column} PSI {p:.3} back under {} in the {} days to {day}",
                        self.threshold,
                        self.window_days
                    ),
                }
            }
        }
        crossed
    }

    /// The counts as a checkpoint table.
    pub fn snapshot(&self) -> Result<RecordBatch> {
        let entries = self.counts.entries();
        Ok(RecordBatch::try_new(
            drift_table_schema(),
            vec![
                Arc::new(Int64Array::from_iter_values(entries.iter().map(|e| e.0))),
                Arc::new(UInt32Array::from_iter_values(entries.iter().map(|e| e.1))),
                Arc::new(UInt32Array::from_iter_values(entries.iter().map(|e| e.2))),
                Arc::new(UInt64Array::from_iter_values(entries.iter().map(|e| e.3))),
                Arc::new(StringArray::from_iter_values(
                    entries.iter().map(|_| self.fingerprint.as_str()),
                )),
            ],
        )?)
    }

    /// Takes the counts of a checkpoint table; counts binned by another reference are left
    /// out (the window fills again). Returns whether they were taken.
    pub fn restore(&mut self, table: &RecordBatch) -> Result<bool> {
        if table.schema() != drift_table_schema() {
            return Err(PipelineError::Checkpoint {
                id: 0,
                reason: "the drift table has another schema".into(),
            });
        }
        let col = |i: usize| table.column(i);
        let fingerprints = col(4).as_string::<i32>();
        if fingerprints
            .iter()
            .any(|f| f != Some(self.fingerprint.as_str()))
        {
            return Ok(false);
        }
        let (day, column, bin, count) = (
            col(0).as_primitive::<arrow::datatypes::Int64Type>(),
            col(1).as_primitive::<arrow::datatypes::UInt32Type>(),
            col(2).as_primitive::<arrow::datatypes::UInt32Type>(),
            col(3).as_primitive::<arrow::datatypes::UInt64Type>(),
        );
        let entries: Vec<_> = (0..table.num_rows())
            .map(|i| (day.value(i), column.value(i), bin.value(i), count.value(i)))
            .collect();
        if !self.counts.set_entries(&entries) {
            return Ok(false);
        }
        self.latest = entries.iter().map(|e| e.0).max();
        Ok(true)
    }
}

impl Monitor {
    /// When the state began (the first row it saw) as a checkpoint table of one row.
    pub fn since_snapshot(&self) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            since_table_schema(),
            vec![Arc::new(Int64Array::from(vec![self.since]))],
        )?)
    }

    /// Takes when the state began from a checkpoint table ([`Monitor::since_snapshot`]).
    pub fn restore_since(&mut self, table: &RecordBatch) -> Result<()> {
        if table.schema() != since_table_schema() || table.num_rows() != 1 {
            return Err(PipelineError::Checkpoint {
                id: 0,
                reason: "the drift start table has another layout".into(),
            });
        }
        let since = table
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>();
        self.since = since.is_valid(0).then(|| since.value(0));
        Ok(())
    }

    /// Counts restored from a checkpoint that did not say when its state began (written
    /// before it did): that state is taken as covering the features' reach.
    pub fn assume_covered(&mut self) {
        self.since.get_or_insert(i64::MIN);
    }
}

fn since_table_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "since",
        DataType::Int64,
        true,
    )]))
}

fn drift_table_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("day", DataType::Int64, false),
        Field::new("column", DataType::UInt32, false),
        Field::new("bin", DataType::UInt32, false),
        Field::new("count", DataType::UInt64, false),
        Field::new("reference", DataType::Utf8, false),
    ]))
}
