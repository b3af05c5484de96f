//! Drift: how far the distribution of each model input and of the score moved away from a
//! reference period, as the population stability index (PSI) over the reference's deciles.
//!
//! A text column (a model's categorical input) is binned by its values instead: the reference's
//! [`TEXT_BINS`] most frequent values, each a bin, and one bin for every other value.
//!
//! `PSI = Σ (aᵢ − eᵢ) · ln(aᵢ / eᵢ)` over the bins, `e` the reference's share of a bin and `a` the
//! observed one (each floored at 10⁻⁴ so an empty bin stays finite). The usual reading: under
//! 0.1 stable, 0.1–0.2 some shift, over 0.2 a shift worth acting on.
//!
//! Here: [`Bins`] and a [`Reference`]; `monitor`: the live monitor over the scored rows' day
//! counts, checkpointed with the state. The backtest's PSI per day and its heat map are the
//! application's (`riskpipe_pipeline::jobs::drift::DriftReport`), over [`DayCounts`].

use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, TimestampNanosecondType};
use riskpipe_operators::columns;
use serde::{Deserialize, Serialize};

use riskpipe_core::{PipelineError, Result};

mod monitor;

pub use monitor::{DayCounts, DriftConfig, Monitor};

/// Bins per column (deciles; ties merge bins).
pub const BINS: usize = 10;
/// Values of a text column that get a bin of their own (the reference's most frequent; the
/// others share one bin).
pub const TEXT_BINS: usize = 20;
/// PSI from which a column counts as drifted.
pub const DRIFTED: f64 = 0.2;
/// Each day's PSI is over the days up to it, this many: a week, so weekly patterns (the
/// weekend flag, say) do not read as drift.
pub const WINDOW_DAYS: i64 = 7;
/// Shares are floored at this, so an empty bin gives a finite PSI.
const FLOOR: f64 = 1e-4;
pub const DAY_NS: i64 = 86_400_000_000_000;

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
    /// A text column's values that have a bin each, in order (the last bin holds every other
    /// value); empty for a number.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
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
            categories: Vec::new(),
        };
        let counts = bins.counts(sorted.iter().copied());
        let n = sorted.len().max(1) as f64;
        bins.shares = counts.iter().map(|&c| c as f64 / n).collect();
        bins
    }

    /// The bins of a text column's `values`: the `bins` most frequent (ties: the first in byte
    /// order) a bin each, in byte order, and one bin for the others.
    pub fn of_text<'a>(values: impl IntoIterator<Item = &'a str>, bins: usize) -> Bins {
        let mut counts: std::collections::BTreeMap<&str, u64> = Default::default();
        let mut n = 0u64;
        for v in values {
            *counts.entry(v).or_default() += 1;
            n += 1;
        }
        let mut by_count: Vec<(&str, u64)> = counts.iter().map(|(&v, &c)| (v, c)).collect();
        by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        by_count.truncate(bins);
        let mut categories: Vec<String> = by_count.iter().map(|(v, _)| v.to_string()).collect();
        categories.sort();
        let mut shares = vec![0.0; categories.len() + 1];
        for (v, c) in &counts {
            let i = categories
                .binary_search_by(|x| x.as_str().cmp(v))
                .unwrap_or(categories.len());
            shares[i] += *c as f64 / n.max(1) as f64;
        }
        Bins {
            edges: Vec::new(),
            shares,
            range: None,
            categories,
        }
    }

    /// Whether these are a text column's bins.
    pub fn is_text(&self) -> bool {
        !self.categories.is_empty()
    }

    /// Each row's bin in `column` (`None` for a null or a number that is not finite): a text
    /// column's by its value, any other's as a number.
    pub fn bins_of(&self, column: &arrow::array::ArrayRef) -> Result<Vec<Option<usize>>> {
        if self.is_text() {
            let text = arrow::compute::cast(column, &DataType::Utf8)?;
            let text = text.as_string::<i32>();
            return Ok(text
                .iter()
                .map(|v| {
                    v.map(|v| {
                        self.categories
                            .binary_search_by(|x| x.as_str().cmp(v))
                            .unwrap_or(self.categories.len())
                    })
                })
                .collect());
        }
        let values = arrow::compute::cast(column, &DataType::Float64)?;
        let values = values.as_primitive::<Float64Type>();
        Ok((0..values.len())
            .map(|i| {
                (values.is_valid(i) && values.value(i).is_finite())
                    .then(|| self.bin(values.value(i)))
            })
            .collect())
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
        let mut texts: Vec<Option<Vec<String>>> = vec![None; columns.len()];
        for b in scored {
            let day = days_of(b, time)?;
            for (c, name) in columns.iter().enumerate() {
                let raw = b.column_by_name(name).ok_or_else(|| {
                    PipelineError::Bug(format!("drift: no column {name:?} in the scored rows"))
                })?;
                if matches!(
                    raw.data_type(),
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                ) {
                    let text = arrow::compute::cast(raw, &DataType::Utf8)?;
                    let text = text.as_string::<i32>();
                    let into = texts[c].get_or_insert_with(Vec::new);
                    for (i, d) in day.iter().enumerate() {
                        if days.contains(d) && text.is_valid(i) {
                            into.push(text.value(i).to_string());
                        }
                    }
                    continue;
                }
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
                .zip(values.iter().zip(&texts).map(|(v, t)| match t {
                    Some(t) => Bins::of_text(t.iter().map(String::as_str), TEXT_BINS),
                    None => Bins::of(v, BINS),
                }))
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
        let text = serde_json::to_string_pretty(self).map_err(|e| {
            PipelineError::Bug(format!("a drift reference does not serialize: {e}"))
        })?;
        std::fs::write(path, text).map_err(PipelineError::io("writing", path))
    }
}

/// `YYYY-MM-DD` of a day number since 1970-01-01.
pub fn day_text(day: i64) -> String {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    (epoch + chrono::Days::new(u64::try_from(day).unwrap_or_default()))
        .format("%Y-%m-%d")
        .to_string()
}

/// The UTC day of each row's `time`.
pub fn days_of(b: &RecordBatch, time: &str) -> Result<Vec<i64>> {
    let t = columns::primitive::<TimestampNanosecondType>(b, time)?;
    Ok(t.values().iter().map(|v| v.div_euclid(DAY_NS)).collect())
}

/// Column `name` as f64.
pub fn as_f64(b: &RecordBatch, name: &str) -> Result<arrow::array::ArrayRef> {
    let c = b.column_by_name(name).ok_or_else(|| {
        PipelineError::Bug(format!("drift: no column {name:?} in the scored rows"))
    })?;
    Ok(arrow::compute::cast(c, &DataType::Float64)?)
}

#[cfg(test)]
mod tests;
