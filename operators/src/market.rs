//! Market-risk series features, keyed by instrument: log return, RiskMetrics EWMA variance,
//! rolling realized volatility, rolling empirical return quantile and running drawdown.
//!
//! Events must arrive in event-time order per instrument (late events are a bad input, since
//! every feature here depends on the previous price). Each output is `Float64`, null while it is
//! undefined (no previous price yet, window not yet full), never filled with a made-up value.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, FieldRef};

use crate::columns::{self, KeyedState};
use crate::{Appender, Operator, OperatorError, Result};

/// Which series features to compute, and their column names.
#[derive(Debug, Clone, Default)]
pub struct SeriesFeatures {
    /// `ln(p_t / p_{t-1})`.
    pub log_return: Option<String>,
    /// RiskMetrics EWMA variance after observing r_t: `σ²_t = λ σ²_{t-1} + (1-λ) r_t²`, started
    /// at `σ²_1 = r_1²`; the forecast of the next period's variance. `(name, λ)`.
    pub ewma_variance: Option<(String, f64)>,
    /// Sample standard deviation (n − 1) of the last N returns. `(name, N)`.
    pub rolling_volatility: Option<(String, usize)>,
    /// Empirical q-quantile of the last N returns, linear interpolation between order
    /// statistics (numpy's default). `(name, N, q)`.
    pub rolling_quantile: Option<(String, usize, f64)>,
    /// `p_t / max_{s <= t} p_s − 1` (0 at a new high, negative below it).
    pub drawdown: Option<String>,
}

#[derive(Debug, Default)]
struct Series {
    last_time: Option<i64>,
    last_price: Option<f64>,
    ewma: Option<f64>,
    returns: VecDeque<f64>,
    peak: f64,
}

/// Series features of one price column, per key.
#[derive(Debug)]
pub struct SeriesOperator {
    key: String,
    time: String,
    price: String,
    spec: SeriesFeatures,
    window: usize,
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

impl SeriesOperator {
    /// Features of `price` per `key`, events ordered by `time`; checks the parameters.
    pub fn new(key: &str, time: &str, price: &str, spec: SeriesFeatures) -> Result<Self> {
        let mut problems = Vec::new();
        if let Some((_, lambda)) = &spec.ewma_variance
            && !(*lambda > 0.0 && *lambda < 1.0)
        {
            problems.push(format!("EWMA λ must be within (0, 1), not {lambda}"));
        }
        if let Some((_, n)) = &spec.rolling_volatility
            && *n < 2
        {
            problems.push(format!("rolling volatility needs N >= 2, not {n}"));
        }
        if let Some((_, n, q)) = &spec.rolling_quantile {
            if *n < 1 {
                problems.push("rolling quantile needs N >= 1".into());
            }
            if !(0.0..=1.0).contains(q) {
                problems.push(format!("quantile must be within 0..=1, not {q}"));
            }
        }
        if !problems.is_empty() {
            return Err(OperatorError::Config(problems));
        }
        let names = [
            spec.log_return.clone(),
            spec.ewma_variance.as_ref().map(|(n, _)| n.clone()),
            spec.rolling_volatility.as_ref().map(|(n, _)| n.clone()),
            spec.rolling_quantile.as_ref().map(|(n, _, _)| n.clone()),
            spec.drawdown.clone(),
        ];
        let fields = names
            .iter()
            .flatten()
            .map(|n| Arc::new(Field::new(n, DataType::Float64, true)))
            .collect();
        let window = spec
            .rolling_volatility
            .as_ref()
            .map(|(_, n)| *n)
            .into_iter()
            .chain(spec.rolling_quantile.as_ref().map(|(_, n, _)| *n))
            .max()
            .unwrap_or(0);
        Ok(Self {
            key: key.into(),
            time: time.into(),
            price: price.into(),
            spec,
            window,
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
        let mut ret = Vec::with_capacity(n);
        let mut var = Vec::with_capacity(n);
        let mut vol = Vec::with_capacity(n);
        let mut qua = Vec::with_capacity(n);
        let mut dd = Vec::with_capacity(n);
        let mut problem: Option<String> = None;
        let spec = &self.spec;
        let price_name = self.price.as_str();
        let window = self.window;
        let mut sorted = Vec::with_capacity(window);
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
            if let Some(r) = r {
                if let Some((_, lambda)) = &spec.ewma_variance {
                    s.ewma = Some(match s.ewma {
                        Some(v) => lambda * v + (1.0 - lambda) * r * r,
                        None => r * r,
                    });
                }
                if window > 0 {
                    s.returns.push_back(r);
                    if s.returns.len() > window {
                        s.returns.pop_front();
                    }
                }
            }
            s.peak = s.peak.max(p);
            s.last_price = Some(p);
            s.last_time = Some(t);
            ret.push(r);
            var.push(s.ewma);
            vol.push(
                spec.rolling_volatility
                    .as_ref()
                    .and_then(|(_, n)| (s.returns.len() >= *n).then(|| sample_std(&s.returns, *n))),
            );
            qua.push(spec.rolling_quantile.as_ref().and_then(|(_, n, q)| {
                (s.returns.len() >= *n).then(|| {
                    sorted.clear();
                    sorted.extend(s.returns.iter().rev().take(*n).copied());
                    sorted.sort_by(f64::total_cmp);
                    quantile(&sorted, *q)
                })
            }));
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
        if spec.rolling_volatility.is_some() {
            arrays.push(Arc::new(Float64Array::from(vol)));
        }
        if spec.rolling_quantile.is_some() {
            arrays.push(Arc::new(Float64Array::from(qua)));
        }
        if spec.drawdown.is_some() {
            arrays.push(Arc::new(Float64Array::from_iter_values(dd)));
        }
        self.appender.append(batch, &self.fields, arrays)
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
            ewma_variance: Some(("V".into(), 0.5)),
            rolling_volatility: Some(("VOL".into(), 2)),
            rolling_quantile: Some(("Q".into(), 3, 0.25)),
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
        for name in ["R", "V", "VOL", "Q", "DD"] {
            let mut joined = col(&first, name);
            joined.extend(col(&second, name));
            close(&joined, &col(&one, name));
        }
        // Key 2's first return is ln(40/50), untouched by key 1.
        close(&col(&one, "R")[3..4], &[Some((40.0f64 / 50.0).ln())]);
    }

    #[test]
    fn bad_prices_and_parameters_are_clear_errors() {
        let mut op = SeriesOperator::new("ID", "T", "P", all()).expect("op");
        let e = op
            .process(batch(&[1, 1], &[10.0, -1.0]))
            .expect_err("negative");
        assert!(e.to_string().contains("P must be a positive price"), "{e}");
        let bad = SeriesFeatures {
            ewma_variance: Some(("V".into(), 1.5)),
            rolling_volatility: Some(("S".into(), 1)),
            ..SeriesFeatures::default()
        };
        let e = SeriesOperator::new("ID", "T", "P", bad).expect_err("config");
        assert!(
            matches!(e, OperatorError::Config(ref p) if p.len() == 2),
            "{e}"
        );
    }
}
