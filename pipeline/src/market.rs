//! The market-risk pipeline: price ticks → keyed series features → the VaR model → instrument
//! risk scores → portfolio VaR and limit breaches. [`MarketStage`] is the whole chain after the
//! source; the backtest ([`backtest`]) and the training-set export ([`export_features`]) feed it
//! from files, a live source feeds it from Kafka, so a backtest measures what runs live.
//!
//! VaR conventions: the model predicts the next day's loss quantile in log-return units `v`
//! (a loss is `−r_{t+1}`, `r = ln(p_{t+1}/p_t)`); scores carry it as a loss fraction
//! `1 − e^{−v}` of the position's value. Both say "exceeded" on the same days.
//!
//! Portfolio aggregation is variance–covariance: with `u_i = quantity_i · price_i · VaR_i` (each
//! instrument's own VaR in currency, signed by the position) and `ρ` the EWMA correlation of
//! the instruments' returns (RiskMetrics, λ configurable), the portfolio VaR is `√(uᵀ ρ u)`.
//! One instrument gives its own VaR; perfectly correlated ones add up; hedges offset. The
//! covariance updates once per event time, from the returns observed at that time (an
//! instrument without a tick then counts as unchanged).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, RecordBatch, StringArray,
    TimestampNanosecondArray,
};
use arrow::compute::{filter_record_batch, take_record_batch};
use arrow::datatypes::{DataType, Field, Float64Type, Schema};
use chrono::{DateTime, NaiveDate, Utc};
use riskpipe_models::{ModelConfig, Scorer};
use riskpipe_operators::{Operator, SeriesFeatures, SeriesOperator};
use riskpipe_schemas::market;
use riskpipe_schemas::{LimitBreach, RiskScore};
use serde::{Deserialize, Serialize};

use crate::config::{parse_toml, read_config, resolve};
use crate::kafka::KafkaConfig;
use crate::var::{VarStats, var_stats};
use crate::{PipelineError, Result};

/// Column of the predicted VaR (loss fraction) in scored tick batches.
pub const VAR: &str = "VAR";
/// Column of the volatility estimate (daily return standard deviation) in scored tick batches.
pub const VOLATILITY: &str = "VOLATILITY";

/// A market-risk pipeline file: `[market]`, `[model]`, portfolios, backtest settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketConfig {
    /// Features and VaR settings.
    pub market: MarketSection,
    /// The VaR model; its input columns come from its `riskpipe.features` metadata.
    pub model: ModelConfig,
    /// Portfolios whose VaR is aggregated and checked against a limit.
    #[serde(default)]
    pub portfolios: Vec<PortfolioConfig>,
    /// How a history file is read and evaluated.
    #[serde(default)]
    pub backtest: MarketBacktestConfig,
    /// Kafka topics of the live market pipeline.
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
}

fn default_confidence() -> f64 {
    0.99
}
fn default_correlation_lambda() -> f64 {
    0.94
}

/// What the market pipeline computes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketSection {
    /// Confidence level of the VaR the model predicts (e.g. 0.99).
    #[serde(default = "default_confidence")]
    pub confidence: f64,
    /// λ of the EWMA return covariance that gives portfolio correlations.
    #[serde(default = "default_correlation_lambda")]
    pub correlation_lambda: f64,
    /// Per-instrument series features; `ewma_variance` is required (it is the volatility
    /// estimate on every score).
    pub features: SeriesFeatures,
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

/// A price CSV (optionally gzip) read as ticks, e.g. a Yahoo-style daily file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvTicks {
    /// Column of the date or time.
    pub time_column: String,
    /// chrono format of that column: a date format (`%m/%d/%Y`) or a date-time format.
    pub time_format: String,
    /// Column of the price.
    pub price_column: String,
    /// Column of the instrument id; without it every row is `instrument`.
    #[serde(default)]
    pub instrument_column: Option<String>,
    /// The instrument id when the file has no instrument column.
    #[serde(default)]
    pub instrument: Option<String>,
}

impl MarketConfig {
    /// Parses a config; relative paths are resolved against `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Self> {
        let mut cfg: MarketConfig = parse_toml(text)?;
        resolve(&mut cfg.model.path, base_dir);
        if let Some(input) = &mut cfg.backtest.input {
            resolve(input, base_dir);
        }
        Ok(cfg)
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let (text, dir) = read_config(path)?;
        Self::from_toml(&text, dir)
    }

    /// Every problem of the config, without touching the model or any data.
    pub fn problems(&self) -> Vec<String> {
        let mut p: Vec<String> = self
            .market
            .features
            .problems()
            .into_iter()
            .map(|e| format!("market.features: {e}"))
            .collect();
        if self.market.features.ewma_variance.is_none() {
            p.push(
                "market.features.ewma_variance is required (the volatility on every score)".into(),
            );
        }
        if !(self.market.confidence > 0.5 && self.market.confidence < 1.0) {
            p.push(format!(
                "market.confidence must be within (0.5, 1), not {}",
                self.market.confidence
            ));
        }
        let lambda = self.market.correlation_lambda;
        if !(lambda > 0.0 && lambda < 1.0) {
            p.push(format!(
                "market.correlation_lambda must be within (0, 1), not {lambda}"
            ));
        }
        for name in self.market.features.names() {
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
                p.push(format!("market.features: {name:?} is a reserved column"));
            }
        }
        if !self.model.path.is_file() {
            p.push(format!(
                "model.path {} does not exist",
                self.model.path.display()
            ));
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
            p.push("backtest.batch_rows must be at least 1".into());
        }
        if let Some(c) = &self.backtest.csv
            && c.instrument_column.is_none() == c.instrument.is_none()
        {
            p.push("backtest.csv needs exactly one of instrument_column and instrument".into());
        }
        if let Some(k) = &self.kafka {
            p.extend(k.problems());
        }
        p
    }

    /// [`Self::problems`] as an error when there are any.
    pub fn validate(&self) -> Result<()> {
        let p = self.problems();
        if p.is_empty() {
            Ok(())
        } else {
            Err(PipelineError::Config(p))
        }
    }
}

/// Whether a config file describes a market pipeline (it has a `[market]` table).
pub fn is_market_config(path: &Path) -> Result<bool> {
    let table: toml::Table = parse_toml(&read_config(path)?.0)?;
    Ok(table.contains_key("market"))
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> PipelineError {
    PipelineError::External(format!("reading {}: {e}", path.display()))
}

/// Reads a price history as ticks sorted by event time (stable: file order within a time).
/// Parquet and CSV already in the tick schema are read as they are; other CSV (gzip or plain)
/// goes through `csv`.
pub fn read_ticks(path: &Path, csv: Option<&CsvTicks>) -> Result<RecordBatch> {
    let name = path.to_string_lossy().to_lowercase();
    let ticks = if name.ends_with(".parquet") {
        conform(crate::source::read_file(path)?)?
    } else {
        let mut text = String::new();
        let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
        if name.ends_with(".gz") {
            flate2::read::GzDecoder::new(file)
                .read_to_string(&mut text)
                .map_err(|e| io_err(path, e))?;
        } else {
            std::io::BufReader::new(file)
                .read_to_string(&mut text)
                .map_err(|e| io_err(path, e))?;
        }
        parse_csv(&text, csv)?
    };
    let times = ticks
        .column_by_name(market::TIME)
        .map(|c| {
            c.as_primitive::<arrow::datatypes::TimestampNanosecondType>()
                .clone()
        })
        .ok_or_else(|| PipelineError::Bug("ticks without TIME".into()))?;
    let mut order: Vec<u32> = (0..ticks.num_rows() as u32).collect();
    order.sort_by_key(|&i| times.value(i as usize));
    Ok(take_record_batch(
        &ticks,
        &arrow::array::UInt32Array::from(order),
    )?)
}

/// A file in the tick schema, cast to it (so that e.g. a timestamp without zone is accepted).
fn conform(batch: RecordBatch) -> Result<RecordBatch> {
    let schema = riskpipe_schemas::market_tick_schema();
    let mut columns = Vec::new();
    for f in schema.fields() {
        match batch.column_by_name(f.name()) {
            Some(c) => columns.push(arrow::compute::cast(c, f.data_type())?),
            None if f.is_nullable() => columns.push(arrow::array::new_null_array(
                f.data_type(),
                batch.num_rows(),
            )),
            None => {
                return Err(PipelineError::BadInput(format!(
                    "price history has no {} column",
                    f.name()
                )));
            }
        }
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

fn parse_time(value: &str, format: &str) -> Option<i64> {
    let value = value.trim();
    let ns = match chrono::NaiveDateTime::parse_from_str(value, format) {
        Ok(t) => t.and_utc().timestamp_nanos_opt(),
        Err(_) => NaiveDate::parse_from_str(value, format)
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .and_then(|t| t.and_utc().timestamp_nanos_opt()),
    };
    ns.or_else(|| {
        DateTime::parse_from_rfc3339(value)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
    })
}

/// Parses a price CSV. Without a mapping the file must have the tick schema's columns, times in
/// RFC 3339. Every bad row is reported (up to 10), none is dropped silently.
fn parse_csv(text: &str, mapping: Option<&CsvTicks>) -> Result<RecordBatch> {
    let default = CsvTicks {
        time_column: market::TIME.into(),
        time_format: "%Y-%m-%dT%H:%M:%S%.fZ".into(),
        price_column: market::PRICE.into(),
        instrument_column: Some(market::INSTRUMENT.into()),
        instrument: None,
    };
    let m = mapping.unwrap_or(&default);
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| PipelineError::BadInput("price CSV is empty".into()))?
        .split(',')
        .map(str::trim)
        .collect();
    let col = |name: &str| {
        header.iter().position(|h| *h == name).ok_or_else(|| {
            PipelineError::BadInput(format!("price CSV has no column {name:?} (has {header:?})"))
        })
    };
    let (ti, pi) = (col(&m.time_column)?, col(&m.price_column)?);
    let ii = m.instrument_column.as_deref().map(col).transpose()?;
    let (mut ids, mut times, mut prices) = (Vec::new(), Vec::new(), Vec::new());
    let mut problems = Vec::new();
    for (n, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let field = |i: usize| f.get(i).copied().unwrap_or("");
        let t = parse_time(field(ti), &m.time_format);
        let p = field(pi)
            .parse::<f64>()
            .ok()
            .filter(|p| p.is_finite() && *p > 0.0);
        let id = match ii {
            Some(i) => field(i).to_string(),
            None => m.instrument.clone().unwrap_or_default(),
        };
        match (t, p) {
            (Some(t), Some(p)) if !id.is_empty() => {
                ids.push(id);
                times.push(t);
                prices.push(p);
            }
            _ => problems.push(format!("data row {}: {line:?}", n + 1)),
        }
    }
    if !problems.is_empty() {
        let shown: Vec<_> = problems.iter().take(10).cloned().collect();
        return Err(PipelineError::BadInput(format!(
            "{} price rows without a valid time, positive price and instrument (format {:?}): {}",
            problems.len(),
            m.time_format,
            shown.join("; ")
        )));
    }
    let n = ids.len();
    Ok(RecordBatch::try_new(
        riskpipe_schemas::market_tick_schema(),
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(TimestampNanosecondArray::from(times).with_timezone("UTC")),
            Arc::new(Float64Array::from(prices)),
            arrow::array::new_null_array(&DataType::Float64, n),
        ],
    )?)
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

fn rfc3339(ns: i64) -> String {
    DateTime::<Utc>::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// What one batch of ticks produced.
#[derive(Debug)]
pub struct MarketOutput {
    /// The ticks with every feature, `VAR` (loss fraction; null before the model's features
    /// are defined) and `VOLATILITY`.
    pub scored: RecordBatch,
    /// Portfolio VaR scores, one per portfolio and event time once all its instruments have one.
    pub portfolio_scores: Vec<RiskScore>,
    /// Portfolio scores over their limit.
    pub breaches: Vec<LimitBreach>,
    /// VaR confidence of every score.
    pub confidence: f64,
    /// The model's name.
    pub model: String,
}

impl MarketOutput {
    /// One score per tick that has a VaR (ticks in their warm-up have none).
    pub fn instrument_scores(&self) -> Result<Vec<RiskScore>> {
        let b = &self.scored;
        let ids = b.column(0).as_string::<i32>();
        let times = b
            .column(1)
            .as_primitive::<arrow::datatypes::TimestampNanosecondType>();
        let column = |name: &str| {
            b.column_by_name(name)
                .map(|c| c.as_primitive::<Float64Type>().clone())
                .ok_or_else(|| PipelineError::Bug(format!("{name} missing")))
        };
        let (var, vol) = (column(VAR)?, column(VOLATILITY)?);
        Ok((0..b.num_rows())
            .filter(|&i| var.is_valid(i))
            .map(|i| RiskScore {
                instrument: Some(ids.value(i).to_string()),
                portfolio: None,
                time: rfc3339(times.value(i)),
                var: var.value(i),
                confidence: self.confidence,
                volatility: if vol.is_valid(i) { vol.value(i) } else { 0.0 },
                model: self.model.clone(),
            })
            .collect())
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Latest {
    price: f64,
    var: Option<f64>,
}

/// The chain after the source: series features, the VaR model, portfolio aggregation, limits.
#[derive(Debug)]
pub struct MarketStage {
    features: SeriesOperator,
    scorer: Scorer,
    variance: String,
    confidence: f64,
    portfolios: Vec<PortfolioConfig>,
    /// Instruments held by any portfolio, in covariance order.
    universe: Vec<String>,
    latest: HashMap<String, Latest>,
    covariance: EwmaCovariance,
    /// Event time of each instrument's last processed tick.
    last_time: HashMap<String, i64>,
}

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

impl MarketStage {
    /// Builds the stage from a validated config (loads the model).
    pub fn new(cfg: &MarketConfig) -> Result<Self> {
        cfg.validate()?;
        let features = SeriesOperator::new(
            market::INSTRUMENT,
            market::TIME,
            market::PRICE,
            cfg.market.features.clone(),
        )?;
        let scorer = Scorer::load(&cfg.model)?;
        let names = cfg.market.features.names();
        let missing: Vec<_> = scorer
            .features()
            .iter()
            .filter(|f| !names.contains(f) && f.as_str() != market::PRICE)
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(PipelineError::Config(vec![format!(
                "model {} reads {missing:?}, which [market.features] does not compute",
                scorer.name()
            )]));
        }
        let mut universe: Vec<String> = cfg
            .portfolios
            .iter()
            .flat_map(|p| p.positions.keys().cloned())
            .collect();
        universe.sort();
        universe.dedup();
        Ok(Self {
            features,
            scorer,
            variance: cfg
                .market
                .features
                .ewma_variance
                .as_ref()
                .map(|e| e.name.clone())
                .unwrap_or_default(),
            confidence: cfg.market.confidence,
            portfolios: cfg.portfolios.clone(),
            universe: universe.clone(),
            covariance: EwmaCovariance::new(universe.len(), cfg.market.correlation_lambda),
            latest: HashMap::new(),
            last_time: HashMap::new(),
        })
    }

    /// The model's name, stamped on every score.
    pub fn model(&self) -> &str {
        self.scorer.name()
    }

    /// The model's input columns.
    pub fn model_features(&self) -> &[String] {
        self.scorer.features()
    }

    /// Splits off the ticks no series can take: a non-positive or non-finite price, or an
    /// event time before the instrument's last tick (late data). Returns the rest, in order,
    /// and each rejected row with its reason. `ticks` are in the tick schema.
    pub fn split_invalid(
        &self,
        ticks: &RecordBatch,
    ) -> Result<(RecordBatch, Vec<(usize, String)>)> {
        let ids = ticks.column(0).as_string::<i32>();
        let times = ticks
            .column(1)
            .as_primitive::<arrow::datatypes::TimestampNanosecondType>();
        let prices = ticks.column(2).as_primitive::<Float64Type>();
        let mut last: HashMap<&str, i64> = HashMap::new();
        let mut keep = Vec::with_capacity(ticks.num_rows());
        let mut rejected = Vec::new();
        for i in 0..ticks.num_rows() {
            let (id, t, p) = (ids.value(i), times.value(i), prices.value(i));
            let previous = last
                .get(id)
                .copied()
                .or_else(|| self.last_time.get(id).copied());
            let reason = if !(p.is_finite() && p > 0.0) {
                Some(format!("{}: price {p} is not positive", market::PRICE))
            } else if previous.is_some_and(|prev| t < prev) {
                Some(format!(
                    "{id}: tick at {} is older than the instrument's last tick at {}",
                    rfc3339(t),
                    rfc3339(previous.unwrap_or_default())
                ))
            } else {
                None
            };
            keep.push(reason.is_none());
            match reason {
                Some(r) => rejected.push((i, r)),
                None => {
                    last.insert(id, t);
                }
            }
        }
        Ok((
            filter_record_batch(ticks, &BooleanArray::from(keep))?,
            rejected,
        ))
    }

    /// Processes ticks ordered by event time, in the tick schema (as every source yields them:
    /// [`read_ticks`] and the Kafka decoder).
    pub fn process(&mut self, ticks: RecordBatch) -> Result<MarketOutput> {
        let with_features = self.features.process(ticks)?;
        let ids = with_features.column(0).as_string::<i32>();
        let times = with_features
            .column(1)
            .as_primitive::<arrow::datatypes::TimestampNanosecondType>();
        for i in 0..with_features.num_rows() {
            // An instrument's id is allocated once, not per tick.
            match self.last_time.get_mut(ids.value(i)) {
                Some(t) => *t = times.value(i),
                None => {
                    self.last_time
                        .insert(ids.value(i).to_string(), times.value(i));
                }
            }
        }
        let n = with_features.num_rows();
        // Score only rows whose model inputs are all defined (warm-up rows get a null VaR).
        let mut ready = vec![true; n];
        for name in self.scorer.features() {
            let c = with_features
                .column_by_name(name)
                .ok_or_else(|| PipelineError::Bug(format!("feature {name} missing")))?;
            for (i, r) in ready.iter_mut().enumerate() {
                *r &= c.is_valid(i);
            }
        }
        let mask: BooleanArray = ready.iter().copied().map(Some).collect();
        let scores = self
            .scorer
            .score(&filter_record_batch(&with_features, &mask)?)?;
        let mut scores = scores.into_iter();
        let var: Float64Array = ready
            .iter()
            .map(|r| {
                r.then(|| scores.next())
                    .flatten()
                    .map(|v| 1.0 - (-f64::from(v)).exp())
            })
            .collect();
        let variance = with_features
            .column_by_name(&self.variance)
            .ok_or_else(|| PipelineError::Bug("EWMA variance column missing".into()))?
            .as_primitive::<Float64Type>()
            .clone();
        let volatility: Float64Array = variance.iter().map(|v| v.map(f64::sqrt)).collect();
        let mut fields: Vec<Arc<Field>> = with_features.schema().fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(VAR, DataType::Float64, true)));
        fields.push(Arc::new(Field::new(VOLATILITY, DataType::Float64, true)));
        let mut columns: Vec<ArrayRef> = with_features.columns().to_vec();
        columns.push(Arc::new(var));
        columns.push(Arc::new(volatility));
        let scored = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        let (portfolio_scores, breaches) = self.aggregate(&scored)?;
        Ok(MarketOutput {
            scored,
            portfolio_scores,
            breaches,
            confidence: self.confidence,
            model: self.scorer.name().to_string(),
        })
    }

    /// Portfolio VaR at the end of each event time in `scored`.
    fn aggregate(&mut self, scored: &RecordBatch) -> Result<(Vec<RiskScore>, Vec<LimitBreach>)> {
        if self.portfolios.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let ids = scored.column(0).as_string::<i32>();
        let times = scored
            .column(1)
            .as_primitive::<arrow::datatypes::TimestampNanosecondType>();
        let prices = scored.column(2).as_primitive::<Float64Type>();
        let var = scored
            .column_by_name(VAR)
            .ok_or_else(|| PipelineError::Bug("VAR missing".into()))?
            .as_primitive::<Float64Type>();
        let (mut out, mut breaches) = (Vec::new(), Vec::new());
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
                self.update_covariance(&step);
                step.clear();
                self.score_portfolios(times.value(i), &mut out, &mut breaches);
            }
        }
        Ok((out, breaches))
    }

    fn update_covariance(&mut self, step: &HashMap<&str, f64>) {
        let r: Vec<f64> = self
            .universe
            .iter()
            .map(|i| step.get(i.as_str()).copied().unwrap_or(0.0))
            .collect();
        self.covariance.update(&r);
    }

    fn score_portfolios(
        &self,
        time: i64,
        out: &mut Vec<RiskScore>,
        breaches: &mut Vec<LimitBreach>,
    ) {
        for p in &self.portfolios {
            let mut legs = Vec::new();
            for (id, qty) in &p.positions {
                let Some(latest) = self.latest.get(id) else {
                    break;
                };
                let Some(v) = latest.var else { break };
                let Some(index) = self.universe.iter().position(|u| u == id) else {
                    break;
                };
                legs.push((index, qty * latest.price * v));
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
            let time = rfc3339(time);
            let model = self.scorer.name().to_string();
            out.push(RiskScore {
                instrument: None,
                portfolio: Some(p.name.clone()),
                time: time.clone(),
                var,
                confidence: self.confidence,
                // The portfolio's daily volatility as a fraction of its value (RiskMetrics
                // scaling of its VaR back to one standard deviation).
                volatility: if value.abs() > 0.0 {
                    var / value.abs() / normal_quantile(self.confidence)
                } else {
                    0.0
                },
                model: model.clone(),
            });
            if var > p.limit {
                breaches.push(LimitBreach {
                    portfolio: p.name.clone(),
                    time,
                    var,
                    limit: p.limit,
                    confidence: self.confidence,
                    model,
                });
            }
        }
    }
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

/// What a market backtest produced.
#[derive(Debug)]
pub struct MarketOutcome {
    /// The report.
    pub report: MarketReport,
    /// Every scored tick, in replay order.
    pub scored: Vec<RecordBatch>,
    /// Portfolio scores.
    pub portfolio_scores: Vec<RiskScore>,
    /// Limit breaches.
    pub breaches: Vec<LimitBreach>,
    /// Files written.
    pub files: Vec<PathBuf>,
}

/// Runs ticks through a fresh [`MarketStage`] in micro-batches (the live path's chain).
pub fn replay(cfg: &MarketConfig, ticks: &RecordBatch) -> Result<(MarketStage, Vec<MarketOutput>)> {
    let mut stage = MarketStage::new(cfg)?;
    let mut outputs = Vec::new();
    let mut offset = 0;
    let rows = cfg.backtest.batch_rows.max(1);
    while offset < ticks.num_rows() {
        let len = rows.min(ticks.num_rows() - offset);
        outputs.push(stage.process(ticks.slice(offset, len))?);
        offset += len;
    }
    Ok((stage, outputs))
}

/// A per-day series of one instrument.
struct Day {
    time: i64,
    /// Log return into this day (none on the first).
    ret: Option<f64>,
    /// The model's VaR made at this day's close, in log-loss units.
    var_log: Option<f64>,
}

fn instrument_days(scored: &[RecordBatch]) -> Result<BTreeMap<String, Vec<Day>>> {
    let mut days: BTreeMap<String, Vec<Day>> = BTreeMap::new();
    let mut last_price: HashMap<String, f64> = HashMap::new();
    for b in scored {
        let ids = b.column(0).as_string::<i32>();
        let times = b
            .column(1)
            .as_primitive::<arrow::datatypes::TimestampNanosecondType>();
        let prices = b.column(2).as_primitive::<Float64Type>();
        let var = b
            .column_by_name(VAR)
            .ok_or_else(|| PipelineError::Bug("VAR missing".into()))?
            .as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            let id = ids.value(i);
            let p = prices.value(i);
            let ret = last_price.insert(id.to_string(), p).map(|l| (p / l).ln());
            days.entry(id.to_string()).or_default().push(Day {
                time: times.value(i),
                ret,
                var_log: var.is_valid(i).then(|| -(1.0 - var.value(i)).ln()),
            });
        }
    }
    Ok(days)
}

/// Backtests the market pipeline on a price history: replays it through the live chain,
/// evaluates the model's VaR of the first instrument (or `instrument`) against the next day's
/// loss beside the RiskMetrics baseline, writes scores.parquet, portfolio.json, report.json and
/// var.png into `output`.
pub fn backtest(
    cfg: &MarketConfig,
    input: &Path,
    output: &Path,
    instrument: Option<&str>,
) -> Result<MarketOutcome> {
    let ticks = read_ticks(input, cfg.backtest.csv.as_ref())?;
    let (stage, outputs) = replay(cfg, &ticks)?;
    let model = stage.model().to_string();
    let mut scored = Vec::new();
    let mut portfolio_scores = Vec::new();
    let mut breaches = Vec::new();
    for o in outputs {
        scored.push(o.scored);
        portfolio_scores.extend(o.portfolio_scores);
        breaches.extend(o.breaches);
    }
    // The baseline always uses λ = 0.94, whatever the pipeline's own EWMA: run it separately.
    let baseline_spec = SeriesFeatures {
        ewma_variance: Some(riskpipe_operators::Ewma {
            name: "RM_VAR".into(),
            lambda: 0.94,
        }),
        ..SeriesFeatures::default()
    };
    let mut baseline_op = SeriesOperator::new(
        market::INSTRUMENT,
        market::TIME,
        market::PRICE,
        baseline_spec,
    )?;
    let baseline = baseline_op.process(ticks.clone())?;
    let rm_days = instrument_days_baseline(&baseline)?;
    let days = instrument_days(&scored)?;
    let pick = match instrument {
        Some(i) => i.to_string(),
        None => days
            .keys()
            .next()
            .cloned()
            .ok_or_else(|| PipelineError::BadInput("price history is empty".into()))?,
    };
    let series = days
        .get(&pick)
        .ok_or_else(|| PipelineError::BadInput(format!("no ticks of instrument {pick:?}")))?;
    let rm = rm_days
        .get(&pick)
        .ok_or_else(|| PipelineError::Bug("baseline lost an instrument".into()))?;
    let z = normal_quantile(cfg.market.confidence);
    let warmup = cfg.backtest.warmup;
    // Forecast at t (from data up to t) against the loss of t+1, on days where both models
    // have a forecast.
    let mut eval = Vec::new();
    for t in warmup..series.len().saturating_sub(1) {
        if let (Some(v), Some(rv), Some(r)) = (series[t].var_log, rm[t], series[t + 1].ret) {
            eval.push(EvalDay {
                time: series[t + 1].time,
                ret: r,
                model: v,
                baseline: z * rv.sqrt(),
            });
        }
    }
    if eval.is_empty() {
        return Err(PipelineError::BadInput(format!(
            "{pick}: no day after the {warmup}-observation warm-up has a forecast"
        )));
    }
    let hits =
        |f: fn(&EvalDay) -> f64| -> Vec<bool> { eval.iter().map(|d| -d.ret > f(d)).collect() };
    let report = MarketReport {
        instrument: pick.clone(),
        confidence: cfg.market.confidence,
        warmup,
        evaluated_from: rfc3339(eval[0].time),
        evaluated_to: rfc3339(eval[eval.len() - 1].time),
        rows: vec![
            VarRow {
                model: model.clone(),
                stats: var_stats(&hits(|d| d.model), cfg.market.confidence),
            },
            VarRow {
                model: "RiskMetrics EWMA 0.94 normal".into(),
                stats: var_stats(&hits(|d| d.baseline), cfg.market.confidence),
            },
        ],
        portfolio_scores: portfolio_scores.len(),
        limit_breaches: breaches.len(),
    };
    std::fs::create_dir_all(output)
        .map_err(|e| PipelineError::External(format!("creating {}: {e}", output.display())))?;
    let mut files = Vec::new();
    let scores_path = output.join("scores.parquet");
    write_parquet(&scored, &scores_path)?;
    files.push(scores_path);
    files.push(write_json(output.join("report.json"), &report)?);
    files.push(write_json(
        output.join("portfolio.json"),
        &PortfolioFile {
            scores: &portfolio_scores,
            breaches: &breaches,
        },
    )?);
    let png = output.join("var.png");
    plot_var(&eval, &report, &png)?;
    files.push(png);
    Ok(MarketOutcome {
        report,
        scored,
        portfolio_scores,
        breaches,
        files,
    })
}

#[derive(Serialize)]
struct PortfolioFile<'a> {
    scores: &'a [RiskScore],
    breaches: &'a [LimitBreach],
}

fn write_json<T: Serialize>(path: PathBuf, value: &T) -> Result<PathBuf> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| PipelineError::Bug(e.to_string()))?;
    std::fs::write(&path, text)
        .map_err(|e| PipelineError::External(format!("writing {}: {e}", path.display())))?;
    Ok(path)
}

fn instrument_days_baseline(baseline: &RecordBatch) -> Result<BTreeMap<String, Vec<Option<f64>>>> {
    let ids = baseline.column(0).as_string::<i32>();
    let v = baseline
        .column_by_name("RM_VAR")
        .ok_or_else(|| PipelineError::Bug("RM_VAR missing".into()))?
        .as_primitive::<Float64Type>();
    let mut out: BTreeMap<String, Vec<Option<f64>>> = BTreeMap::new();
    for i in 0..baseline.num_rows() {
        out.entry(ids.value(i).to_string())
            .or_default()
            .push(v.is_valid(i).then(|| v.value(i)));
    }
    Ok(out)
}

/// One evaluated day: the realized log return and both forecasts (log-loss units).
#[derive(Debug, Clone, Copy)]
struct EvalDay {
    time: i64,
    ret: f64,
    model: f64,
    baseline: f64,
}

fn write_parquet(batches: &[RecordBatch], path: &Path) -> Result<()> {
    let file = std::fs::File::create(path)
        .map_err(|e| PipelineError::External(format!("creating {}: {e}", path.display())))?;
    let schema = batches
        .first()
        .map(|b| b.schema())
        .unwrap_or_else(|| Arc::new(Schema::empty()));
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, None)?;
    for b in batches {
        writer.write(b)?;
    }
    writer.close()?;
    Ok(())
}

/// Daily returns against both VaR lines (as negative returns), exceedances of the model marked.
fn plot_var(eval: &[EvalDay], report: &MarketReport, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    crate::report::ensure_font();
    let err = |e: &dyn std::fmt::Display| PipelineError::External(format!("drawing plot: {e}"));
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

/// Computes the market features over a price history (the same operator as live scoring) and
/// writes the ticks plus features to Parquet: the VaR model's training set.
pub fn export_features(cfg: &MarketConfig, input: &Path, output: &Path) -> Result<usize> {
    let problems: Vec<String> = cfg.market.features.problems();
    if !problems.is_empty() {
        return Err(PipelineError::Config(problems));
    }
    let ticks = read_ticks(input, cfg.backtest.csv.as_ref())?;
    let mut op = SeriesOperator::new(
        market::INSTRUMENT,
        market::TIME,
        market::PRICE,
        cfg.market.features.clone(),
    )?;
    let rows = cfg.backtest.batch_rows.max(1);
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < ticks.num_rows() {
        let len = rows.min(ticks.num_rows() - offset);
        out.push(op.process(ticks.slice(offset, len))?);
        offset += len;
    }
    write_parquet(&out, output)?;
    Ok(ticks.num_rows())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn nasdaq_mapping() -> CsvTicks {
        CsvTicks {
            time_column: "Date".into(),
            time_format: "%m/%d/%Y".into(),
            price_column: "Adj Close".into(),
            instrument_column: None,
            instrument: Some("^IXIC".into()),
        }
    }

    #[test]
    fn csv_ticks_are_parsed_and_bad_rows_listed() {
        let text = "Date,Open,Adj Close\n1/5/1999,1,2208.05\n1/4/1999,1,2208.05\n";
        let b = parse_csv(text, Some(&nasdaq_mapping())).expect("parse");
        assert_eq!(b.num_rows(), 2);
        let t = b
            .column(1)
            .as_primitive::<arrow::datatypes::TimestampNanosecondType>();
        assert_eq!(t.value(0), 10_596 * 86_400_000_000_000); // 1999-01-05
        let bad =
            "Date,Open,Adj Close\n1/5/1999,1,-3\n13/40/1999,1,5\n1/6/1999,1,null\n1/7/1999,1,5\n";
        let e = parse_csv(bad, Some(&nasdaq_mapping())).expect_err("bad rows");
        let msg = e.to_string();
        assert!(msg.contains("3 price rows"), "{msg}");
        assert!(
            msg.contains("data row 1") && msg.contains("data row 3"),
            "{msg}"
        );
        assert!(matches!(e, PipelineError::BadInput(_)));
        let e = parse_csv("Day,Price\n", Some(&nasdaq_mapping())).expect_err("no column");
        assert!(e.to_string().contains("no column \"Date\""), "{e}");
    }
}
