//! The backtest report: a printed table, a JSON file and a PNG of the ROC and precision-recall
//! curves.

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use super::metrics::{self, Scored};
use crate::{PipelineError, Result};

/// Metrics of one backtest.
#[derive(Debug, Clone, Serialize)]
pub struct FraudReport {
    /// Model name.
    pub model: String,
    /// What was evaluated (e.g. the split).
    pub evaluated_on: String,
    /// Transactions evaluated.
    pub transactions: usize,
    /// Frauds among them.
    pub frauds: usize,
    /// Area under the ROC curve.
    pub auc_roc: Option<f64>,
    /// Average precision.
    pub average_precision: Option<f64>,
    /// Card Precision@100, mean over days.
    pub card_precision_at_100: f64,
    /// Card Precision@100 of each day.
    pub card_precision_at_100_per_day: Vec<f64>,
    /// The alert threshold.
    pub alert_threshold: f64,
    /// Precision of alerts.
    pub precision: f64,
    /// Recall of alerts.
    pub recall: f64,
    /// F1 of alerts.
    pub f1: f64,
    /// Alerts per evaluated day.
    pub alerts_per_day: f64,
    /// An ensemble's members' metrics on the same transactions, in configuration order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<FraudReport>,
    /// The challenger's metrics on the same transactions (with `[challenger]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub challenger: Option<Box<FraudReport>>,
    /// PSI per day of the model inputs and the score against a reference period.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<crate::jobs::drift::DriftReport>,
}

impl FraudReport {
    /// Computes every metric over `rows`.
    pub fn compute(model: &str, evaluated_on: &str, rows: &[Scored], threshold: f64) -> Self {
        let (precision, recall, f1) = metrics::at_threshold(rows, threshold);
        let (cp, cp_days) = metrics::card_precision_at_k(rows, 100);
        let days = rows
            .iter()
            .map(|r| r.day)
            .collect::<std::collections::HashSet<_>>()
            .len()
            .max(1);
        let alerts = rows.iter().filter(|r| r.score >= threshold).count();
        Self {
            model: model.into(),
            evaluated_on: evaluated_on.into(),
            transactions: rows.len(),
            frauds: rows.iter().filter(|r| r.fraud).count(),
            auc_roc: metrics::auc_roc(rows),
            average_precision: metrics::average_precision(rows),
            card_precision_at_100: cp,
            card_precision_at_100_per_day: cp_days,
            alert_threshold: threshold,
            precision,
            recall,
            f1,
            alerts_per_day: alerts as f64 / days as f64,
            members: Vec::new(),
            challenger: None,
            drift: None,
        }
    }

    /// A human-readable table: the model's column, then each ensemble member's and the
    /// challenger's beside it.
    pub fn table(&self) -> String {
        let mine = self.rows();
        let others: Vec<Vec<(&'static str, String)>> = self
            .members
            .iter()
            .chain(self.challenger.as_deref())
            .map(|r| r.rows())
            .collect();
        let width = mine.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let column_width = |rows: &[(&'static str, String)]| {
            rows.iter()
                .filter(|(k, _)| *k != "evaluated on")
                .map(|(_, v)| v.len())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = std::iter::once(column_width(&mine))
            .chain(others.iter().map(|o| column_width(o)))
            .collect();
        let mut out = String::new();
        for (i, (k, v)) in mine.iter().enumerate() {
            // The split is the same for every column: said once.
            if others.is_empty() || *k == "evaluated on" {
                out.push_str(&format!("  {k:<width$}  {v}\n"));
                continue;
            }
            let mut line = format!("  {k:<width$}  {v:<w$}", w = widths[0]);
            for (o, w) in others.iter().zip(&widths[1..]) {
                line.push_str(&format!("  {:<w$}", o[i].1));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        if let Some(d) = &self.drift {
            let drifted = d.drifted();
            out.push_str(&format!("  {:<width$}  {}\n", "drift (PSI > 0.2)", {
                let since = d
                    .since
                    .as_ref()
                    .map_or(String::new(), |s| format!(" from {s}"));
                match drifted.is_empty() {
                    true => format!("none{since} (drift.png)"),
                    false => format!(
                        "{} of {} columns on some day{since} (drift.png): {}",
                        drifted.len(),
                        d.columns.len(),
                        drifted.join(", ")
                    ),
                }
            }));
        }
        out
    }

    fn rows(&self) -> Vec<(&'static str, String)> {
        let opt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.4}"));
        let rows = [
            ("model", self.model.clone()),
            ("evaluated on", self.evaluated_on.clone()),
            ("transactions", self.transactions.to_string()),
            ("frauds", self.frauds.to_string()),
            ("AUC ROC", opt(self.auc_roc)),
            ("average precision", opt(self.average_precision)),
            (
                "Card Precision@100",
                format!("{:.4}", self.card_precision_at_100),
            ),
            ("alert threshold", format!("{}", self.alert_threshold)),
            ("precision @ threshold", format!("{:.4}", self.precision)),
            ("recall @ threshold", format!("{:.4}", self.recall)),
            ("F1 @ threshold", format!("{:.4}", self.f1)),
            ("alerts per day", format!("{:.1}", self.alerts_per_day)),
        ];
        rows.into()
    }

    /// Writes the report as JSON.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        crate::backtest::write_json(path.to_path_buf(), self).map(|_| ())
    }
}

/// Draws ROC and precision-recall curves side by side (blue; the challenger's, given its rows,
/// in red; an ensemble's members', given theirs, in grey).
pub fn plot_curves(
    rows: &[Scored],
    challenger: Option<&[Scored]>,
    members: &[&[Scored]],
    report: &FraudReport,
    path: &Path,
) -> Result<()> {
    crate::backtest::ensure_font();
    let plot_err = |e: &dyn std::fmt::Display| PipelineError::Plot {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let (roc, pr) = metrics::curves(rows);
    let (their_roc, their_pr) = challenger.map(metrics::curves).unzip();
    let (member_roc, member_pr): (Vec<_>, Vec<_>) =
        members.iter().map(|m| metrics::curves(m)).unzip();
    let root = BitMapBackend::new(path, (1200, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(&e))?;
    let (left, right) = root.split_horizontally(600);
    let versus = |metric: fn(&FraudReport) -> Option<f64>| match &report.challenger {
        Some(c) => format!("; challenger, red: {:.3}", metric(c).unwrap_or(f64::NAN)),
        None => String::new(),
    };
    let panels = [
        (
            left,
            format!(
                "ROC (AUC {:.3}{})",
                report.auc_roc.unwrap_or(f64::NAN),
                versus(|r| r.auc_roc)
            ),
            "false positive rate",
            "true positive rate",
            roc,
            their_roc,
            member_roc,
            true,
        ),
        (
            right,
            format!(
                "Precision-recall (AP {:.3}{})",
                report.average_precision.unwrap_or(f64::NAN),
                versus(|r| r.average_precision)
            ),
            "recall",
            "precision",
            pr,
            their_pr,
            member_pr,
            false,
        ),
    ];
    for (area, title, xl, yl, points, theirs, members, diagonal) in panels {
        let mut chart = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(|e| plot_err(&e))?;
        chart
            .configure_mesh()
            .x_desc(xl)
            .y_desc(yl)
            .draw()
            .map_err(|e| plot_err(&e))?;
        for m in members {
            chart
                .draw_series(LineSeries::new(m, BLACK.mix(0.35).stroke_width(1)))
                .map_err(|e| plot_err(&e))?;
        }
        chart
            .draw_series(LineSeries::new(points, BLUE.stroke_width(2)))
            .map_err(|e| plot_err(&e))?;
        if let Some(theirs) = theirs {
            chart
                .draw_series(LineSeries::new(theirs, RED.stroke_width(2)))
                .map_err(|e| plot_err(&e))?;
        }
        if diagonal {
            chart
                .draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3)))
                .map_err(|e| plot_err(&e))?;
        }
    }
    root.present().map_err(|e| plot_err(&e))?;
    Ok(())
}

impl crate::backtest::Report for FraudReport {
    fn events(&self) -> &'static str {
        "transactions"
    }

    fn table(&self) -> String {
        FraudReport::table(self)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
