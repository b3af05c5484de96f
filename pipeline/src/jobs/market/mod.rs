//! The market-risk job: price ticks in; per-instrument VaR scores, portfolio VaR scores and
//! limit breaches out.
//!
//! Features: the one tick validation (module `ticks`), then the keyed series features of
//! `[job.features]` ([`SeriesOperator`]). Score: the VaR model on every tick whose model inputs
//! are defined, the volatility, portfolio aggregation ([`portfolio`]) and the output records.
//!
//! VaR conventions: the model predicts the next day's loss quantile in log-return units `v`
//! (a loss is `−r_{t+1}`, `r = ln(p_{t+1}/p_t)`); scores carry it as a loss fraction
//! `1 − e^{−v}` of the position's value. Both say "exceeded" on the same days.

pub mod backtest;
mod config;
pub mod portfolio;
mod records;
pub mod report;
mod ticks;
pub mod var;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};
use riskpipe_models::{Model, Scorer};
use riskpipe_operators::{Operator, SeriesOperator, columns};
use riskpipe_schemas::{market, market_tick_schema};

pub use config::{MarketBacktestConfig, MarketConfig, PortfolioConfig, VAR, VOLATILITY};

use super::Repeated;
use super::{
    FeatureStage, Featured, Inputs, Job, JobInput, JobKind, JobOutput, ScoreStage, StateSnapshot,
};
use crate::backtest::{Options, Replayed, Report};
use crate::config::{PipelineConfig, Streams};
use crate::sources::history::History;
use crate::sources::ticks as tick_files;
use crate::{PipelineError, Result};
use portfolio::Aggregator;
use ticks::TickCheck;

/// Default input topic: ticks; no side input.
pub const STREAMS: Streams = Streams {
    events: "ticks",
    side: None,
};

/// Ticks; no side input.
pub fn inputs() -> Inputs {
    Inputs {
        events: market_tick_schema(),
        side: None,
        declared: Vec::new(),
    }
}

/// The series operator of `[job.features]`.
pub fn series_operator(cfg: &MarketConfig) -> Result<SeriesOperator> {
    Ok(SeriesOperator::new(
        market::INSTRUMENT,
        market::TIME,
        market::PRICE,
        cfg.features.clone(),
    )?)
}

/// The feature half alone (the training-set export needs no model).
pub fn feature_stage(cfg: &MarketConfig) -> Result<Box<dyn FeatureStage>> {
    Ok(Box::new(MarketFeatures {
        check: TickCheck::default(),
        series: series_operator(cfg)?,
        fingerprint: super::fingerprint(&cfg.features),
    }))
}

/// Builds the job: validation and series features, the VaR model (checked: it reads only
/// features `[job.features]` computes, or the price) and the portfolios.
pub fn build(cfg: &MarketConfig, pipeline: &PipelineConfig) -> Result<Job> {
    let scorer = Model::single(Scorer::load(pipeline.model.primary())?);
    check_model(cfg, &scorer)?;
    let variance = cfg
        .features
        .ewma_variance
        .as_ref()
        .map(|e| e.name.clone())
        .ok_or_else(|| {
            PipelineError::Config(vec!["job.features.ewma_variance is required".into()])
        })?;
    let model = scorer.name().to_string();
    Ok(Job {
        kind: "market",
        model: model.clone(),
        members: Vec::new(),
        inputs: inputs(),
        features: feature_stage(cfg)?,
        scoring: Box::new(MarketScoring {
            scorer,
            variance,
            confidence: cfg.confidence,
            aggregator: Aggregator::new(
                cfg.portfolios.clone(),
                cfg.correlation_lambda,
                cfg.confidence,
            ),
            model: Repeated::new(model),
            // The aggregation's state depends on the portfolios and the decay, not on the
            // model: a new model's VaR replaces an instrument's at its next tick.
            fingerprint: super::fingerprint(&(&cfg.portfolios, cfg.correlation_lambda)),
            schemas: None,
            updates: None,
            risk_schema: riskpipe_schemas::risk_score_schema(),
            breach_schema: riskpipe_schemas::limit_breach_schema(),
        }),
    })
}

/// The VaR model reads only features `[job.features]` computes, or the price.
fn check_model(cfg: &MarketConfig, model: &Model) -> Result<()> {
    let names = cfg.features.names();
    let missing: Vec<_> = model
        .features()
        .iter()
        .filter(|f| !names.contains(f) && f.as_str() != market::PRICE)
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(PipelineError::Config(vec![format!(
            "model {} reads {missing:?}, which [job.features] does not compute",
            model.name()
        )]));
    }
    Ok(())
}

/// A VaR model's scores are log-loss quantiles: finite.
fn check_var_scores(scores: &[f32]) -> std::result::Result<(), String> {
    match scores.iter().find(|s| !s.is_finite()) {
        Some(s) => Err(format!("VaR score {s} is not finite")),
        None => Ok(()),
    }
}

/// Tick validation, then the series features.
#[derive(Debug)]
struct MarketFeatures {
    check: TickCheck,
    series: SeriesOperator,
    fingerprint: String,
}

/// Tables of the market stages' snapshots.
const TICKS: &str = "ticks";
const SERIES: &str = "series";

/// A checkpoint this stage cannot take.
fn unfit(reason: impl Into<String>) -> PipelineError {
    PipelineError::Checkpoint {
        id: 0,
        reason: reason.into(),
    }
}

impl FeatureStage for MarketFeatures {
    fn process(&mut self, input: JobInput) -> Result<Featured> {
        let (ticks, rejects) = self.check.split(&input.events)?;
        let batch = self.series.process(ticks)?;
        self.check.observe(&batch)?;
        Ok(Featured { batch, rejects })
    }

    fn state_keys(&self) -> Option<usize> {
        Some(self.series.keys())
    }

    fn snapshot(&self) -> Result<StateSnapshot> {
        let series = self
            .series
            .snapshot()?
            .ok_or_else(|| PipelineError::Bug("the series operator keeps no state".into()))?;
        Ok(StateSnapshot {
            tables: vec![
                (TICKS.into(), self.check.snapshot()?),
                (SERIES.into(), series),
            ],
            fingerprint: self.fingerprint.clone(),
        })
    }

    fn restore(&mut self, state: StateSnapshot) -> Result<()> {
        if state.fingerprint != self.fingerprint {
            return Err(unfit(
                "written for other feature definitions ([job.features] changed)",
            ));
        }
        let table = |name: &str| {
            state
                .tables
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .ok_or_else(|| unfit(format!("no {name} table")))
        };
        if state.tables.len() != 2 {
            return Err(unfit(format!(
                "{} feature tables, a market job has 2",
                state.tables.len()
            )));
        }
        self.check.restore(table(TICKS)?)?;
        self.series.restore(table(SERIES)?)?;
        Ok(())
    }
}

/// The VaR model, the volatility, the portfolios.
#[derive(Debug)]
struct MarketScoring {
    scorer: Model,
    variance: String,
    confidence: f64,
    aggregator: Aggregator,
    model: Repeated,
    fingerprint: String,
    /// The last input schema and its scored schema (rebuilt only when the input's changes).
    schemas: Option<(SchemaRef, SchemaRef)>,
    /// Where reloaded models come from (`riskpipe run`).
    updates: Option<Arc<crate::reload::ModelSlot>>,
    risk_schema: SchemaRef,
    breach_schema: SchemaRef,
}

impl MarketScoring {
    /// Which rows have every model input defined (an instrument in warm-up has not).
    fn ready_mask(&self, with_features: &RecordBatch) -> Result<BooleanArray> {
        let mut ready = vec![true; with_features.num_rows()];
        for name in self.scorer.features() {
            let c = columns::get(with_features, name).map_err(PipelineError::produced)?;
            for (i, r) in ready.iter_mut().enumerate() {
                *r &= c.is_valid(i);
            }
        }
        Ok(ready.into_iter().map(Some).collect())
    }

    /// The ticks with `VAR` (loss fraction; null while the model's inputs are not all defined,
    /// i.e. during an instrument's warm-up) and `VOLATILITY`.
    fn score(&mut self, with_features: RecordBatch) -> Result<RecordBatch> {
        let mask = self.ready_mask(&with_features)?;
        let scores = self
            .scorer
            .score(&filter_record_batch(&with_features, &mask)?)?;
        let mut scores = scores.into_iter();
        let var: Float64Array = mask
            .values()
            .iter()
            .map(|r| {
                r.then(|| scores.next())
                    .flatten()
                    .map(|v| 1.0 - (-f64::from(v)).exp())
            })
            .collect();
        let variance = columns::primitive::<Float64Type>(&with_features, &self.variance)
            .map_err(PipelineError::produced)?;
        let volatility: Float64Array = variance.iter().map(|v| v.map(f64::sqrt)).collect();
        let input = with_features.schema();
        let output = match &self.schemas {
            Some((i, o)) if i == &input => o.clone(),
            _ => {
                let mut fields: Vec<Arc<Field>> = input.fields().iter().cloned().collect();
                fields.push(Arc::new(Field::new(VAR, DataType::Float64, true)));
                fields.push(Arc::new(Field::new(VOLATILITY, DataType::Float64, true)));
                let o: SchemaRef = Arc::new(Schema::new(fields));
                self.schemas = Some((input, o.clone()));
                o
            }
        };
        let mut columns: Vec<ArrayRef> = with_features.columns().to_vec();
        columns.push(Arc::new(var));
        columns.push(Arc::new(volatility));
        Ok(RecordBatch::try_new(output, columns)?)
    }
}

impl MarketScoring {
    /// Swaps `next` in if it scores `batch` (the batch it is about to score) with finite
    /// values; else keeps the model scoring now.
    fn swap(&mut self, mut next: Model, batch: &RecordBatch) {
        let started = std::time::Instant::now();
        let ready = self.ready_rows(batch).map_err(|e| e.to_string());
        let check = ready
            .and_then(|rows| next.score(&rows).map_err(|e| e.to_string()))
            .and_then(|scores| check_var_scores(&scores));
        let (before, label) = (self.scorer.label().to_string(), next.label().to_string());
        match check {
            Ok(()) => {
                self.model = Repeated::new(next.name());
                self.scorer = next;
                if let Some(slot) = &self.updates {
                    slot.scoring(self.scorer.version());
                }
                let seconds = started.elapsed().as_secs_f64();
                crate::events::model_scoring(&label, Some(&before), seconds);
                tracing::info!(
                    seconds,
                    "model swapped: {before} -> {label} from this batch on"
                );
            }
            Err(why) => {
                crate::events::model_reload("refused_live");
                tracing::error!(
                    "model {label} refused on a live batch, {before} keeps scoring: {why}"
                );
            }
        }
    }

    /// The rows every model input is defined for.
    fn ready_rows(&self, with_features: &RecordBatch) -> Result<RecordBatch> {
        let mask = self.ready_mask(with_features)?;
        Ok(filter_record_batch(with_features, &mask)?)
    }
}

impl ScoreStage for MarketScoring {
    fn follow_models(&mut self, slot: Arc<crate::reload::ModelSlot>) -> bool {
        slot.scoring(self.scorer.version());
        crate::events::model_scoring(self.scorer.label(), None, 0.0);
        self.updates = Some(slot);
        true
    }

    fn process(&mut self, featured: Featured) -> Result<JobOutput> {
        if let Some(next) = self.updates.as_ref().and_then(|s| s.take()) {
            self.swap(next, &featured.batch);
        }
        let scored = self.score(featured.batch)?;
        let portfolio = self.aggregator.aggregate(&scored)?;
        let scores = records::scores(
            &self.risk_schema,
            &scored,
            &portfolio,
            &self.aggregator.portfolios,
            self.confidence,
            &mut self.model,
        )?;
        let breaches = records::breaches(
            &self.breach_schema,
            &portfolio,
            &self.aggregator.portfolios,
            self.confidence,
            &mut self.model,
        )?;
        Ok(JobOutput {
            scored: Some(scored),
            scores: Some(scores),
            alerts: Some(breaches),
            challenger: None,
            decisions: None,
            forward: None,
            rejects: featured.rejects,
        })
    }

    fn has_state(&self) -> bool {
        true
    }

    fn snapshot(&self) -> Result<StateSnapshot> {
        Ok(StateSnapshot {
            tables: self.aggregator.snapshot()?,
            fingerprint: self.fingerprint.clone(),
        })
    }

    fn restore(&mut self, state: StateSnapshot) -> Result<()> {
        if state.fingerprint != self.fingerprint {
            return Err(unfit("written for other portfolios or correlation_lambda"));
        }
        self.aggregator.restore(&state.tables)
    }
}

#[typetag::deserialize(name = "market")]
impl JobKind for MarketConfig {
    fn name(&self) -> &'static str {
        "market"
    }

    fn problems(&self, pipeline: &PipelineConfig) -> Vec<String> {
        let mut p = MarketConfig::problems(self);
        if pipeline.alerts.threshold.is_some() {
            p.push(
                "alerts.threshold is for fraud jobs; a market job alerts on its portfolios' limits"
                    .into(),
            );
        }
        if pipeline.challenger.is_some() {
            p.push("[challenger] is for fraud jobs (not built for the market job)".into());
        }
        if pipeline.decisions.is_some() {
            p.push(
                "[decisions] is for fraud jobs; a market job alerts on its portfolios' limits"
                    .into(),
            );
        }
        if pipeline
            .kafka
            .as_ref()
            .is_some_and(|k| k.repartition.is_some())
        {
            p.push("kafka.repartition splits a fraud job's features by their second key; a market job has one key (the instrument)".into());
        }
        if pipeline.drift.is_some() {
            p.push(
                "[drift] monitors a fraud job's model inputs (not built for the market job)".into(),
            );
        }
        if pipeline.model.all().len() > 1 || pipeline.ensemble.is_some() {
            p.push(
                "[[model]] ensembles are for fraud jobs; a market job scores one [model]".into(),
            );
        }
        p
    }

    fn streams(&self) -> Streams {
        STREAMS
    }

    fn inputs(&self) -> Inputs {
        inputs()
    }

    fn build(&self, pipeline: &PipelineConfig) -> Result<Job> {
        build(self, pipeline)
    }

    fn check_model(&self, _pipeline: &PipelineConfig, model: &Model) -> Result<()> {
        check_model(self, model)
    }

    fn check_scores(&self, scores: &[f32]) -> std::result::Result<(), String> {
        check_var_scores(scores)
    }

    fn feature_stage(&self) -> Result<Box<dyn FeatureStage>> {
        feature_stage(self)
    }

    fn checkpoints(&self) -> bool {
        true
    }

    fn batch_rows(&self) -> usize {
        self.backtest.batch_rows
    }

    fn default_input(&self) -> Option<&Path> {
        self.backtest.input.as_deref()
    }

    fn load(&self, input: &Path) -> Result<History> {
        tick_files::load(input, self.backtest.csv.as_ref())
    }

    fn history(
        &self,
        _source: &str,
        events: RecordBatch,
        _side: Option<RecordBatch>,
        _partitions: super::Partitions,
    ) -> Result<History> {
        // Ticks are ordered by time per instrument; the market job has no event-time policy.
        tick_files::ordered(events, false)
    }

    fn evaluate(
        &self,
        _pipeline: &PipelineConfig,
        replayed: &Replayed,
        out_dir: &Path,
        opts: &Options,
    ) -> Result<(Box<dyn Report>, Vec<PathBuf>)> {
        let outcome = backtest::evaluate(
            self,
            &replayed.model,
            replayed,
            out_dir,
            opts.instrument.as_deref(),
        )?;
        Ok((Box::new(outcome.report), outcome.files))
    }
}
