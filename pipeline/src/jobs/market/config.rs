//! `[job]` of a market-risk pipeline (`kind = "market"`): VaR settings, series features,
//! portfolios and how a price history is backtested.

use std::collections::BTreeMap;
use std::path::PathBuf;

use riskpipe_operators::SeriesFeatures;
use riskpipe_schemas::market;
use serde::Deserialize;

use crate::sources::ticks::CsvTicks;

/// Column of the predicted VaR (loss fraction) in scored tick batches.
pub const VAR: &str = market::VAR;
/// Column of the volatility estimate (daily return standard deviation) in scored tick batches.
pub const VOLATILITY: &str = market::VOLATILITY;

fn default_confidence() -> f64 {
    0.99
}
fn default_correlation_lambda() -> f64 {
    0.94
}

/// A market-risk job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketConfig {
    /// Confidence level of the VaR the model predicts (e.g. 0.99).
    #[serde(default = "default_confidence")]
    pub confidence: f64,
    /// λ of the EWMA return covariance that gives portfolio correlations.
    #[serde(default = "default_correlation_lambda")]
    pub correlation_lambda: f64,
    /// Per-instrument series features; `ewma_variance` is required (it is the volatility
    /// estimate on every score). The model's inputs come from its `riskpipe.features` metadata.
    pub features: SeriesFeatures,
    /// Portfolios whose VaR is aggregated and checked against a limit.
    #[serde(default)]
    pub portfolios: Vec<PortfolioConfig>,
    /// How a history file is read and evaluated.
    #[serde(default)]
    pub backtest: MarketBacktestConfig,
}

/// A portfolio: fixed positions and a VaR limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortfolioConfig {
    /// Portfolio id.
    pub name: String,
    /// Alert when the portfolio's VaR (currency) exceeds this.
    pub limit: f64,
    /// Units held per instrument id (negative = short).
    pub positions: BTreeMap<String, f64>,
}

fn default_warmup() -> usize {
    250
}
fn default_batch_rows() -> usize {
    4096
}

/// How a price history is read and evaluated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketBacktestConfig {
    /// Observations per instrument before the first evaluated forecast.
    #[serde(default = "default_warmup")]
    pub warmup: usize,
    /// Rows per micro-batch of the replay.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// How a CSV history maps to ticks (Parquet and CSV files already in the tick schema
    /// need none).
    #[serde(default)]
    pub csv: Option<CsvTicks>,
    /// History read when no input is given (relative to the config file).
    #[serde(default)]
    pub input: Option<PathBuf>,
}

impl Default for MarketBacktestConfig {
    fn default() -> Self {
        Self {
            warmup: default_warmup(),
            batch_rows: default_batch_rows(),
            csv: None,
            input: None,
        }
    }
}

impl MarketConfig {
    /// Every problem of the job's settings (`job.*`).
    pub fn problems(&self) -> Vec<String> {
        let mut p: Vec<String> = self
            .features
            .problems()
            .into_iter()
            .map(|e| format!("job.features: {e}"))
            .collect();
        if self.features.ewma_variance.is_none() {
            p.push("job.features.ewma_variance is required (the volatility on every score)".into());
        }
        if !(self.confidence > 0.5 && self.confidence < 1.0) {
            p.push(format!(
                "job.confidence must be within (0.5, 1), not {}",
                self.confidence
            ));
        }
        let lambda = self.correlation_lambda;
        if !(lambda > 0.0 && lambda < 1.0) {
            p.push(format!(
                "job.correlation_lambda must be within (0, 1), not {lambda}"
            ));
        }
        for name in self.features.names() {
            if [
                market::INSTRUMENT,
                market::TIME,
                market::PRICE,
                market::SIZE,
                VAR,
                VOLATILITY,
            ]
            .contains(&name.as_str())
            {
                p.push(format!("job.features: {name:?} is a reserved column"));
            }
        }
        let mut names = std::collections::HashSet::new();
        for pf in &self.portfolios {
            if !names.insert(&pf.name) {
                p.push(format!("portfolio {:?} is defined twice", pf.name));
            }
            if !(pf.limit.is_finite() && pf.limit > 0.0) {
                p.push(format!("portfolio {:?}: limit must be positive", pf.name));
            }
            if pf.positions.is_empty() {
                p.push(format!("portfolio {:?} has no positions", pf.name));
            }
            for (i, q) in &pf.positions {
                if !q.is_finite() {
                    p.push(format!(
                        "portfolio {:?}: quantity of {i:?} is not finite",
                        pf.name
                    ));
                }
            }
        }
        if self.backtest.batch_rows == 0 {
            p.push("job.backtest.batch_rows must be at least 1".into());
        }
        if let Some(c) = &self.backtest.csv
            && c.instrument_column.is_none() == c.instrument.is_none()
        {
            p.push("job.backtest.csv needs exactly one of instrument_column and instrument".into());
        }
        p
    }
}
