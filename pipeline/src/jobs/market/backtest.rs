//! The market backtest's evaluation: the model's VaR of one instrument (the first, or a chosen
//! one) against the next day's loss, beside a RiskMetrics baseline (EWMA λ = 0.94, normal) on the
//! same days; writes `scores.parquet`, `portfolio.json`, `report.json` and `var.png`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use arrow::array::{Array, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{Float64Type, TimestampNanosecondType};
use riskpipe_operators::{Ewma, Operator, SeriesFeatures, SeriesOperator, columns};
use riskpipe_schemas::market;

use super::config::{MarketConfig, VAR};
use super::portfolio::normal_quantile;
use super::report::{EvalDay, MarketReport, VarRow, plot_var};
use super::var::var_stats;
use crate::backtest::{Replayed, write_json};
use crate::encoders::rfc3339;
use crate::{PipelineError, Result};

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
        let ids = columns::string(b, market::INSTRUMENT)?;
        let times = columns::primitive::<TimestampNanosecondType>(b, market::TIME)?;
        let prices = columns::primitive::<Float64Type>(b, market::PRICE)?;
        let var = columns::primitive::<Float64Type>(b, VAR)?;
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

/// RiskMetrics variance forecasts per instrument and day, over the ticks the job accepted.
fn baseline(scored: &[RecordBatch]) -> Result<BTreeMap<String, Vec<Option<f64>>>> {
    // The baseline always uses λ = 0.94, whatever the pipeline's own EWMA: run it separately.
    let spec = SeriesFeatures {
        ewma_variance: Some(Ewma {
            name: "RM_VAR".into(),
            lambda: 0.94,
        }),
        ..SeriesFeatures::default()
    };
    let mut op = SeriesOperator::new(market::INSTRUMENT, market::TIME, market::PRICE, spec)?;
    let mut out: BTreeMap<String, Vec<Option<f64>>> = BTreeMap::new();
    for b in scored {
        let ticks = b.project(&[
            b.schema().index_of(market::INSTRUMENT)?,
            b.schema().index_of(market::TIME)?,
            b.schema().index_of(market::PRICE)?,
        ])?;
        let with = op.process(ticks)?;
        let ids = columns::string(&with, market::INSTRUMENT)?;
        let v = columns::primitive::<Float64Type>(&with, "RM_VAR")?;
        for i in 0..with.num_rows() {
            out.entry(ids.value(i).to_string())
                .or_default()
                .push(v.is_valid(i).then(|| v.value(i)));
        }
    }
    Ok(out)
}

/// What a market backtest produced.
#[derive(Debug)]
pub struct MarketOutcome {
    /// The report.
    pub report: MarketReport,
    /// Files written.
    pub files: Vec<PathBuf>,
}

/// Evaluates a replay and writes its files into `output`.
pub fn evaluate(
    cfg: &MarketConfig,
    model: &str,
    replayed: &Replayed,
    output: &Path,
    instrument: Option<&str>,
) -> Result<MarketOutcome> {
    let scored = replayed.scored();
    let days = instrument_days(&scored)?;
    let rm_days = baseline(&scored)?;
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
    let z = normal_quantile(cfg.confidence);
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
    let (Some(first), Some(last)) = (eval.first(), eval.last()) else {
        return Err(PipelineError::BadInput(format!(
            "{pick}: no day after the {warmup}-observation warm-up has a forecast"
        )));
    };
    let hits =
        |f: fn(&EvalDay) -> f64| -> Vec<bool> { eval.iter().map(|d| -d.ret > f(d)).collect() };
    let (scores, breaches) = replayed.records()?;
    let portfolio_scores: Vec<serde_json::Value> = scores
        .into_iter()
        .filter(|s| s.get(market::PORTFOLIO).is_some())
        .collect();
    let report = MarketReport {
        instrument: pick.clone(),
        confidence: cfg.confidence,
        warmup,
        evaluated_from: rfc3339(first.time),
        evaluated_to: rfc3339(last.time),
        rows: vec![
            VarRow {
                model: model.to_string(),
                stats: var_stats(&hits(|d| d.model), cfg.confidence),
            },
            VarRow {
                model: "RiskMetrics EWMA 0.94 normal".into(),
                stats: var_stats(&hits(|d| d.baseline), cfg.confidence),
            },
        ],
        portfolio_scores: portfolio_scores.len(),
        limit_breaches: breaches.len(),
    };
    std::fs::create_dir_all(output).map_err(PipelineError::io("creating", output))?;
    let mut files = Vec::new();
    let scores_path = output.join("scores.parquet");
    let schema = scored
        .first()
        .map(RecordBatch::schema)
        .ok_or_else(|| PipelineError::BadInput("no tick was scored".into()))?;
    crate::sinks::parquet::write(&scores_path, &[concat_batches(&schema, &scored)?], None)?;
    files.push(scores_path);
    files.push(write_json(output.join("report.json"), &report)?);
    files.push(write_json(
        output.join("portfolio.json"),
        &serde_json::json!({ "scores": portfolio_scores, "breaches": breaches }),
    )?);
    let png = output.join("var.png");
    plot_var(&eval, &report, &png)?;
    files.push(png);
    Ok(MarketOutcome { report, files })
}
