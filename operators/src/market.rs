//! Market-risk series features, keyed by instrument: log return, RiskMetrics EWMA variance,
//! rolling realized volatility, rolling empirical return quantile and running drawdown.
//!
//! Events must arrive in event-time order per instrument (late events are a bad input, since
//! every feature here depends on the previous price). Each output is `Float64`, null while it is
//! undefined (no previous price yet, window not yet full), never filled with a made-up value.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Float64Builder, Int64Array, ListBuilder, RecordBatch,
};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};

use serde::Deserialize;

use crate::columns;
use crate::state::{KeyedState, StateReader, StateTable};
use crate::{Appender, Operator, OperatorError, Result};

/// Which series features to compute, and their column names. Deserialized from a pipeline
/// config's `[market.features]`: the one place each market feature is defined.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesFeatures {
    /// Output column of `ln(p_t / p_{t-1})`.
    #[serde(default)]
    pub log_return: Option<String>,
    /// RiskMetrics EWMA variance after observing r_t: `σ²_t = λ σ²_{t-1} + (1-λ) r_t²`, started
    /// at `σ²_1 = r_1²`; the forecast of the next period's variance.
    #[serde(default)]
    pub ewma_variance: Option<Ewma>,
    /// Output column of the standardized loss `z_t = −r_t / σ_{t−1}` (the loss in units of the
    /// EWMA volatility forecast made the day before); needs `ewma_variance`.
    #[serde(default)]
    pub standardized_loss: Option<String>,
    /// Sample standard deviations (n − 1) of the last N returns.
    #[serde(default)]
    pub rolling_volatility: Vec<Rolling>,
    /// Empirical quantiles over the last N observations of returns or standardized losses.
    #[serde(default)]
    pub rolling_quantile: Vec<RollingQuantile>,
    /// Output column of `p_t / max_{s <= t} p_s − 1` (0 at a new high, negative below it).
    #[serde(default)]
    pub drawdown: Option<String>,
}

/// An EWMA variance feature.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ewma {
    /// Output column.
    pub name: String,
    /// Decay λ within (0, 1); RiskMetrics uses 0.94 for daily data.
    pub lambda: f64,
}

/// A rolling-window feature over the last `n` returns.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rolling {
    /// Output column.
    pub name: String,
    /// Window length in observations.
    pub n: usize,
}

/// What a rolling quantile is taken of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantileOf {
    /// Log returns r_t.
    #[default]
    Return,
    /// Standardized losses z_t = −r_t / σ_{t−1} (needs `ewma_variance`).
    StandardizedLoss,
}

/// An empirical quantile over the last `n` observations, linear interpolation between order
/// statistics (numpy's default).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollingQuantile {
    /// Output column.
    pub name: String,
    /// Window length in observations.
    pub n: usize,
    /// Quantile level within 0..=1.
    pub q: f64,
    /// The series the quantile is taken of.
    #[serde(default)]
    pub of: QuantileOf,
    /// Emit once this many observations are in the window (then over all of them, up to `n`);
    /// default `n`.
    #[serde(default)]
    pub min_obs: Option<usize>,
}

impl RollingQuantile {
    fn min_obs(&self) -> usize {
        self.min_obs.unwrap_or(self.n).clamp(1, self.n.max(1))
    }
}

impl SeriesFeatures {
    /// Output columns in output order.
    pub fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        names.extend(self.log_return.clone());
        names.extend(self.ewma_variance.as_ref().map(|e| e.name.clone()));
        names.extend(self.standardized_loss.clone());
        names.extend(self.rolling_volatility.iter().map(|r| r.name.clone()));
        names.extend(self.rolling_quantile.iter().map(|r| r.name.clone()));
        names.extend(self.drawdown.clone());
        names
    }

    /// Every problem of the parameters at once.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(e) = &self.ewma_variance
            && !(e.lambda > 0.0 && e.lambda < 1.0)
        {
            problems.push(format!("EWMA λ must be within (0, 1), not {}", e.lambda));
        }
        for r in &self.rolling_volatility {
            if r.n < 2 {
                problems.push(format!(
                    "rolling volatility {} needs n >= 2, not {}",
                    r.name, r.n
                ));
            }
        }
        for r in &self.rolling_quantile {
            if r.n < 1 {
                problems.push(format!("rolling quantile {} needs n >= 1", r.name));
            }
            if !(0.0..=1.0).contains(&r.q) {
                problems.push(format!(
                    "rolling quantile {}: q must be within 0..=1, not {}",
                    r.name, r.q
                ));
            }
            if r.min_obs.is_some_and(|m| m < 1 || m > r.n) {
                problems.push(format!(
                    "rolling quantile {}: min_obs must be within 1..=n",
                    r.name
                ));
            }
        }
        let needs_ewma = self.standardized_loss.is_some()
            || self
                .rolling_quantile
                .iter()
                .any(|r| r.of == QuantileOf::StandardizedLoss);
        if needs_ewma && self.ewma_variance.is_none() {
            problems.push("standardized losses need ewma_variance".into());
        }
        let names = self.names();
        let mut seen = std::collections::HashSet::new();
        for n in &names {
            if !seen.insert(n) {
                problems.push(format!("feature column {n:?} is defined twice"));
            }
        }
        problems
    }
}

#[derive(Debug, Default)]
struct Series {
    last_time: Option<i64>,
    last_price: Option<f64>,
    ewma: Option<f64>,
    returns: VecDeque<f64>,
    losses: VecDeque<f64>,
    peak: f64,
}

/// Series features of one price column, per key.
#[derive(Debug)]
pub struct SeriesOperator {
    key: String,
    time: String,
    price: String,
    spec: SeriesFeatures,
    return_window: usize,
    loss_window: usize,
    fields: Vec<FieldRef>,
    state: KeyedState<Series>,
    appender: Appender,
}

/// Quantile `q` of `sorted` (ascending, non-empty) by linear interpolation.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// Sample standard deviation (n − 1) of the last `n` values.
fn sample_std(values: &VecDeque<f64>, n: usize) -> f64 {
    let last = || values.range(values.len() - n..);
    let mean = last().sum::<f64>() / n as f64;
    (last().map(|v| (v - mean).powi(2)).sum::<f64>() / (n as f64 - 1.0)).sqrt()
}

fn push_bounded(values: &mut VecDeque<f64>, v: f64, cap: usize) {
    if cap > 0 {
        values.push_back(v);
        if values.len() > cap {
            values.pop_front();
        }
    }
}

impl SeriesOperator {
    /// Features of `price` per `key`, events ordered by `time`; checks the parameters.
    pub fn new(key: &str, time: &str, price: &str, spec: SeriesFeatures) -> Result<Self> {
        let problems = spec.problems();
        if !problems.is_empty() {
            return Err(OperatorError::Config(problems));
        }
        let fields = spec
            .names()
            .iter()
            .map(|n| Arc::new(Field::new(n, DataType::Float64, true)))
            .collect();
        let window_of = |of: QuantileOf| {
            spec.rolling_quantile
                .iter()
                .filter(|r| r.of == of)
                .map(|r| r.n)
                .max()
                .unwrap_or(0)
        };
        let return_window = spec
            .rolling_volatility
            .iter()
            .map(|r| r.n)
            .max()
            .unwrap_or(0)
            .max(window_of(QuantileOf::Return));
        let loss_window = window_of(QuantileOf::StandardizedLoss);
        Ok(Self {
            key: key.into(),
            time: time.into(),
            price: price.into(),
            spec,
            return_window,
            loss_window,
            fields,
            state: KeyedState::default(),
            appender: Appender::default(),
        })
    }
}

impl Operator for SeriesOperator {
    fn name(&self) -> &str {
        "series"
    }

    fn output_fields(&self) -> &[FieldRef] {
        &self.fields
    }

    fn process(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let keys = columns::keys(&batch, &self.key)?;
        let times = columns::event_times(&batch, &self.time)?;
        let prices = columns::f64_values(&batch, &self.price)?;
        let n = batch.num_rows();
        let spec = &self.spec;
        let mut ret = Vec::with_capacity(n);
        let mut var = Vec::with_capacity(n);
        let mut std_loss = Vec::with_capacity(n);
        let mut vols = vec![Vec::with_capacity(n); spec.rolling_volatility.len()];
        let mut quants = vec![Vec::with_capacity(n); spec.rolling_quantile.len()];
        let mut dd = Vec::with_capacity(n);
        let mut problem: Option<String> = None;
        let price_name = self.price.as_str();
        let (return_window, loss_window) = (self.return_window, self.loss_window);
        let mut sorted = Vec::with_capacity(return_window.max(loss_window));
        self.state.for_each_row(&keys, |row, s| {
            let (t, p) = (times[row], prices.value(row));
            if problem.is_none() {
                if !(p.is_finite() && p > 0.0) {
                    problem = Some(format!(
                        "{price_name} must be a positive price, row {row} has {p}"
                    ));
                } else if s.last_time.is_some_and(|last| t < last) {
                    problem = Some(format!(
                        "row {row} is earlier than its instrument's previous event"
                    ));
                }
            }
            let r = s.last_price.map(|last| (p / last).ln());
            let mut z = None;
            if let Some(r) = r {
                // The loss is standardized by the forecast made before it was seen.
                z = s.ewma.filter(|v| *v > 0.0).map(|v| -r / v.sqrt());
                if let Some(e) = &spec.ewma_variance {
                    s.ewma = Some(match s.ewma {
                        Some(v) => e.lambda * v + (1.0 - e.lambda) * r * r,
                        None => r * r,
                    });
                }
                push_bounded(&mut s.returns, r, return_window);
                if let Some(z) = z {
                    push_bounded(&mut s.losses, z, loss_window);
                }
            }
            s.peak = s.peak.max(p);
            s.last_price = Some(p);
            s.last_time = Some(t);
            ret.push(r);
            var.push(s.ewma);
            std_loss.push(z);
            for (out, w) in vols.iter_mut().zip(&spec.rolling_volatility) {
                out.push((s.returns.len() >= w.n).then(|| sample_std(&s.returns, w.n)));
            }
            for (out, w) in quants.iter_mut().zip(&spec.rolling_quantile) {
                let values = match w.of {
                    QuantileOf::Return => &s.returns,
                    QuantileOf::StandardizedLoss => &s.losses,
                };
                out.push((values.len() >= w.min_obs()).then(|| {
                    sorted.clear();
                    sorted.extend(values.iter().rev().take(w.n).copied());
                    sorted.sort_by(f64::total_cmp);
                    quantile(&sorted, w.q)
                }));
            }
            dd.push(p / s.peak - 1.0);
        });
        if let Some(p) = problem {
            return Err(OperatorError::BadInput(p));
        }
        let mut arrays: Vec<ArrayRef> = Vec::new();
        if spec.log_return.is_some() {
            arrays.push(Arc::new(Float64Array::from(ret)));
        }
        if spec.ewma_variance.is_some() {
            arrays.push(Arc::new(Float64Array::from(var)));
        }
        if spec.standardized_loss.is_some() {
            arrays.push(Arc::new(Float64Array::from(std_loss)));
        }
        for v in vols {
            arrays.push(Arc::new(Float64Array::from(v)));
        }
        for q in quants {
            arrays.push(Arc::new(Float64Array::from(q)));
        }
        if spec.drawdown.is_some() {
            arrays.push(Arc::new(Float64Array::from_iter_values(dd)));
        }
        self.appender.append(batch, &self.fields, arrays)
    }

    fn keys(&self) -> usize {
        self.state.len()
    }

    /// One row per instrument: its last time and price, EWMA variance, peak, and the return and
    /// standardized-loss windows as lists (oldest first).
    fn snapshot(&self) -> Result<Option<RecordBatch>> {
        let mut table = StateTable::default();
        let (mut last_time, mut last_price, mut ewma, mut peak) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut returns = ListBuilder::new(Float64Builder::new());
        let mut losses = ListBuilder::new(Float64Builder::new());
        for (key, s) in self.state.iter() {
            table.key(key);
            last_time.push(s.last_time);
            last_price.push(s.last_price);
            ewma.push(s.ewma);
            peak.push(s.peak);
            returns.append_value(s.returns.iter().copied().map(Some));
            losses.append_value(s.losses.iter().copied().map(Some));
        }
        let list = DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)));
        table
            .finish(
                vec![
                    (
                        "last_time",
                        DataType::Int64,
                        true,
                        Arc::new(Int64Array::from(last_time)),
                    ),
                    (
                        "last_price",
                        DataType::Float64,
                        true,
                        Arc::new(Float64Array::from(last_price)),
                    ),
                    (
                        "ewma",
                        DataType::Float64,
                        true,
                        Arc::new(Float64Array::from(ewma)),
                    ),
                    (
                        "peak",
                        DataType::Float64,
                        false,
                        Arc::new(Float64Array::from(peak)),
                    ),
                    ("returns", list.clone(), false, Arc::new(returns.finish())),
                    ("losses", list, false, Arc::new(losses.finish())),
                ],
                None,
            )
            .map(Some)
    }

    fn restore(&mut self, table: &RecordBatch) -> Result<()> {
        let r = StateReader::new(table)?;
        let last_time = r.primitive::<Int64Type>("last_time")?;
        let last_price = r.primitive::<Float64Type>("last_price")?;
        let ewma = r.primitive::<Float64Type>("ewma")?;
        let peak = r.primitive::<Float64Type>("peak")?;
        let list = |name: &str| {
            r.column(name)?.as_list_opt::<i32>().ok_or_else(|| {
                OperatorError::Checkpoint(format!("state column {name:?} is not a list"))
            })
        };
        let (returns, losses) = (list("returns")?, list("losses")?);
        let values = |l: &arrow::array::ListArray, row: usize| -> Result<VecDeque<f64>> {
            let v = l.value(row);
            let v = v.as_primitive_opt::<Float64Type>().ok_or_else(|| {
                OperatorError::Checkpoint("state list values are not Float64".into())
            })?;
            Ok(v.values().iter().copied().collect())
        };
        let opt = |a: &dyn Array, row: usize| a.is_valid(row);
        let mut state = KeyedState::<Series>::default();
        for row in 0..r.rows() {
            let s = state.entry(r.key(row)?);
            s.last_time = opt(last_time, row).then(|| last_time.value(row));
            s.last_price = opt(last_price, row).then(|| last_price.value(row));
            s.ewma = opt(ewma, row).then(|| ewma.value(row));
            s.peak = peak.value(row);
            s.returns = values(returns, row)?;
            s.losses = values(losses, row)?;
        }
        self.state = state;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array, TimestampNanosecondArray};
    use arrow::datatypes::{Float64Type, Schema, TimeUnit};

    fn batch(keys: &[i64], prices: &[f64]) -> RecordBatch {
        let n = keys.len() as i64;
        let schema = Schema::new(vec![
            Field::new("ID", DataType::Int64, false),
            Field::new(
                "T",
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                false,
            ),
            Field::new("P", DataType::Float64, false),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from(keys.to_vec())),
                Arc::new(
                    TimestampNanosecondArray::from((0..n).collect::<Vec<_>>()).with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from(prices.to_vec())),
            ],
        )
        .expect("batch")
    }

    fn all() -> SeriesFeatures {
        SeriesFeatures {
            log_return: Some("R".into()),
            ewma_variance: Some(Ewma {
                name: "V".into(),
                lambda: 0.5,
            }),
            standardized_loss: Some("Z".into()),
            rolling_volatility: vec![Rolling {
                name: "VOL".into(),
                n: 2,
            }],
            rolling_quantile: vec![
                RollingQuantile {
                    name: "Q".into(),
                    n: 3,
                    q: 0.25,
                    of: QuantileOf::Return,
                    min_obs: None,
                },
                RollingQuantile {
                    name: "ZQ".into(),
                    n: 2,
                    q: 0.5,
                    of: QuantileOf::StandardizedLoss,
                    min_obs: Some(1),
                },
            ],
            drawdown: Some("DD".into()),
        }
    }

    fn col(b: &RecordBatch, name: &str) -> Vec<Option<f64>> {
        b.column_by_name(name)
            .expect("column")
            .as_primitive::<Float64Type>()
            .iter()
            .collect()
    }

    fn close(got: &[Option<f64>], want: &[Option<f64>]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            match (g, w) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}"),
                (None, None) => {}
                _ => panic!("{got:?} vs {want:?}"),
            }
        }
    }

    #[test]
    fn hand_computed_values() {
        // Prices 100, 110, 99, 108.9: returns ln 1.1, ln 0.9, ln 1.1.
        let (a, b) = (1.1f64.ln(), 0.9f64.ln());
        let mut op = SeriesOperator::new("ID", "T", "P", all()).expect("op");
        let out = op
            .process(batch(&[1, 1, 1, 1], &[100.0, 110.0, 99.0, 108.9]))
            .expect("process");
        close(&col(&out, "R"), &[None, Some(a), Some(b), Some(a)]);
        // EWMA λ = 0.5: a², 0.5a² + 0.5b², 0.5(0.5a² + 0.5b²) + 0.5a².
        let v2 = 0.5 * a * a + 0.5 * b * b;
        close(
            &col(&out, "V"),
            &[None, Some(a * a), Some(v2), Some(0.5 * v2 + 0.5 * a * a)],
        );
        // Sample std of two values x, y = |x − y| / √2.
        let s = (a - b).abs() / 2f64.sqrt();
        close(&col(&out, "VOL"), &[None, None, Some(s), Some(s)]);
        // 25% quantile of {a, b, a} sorted (b, a, a): h = 0.5 → b + 0.5 (a − b).
        close(
            &col(&out, "Q"),
            &[None, None, None, Some(b + 0.5 * (a - b))],
        );
        // Standardized losses use the variance forecast of the day before: none on row 1 (no
        // forecast yet), −b/√(a²) on row 2, −a/√v2 on row 3.
        let (z2, z3) = (-b / a, -a / v2.sqrt());
        close(&col(&out, "Z"), &[None, None, Some(z2), Some(z3)]);
        // Median of the last two standardized losses, from the first one on (min_obs 1).
        close(
            &col(&out, "ZQ"),
            &[None, None, Some(z2), Some(0.5 * (z2 + z3))],
        );
        // Peak 110 from row 1: 0, 0, 99/110 − 1, 108.9/110 − 1.
        close(
            &col(&out, "DD"),
            &[
                Some(0.0),
                Some(0.0),
                Some(99.0 / 110.0 - 1.0),
                Some(108.9 / 110.0 - 1.0),
            ],
        );
    }

    #[test]
    fn keys_are_independent_and_state_spans_batches() {
        let mut whole = SeriesOperator::new("ID", "T", "P", all()).expect("op");
        let keys = [1, 2, 1, 2, 1, 2, 1];
        let prices = [10.0, 50.0, 11.0, 40.0, 12.0, 45.0, 9.0];
        let one = whole.process(batch(&keys, &prices)).expect("whole");
        let mut split = SeriesOperator::new("ID", "T", "P", all()).expect("op");
        let first = split
            .process(batch(&keys[..3], &prices[..3]))
            .expect("first");
        let b2 = batch(&keys, &prices).slice(3, 4);
        let second = split.process(b2).expect("second");
        for name in ["R", "V", "Z", "VOL", "Q", "ZQ", "DD"] {
            let mut joined = col(&first, name);
            joined.extend(col(&second, name));
            close(&joined, &col(&one, name));
        }
        // Key 2's first return is ln(40/50), untouched by key 1.
        close(&col(&one, "R")[3..4], &[Some((40.0f64 / 50.0).ln())]);
    }

    #[test]
    fn a_restored_operator_computes_what_the_original_does() {
        let keys = [1, 2, 1, 2, 1, 2, 1, 1, 2, 1, 1, 2];
        let prices = [
            10.0, 50.0, 11.0, 40.0, 12.0, 45.0, 9.0, 9.5, 44.0, 10.5, 10.0, 46.0,
        ];
        let all_rows = batch(&keys, &prices);
        for cut in 0..keys.len() {
            let mut original = SeriesOperator::new("ID", "T", "P", all()).expect("op");
            original.process(all_rows.slice(0, cut)).expect("head");
            let table = original.snapshot().expect("snapshot").expect("a table");
            let mut restored = SeriesOperator::new("ID", "T", "P", all()).expect("op");
            restored.restore(&table).expect("restore");
            assert_eq!(restored.keys(), original.keys());
            let tail = all_rows.slice(cut, keys.len() - cut);
            let want = original.process(tail.clone()).expect("original tail");
            let got = restored.process(tail).expect("restored tail");
            // Bit for bit: the same operations on the same state.
            assert_eq!(got, want, "cut {cut}");
        }
    }

    #[test]
    fn bad_prices_and_parameters_are_clear_errors() {
        let mut op = SeriesOperator::new("ID", "T", "P", all()).expect("op");
        let e = op
            .process(batch(&[1, 1], &[10.0, -1.0]))
            .expect_err("negative");
        assert!(e.to_string().contains("P must be a positive price"), "{e}");
        let bad = SeriesFeatures {
            ewma_variance: Some(Ewma {
                name: "V".into(),
                lambda: 1.5,
            }),
            rolling_volatility: vec![Rolling {
                name: "V".into(),
                n: 1,
            }],
            ..SeriesFeatures::default()
        };
        let e = SeriesOperator::new("ID", "T", "P", bad).expect_err("config");
        assert!(
            matches!(e, OperatorError::Config(ref p) if p.len() == 3),
            "{e}"
        );
    }
}
