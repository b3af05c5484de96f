//! The market backtest's report: a printed table, `report.json` and `var.png` (daily returns
//! against both VaR lines, the model's exceedances marked).

use std::path::Path;

use serde::Serialize;

use super::var::VarStats;
use crate::{PipelineError, Result};

/// One evaluated day: the realized log return and both forecasts (log-loss units).
#[derive(Debug, Clone, Copy)]
pub(crate) struct EvalDay {
    pub(crate) time: i64,
    pub(crate) ret: f64,
    pub(crate) model: f64,
    pub(crate) baseline: f64,
}

/// One VaR model's backtest over the evaluated days.
#[derive(Debug, Clone, Serialize)]
pub struct VarRow {
    /// Model name.
    pub model: String,
    /// The statistics (exceedances, Kupiec, Christoffersen, traffic-light windows).
    #[serde(flatten)]
    pub stats: VarStats,
}

/// The market backtest's report.
#[derive(Debug, Clone, Serialize)]
pub struct MarketReport {
    /// Instrument evaluated.
    pub instrument: String,
    /// VaR confidence.
    pub confidence: f64,
    /// Warm-up observations skipped.
    pub warmup: usize,
    /// First and last forecast dates evaluated.
    pub evaluated_from: String,
    /// Last forecast date evaluated.
    pub evaluated_to: String,
    /// The model, then the RiskMetrics baseline (EWMA λ = 0.94, normal) on the same days.
    pub rows: Vec<VarRow>,
    /// Portfolio scores published.
    pub portfolio_scores: usize,
    /// Limit breaches raised.
    pub limit_breaches: usize,
}

impl MarketReport {
    /// A printable table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "VaR backtest: {} at {:.1}%, forecasts {} .. {} (first {} observations warm-up)\n",
            self.instrument,
            self.confidence * 100.0,
            self.evaluated_from,
            self.evaluated_to,
            self.warmup
        );
        s.push_str(&format!(
            "{:<28} {:>6} {:>6} {:>7} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7}\n",
            "model",
            "days",
            "exc",
            "rate",
            "Kupiec LR",
            "p",
            "Chr. LR",
            "p",
            "green",
            "yellow",
            "red",
            "green%"
        ));
        for r in &self.rows {
            let v = &r.stats;
            s.push_str(&format!(
                "{:<28} {:>6} {:>6} {:>6.2}% {:>9.3} {:>9.4} {:>9.3} {:>9.4} {:>7} {:>7} {:>7} {:>6.1}%\n",
                r.model,
                v.observations,
                v.exceedances,
                v.rate * 100.0,
                v.kupiec_lr,
                v.kupiec_p,
                v.christoffersen_lr,
                v.christoffersen_p,
                v.zones[0],
                v.zones[1],
                v.zones[2],
                v.green_share * 100.0
            ));
        }
        s.push_str(&format!(
            "portfolio scores {}, limit breaches {}\n",
            self.portfolio_scores, self.limit_breaches
        ));
        s
    }
}

/// Daily returns against both VaR lines (as negative returns), exceedances of the model marked.
pub(crate) fn plot_var(eval: &[EvalDay], report: &MarketReport, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    crate::backtest::ensure_font();
    let err = |e: &dyn std::fmt::Display| PipelineError::Plot {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let x = |d: &EvalDay| d.time as f64 / 86_400e9 / 365.25 + 1970.0;
    let (x0, x1) = (x(&eval[0]), x(&eval[eval.len() - 1]));
    let lo = eval
        .iter()
        .map(|d| d.ret.min(-d.model).min(-d.baseline))
        .fold(0.0f64, f64::min)
        * 100.0;
    let hi = eval.iter().map(|d| d.ret).fold(0.0f64, f64::max) * 100.0;
    let root = BitMapBackend::new(path, (1400, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let model = &report.rows[0];
    let base = &report.rows[1];
    let title = format!(
        "{} daily returns vs 1-day {:.0}% VaR: {} {} exceedances ({:.2}%), RiskMetrics {} ({:.2}%)",
        report.instrument,
        report.confidence * 100.0,
        model.model,
        model.stats.exceedances,
        model.stats.rate * 100.0,
        base.stats.exceedances,
        base.stats.rate * 100.0
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, lo * 1.05..hi * 1.05)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("year")
        .x_label_formatter(&|y| format!("{y:.0}"))
        .y_desc("daily log return, %")
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(
            eval.iter()
                .map(|d| Circle::new((x(d), d.ret * 100.0), 1, BLACK.mix(0.4).filled())),
        )
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            eval.iter().map(|d| (x(d), -d.baseline * 100.0)),
            RGBColor(120, 120, 120).stroke_width(1),
        ))
        .map_err(|e| err(&e))?
        .label("RiskMetrics −VaR")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RGBColor(120, 120, 120)));
    chart
        .draw_series(LineSeries::new(
            eval.iter().map(|d| (x(d), -d.model * 100.0)),
            BLUE.stroke_width(1),
        ))
        .map_err(|e| err(&e))?
        .label(format!("{} −VaR", model.model))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(
            eval.iter()
                .filter(|d| -d.ret > d.model)
                .map(|d| Cross::new((x(d), d.ret * 100.0), 5, RED.stroke_width(2))),
        )
        .map_err(|e| err(&e))?
        .label("exceedance of the model")
        .legend(|(x, y)| Cross::new((x + 10, y), 5, RED.stroke_width(2)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

impl crate::backtest::Report for MarketReport {
    fn events(&self) -> &'static str {
        "ticks"
    }

    fn table(&self) -> String {
        MarketReport::table(self)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
