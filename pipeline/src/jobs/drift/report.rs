//! The backtest's drift: each monitored column's PSI per day, and the heat map of it.

use std::path::Path;

use arrow::array::RecordBatch;
use plotters::prelude::*;
use serde::Serialize;

use crate::{PipelineError, Result};
use riskpipe_engine::drift::{DRIFTED, DayCounts, Reference, day_text};

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
        let mut psi = vec![Vec::with_capacity(counts.days().count()); reference.columns.len()];
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
