//! Drift: how far the distribution of each model input and of the score moved away from a
//! reference period, as the population stability index (PSI) over the reference's deciles.
//!
//! `PSI = Σ (aᵢ − eᵢ) · ln(aᵢ / eᵢ)` over the bins, `e` the reference's share of a bin and `a` the
//! observed one (each floored at 10⁻⁴ so an empty bin stays finite). The usual reading: under
//! 0.1 stable, 0.1–0.2 some shift, over 0.2 a shift worth acting on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, AsArray, Int64Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef, TimestampNanosecondType};
use plotters::prelude::*;
use riskpipe_operators::columns;
use serde::{Deserialize, Serialize};

use crate::{PipelineError, Result};

/// Bins per column (deciles; ties merge bins).
pub const BINS: usize = 10;
/// PSI from which a column counts as drifted.
pub const DRIFTED: f64 = 0.2;
/// Each day's PSI is over the days up to it, this many: a week, so weekly patterns (the
/// weekend flag, say) do not read as drift.
pub const WINDOW_DAYS: i64 = 7;
/// Shares are floored at this, so an empty bin gives a finite PSI.
const FLOOR: f64 = 1e-4;
const DAY_NS: i64 = 86_400_000_000_000;

/// One column's reference distribution: bin upper bounds (the last bin is open) and the share
/// of reference values in each bin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bins {
    /// Upper bounds of every bin but the last, increasing.
    pub edges: Vec<f64>,
    /// Share of the reference in each bin (`edges.len() + 1` of them, summing to 1).
    pub shares: Vec<f64>,
    /// The smallest and largest reference value (absent in references written before it was
    /// kept). The explanation baseline takes live values clamped to it, so that no admitted
    /// event, however extreme, moves the means alerts are explained against by more than a
    /// reference value would.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<[f64; 2]>,
}

impl Bins {
    /// At most `bins` quantile bins of `values` (non-finite values are left out).
    pub fn of(values: &[f64], bins: usize) -> Bins {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let mut edges: Vec<f64> = Vec::new();
        if let Some(&max) = sorted.last() {
            for k in 1..bins.max(1) {
                let q = sorted[(k * sorted.len() / bins).min(sorted.len() - 1)];
                // Equal quantiles (ties) are one bin; no bin above the maximum.
                if q < max && edges.last().is_none_or(|&e| q > e) {
                    edges.push(q);
                }
            }
        }
        let mut bins = Bins {
            shares: vec![0.0; edges.len() + 1],
            edges,
            range: sorted.first().zip(sorted.last()).map(|(&lo, &hi)| [lo, hi]),
        };
        let counts = bins.counts(sorted.iter().copied());
        let n = sorted.len().max(1) as f64;
        bins.shares = counts.iter().map(|&c| c as f64 / n).collect();
        bins
    }

    /// The bin of `v`: values up to `edges[i]` (and above `edges[i - 1]`) are in bin `i`.
    pub fn bin(&self, v: f64) -> usize {
        self.edges.partition_point(|&e| e < v)
    }

    /// How many of `values` fall in each bin (non-finite ones in none).
    pub fn counts(&self, values: impl IntoIterator<Item = f64>) -> Vec<u64> {
        let mut counts = vec![0u64; self.shares.len()];
        for v in values.into_iter().filter(|v| v.is_finite()) {
            counts[self.bin(v)] += 1;
        }
        counts
    }

    /// The PSI of observed bin `counts` against this reference; `None` for no observation.
    pub fn psi(&self, counts: &[u64]) -> Option<f64> {
        let n: u64 = counts.iter().sum();
        let reference: f64 = self.shares.iter().sum();
        if n == 0 || reference == 0.0 || counts.len() != self.shares.len() {
            return None;
        }
        Some(
            counts
                .iter()
                .zip(&self.shares)
                .map(|(&c, &e)| {
                    let a = (c as f64 / n as f64).max(FLOOR);
                    let e = e.max(FLOOR);
                    (a - e) * (a / e).ln()
                })
                .sum(),
        )
    }
}

/// The reference of every monitored column (`drift_reference.json` beside a backtest's
/// report).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// What the reference is (e.g. the split's training days).
    pub period: String,
    /// Column name → its reference bins, in the report's order.
    pub columns: Vec<(String, Bins)>,
}

impl Reference {
    /// The reference of `columns` over the rows of `scored` whose day (of `time`) is within
    /// `days`.
    pub fn of(
        scored: &[RecordBatch],
        time: &str,
        columns: &[String],
        days: std::ops::Range<i64>,
        period: String,
    ) -> Result<Reference> {
        let mut values: Vec<Vec<f64>> = vec![Vec::new(); columns.len()];
        for b in scored {
            let day = days_of(b, time)?;
            for (c, name) in columns.iter().enumerate() {
                let column = as_f64(b, name)?;
                let column = column.as_primitive::<Float64Type>();
                for (i, d) in day.iter().enumerate() {
                    if days.contains(d) && column.is_valid(i) {
                        values[c].push(column.value(i));
                    }
                }
            }
        }
        Ok(Reference {
            period,
            columns: columns
                .iter()
                .cloned()
                .zip(values.iter().map(|v| Bins::of(v, BINS)))
                .collect(),
        })
    }

    /// Whether the reference period held no value at all (nothing to compare with).
    pub fn is_empty(&self) -> bool {
        self.columns
            .iter()
            .all(|(_, b)| b.shares.iter().sum::<f64>() == 0.0)
    }

    /// Reads a reference written by [`Reference::write`].
    pub fn read(path: &Path) -> Result<Reference> {
        let text = std::fs::read_to_string(path).map_err(PipelineError::io("reading", path))?;
        serde_json::from_str(&text).map_err(|e| {
            PipelineError::Config(vec![format!("drift reference {}: {e}", path.display())])
        })
    }

    /// Writes the reference as JSON.
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::backtest::write_json(path.to_path_buf(), self).map(|_| ())
    }
}

/// PSI of every monitored column on every day of a backtest.
#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    /// What the days are compared with.
    pub reference: String,
    /// PSI from which a column counts as drifted.
    pub threshold: f64,
    /// The monitored columns (model inputs, then the score).
    pub columns: Vec<String>,
    /// The days, `YYYY-MM-DD`.
    pub days: Vec<String>,
    /// [`DriftReport::drifted`] looks at the days from this one on (after the reference
    /// period; before it the features' windows may still be filling).
    pub since: Option<String>,
    /// Days in each PSI's window (the day and those before it).
    pub window_days: i64,
    /// `psi[c][d]`: column `c` over the window ending on day `d`.
    pub psi: Vec<Vec<f64>>,
}

impl DriftReport {
    /// For each day, the PSI of each of the reference's columns over the `window_days` days
    /// up to it in `scored`.
    pub fn per_day(
        scored: &[RecordBatch],
        time: &str,
        reference: &Reference,
        window_days: i64,
    ) -> Result<DriftReport> {
        let mut counts = DayCounts::new(reference);
        for b in scored {
            counts.add(b, time)?;
        }
        let days = counts.days().map(day_text).collect();
        let mut psi = vec![Vec::with_capacity(counts.slots.len()); reference.columns.len()];
        for day in counts.days() {
            for (c, (p, _)) in counts.window(day, window_days).into_iter().enumerate() {
                psi[c].push(p.unwrap_or(0.0));
            }
        }
        Ok(DriftReport {
            reference: reference.period.clone(),
            threshold: DRIFTED,
            window_days,
            since: None,
            columns: reference.columns.iter().map(|(n, _)| n.clone()).collect(),
            days,
            psi,
        })
    }

    /// The largest PSI of `column` over the days in `days` (indices), if any.
    pub fn max_psi(&self, column: &str, days: std::ops::Range<usize>) -> Option<f64> {
        let c = self.columns.iter().position(|n| n == column)?;
        self.psi[c]
            .get(days)?
            .iter()
            .copied()
            .max_by(f64::total_cmp)
    }

    /// Index of the day `date` (`YYYY-MM-DD`).
    pub fn day(&self, date: &str) -> Option<usize> {
        self.days.iter().position(|d| d == date)
    }

    /// Columns drifted (PSI over the threshold) on at least one day from `since` on.
    pub fn drifted(&self) -> Vec<&str> {
        let from = self
            .since
            .as_deref()
            .map_or(0, |s| self.days.partition_point(|d| d.as_str() < s));
        self.columns
            .iter()
            .zip(&self.psi)
            .filter(|(_, p)| p.iter().skip(from).any(|&v| v > self.threshold))
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// Draws the heat map: a row per column, a cell per day, white at 0 to red at 2 × the
    /// threshold and beyond.
    pub fn plot(&self, path: &Path) -> Result<()> {
        crate::backtest::ensure_font();
        let plot_err = |e: &dyn std::fmt::Display| PipelineError::Plot {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let (days, rows) = (self.days.len().max(1), self.columns.len().max(1));
        let root = BitMapBackend::new(path, (1400, 120 + 28 * rows as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(&e))?;
        let names = self.columns.clone();
        let dates = self.days.clone();
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "PSI of the {} days to each day against {} (red: {} and over)",
                    self.window_days,
                    self.reference,
                    2.0 * self.threshold
                ),
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(260)
            // Rows centred on integers, so each label sits on its row.
            .build_cartesian_2d(0f64..days as f64, -0.5f64..rows as f64 - 0.5)
            .map_err(|e| plot_err(&e))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .y_labels(rows)
            .y_label_formatter(&|y| names.get(y.floor() as usize).cloned().unwrap_or_default())
            .x_labels(8)
            .x_label_formatter(&|x| dates.get(x.floor() as usize).cloned().unwrap_or_default())
            .draw()
            .map_err(|e| plot_err(&e))?;
        let cells = self.psi.iter().enumerate().flat_map(|(c, row)| {
            row.iter().enumerate().map(move |(d, &psi)| {
                let t = (psi / (2.0 * DRIFTED)).clamp(0.0, 1.0);
                let fade = (255.0 * (1.0 - t)) as u8;
                Rectangle::new(
                    [(d as f64, c as f64 - 0.5), (d as f64 + 1.0, c as f64 + 0.5)],
                    RGBColor(255, fade, fade).filled(),
                )
            })
        });
        chart.draw_series(cells).map_err(|e| plot_err(&e))?;
        root.present().map_err(|e| plot_err(&e))?;
        Ok(())
    }
}

/// Bin counts of every monitored column per event day: what the backtest's report and the live
/// monitor both take their PSIs from (integer counts, so the result does not depend on how the
/// rows were batched or ordered).
#[derive(Debug, Clone)]
pub struct DayCounts {
    reference: Reference,
    /// day → column → count per bin.
    slots: BTreeMap<i64, Vec<Vec<u64>>>,
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
        let values = self
            .reference
            .columns
            .iter()
            .map(|(name, _)| as_f64(scored, name))
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
            for (c, (_, bins)) in self.reference.columns.iter().enumerate() {
                let column = values[c].as_primitive::<Float64Type>();
                for i in start..end {
                    if column.is_valid(i) && column.value(i).is_finite() {
                        slot[c][bins.bin(column.value(i))] += 1;
                    }
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
        crate::events::drift_columns(reference.columns.iter().map(|(c, _)| c.as_str()));
        Ok(Self {
            above: vec![false; reference.columns.len()],
            fingerprint: super::super::fingerprint(&reference),
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
        let times = columns::primitive::<TimestampNanosecondType>(scored, &self.time)?;
        let first = times.values().iter().copied().min().unwrap_or(i64::MAX);
        let since = *self.since.get_or_insert(first);
        let from = since.saturating_add(self.reach_ns);
        if first < from {
            let keep = arrow::array::BooleanArray::from_iter(
                times.values().iter().map(|&t| Some(t >= from)),
            );
            let counted = arrow::compute::filter_record_batch(scored, &keep)?;
            if counted.num_rows() == 0 {
                return Ok(());
            }
            return self.observe(&counted);
        }
        self.counts.add(scored, &self.time)?;
        let newest = days_of(scored, &self.time)?.into_iter().max();
        self.latest = self.latest.max(newest);
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
            crate::events::drift_psi(&column, p);
            let above = p > self.threshold;
            if above != self.above[i] {
                self.above[i] = above;
                crate::events::drift_crossed(&column, above);
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

/// `YYYY-MM-DD` of a day number since 1970-01-01.
fn day_text(day: i64) -> String {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    (epoch + chrono::Days::new(u64::try_from(day).unwrap_or_default()))
        .format("%Y-%m-%d")
        .to_string()
}

/// The UTC day of each row's `time`.
fn days_of(b: &RecordBatch, time: &str) -> Result<Vec<i64>> {
    let t = columns::primitive::<TimestampNanosecondType>(b, time)?;
    Ok(t.values().iter().map(|v| v.div_euclid(DAY_NS)).collect())
}

/// Column `name` as f64.
fn as_f64(b: &RecordBatch, name: &str) -> Result<arrow::array::ArrayRef> {
    let c = b.column_by_name(name).ok_or_else(|| {
        PipelineError::Bug(format!("drift: no column {name:?} in the scored rows"))
    })?;
    Ok(arrow::compute::cast(c, &DataType::Float64)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_golden_values_on_hand_built_distributions() {
        let halves = Bins {
            edges: vec![0.0],
            shares: vec![0.5, 0.5],
            range: None,
        };
        assert_eq!(halves.psi(&[50, 50]), Some(0.0));
        // (0.25 − 0.5)·ln(0.5) + (0.75 − 0.5)·ln(1.5)
        let psi = halves.psi(&[25, 75]).expect("psi");
        assert!((psi - 0.274_653_072_167_027).abs() < 1e-12, "{psi}");
        // An empty bin is floored, not infinite: (1e-4 − 0.5)·ln(1e-4/0.5) + (1 − 0.5)·ln(2).
        let psi = halves.psi(&[0, 10]).expect("psi");
        let want = (1e-4 - 0.5) * (1e-4f64 / 0.5).ln() + 0.5 * 2f64.ln();
        assert!((psi - want).abs() < 1e-12, "{psi} vs {want}");
        assert_eq!(halves.psi(&[0, 0]), None);
        assert_eq!(halves.psi(&[1, 2, 3]), None);
    }

    /// A batch of `n` rows on `day`, column `X` holding `value(i)`.
    fn rows(day: i64, n: usize, value: impl Fn(usize) -> f64) -> RecordBatch {
        let t: Vec<i64> = (0..n).map(|i| day * DAY_NS + i as i64).collect();
        RecordBatch::try_from_iter([
            (
                "T",
                Arc::new(arrow::array::TimestampNanosecondArray::from(t)) as arrow::array::ArrayRef,
            ),
            (
                "X",
                Arc::new(arrow::array::Float64Array::from_iter_values(
                    (0..n).map(value),
                )),
            ),
        ])
        .expect("batch")
    }

    /// A monitor config of column `X` against 0..1000 uniform, `window_days` days, 500 rows.
    fn uniform_reference(window_days: u32) -> (tempfile::TempDir, DriftConfig) {
        let reference = Reference {
            period: "test".into(),
            columns: vec![(
                "X".into(),
                Bins::of(&(0..1000).map(f64::from).collect::<Vec<_>>(), 10),
            )],
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("reference.json");
        reference.write(&path).expect("write");
        let cfg = DriftConfig {
            reference: path,
            threshold: 0.2,
            window_days,
            min_rows: 500,
            warm_up: None,
        };
        (dir, cfg)
    }

    /// The live monitor: quiet on the reference's own distribution, one crossing over when the
    /// window has moved, one back under once the shifted days left the window; nothing below
    /// `min_rows`.
    #[test]
    fn the_monitor_reports_each_crossing_once_as_the_window_moves() {
        let (_dir, cfg) = uniform_reference(2);
        let mut m = Monitor::new(&cfg, "T", std::time::Duration::ZERO).expect("monitor");
        m.observe(&rows(100, 400, |i| i as f64 * 2.5))
            .expect("observe");
        assert_eq!(m.psi(), vec![("X", None)], "under min_rows");
        m.observe(&rows(100, 600, |i| i as f64 * 1000.0 / 600.0))
            .expect("observe");
        assert!(m.psi()[0].1.expect("psi") < 0.2);
        assert!(m.report().is_empty());
        // Two days of values ×3: the window (days 101-102) has moved.
        m.observe(&rows(101, 1000, |i| i as f64 * 3.0))
            .expect("observe");
        m.observe(&rows(102, 1000, |i| i as f64 * 3.0))
            .expect("observe");
        assert!(m.psi()[0].1.expect("psi") > 0.2);
        assert_eq!(m.report(), vec![("X".to_string(), true)]);
        assert!(m.report().is_empty(), "reported once");
        // Two days like the reference again: back under.
        m.observe(&rows(103, 1000, |i| i as f64)).expect("observe");
        m.observe(&rows(104, 1000, |i| i as f64)).expect("observe");
        assert_eq!(m.report(), vec![("X".to_string(), false)]);
        // A restored monitor holds the same window.
        let mut restored = Monitor::new(&cfg, "T", std::time::Duration::ZERO).expect("monitor");
        assert!(
            restored
                .restore(&m.snapshot().expect("snapshot"))
                .expect("restore")
        );
        assert_eq!(restored.psi(), m.psi());
    }

    /// Rows featured before the state had seen the features' reach are not counted: a
    /// pipeline starting with empty windows judges no drift on them, however unlike the
    /// reference they are; when its state began survives a checkpoint.
    #[test]
    fn rows_before_the_state_covers_the_reach_are_not_counted() {
        let (_dir, cfg) = uniform_reference(2);
        let reach = std::time::Duration::from_secs(3 * 86_400);
        let mut m = Monitor::new(&cfg, "T", reach).expect("monitor");
        // Days 100-102: empty windows, values unlike the reference: not counted.
        for day in 100..103 {
            m.observe(&rows(day, 1000, |i| i as f64 * 50.0))
                .expect("observe");
        }
        assert_eq!(m.psi(), vec![("X", None)]);
        assert!(m.report().is_empty());
        assert_eq!(m.counted_from(), Some(103 * DAY_NS));
        // From day 103 on the state covers the reach: counted, and judged once the whole
        // window (days 103-104) is.
        m.observe(&rows(103, 1000, |i| i as f64)).expect("observe");
        assert_eq!(m.psi(), vec![("X", None)], "half the window in the warm-up");
        m.observe(&rows(104, 1000, |i| i as f64)).expect("observe");
        assert!(m.psi()[0].1.expect("psi") < 0.2);
        // A restored monitor keeps when its state began.
        let mut restored = Monitor::new(&cfg, "T", reach).expect("monitor");
        assert!(
            restored
                .restore(&m.snapshot().expect("snapshot"))
                .expect("restore")
        );
        restored
            .restore_since(&m.since_snapshot().expect("since"))
            .expect("restore since");
        assert_eq!(restored.counted_from(), m.counted_from());
        assert_eq!(restored.psi(), m.psi());
        // A checkpoint that does not say (written before it did) counts as covered.
        let mut old = Monitor::new(&cfg, "T", reach).expect("monitor");
        assert!(
            old.restore(&m.snapshot().expect("snapshot"))
                .expect("restore")
        );
        old.assume_covered();
        old.observe(&rows(105, 1000, |i| i as f64 * 50.0))
            .expect("observe");
        assert!(old.psi()[0].1.expect("psi") > 0.2);
    }

    #[test]
    fn bins_are_deciles_with_ties_merged() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let b = Bins::of(&values, 10);
        assert_eq!(
            b.edges,
            vec![11.0, 21.0, 31.0, 41.0, 51.0, 61.0, 71.0, 81.0, 91.0]
        );
        assert_eq!(b.shares[0], 0.11);
        assert!((b.shares.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(b.psi(&b.counts(values.iter().copied())), Some(0.0));
        // 70% zeros: one bin for them.
        let mut skewed = vec![0.0; 70];
        skewed.extend((1..=30).map(f64::from));
        let b = Bins::of(&skewed, 10);
        assert_eq!(b.edges[0], 0.0);
        assert_eq!(b.shares[0], 0.7);
        assert_eq!(b.bin(0.0), 0);
        assert_eq!(b.bin(1e9), b.shares.len() - 1);
        // The same values ×3 have moved.
        let tripled: Vec<f64> = values.iter().map(|v| v * 3.0).collect();
        let b = Bins::of(&values, 10);
        assert!(b.psi(&b.counts(tripled)).expect("psi") > DRIFTED);
    }
}
