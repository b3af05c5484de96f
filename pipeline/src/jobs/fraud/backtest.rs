//! The fraud backtest's evaluation: the handbook's metrics over the test days of the configured
//! split (or the whole history); writes `scores.parquet` (id, features, score, alert per
//! transaction), `alerts.jsonl` (every alert with its reasons, as the alerts topic would carry
//! it), `report.json` and `curves.png`.

use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float32Type, TimestampNanosecondType};
use riskpipe_models::{MemberQuantiles, RankReference};
use riskpipe_operators::columns;
use riskpipe_schemas::score;

use super::FraudConfig;
use super::metrics::{self, Scored};
use super::report::{FraudReport, plot_curves};
use crate::backtest::Replayed;
use crate::jobs::drift::{DriftConfig, DriftReport, Reference, WINDOW_DAYS};
use crate::{PipelineError, Result};

const DAY_NS: i64 = 86_400_000_000_000;

/// The day number (since 1970-01-01) of a `YYYY-MM-DD` date.
fn day_of(date: &str) -> Result<i64> {
    let d = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .map_err(|e| PipelineError::Config(vec![format!("backtest.train_start: {e}")]))?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    Ok(d.signed_duration_since(epoch).num_days())
}

/// What a fraud backtest produced.
#[derive(Debug)]
pub struct FraudOutcome {
    /// The metrics.
    pub report: FraudReport,
    /// Files written.
    pub files: Vec<PathBuf>,
}

/// Entities (the cards a report counts by) as numbers: an integer entity is its own number,
/// a text one numbered in order of first appearance.
#[derive(Default)]
struct Entities(std::collections::HashMap<String, i64>);

impl Entities {
    fn of(&mut self, batch: &RecordBatch, column: &str) -> Result<Vec<i64>> {
        let values = columns::get(batch, column)?;
        if let Some(text) = arrow::array::AsArray::as_string_opt::<i32>(values) {
            return Ok((0..text.len())
                .map(|i| {
                    let next = self.0.len() as i64;
                    *self.0.entry(text.value(i).to_string()).or_insert(next)
                })
                .collect());
        }
        Ok(columns::i64_values(batch, column)?.values().to_vec())
    }
}

/// The rows the metrics need, from scored batches.
pub fn scored_rows(scored: &[RecordBatch], cfg: &FraudConfig) -> Result<Vec<Scored>> {
    scored_rows_of(scored, cfg, score::SCORE)
}

/// [`scored_rows`] with the score of column `score_column` (the challenger's, say).
pub fn scored_rows_of(
    scored: &[RecordBatch],
    cfg: &FraudConfig,
    score_column: &str,
) -> Result<Vec<Scored>> {
    let mut rows = Vec::new();
    let mut entities = Entities::default();
    for b in scored {
        let time = columns::primitive::<TimestampNanosecondType>(b, &cfg.features.event_time)?;
        let entity = entities.of(b, cfg.entity_column())?;
        // The truth: 1 / 0, or true / false.
        let fraud = arrow::compute::cast(
            columns::get(b, &cfg.truth_column())?,
            &arrow::datatypes::DataType::Int64,
        )?;
        let fraud = fraud.as_primitive::<arrow::datatypes::Int64Type>();
        let value = columns::primitive::<Float32Type>(b, score_column)?;
        for (i, &entity) in entity.iter().enumerate() {
            // A challenger's null: it answered no probability for the row.
            if value.is_null(i) {
                continue;
            }
            rows.push(Scored {
                day: time.value(i).div_euclid(DAY_NS),
                entity,
                fraud: fraud.value(i) != 0,
                score: f64::from(value.value(i)),
            });
        }
    }
    Ok(rows)
}

/// Evaluates a replay at `threshold` and writes its files into `out_dir`; with a `challenger`
/// (its name), the challenger's scores too, side by side, and for an ensemble each of its
/// `members` (their labels, in the order of their scored columns) and their rank reference
/// (`ensemble_reference.json`, over the split's training days or the whole history).
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    cfg: &FraudConfig,
    model: &str,
    members: &[String],
    challenger: Option<&str>,
    drift_reference: Option<&Path>,
    live_drift: Option<&DriftConfig>,
    threshold: f64,
    replayed: &Replayed,
    out_dir: &Path,
) -> Result<FraudOutcome> {
    std::fs::create_dir_all(out_dir).map_err(PipelineError::io("creating", out_dir))?;
    let scored = replayed.scored();
    let mut columns: Vec<String> = vec![cfg.features.order_by.clone()];
    columns.extend(cfg.features.feature_names()?);
    columns.extend([score::SCORE.to_string(), score::ALERT.to_string()]);
    columns.extend((0..members.len()).map(score::member));
    if challenger.is_some() {
        columns.push(score::CHALLENGER_SCORE.to_string());
    }
    let scores_path = out_dir.join("scores.parquet");
    crate::sinks::parquet::write(&scores_path, &scored, Some(&columns))?;
    let alerts_path = out_dir.join("alerts.jsonl");
    let mut lines = Vec::new();
    for alert in replayed.payloads(true)?.iter() {
        lines.extend_from_slice(alert);
        lines.push(b'\n');
    }
    std::fs::write(&alerts_path, lines).map_err(PipelineError::io("writing", &alerts_path))?;

    let split = |rows: Vec<Scored>| -> Result<(Vec<Scored>, String)> {
        Ok(match &cfg.backtest {
            Some(s) => {
                let start =
                    chrono::NaiveDate::parse_from_str(&s.train_start, "%Y-%m-%d").map_err(|e| {
                        PipelineError::Config(vec![format!("backtest.train_start: {e}")])
                    })?;
                let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
                let start_day = start.signed_duration_since(epoch).num_days();
                let test = metrics::handbook_test_set(
                    &rows,
                    start_day,
                    s.train_days.into(),
                    s.delay_days.into(),
                    s.test_days.into(),
                );
                let first_test = start + chrono::Days::new(u64::from(s.train_days + s.delay_days));
                (
                    test,
                    format!(
                        "{} test days from {first_test} (train {} days from {}, delay {} days), known-compromised cards removed",
                        s.test_days, s.train_days, s.train_start, s.delay_days
                    ),
                )
            }
            None => (rows, "the whole history".to_string()),
        })
    };
    let (evaluated, label) = split(scored_rows(&scored, cfg)?)?;
    let mut report = FraudReport::compute(model, &label, &evaluated, threshold);
    let theirs = match challenger {
        Some(name) => {
            let (rows, _) = split(scored_rows_of(&scored, cfg, score::CHALLENGER_SCORE)?)?;
            report.challenger = Some(Box::new(FraudReport::compute(
                name, &label, &rows, threshold,
            )));
            Some(rows)
        }
        None => None,
    };
    let mut member_rows = Vec::with_capacity(members.len());
    for (i, name) in members.iter().enumerate() {
        let (rows, _) = split(scored_rows_of(&scored, cfg, &score::member(i))?)?;
        report
            .members
            .push(FraudReport::compute(name, &label, &rows, threshold));
        member_rows.push(rows);
    }
    let mut files = Vec::new();
    if !members.is_empty() {
        let path = out_dir.join("ensemble_reference.json");
        rank_reference(cfg, &scored, members)?.write(&path)?;
        files.push(path);
    }
    // Drift of the model inputs and the score, per day, against the reference.
    // --drift-reference, else the split's training days, else the live monitor's reference.
    let reference = match (drift_reference, &cfg.backtest, live_drift) {
        (Some(path), _, _) => Some(Reference::read(path)?),
        (None, None, Some(live)) => Some(Reference::read(&live.reference)?),
        (None, Some(s), _) => {
            let start = day_of(&s.train_start)?;
            let mut monitored: Vec<String> = cfg.events.amount.iter().cloned().collect();
            monitored.extend(cfg.features.feature_names()?);
            // The model's other inputs (declared fields it reads, text ones binned by value).
            for c in &replayed.model_inputs {
                if !monitored.contains(c) {
                    monitored.push(c.clone());
                }
            }
            monitored.push(score::SCORE.to_string());
            let reference = Reference::of(
                &scored,
                &cfg.features.event_time,
                &monitored,
                start..start + i64::from(s.train_days),
                format!("the {} training days from {}", s.train_days, s.train_start),
            )?;
            Some(reference)
        }
        (None, None, None) => None,
    };
    let reference = reference.filter(|r| {
        if r.is_empty() {
            tracing::warn!(
                "no drift section: the reference period ({}) holds no transaction",
                r.period
            );
        }
        !r.is_empty()
    });
    if let Some(reference) = reference {
        if drift_reference.is_none() && cfg.backtest.is_some() {
            // For live monitoring and later backtests (`--drift-reference`).
            let path = out_dir.join("drift_reference.json");
            reference.write(&path)?;
            files.push(path);
        }
        let window_days = live_drift.map_or(WINDOW_DAYS, |d| i64::from(d.window_days));
        let mut drift =
            DriftReport::per_day(&scored, &cfg.features.event_time, &reference, window_days)?;
        if let Some(live) = live_drift {
            drift.threshold = live.threshold;
        }
        // With the split's training days as the reference: the days after them.
        if drift_reference.is_none()
            && let Some(s) = &cfg.backtest
        {
            let after = chrono::NaiveDate::parse_from_str(&s.train_start, "%Y-%m-%d")
                .map(|d| d + chrono::Days::new(u64::from(s.train_days)))
                .map_err(|e| PipelineError::Config(vec![format!("backtest.train_start: {e}")]))?;
            drift.since = Some(after.format("%Y-%m-%d").to_string());
        }
        let png = out_dir.join("drift.png");
        drift.plot(&png)?;
        files.push(png);
        report.drift = Some(drift);
    }
    let json = out_dir.join("report.json");
    report.write_json(&json)?;
    let png = out_dir.join("curves.png");
    let member_rows: Vec<&[Scored]> = member_rows.iter().map(Vec::as_slice).collect();
    plot_curves(&evaluated, theirs.as_deref(), &member_rows, &report, &png)?;
    let mut all = vec![scores_path, alerts_path, json, png];
    all.extend(files);
    Ok(FraudOutcome { report, files: all })
}

/// Each ensemble member's score quantiles over the split's training days (or the whole
/// history without a split): the reference `ensemble.combine = "rank_average"` ranks by.
fn rank_reference(
    cfg: &FraudConfig,
    scored: &[RecordBatch],
    members: &[String],
) -> Result<RankReference> {
    let (days, period) = match &cfg.backtest {
        Some(s) => {
            let start = day_of(&s.train_start)?;
            (
                start..start + i64::from(s.train_days),
                format!("the {} training days from {}", s.train_days, s.train_start),
            )
        }
        None => (i64::MIN..i64::MAX, "the whole history".to_string()),
    };
    let mut quantiles = Vec::with_capacity(members.len());
    for (i, name) in members.iter().enumerate() {
        let column = score::member(i);
        let mut values = Vec::new();
        for b in scored {
            let time = columns::primitive::<TimestampNanosecondType>(b, &cfg.features.event_time)?;
            let value = columns::primitive::<Float32Type>(b, &column)?;
            values.extend(
                time.values()
                    .iter()
                    .zip(value.values().iter())
                    .filter(|(t, _)| days.contains(&t.div_euclid(DAY_NS)))
                    .map(|(_, v)| *v),
            );
        }
        quantiles.push(MemberQuantiles::of(name.clone(), &values).ok_or_else(|| {
            PipelineError::Config(vec![format!(
                "no ensemble reference: {period} hold no transaction"
            )])
        })?);
    }
    Ok(RankReference {
        period,
        members: quantiles,
    })
}
