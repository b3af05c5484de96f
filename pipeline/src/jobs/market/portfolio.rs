//! Portfolio VaR by variance–covariance: with `u_i = quantity_i · price_i · VaR_i` (each
//! instrument's own VaR in currency, signed by the position) and `ρ` the EWMA correlation of the
//! instruments' returns (RiskMetrics, λ configurable), the portfolio VaR is `√(uᵀ ρ u)`. One
//! instrument gives its own VaR; perfectly correlated ones add up; hedges offset. The covariance
//! updates once per event time, from the returns observed at that time (an instrument without a
//! tick then counts as unchanged).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, TimestampNanosecondType};
use riskpipe_operators::columns;
use riskpipe_schemas::market;

use super::config::{PortfolioConfig, VAR};
use crate::{PipelineError, Result};

/// RiskMetrics EWMA covariance of a fixed set of return series:
/// `C_t = λ C_{t−1} + (1 − λ) r_t r_tᵀ`, started at `C_1 = r_1 r_1ᵀ`.
#[derive(Debug, Clone)]
pub struct EwmaCovariance {
    lambda: f64,
    k: usize,
    c: Option<Vec<f64>>,
}

impl EwmaCovariance {
    /// `k` series with decay `lambda`.
    pub fn new(k: usize, lambda: f64) -> Self {
        Self { lambda, k, c: None }
    }

    /// Adds one observation of all `k` returns.
    pub fn update(&mut self, r: &[f64]) {
        let (k, lambda) = (self.k, self.lambda);
        match &mut self.c {
            Some(c) => {
                for a in 0..k {
                    for b in 0..k {
                        c[a * k + b] = lambda * c[a * k + b] + (1.0 - lambda) * r[a] * r[b];
                    }
                }
            }
            None => self.c = Some((0..k * k).map(|ab| r[ab / k] * r[ab % k]).collect()),
        }
    }

    /// Correlation of series `a` and `b` (1 on the diagonal; 0 while either has no variance).
    pub fn correlation(&self, a: usize, b: usize) -> f64 {
        if a == b {
            return 1.0;
        }
        let k = self.k;
        match &self.c {
            Some(c) if c[a * k + a] > 0.0 && c[b * k + b] > 0.0 => {
                c[a * k + b] / (c[a * k + a] * c[b * k + b]).sqrt()
            }
            _ => 0.0,
        }
    }
}

/// Variance–covariance aggregation: `√(Σ_ab u_a ρ_ab u_b)` over legs `(series, u)`, where `u` is
/// a leg's own VaR in currency signed by its position.
pub fn portfolio_var(legs: &[(usize, f64)], correlation: impl Fn(usize, usize) -> f64) -> f64 {
    let mut total = 0.0;
    for &(a, ua) in legs {
        for &(b, ub) in legs {
            total += ua * correlation(a, b) * ub;
        }
    }
    total.max(0.0).sqrt()
}

/// The standard normal quantile, by bisection on Φ(x) = erfc(−x/√2)/2 (exact to f64).
pub fn normal_quantile(p: f64) -> f64 {
    let (mut lo, mut hi) = (-40.0f64, 40.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if 0.5 * libm::erfc(-mid / std::f64::consts::SQRT_2) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

#[derive(Debug, Default, Clone, Copy)]
struct Latest {
    price: f64,
    var: Option<f64>,
}

/// One portfolio's VaR at one event time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PortfolioVar {
    /// Index into the configured portfolios.
    pub(crate) portfolio: usize,
    /// Event time, ns.
    pub(crate) time: i64,
    /// VaR in currency.
    pub(crate) var: f64,
    /// Daily volatility as a fraction of the portfolio's value.
    pub(crate) volatility: f64,
}

/// The keyed state behind portfolio VaR: each instrument's latest price and VaR, and the
/// return covariance.
#[derive(Debug)]
pub(crate) struct Aggregator {
    pub(crate) portfolios: Vec<PortfolioConfig>,
    /// Instruments held by any portfolio, in covariance order.
    universe: Vec<String>,
    latest: HashMap<String, Latest>,
    covariance: EwmaCovariance,
    /// The normal quantile of the confidence: scales a VaR back to one standard deviation.
    z: f64,
}

impl Aggregator {
    pub(crate) fn new(portfolios: Vec<PortfolioConfig>, lambda: f64, confidence: f64) -> Self {
        let mut universe: Vec<String> = portfolios
            .iter()
            .flat_map(|p| p.positions.keys().cloned())
            .collect();
        universe.sort();
        universe.dedup();
        Self {
            covariance: EwmaCovariance::new(universe.len(), lambda),
            portfolios,
            universe,
            latest: HashMap::new(),
            z: normal_quantile(confidence),
        }
    }

    /// Portfolio VaR at the end of each event time in `scored` (ticks with `VAR`).
    pub(crate) fn aggregate(&mut self, scored: &RecordBatch) -> Result<Vec<PortfolioVar>> {
        if self.portfolios.is_empty() {
            return Ok(Vec::new());
        }
        let ids = columns::string(scored, market::INSTRUMENT).map_err(PipelineError::produced)?;
        let times = columns::primitive::<TimestampNanosecondType>(scored, market::TIME)
            .map_err(PipelineError::produced)?;
        let prices = columns::primitive::<Float64Type>(scored, market::PRICE)
            .map_err(PipelineError::produced)?;
        let var =
            columns::primitive::<Float64Type>(scored, VAR).map_err(PipelineError::produced)?;
        let mut out = Vec::new();
        let mut step: HashMap<&str, f64> = HashMap::new();
        let n = scored.num_rows();
        for i in 0..n {
            let id = ids.value(i);
            if !self.latest.contains_key(id) {
                self.latest.insert(id.to_string(), Latest::default());
            }
            let Some(entry) = self.latest.get_mut(id) else {
                continue;
            };
            let ret = if entry.price > 0.0 {
                (prices.value(i) / entry.price).ln()
            } else {
                0.0
            };
            *entry = Latest {
                price: prices.value(i),
                var: var.is_valid(i).then(|| var.value(i)),
            };
            step.insert(id, ret);
            let last_of_time = i + 1 == n || times.value(i + 1) != times.value(i);
            if last_of_time {
                let r: Vec<f64> = self
                    .universe
                    .iter()
                    .map(|u| step.get(u.as_str()).copied().unwrap_or(0.0))
                    .collect();
                self.covariance.update(&r);
                step.clear();
                self.score(times.value(i), &mut out);
            }
        }
        Ok(out)
    }

    /// The state as two tables: `latest` (each instrument's `price` and `var`) and
    /// `covariance` (`a`, `b`, `value` for every pair of the universe; no rows before the
    /// first update).
    pub(crate) fn snapshot(&self) -> Result<Vec<(String, RecordBatch)>> {
        let mut latest: Vec<(&String, &Latest)> = self.latest.iter().collect();
        latest.sort_by(|x, y| x.0.cmp(y.0));
        let latest = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("instrument", DataType::Utf8, false),
                Field::new("price", DataType::Float64, false),
                Field::new(VAR, DataType::Float64, true),
            ])),
            vec![
                Arc::new(StringArray::from_iter_values(latest.iter().map(|l| l.0))),
                Arc::new(Float64Array::from_iter_values(
                    latest.iter().map(|l| l.1.price),
                )),
                Arc::new(Float64Array::from_iter(latest.iter().map(|l| l.1.var))),
            ],
        )?;
        let k = self.covariance.k;
        let cells = self.covariance.c.as_deref().unwrap_or(&[]);
        let name = |i: usize| self.universe[i].as_str();
        let covariance = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("a", DataType::Utf8, false),
                Field::new("b", DataType::Utf8, false),
                Field::new("value", DataType::Float64, false),
            ])),
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..cells.len()).map(|ab| name(ab / k)),
                )),
                Arc::new(StringArray::from_iter_values(
                    (0..cells.len()).map(|ab| name(ab % k)),
                )),
                Arc::new(Float64Array::from(cells.to_vec())),
            ],
        )?;
        Ok(vec![
            ("latest".into(), latest),
            ("covariance".into(), covariance),
        ])
    }

    /// Replaces the state with [`Aggregator::snapshot`]'s tables; the covariance must be of
    /// this universe.
    pub(crate) fn restore(&mut self, tables: &[(String, RecordBatch)]) -> Result<()> {
        let unfit = |what: String| PipelineError::Checkpoint {
            id: 0,
            reason: format!("portfolio state: {what}"),
        };
        let table = |name: &str| {
            tables
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .ok_or_else(|| unfit(format!("no table {name:?}")))
        };
        let strings = |t: &RecordBatch, c: &str| {
            t.column_by_name(c)
                .and_then(|a| a.as_string_opt::<i32>().cloned())
                .filter(|a| a.null_count() == 0)
                .ok_or_else(|| unfit(format!("column {c:?} is no Utf8 without nulls")))
        };
        let floats = |t: &RecordBatch, c: &str| {
            t.column_by_name(c)
                .and_then(|a| a.as_primitive_opt::<Float64Type>().cloned())
                .ok_or_else(|| unfit(format!("column {c:?} is no Float64")))
        };
        let l = table("latest")?;
        let (ids, price, var) = (
            strings(l, "instrument")?,
            floats(l, "price")?,
            floats(l, VAR)?,
        );
        let latest = (0..l.num_rows())
            .map(|i| {
                let entry = Latest {
                    price: price.value(i),
                    var: var.is_valid(i).then(|| var.value(i)),
                };
                (ids.value(i).to_string(), entry)
            })
            .collect();
        let c = table("covariance")?;
        let (a, b, value) = (strings(c, "a")?, strings(c, "b")?, floats(c, "value")?);
        let k = self.universe.len();
        let cells = match c.num_rows() {
            0 => None,
            n if n == k * k => {
                for ab in 0..n {
                    if a.value(ab) != self.universe[ab / k] || b.value(ab) != self.universe[ab % k]
                    {
                        return Err(unfit(format!(
                            "covariance cell {ab} is of {}×{}, not of this universe",
                            a.value(ab),
                            b.value(ab)
                        )));
                    }
                }
                Some(value.values().to_vec())
            }
            n => {
                return Err(unfit(format!("{n} covariance cells for {k} instruments")));
            }
        };
        self.latest = latest;
        self.covariance.c = cells;
        Ok(())
    }

    fn score(&self, time: i64, out: &mut Vec<PortfolioVar>) {
        for (index, p) in self.portfolios.iter().enumerate() {
            let mut legs = Vec::new();
            for (id, qty) in &p.positions {
                let Some(latest) = self.latest.get(id) else {
                    break;
                };
                let Some(v) = latest.var else { break };
                let Some(series) = self.universe.iter().position(|u| u == id) else {
                    break;
                };
                legs.push((series, qty * latest.price * v));
            }
            if legs.len() < p.positions.len() {
                continue; // not every instrument has a forecast yet
            }
            let var = portfolio_var(&legs, |a, b| self.covariance.correlation(a, b));
            let value: f64 = p
                .positions
                .iter()
                .map(|(id, q)| q * self.latest.get(id).map_or(0.0, |l| l.price))
                .sum();
            out.push(PortfolioVar {
                portfolio: index,
                time,
                var,
                // The portfolio's daily volatility as a fraction of its value (RiskMetrics
                // scaling of its VaR back to one standard deviation).
                volatility: if value.abs() > 0.0 {
                    var / value.abs() / self.z
                } else {
                    0.0
                },
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scored ticks of instruments `A`, `B`, `C` (three per event time) with wandering prices.
    fn scored(days: std::ops::Range<i64>) -> RecordBatch {
        use arrow::array::{Float64Array, StringArray, TimestampNanosecondArray};
        use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
        let rows: Vec<(i64, &str)> = days
            .flat_map(|d| ["A", "B", "C"].map(|id| (d, id)))
            .collect();
        let price = |d: i64, id: &str| {
            let k = id.as_bytes()[0] as f64;
            100.0 + k + ((d as f64) * 0.7 + k).sin() * 3.0
        };
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new(market::INSTRUMENT, DataType::Utf8, false),
                Field::new(
                    market::TIME,
                    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                    false,
                ),
                Field::new(market::PRICE, DataType::Float64, false),
                Field::new(VAR, DataType::Float64, true),
            ])),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(
                    TimestampNanosecondArray::from_iter_values(rows.iter().map(|r| r.0))
                        .with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from_iter_values(
                    rows.iter().map(|r| price(r.0, r.1)),
                )),
                Arc::new(Float64Array::from_iter(
                    rows.iter()
                        .map(|r| (r.0 > 2).then_some(0.02 + r.0 as f64 * 1e-4)),
                )),
            ],
        )
        .expect("scored ticks")
    }

    #[test]
    fn a_restored_aggregator_computes_what_the_original_does() {
        let portfolios = vec![
            PortfolioConfig {
                name: "long".into(),
                limit: 1e9,
                positions: [("A".to_string(), 10.0), ("B".to_string(), 5.0)].into(),
            },
            PortfolioConfig {
                name: "hedged".into(),
                limit: 1e9,
                positions: [("B".to_string(), 7.0), ("C".to_string(), -3.0)].into(),
            },
        ];
        for cut in [0, 1, 4, 9] {
            let mut original = Aggregator::new(portfolios.clone(), 0.94, 0.99);
            original.aggregate(&scored(0..cut)).expect("head");
            let tables = original.snapshot().expect("snapshot");
            let mut restored = Aggregator::new(portfolios.clone(), 0.94, 0.99);
            restored.restore(&tables).expect("restore");
            let want = original.aggregate(&scored(cut..20)).expect("original tail");
            let got = restored.aggregate(&scored(cut..20)).expect("restored tail");
            assert!(want.len() > 20, "portfolios scored: {}", want.len());
            // Bit for bit: the same operations on the same state.
            assert_eq!(got, want, "cut after day {cut}");
        }
        // A covariance of another universe is refused.
        let mut original = Aggregator::new(portfolios.clone(), 0.94, 0.99);
        original.aggregate(&scored(0..5)).expect("days");
        let mut other = Aggregator::new(portfolios[..1].to_vec(), 0.94, 0.99);
        let e = other
            .restore(&original.snapshot().expect("snapshot"))
            .expect_err("another universe");
        assert!(e.to_string().contains("covariance cells"), "{e}");
    }

    #[test]
    fn normal_quantile_matches_tables() {
        assert!((normal_quantile(0.99) - 2.326_347_874_040_841).abs() < 1e-12);
        assert!((normal_quantile(0.975) - 1.959_963_984_540_054).abs() < 1e-12);
        assert!(normal_quantile(0.5).abs() < 1e-12);
    }

    #[test]
    fn ewma_covariance_by_hand() {
        // λ = 0.5; r1 = (0.01, 0.02), r2 = (−0.01, 0.01).
        let mut c = EwmaCovariance::new(2, 0.5);
        c.update(&[0.01, 0.02]);
        // C1 = r1 r1ᵀ: perfectly correlated.
        assert!((c.correlation(0, 1) - 1.0).abs() < 1e-12);
        c.update(&[-0.01, 0.01]);
        // C2 = 0.5 C1 + 0.5 r2 r2ᵀ: var_a = 0.5e-4 + 0.5e-4 = 1e-4, var_b = 2e-4 + 0.5e-4
        // = 2.5e-4, cov = 1e-4 − 0.5e-4 = 0.5e-4; ρ = 0.5e-4 / √(1e-4 · 2.5e-4) = 0.316227...
        let want = 0.5e-4 / (1e-4f64 * 2.5e-4).sqrt();
        assert!((c.correlation(0, 1) - want).abs() < 1e-12);
        assert!((c.correlation(1, 0) - want).abs() < 1e-12);
        assert_eq!(c.correlation(1, 1), 1.0);
    }

    #[test]
    fn portfolio_var_by_hand() {
        let rho = |a: usize, b: usize| if a == b { 1.0 } else { 0.5 };
        // One leg: its own VaR, whatever its sign.
        assert!((portfolio_var(&[(0, -300.0)], rho) - 300.0).abs() < 1e-9);
        // Two legs 300 and 400 at ρ 0.5: √(9e4 + 16e4 + 2·0.5·12e4) = √37e4.
        assert!((portfolio_var(&[(0, 300.0), (1, 400.0)], rho) - 370_000f64.sqrt()).abs() < 1e-9);
        // A hedge (short the second) offsets: √(25e4 − 12e4) = √13e4.
        assert!((portfolio_var(&[(0, 300.0), (1, -400.0)], rho) - 130_000f64.sqrt()).abs() < 1e-9);
        // Perfect correlation adds up.
        assert!((portfolio_var(&[(0, 300.0), (1, 400.0)], |_, _| 1.0) - 700.0).abs() < 1e-9);
    }
}
