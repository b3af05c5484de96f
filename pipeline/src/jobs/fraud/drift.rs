//! Drift: how far the distribution of each model input and of the score moved away from a
//! reference period, as the population stability index (PSI) over the reference's deciles.
//!
//! `PSI = Σ (aᵢ − eᵢ) · ln(aᵢ / eᵢ)` over the bins, `e` the reference's share of a bin and `a` the
//! observed one (each floored at 10⁻⁴ so an empty bin stays finite). The usual reading: under
//! 0.1 stable, 0.1–0.2 some shift, over 0.2 a shift worth acting on.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, TimestampNanosecondType};
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
    /// For each day, the PSI of each of the reference's columns over the [`WINDOW_DAYS`] days
    /// up to it in `scored`.
    pub fn per_day(
        scored: &[RecordBatch],
        time: &str,
        reference: &Reference,
    ) -> Result<DriftReport> {
        // day → column → counts per bin
        let mut counts: BTreeMap<i64, Vec<Vec<u64>>> = BTreeMap::new();
        let empty: Vec<Vec<u64>> = reference
            .columns
            .iter()
            .map(|(_, b)| vec![0; b.shares.len()])
            .collect();
        for b in scored {
            let day = days_of(b, time)?;
            let values = reference
                .columns
                .iter()
                .map(|(name, _)| as_f64(b, name))
                .collect::<Result<Vec<_>>>()?;
            // Rows come in event-time order: one day's slot per run of rows.
            let mut start = 0;
            while start < day.len() {
                let end = start
                    + day[start..]
                        .iter()
                        .take_while(|&&d| d == day[start])
                        .count();
                let slot = counts.entry(day[start]).or_insert_with(|| empty.clone());
                for (c, (_, bins)) in reference.columns.iter().enumerate() {
                    let column = values[c].as_primitive::<Float64Type>();
                    for i in start..end {
                        if column.is_valid(i) && column.value(i).is_finite() {
                            slot[c][bins.bin(column.value(i))] += 1;
                        }
                    }
                }
                start = end;
            }
        }
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
        let days = counts
            .keys()
            .map(|&d| {
                (epoch + chrono::Days::new(u64::try_from(d).unwrap_or_default()))
                    .format("%Y-%m-%d")
                    .to_string()
            })
            .collect();
        let psi = reference
            .columns
            .iter()
            .enumerate()
            .map(|(c, (_, bins))| {
                counts
                    .keys()
                    .map(|&day| {
                        let mut window = vec![0u64; bins.shares.len()];
                        for (_, d) in counts.range(day - WINDOW_DAYS + 1..=day) {
                            for (w, n) in window.iter_mut().zip(&d[c]) {
                                *w += n;
                            }
                        }
                        bins.psi(&window).unwrap_or(0.0)
                    })
                    .collect()
            })
            .collect();
        Ok(DriftReport {
            reference: reference.period.clone(),
            threshold: DRIFTED,
            window_days: WINDOW_DAYS,
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
