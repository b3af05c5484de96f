//! The fraud job: transactions and delayed fraud labels in; one score per transaction and an
//! alert (with its top reasons) per score at or over the threshold out.
//!
//! Features: transactions checked against the watermark ([`EventClock`]: too far in the
//! future, or too late, is refused before touching state), fraud labels (operators use a label
//! only from its label time on, so the result does not depend on how labels and transactions
//! share micro-batches), then the accepted transactions through the [`FeatureChain`] of
//! `[job.features]`, whose state follows the watermark.
//! Score: the model ([`FraudModel`]), alerts and their occlusion reasons, output records.

pub mod backtest;
mod config;
pub mod drift;
pub mod metrics;
mod model;
mod records;
pub mod report;

use std::path::{Path, PathBuf};

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use riskpipe_models::{Model, Scorer};
use riskpipe_operators::{FeatureChain, columns};
use riskpipe_schemas::{fraud_label_schema, repartition, score, transaction_schema};

pub use config::{FraudConfig, ReplayConfig, SplitConfig};
pub use model::FraudModel;

use super::Repeated;
use super::event_time::EventClock;
use super::{
    FeatureStage, Featured, Inputs, Job, JobInput, JobKind, JobOutput, Partitions, Reject,
    ScoreStage, StateSnapshot,
};
use crate::backtest::{Options, Replayed, Report};
use crate::config::{PipelineConfig, Streams};
use crate::sources::file;
use crate::sources::history::History;
use crate::{PipelineError, Result};

/// Default input topics: transactions, and fraud labels as the side input.
pub const STREAMS: Streams = Streams {
    events: "transactions",
    side: Some("fraud-labels"),
};

/// Transactions, and fraud labels as the side input.
pub fn inputs() -> Inputs {
    Inputs {
        events: transaction_schema(),
        side: Some(fraud_label_schema()),
    }
}

/// The feature half alone (the training-set export needs no model).
pub fn feature_stage(cfg: &FraudConfig) -> Result<Box<dyn FeatureStage>> {
    Ok(Box::new(FraudFeatures::new(
        cfg,
        &cfg.features,
        Part::Whole,
    )?))
}

/// The first job of the scale-out topology, split at a repartition by `by` (e.g.
/// `TERMINAL_ID`): it takes the transactions (partitioned by their own key, e.g. the customer),
/// admits them against the watermark, computes the features the repartition does not need and
/// forwards each row, with the partition it came from, keyed by `by` ([`second_stage`]).
pub fn first_stage(cfg: &FraudConfig, by: &str, partitions: i32) -> Result<Job> {
    let (before, _) = cfg.features.split_by(by)?;
    Ok(Job {
        kind: "fraud",
        model: String::new(),
        members: Vec::new(),
        inputs: Inputs {
            events: transaction_schema(),
            side: None,
        },
        features: Box::new(per_partition(
            cfg,
            before,
            Part::BeforeRepartition,
            partitions,
        )?),
        scoring: Box::new(Forward {
            key: by.to_string(),
        }),
    })
}

/// The rows [`first_stage`] forwards: the transaction, its first features, its partition.
pub fn forwarded_schema(cfg: &FraudConfig, by: &str) -> Result<arrow::datatypes::SchemaRef> {
    let (before, _) = cfg.features.split_by(by)?;
    let mut fields: Vec<arrow::datatypes::FieldRef> =
        transaction_schema().fields().iter().cloned().collect();
    fields.extend(before.build_chain()?.output_fields());
    fields.push(std::sync::Arc::new(arrow::datatypes::Field::new(
        repartition::ORIGIN_PARTITION,
        arrow::datatypes::DataType::Int32,
        false,
    )));
    Ok(std::sync::Arc::new(arrow::datatypes::Schema::new(fields)))
}

/// The second job of the scale-out topology: the forwarded rows and the labels (keyed by `by`
/// too) in, the features keyed by `by`, the model, scores and alerts out. `origins` is the
/// number of partitions of the transactions topic: the watermark waits for each.
pub fn second_stage(
    cfg: &FraudConfig,
    pipeline: &PipelineConfig,
    by: &str,
    origins: i32,
) -> Result<Job> {
    let (_, after) = cfg.features.split_by(by)?;
    let mut job = build(cfg, pipeline)?;
    job.inputs = Inputs {
        events: forwarded_schema(cfg, by)?,
        side: Some(fraud_label_schema()),
    };
    job.features = Box::new(per_partition(cfg, after, Part::AfterRepartition, origins)?);
    Ok(job)
}

/// The features of `part` with state per input partition (see [`super::partitioned`]); after a
/// repartition, each partition's watermark waits for the `origins` partitions rows come from.
fn per_partition(
    cfg: &FraudConfig,
    features: riskpipe_operators::FeatureConfig,
    part: Part,
    origins: i32,
) -> Result<super::partitioned::PerPartition> {
    super::partitioned::PerPartition::new(maker(cfg, features, part, origins))
}

fn maker(
    cfg: &FraudConfig,
    features: riskpipe_operators::FeatureConfig,
    part: Part,
    origins: i32,
) -> super::partitioned::MakeStage {
    let cfg = cfg.clone();
    // Each partition's rows must be all of their key's: the label risk's key after the
    // repartition, the windows' before it.
    let by = match part {
        Part::AfterRepartition => features.label_risk.first().map(|r| r.key.clone()),
        _ => features.windows.first().map(|w| w.key.clone()),
    };
    std::sync::Arc::new(move || {
        let mut stage = FraudFeatures::new(&cfg, &features, part)?;
        if part == Part::AfterRepartition {
            stage.clock.hold(&(0..origins).collect::<Vec<_>>());
        }
        if origins > 0 {
            stage.copartition = by.clone().map(|by| (by, origins));
        }
        Ok(Box::new(stage) as Box<dyn FeatureStage>)
    })
}

/// One partition's feature stage of the scale-out topology's first (`after` false) or second
/// stage, as [`first_stage`] and [`second_stage`] keep per partition: what a partition
/// assigned to this instance is restored into.
pub fn partition_maker(
    cfg: &FraudConfig,
    by: &str,
    after: bool,
    origins: i32,
) -> Result<super::partitioned::MakeStage> {
    let (before, later) = cfg.features.split_by(by)?;
    Ok(match after {
        false => maker(cfg, before, Part::BeforeRepartition, origins),
        true => maker(cfg, later, Part::AfterRepartition, origins),
    })
}

/// Rows forwarded to the repartition topic, keyed by the next stage's key.
#[derive(Debug)]
struct Forward {
    key: String,
}

impl ScoreStage for Forward {
    fn process(&mut self, featured: Featured) -> Result<JobOutput> {
        let column = columns::get(&featured.batch, &self.key).map_err(PipelineError::produced)?;
        let keys = arrow::compute::cast(column, &arrow::datatypes::DataType::Utf8)?;
        Ok(JobOutput {
            forward: Some(super::Records {
                batch: featured.batch,
                keys,
                key_column: None,
            }),
            rejects: featured.rejects,
            ..JobOutput::default()
        })
    }
}

/// Builds the job: the feature chain, the model (checked: every model input is a transaction
/// column or a configured feature) and the alerting.
pub fn build(cfg: &FraudConfig, pipeline: &PipelineConfig) -> Result<Job> {
    let threshold = pipeline.alerts.threshold.ok_or_else(|| {
        PipelineError::Config(vec!["alerts.threshold is required for a fraud job".into()])
    })?;
    let model = pipeline.load_model()?;
    check_model(cfg, pipeline, &model)?;
    let drift = pipeline
        .drift
        .as_ref()
        .map(|d| drift::Monitor::new(d, &cfg.features.event_time, cfg.features.reach()))
        .transpose()?;
    if let Some(d) = &drift {
        let produced = cfg.features.feature_names()?;
        let events = transaction_schema();
        let unknown: Vec<&str> = d
            .columns()
            .filter(|c| {
                *c != score::SCORE
                    && !produced.iter().any(|p| p == c)
                    && events.column_with_name(c).is_none()
            })
            .collect();
        if !unknown.is_empty() {
            return Err(PipelineError::Config(vec![format!(
                "drift.reference monitors columns the job does not produce: {unknown:?}"
            )]));
        }
    }
    let label = model.label().to_string();
    let members = match model.is_ensemble() {
        true => model.member_labels(),
        false => Vec::new(),
    };
    // The drift reference's ranges bound what the explanation baseline takes.
    let ranges: Vec<(String, [f64; 2])> = drift
        .iter()
        .flat_map(|d| d.reference().columns.iter())
        .filter_map(|(c, bins)| bins.range.map(|r| (c.clone(), r)))
        .collect();
    let scoring_model = |model: Model| {
        let mut m = FraudModel::new(model, threshold);
        m.clamp_baseline(ranges.clone());
        m
    };
    let challenger = match &pipeline.challenger {
        Some(c) => {
            let model = Model::single(Scorer::load(c)?);
            check_model(cfg, pipeline, &model)?;
            Some(Challenger {
                name: Repeated::new(model.label()),
                model: scoring_model(model),
                schemas: None,
            })
        }
        None => None,
    };
    Ok(Job {
        kind: "fraud",
        model: pipeline.model_name(),
        members,
        inputs: inputs(),
        features: feature_stage(cfg)?,
        scoring: Box::new(FraudScoring {
            model: scoring_model(model),
            event_time: cfg.features.event_time.clone(),
            reasons: pipeline.alerts.reasons,
            model_name: Repeated::new(label.clone()),
            label,
            updates: None,
            drift,
            challenger,
            score_schema: riskpipe_schemas::score_schema(),
            alert_schema: riskpipe_schemas::alert_schema(),
        }),
    })
}

/// Every model input must be a transaction column or a configured feature.
fn check_model(cfg: &FraudConfig, _pipeline: &PipelineConfig, model: &Model) -> Result<()> {
    let produced = cfg.features.feature_names()?;
    let events = transaction_schema();
    let missing: Vec<&String> = model
        .features()
        .iter()
        .filter(|f| !produced.contains(f) && events.column_with_name(f).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(PipelineError::Config(vec![format!(
            "model {} reads columns that are neither transaction columns nor configured features: {missing:?}",
            model.label()
        )]));
    }
    Ok(())
}

/// Transactions checked against the watermark; labels into the operators' state; then the
/// accepted transactions through the feature chain.
#[derive(Debug)]
struct FraudFeatures {
    chain: FeatureChain,
    clock: EventClock,
    event_time: String,
    fingerprint: String,
    part: Part,
    /// The column ordering events of equal time: the transaction id.
    order_by: String,
    /// After a repartition by this column into this many partitions: where each label must
    /// have been read from (see [`FraudFeatures::check_labels`]), and how many were not.
    copartition: Option<(String, i32)>,
    misrouted: u64,
}

/// Which part of the features a stage computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// All of them (one stage).
    Whole,
    /// Before a repartition: admits the transactions, appends each row's input partition.
    BeforeRepartition,
    /// After it: the rows were admitted before; the watermark is kept per their partition of
    /// origin, whose events arrive here in their own order (a subsequence of it), so it never
    /// runs ahead of the first stage's.
    AfterRepartition,
}

impl FraudFeatures {
    fn new(
        cfg: &FraudConfig,
        features: &riskpipe_operators::FeatureConfig,
        part: Part,
    ) -> Result<Self> {
        Ok(Self {
            chain: features.build_chain()?,
            clock: EventClock::new(cfg.event_time),
            event_time: features.event_time.clone(),
            fingerprint: super::fingerprint(features),
            part,
            order_by: features.order_by.clone(),
            copartition: None,
            misrouted: 0,
        })
    }

    /// Which rows of `events` were taken in before: a row whose id an operator remembers, or
    /// that appeared earlier in the batch (`None`: no operator remembers ids).
    fn taken_in(&self, events: &RecordBatch) -> Result<Option<Vec<bool>>> {
        let Some(mut seen) = self.chain.seen(events)? else {
            return Ok(None);
        };
        let ids = columns::i64_values(events, &self.order_by)?;
        let mut in_batch = std::collections::HashSet::with_capacity(events.num_rows());
        for (row, s) in seen.iter_mut().enumerate() {
            *s = *s || !in_batch.insert(ids.value(row));
        }
        Ok(Some(seen))
    }

    /// The rows of `events` not taken in before (the first stage re-forwards its uncommitted
    /// tail after a crash or a rebalance: at-least-once): a row taken in already is dropped
    /// silently (its first copy was scored), so nothing counts twice and every score stays the
    /// backtest's.
    fn drop_redelivered(
        &self,
        events: RecordBatch,
        rejects: &mut Vec<Reject>,
    ) -> Result<RecordBatch> {
        let Some(seen) = self.taken_in(&events)? else {
            return Ok(events);
        };
        if !seen.contains(&true) {
            return Ok(events);
        }
        let keep: Vec<u32> = (0..events.num_rows() as u32)
            .filter(|&r| !seen[r as usize])
            .collect();
        rejects.extend(
            seen.iter()
                .enumerate()
                .filter(|(_, s)| **s)
                .map(|(row, _)| Reject {
                    row,
                    kind: super::RejectKind::Redelivered,
                    reason: "taken in already (re-delivered by the repartition topic)".into(),
                }),
        );
        Ok(take_record_batch(&events, &UInt32Array::from(keep))?)
    }

    /// With state per partition, a row counts only in the partition its key belongs to (Java's
    /// murmur2 of the key as text, over the partitions): a label read from another partition
    /// reaches none of its terminal's transactions, and a transaction read from another than its
    /// customer's is scored with part of the customer's history (its producer keyed it
    /// otherwise, or used another partitioner). Such rows are counted and reported.
    fn check_keys(&mut self, rows: &RecordBatch, held: &[i32], input: &'static str) -> Result<()> {
        let (Some((by, partitions)), [partition]) = (&self.copartition, held) else {
            return Ok(());
        };
        let keys = arrow::compute::cast(
            columns::get(rows, by).map_err(PipelineError::produced)?,
            &arrow::datatypes::DataType::Utf8,
        )?;
        let keys = arrow::array::AsArray::as_string::<i32>(&keys);
        let misrouted = keys
            .iter()
            .flatten()
            .filter(|k| crate::kafka::murmur2_partition(k.as_bytes(), *partitions) != *partition)
            .count() as u64;
        if misrouted > 0 {
            crate::events::misrouted(input, misrouted);
            let before = self.misrouted;
            self.misrouted += misrouted;
            if before == 0 || before / 10_000 != self.misrouted / 10_000 {
                tracing::warn!(
                    partition,
                    input,
                    "{} {input} so far read from a partition their {by} does not belong to: produce them keyed by {by} (as text) with Java's murmur2 partitioner, or their features miss part of their key's history",
                    self.misrouted
                );
            }
        }
        Ok(())
    }
}

/// The clock's table in a snapshot; the operators' tables are prefixed [`FEATURES`].
const CLOCK: &str = "event_clock";
const FEATURES: &str = "features/";

impl FeatureStage for FraudFeatures {
    fn process(&mut self, input: JobInput) -> Result<Featured> {
        if let Some(p) = &input.partitions
            && self.part != Part::AfterRepartition
        {
            self.clock.hold(&p.held);
        }
        // State is freed up to where the batch's events can still look: they are all at or
        // after the watermark as it stands before them, less the allowed lateness.
        self.chain.advance_watermark(self.clock.state_watermark());
        if self.part == Part::BeforeRepartition
            && input.events.num_rows() > 0
            && let Some(p) = &input.partitions
        {
            self.check_keys(&input.events, &p.held, "transactions")?;
        }
        let mut rejects = Vec::new();
        let mut origins = Vec::new();
        let events = if input.events.num_rows() > 0 && self.part == Part::AfterRepartition {
            let times = columns::event_times(&input.events, &self.event_time)?;
            let from = columns::primitive::<arrow::datatypes::Int32Type>(
                &input.events,
                repartition::ORIGIN_PARTITION,
            )?;
            for (&t, &p) in times.iter().zip(from.values().iter()) {
                self.clock.observe(p, t);
            }
            self.drop_redelivered(input.events, &mut rejects)?
        } else if input.events.num_rows() > 0 {
            let times = columns::event_times(&input.events, &self.event_time)?;
            // Read once, from offsets no earlier read covered (the source skips re-deliveries,
            // a restore stops at the committed offsets): an id taken in already was published
            // twice. Its copy would count twice in its keys' windows: refused, state untouched.
            let duplicates = self.taken_in(&input.events)?;
            // A number no sum, mean or model input can take: refused before any state.
            let out_of_range = super::value_range::OutOfRange::of(&input.events);
            let mut keep = Vec::with_capacity(times.len());
            for (row, &t) in times.iter().enumerate() {
                if let Some(reason) = out_of_range.reason(row) {
                    rejects.push(Reject {
                        row,
                        kind: super::RejectKind::Invalid,
                        reason: reason.to_string(),
                    });
                    continue;
                }
                if duplicates.as_ref().is_some_and(|d| d[row]) {
                    rejects.push(Reject {
                        row,
                        kind: super::RejectKind::Duplicate,
                        reason: format!(
                            "{} taken in already: a transaction published twice counts once",
                            self.order_by
                        ),
                    });
                    continue;
                }
                let partition = input
                    .partitions
                    .as_ref()
                    .and_then(|p| p.of_events.get(row).copied())
                    .unwrap_or(0);
                match self.clock.admit(partition, t) {
                    Ok(()) => {
                        keep.push(row as u32);
                        if self.part == Part::BeforeRepartition {
                            origins.push(partition);
                        }
                    }
                    Err((kind, reason)) => rejects.push(Reject { row, kind, reason }),
                }
            }
            if rejects.is_empty() {
                input.events
            } else {
                take_record_batch(&input.events, &UInt32Array::from(keep))?
            }
        } else {
            input.events
        };
        // Labels first: operators use a label only from its label time on.
        if let Some(labels) = input.side.as_ref().filter(|l| l.num_rows() > 0) {
            if let Some(p) = &input.partitions {
                self.check_keys(labels, &p.held, "labels")?;
            }
            self.chain.observe_labels(labels)?;
        }
        let mut batch = if events.num_rows() > 0 {
            self.chain.process(events)?
        } else {
            events
        };
        if self.part == Part::BeforeRepartition {
            let mut fields: Vec<arrow::datatypes::FieldRef> =
                batch.schema().fields().iter().cloned().collect();
            fields.push(std::sync::Arc::new(arrow::datatypes::Field::new(
                repartition::ORIGIN_PARTITION,
                arrow::datatypes::DataType::Int32,
                false,
            )));
            let mut columns = batch.columns().to_vec();
            columns.push(std::sync::Arc::new(arrow::array::Int32Array::from(origins)));
            batch = RecordBatch::try_new(
                std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
                columns,
            )?;
        }
        crate::events::event_time(self.clock.watermark(), self.chain.keys());
        Ok(Featured { batch, rejects })
    }

    fn state_keys(&self) -> Option<usize> {
        Some(self.chain.keys())
    }

    fn snapshot(&self) -> Result<StateSnapshot> {
        let mut tables = vec![(CLOCK.to_string(), self.clock.snapshot()?)];
        for (name, t) in self.chain.snapshot()? {
            tables.push((format!("{FEATURES}{name}"), t));
        }
        Ok(StateSnapshot {
            tables,
            fingerprint: self.fingerprint.clone(),
        })
    }

    fn restore(&mut self, state: StateSnapshot) -> Result<()> {
        if state.fingerprint != self.fingerprint {
            return Err(PipelineError::Checkpoint {
                id: 0,
                reason: "written for other feature definitions ([job.features] changed)".into(),
            });
        }
        let mut chain = Vec::new();
        let mut clock = None;
        for (name, t) in state.tables {
            match name.strip_prefix(FEATURES) {
                Some(op) => chain.push((op.to_string(), t)),
                None if name == CLOCK => clock = Some(t),
                None => {
                    return Err(PipelineError::Checkpoint {
                        id: 0,
                        reason: format!("unknown table {name:?}"),
                    });
                }
            }
        }
        let clock = clock.ok_or_else(|| PipelineError::Checkpoint {
            id: 0,
            reason: "no event clock table".into(),
        })?;
        self.clock.restore(&clock)?;
        self.chain.restore(&chain)?;
        Ok(())
    }
}

/// The model, the alerts and their reasons, the output records.
#[derive(Debug)]
struct FraudScoring {
    model: FraudModel,
    event_time: String,
    reasons: usize,
    /// The `MODEL` of every record: `<file>@<version>` of the model scoring.
    model_name: Repeated,
    label: String,
    /// Where reloaded models come from (`riskpipe run`).
    updates: Option<std::sync::Arc<crate::reload::ModelSlot>>,
    /// Live drift of the inputs and the score (`[drift]`).
    drift: Option<drift::Monitor>,
    challenger: Option<Challenger>,
    score_schema: arrow::datatypes::SchemaRef,
    alert_schema: arrow::datatypes::SchemaRef,
}

/// A second model scored on the same rows: its own score records, never alerts.
#[derive(Debug)]
struct Challenger {
    model: FraudModel,
    name: Repeated,
    /// The champion's scored schema and that schema with `CHALLENGER_SCORE`, built once.
    schemas: Option<(arrow::datatypes::SchemaRef, arrow::datatypes::SchemaRef)>,
}

impl Challenger {
    /// Scores `batch` (the rows the champion scored as `ours`): the challenger's score
    /// records, and `ours` with the challenger's score as one more column.
    fn score(
        &mut self,
        batch: RecordBatch,
        ours: RecordBatch,
        schema: &arrow::datatypes::SchemaRef,
        event_time: &str,
    ) -> Result<(RecordBatch, super::Records)> {
        let started = std::time::Instant::now();
        let (theirs, unfit) = self.model.process(batch)?;
        let seconds = started.elapsed().as_secs_f64();
        // Rows the challenger answered with no probability: no record, no comparison, a null
        // challenger score in the scored batch.
        let fit = match unfit.is_empty() {
            true => Vec::new(),
            false => model::fit_rows(ours.num_rows(), &unfit),
        };
        if !unfit.is_empty() {
            crate::events::challenger_unfit(unfit.len() as u64);
            tracing::warn!(
                rows = unfit.len(),
                "the challenger answered no probability: {}",
                unfit[0].1
            );
        }
        let ours_fit = match unfit.is_empty() {
            true => ours.clone(),
            false => take_record_batch(&ours, &UInt32Array::from(fit.clone()))?,
        };
        let score_of = |b: &RecordBatch| {
            columns::primitive::<arrow::datatypes::Float32Type>(b, score::SCORE)
                .cloned()
                .map_err(PipelineError::produced)
        };
        let alert_of = |b: &RecordBatch| {
            columns::boolean(b, score::ALERT)
                .cloned()
                .map_err(PipelineError::produced)
        };
        let (our_alerts, their_alerts) = (alert_of(&ours_fit)?, alert_of(&theirs)?);
        let agree = our_alerts
            .iter()
            .zip(their_alerts.iter())
            .filter(|(a, b)| a == b)
            .count();
        let (our_scores, their_scores) = (score_of(&ours_fit)?, score_of(&theirs)?);
        let difference: f64 = our_scores
            .values()
            .iter()
            .zip(their_scores.values().iter())
            .map(|(a, b)| f64::from((a - b).abs()))
            .sum();
        let rows = ours_fit.num_rows();
        crate::events::challenger_scored(
            seconds,
            agree as u64,
            (rows - agree) as u64,
            difference / rows.max(1) as f64,
        );
        let records = records::scores(schema, &theirs, event_time, &mut self.name)?;
        let input = ours.schema();
        let output = match &self.schemas {
            Some((i, o)) if i == &input => o.clone(),
            _ => {
                let mut fields: Vec<arrow::datatypes::FieldRef> =
                    input.fields().iter().cloned().collect();
                fields.push(std::sync::Arc::new(arrow::datatypes::Field::new(
                    score::CHALLENGER_SCORE,
                    arrow::datatypes::DataType::Float32,
                    true,
                )));
                let o = std::sync::Arc::new(arrow::datatypes::Schema::new(fields));
                self.schemas = Some((input, o.clone()));
                o
            }
        };
        let their_scores: arrow::array::ArrayRef = match unfit.is_empty() {
            true => std::sync::Arc::new(their_scores),
            // Each row's challenger score by its row among `ours`, null where unfit.
            false => {
                let mut all = vec![None; ours.num_rows()];
                for (&row, &v) in fit.iter().zip(their_scores.values().iter()) {
                    all[row as usize] = Some(v);
                }
                std::sync::Arc::new(arrow::array::Float32Array::from(all))
            }
        };
        let mut columns = ours.columns().to_vec();
        columns.push(their_scores);
        let ours = RecordBatch::try_new(output, columns)?;
        Ok((ours, records))
    }
}

impl FraudScoring {
    /// Swaps `next` in if it scores `batch` (the batch it is about to score) with
    /// probabilities; else keeps the model scoring now.
    fn swap(&mut self, mut next: Model, batch: &RecordBatch) {
        let started = std::time::Instant::now();
        let label = next.label().to_string();
        let mut matrix = Vec::new();
        let check = next
            .feature_matrix(batch, &mut matrix)
            .and_then(|()| next.score_matrix(&matrix, batch.num_rows()))
            .map_err(|e| e.to_string())
            .and_then(|scores| crate::reload::check_scores(&scores));
        match check {
            Ok(()) => {
                let before = std::mem::replace(&mut self.label, label);
                self.model.replace_model(next);
                self.model_name = Repeated::new(self.label.clone());
                if let Some(slot) = &self.updates {
                    slot.scoring(self.model.model().version());
                }
                let seconds = started.elapsed().as_secs_f64();
                crate::events::model_scoring(&self.label, Some(&before), seconds);
                tracing::info!(
                    seconds,
                    "model swapped: {before} -> {} from this batch on",
                    self.label
                );
            }
            Err(why) => {
                crate::events::model_reload("refused_live");
                tracing::error!(
                    "model {label} refused on a live batch, {} keeps scoring: {why}",
                    self.label
                );
            }
        }
    }
}

/// The score stage's tables in a snapshot, and what their layout is.
const BASELINE: &str = "explain_baseline";
const DRIFT: &str = "drift";
const DRIFT_SINCE: &str = "drift_since";
const SCORE_STATE: &str = "fraud-score-1";

fn baseline_schema() -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    std::sync::Arc::new(Schema::new(vec![
        Field::new("feature", DataType::Utf8, false),
        Field::new("sum", DataType::Decimal128(38, 0), false),
        Field::new("rows", DataType::UInt64, false),
    ]))
}

fn baseline_table(b: &model::Baseline) -> Result<RecordBatch> {
    use arrow::array::{Decimal128Array, StringArray, UInt64Array};
    Ok(RecordBatch::try_new(
        baseline_schema(),
        vec![
            std::sync::Arc::new(StringArray::from_iter_values(&b.features)),
            std::sync::Arc::new(
                Decimal128Array::from(b.sums.clone()).with_precision_and_scale(38, 0)?,
            ),
            std::sync::Arc::new(UInt64Array::from(vec![b.rows; b.features.len()])),
        ],
    )?)
}

fn baseline_of(t: &RecordBatch) -> Result<model::Baseline> {
    use arrow::array::AsArray;
    use arrow::datatypes::{Decimal128Type, UInt64Type};
    if t.schema() != baseline_schema() {
        return Err(PipelineError::Checkpoint {
            id: 0,
            reason: "the explanation baseline table has another schema".into(),
        });
    }
    let rows = t.column(2).as_primitive::<UInt64Type>();
    Ok(model::Baseline {
        features: t
            .column(0)
            .as_string::<i32>()
            .iter()
            .map(|f| f.unwrap_or_default().to_string())
            .collect(),
        sums: t
            .column(1)
            .as_primitive::<Decimal128Type>()
            .values()
            .to_vec(),
        rows: rows.values().first().copied().unwrap_or(0),
    })
}

impl ScoreStage for FraudScoring {
    fn has_state(&self) -> bool {
        true
    }

    /// The explanation baseline and the drift counts.
    fn snapshot(&self) -> Result<StateSnapshot> {
        let mut tables = vec![(BASELINE.to_string(), baseline_table(self.model.baseline())?)];
        if let Some(d) = &self.drift {
            tables.push((DRIFT.to_string(), d.snapshot()?));
            tables.push((DRIFT_SINCE.to_string(), d.since_snapshot()?));
        }
        Ok(StateSnapshot {
            tables,
            fingerprint: SCORE_STATE.into(),
        })
    }

    /// A baseline over other model inputs, or drift counts of another reference, are left out
    /// (they start again); a checkpoint without the score stage's state (written before it had
    /// one) restores nothing here.
    fn restore(&mut self, state: StateSnapshot) -> Result<()> {
        if state.tables.is_empty() {
            return Ok(());
        }
        if state.fingerprint != SCORE_STATE {
            return Err(PipelineError::Checkpoint {
                id: 0,
                reason: format!(
                    "score state {:?}, this version writes {SCORE_STATE:?}",
                    state.fingerprint
                ),
            });
        }
        for (name, t) in &state.tables {
            match name.as_str() {
                BASELINE => {
                    if !self.model.restore_baseline(baseline_of(t)?) {
                        tracing::info!(
                            "the checkpoint's explanation baseline is over other model inputs: it starts again"
                        );
                    }
                }
                DRIFT => {
                    if let Some(d) = &mut self.drift {
                        if !d.restore(t)? {
                            tracing::info!(
                                "the checkpoint's drift counts are of another reference: the window fills again"
                            );
                        }
                        if !state.tables.iter().any(|(n, _)| n == DRIFT_SINCE) {
                            d.assume_covered();
                        }
                    }
                }
                DRIFT_SINCE => {
                    if let Some(d) = &mut self.drift {
                        d.restore_since(t)?;
                    }
                }
                other => {
                    return Err(PipelineError::Checkpoint {
                        id: 0,
                        reason: format!("unknown score table {other:?}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// The baseline (and with `[drift]`, the counts, which need the scores) without reasons
    /// or records.
    fn warm(&mut self, featured: Featured) -> Result<usize> {
        match &mut self.drift {
            Some(d) => {
                let (scored, _unfit) = self.model.process(featured.batch)?;
                d.observe(&scored)?;
            }
            None => self.model.observe(&featured.batch)?,
        }
        Ok(featured.rejects.len())
    }

    fn follow_models(&mut self, slot: std::sync::Arc<crate::reload::ModelSlot>) -> bool {
        slot.scoring(self.model.model().version());
        crate::events::model_scoring(&self.label, None, 0.0);
        self.updates = Some(slot);
        true
    }

    fn process(&mut self, featured: Featured) -> Result<JobOutput> {
        if let Some(next) = self.updates.as_ref().and_then(|s| s.take()) {
            self.swap(next, &featured.batch);
        }
        let shadow = self.challenger.as_ref().map(|_| featured.batch.clone());
        let (scored, unfit) = self.model.process(featured.batch)?;
        // An answer that is no probability is never published: a `model` dead letter.
        let shadow = match shadow {
            Some(batch) if !unfit.is_empty() => {
                let keep = model::fit_rows(batch.num_rows(), &unfit);
                Some(take_record_batch(&batch, &UInt32Array::from(keep))?)
            }
            shadow => shadow,
        };
        let mut rejects = featured.rejects;
        rejects.extend(unfit.into_iter().map(|(row, reason)| Reject {
            row,
            kind: super::RejectKind::Model,
            reason,
        }));
        if let Some(d) = &mut self.drift {
            d.observe(&scored)?;
            d.report();
        }
        let alerted = alert_rows(&scored)?;
        let reasons = self.model.explain(&alerted, self.reasons)?;
        let scores = records::scores(
            &self.score_schema,
            &scored,
            &self.event_time,
            &mut self.model_name,
        )?;
        let alerts = records::alerts(
            &self.alert_schema,
            &scored,
            &self.event_time,
            &alerted,
            reasons,
            self.model.threshold(),
            &mut self.model_name,
        )?;
        let (scored, challenger) = match (&mut self.challenger, shadow) {
            (Some(c), Some(batch)) => {
                let (scored, records) =
                    c.score(batch, scored, &self.score_schema, &self.event_time)?;
                (scored, Some(records))
            }
            _ => (scored, None),
        };
        Ok(JobOutput {
            scored: Some(scored),
            scores: Some(scores),
            alerts: Some(alerts),
            challenger,
            forward: None,
            rejects,
        })
    }
}

/// Rows of a scored batch whose alert flag is set.
fn alert_rows(scored: &RecordBatch) -> Result<Vec<usize>> {
    let alert = columns::boolean(scored, score::ALERT).map_err(PipelineError::produced)?;
    Ok((0..scored.num_rows()).filter(|&i| alert.value(i)).collect())
}

impl JobKind for FraudConfig {
    fn name(&self) -> &'static str {
        "fraud"
    }

    fn problems(&self, pipeline: &PipelineConfig) -> Vec<String> {
        let mut p = FraudConfig::problems(self);
        match pipeline.alerts.threshold {
            None => p.push("alerts.threshold is required for a fraud job (0..=1)".into()),
            Some(t) if !(0.0..=1.0).contains(&t) => {
                p.push(format!("alerts.threshold must be within 0..=1, not {t}"));
            }
            Some(_) => {}
        }
        if let Some(r) = pipeline.kafka.as_ref().and_then(|k| k.repartition.as_ref())
            && let Err(riskpipe_operators::OperatorError::Config(problems)) =
                self.features.split_by(&r.by)
        {
            p.extend(
                problems
                    .into_iter()
                    .map(|e| format!("kafka.repartition: {e}")),
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

    fn rebuild_horizon(&self, pipeline: &PipelineConfig) -> Option<super::Horizon> {
        let features = self.features.reach();
        // Drift counts rows only after its warm-up (the features' reach by default): its
        // window's days need the warm-up before them.
        let drift = pipeline
            .drift
            .as_ref()
            .map_or(std::time::Duration::ZERO, |d| {
                d.warm_up
                    .unwrap_or(features)
                    .saturating_add(std::time::Duration::from_secs(
                        86_400 * u64::from(d.window_days),
                    ))
            });
        Some(super::Horizon {
            time_column: self.features.event_time.clone(),
            reach: features
                .max(drift)
                .saturating_add(self.event_time.allowed_lateness),
            skew: self.event_time.max_future_skew,
        })
    }

    fn build(&self, pipeline: &PipelineConfig) -> Result<Job> {
        build(self, pipeline)
    }

    fn check_model(&self, pipeline: &PipelineConfig, model: &Model) -> Result<()> {
        check_model(self, pipeline, model)
    }

    fn feature_stage(&self) -> Result<Box<dyn FeatureStage>> {
        feature_stage(self)
    }

    fn checkpoints(&self) -> bool {
        true
    }

    fn batch_rows(&self) -> usize {
        self.replay.batch_rows
    }

    fn load(&self, input: &Path) -> Result<History> {
        file::load(self, input)
    }

    fn history(
        &self,
        source: &str,
        events: RecordBatch,
        side: Option<RecordBatch>,
        partitions: Partitions,
    ) -> Result<History> {
        file::from_decoded(self, source, events, side, partitions)
    }

    fn evaluate(
        &self,
        pipeline: &PipelineConfig,
        replayed: &Replayed,
        out_dir: &Path,
        opts: &Options,
    ) -> Result<(Box<dyn Report>, Vec<PathBuf>)> {
        let threshold = pipeline.alerts.threshold.unwrap_or_default();
        let challenger = pipeline.challenger_name();
        let outcome = backtest::evaluate(
            self,
            &replayed.model,
            &replayed.members,
            challenger.as_deref(),
            opts.drift_reference.as_deref(),
            pipeline.drift.as_ref(),
            threshold,
            replayed,
            out_dir,
        )?;
        Ok((Box::new(outcome.report), outcome.files))
    }

    /// The DataFusion batch twin (`sql` cargo feature), proven equal to the streaming features.
    fn export(&self, _pipeline: &PipelineConfig, input: &Path, output: &Path) -> Result<usize> {
        crate::export::fraud(&self.features, input, output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::Job;
    use riskpipe_schemas::score;

    /// 1,200 transactions over 12 days, 30 customers, 7 terminals, a fraud now and then.
    fn history(dir: &Path) -> History {
        history_over(dir, 1200, 100)
    }

    /// `rows` transactions from 2018-04-01 on, `per_day` a day (at most 100).
    fn history_over(dir: &Path, rows: u32, per_day: u32) -> History {
        let mut csv =
            String::from("TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD\n");
        let first = chrono::NaiveDate::from_ymd_opt(2018, 4, 1).expect("date");
        for i in 0..rows {
            let (day, minute) = (i / per_day, (i % per_day) * 14);
            csv.push_str(&format!(
                "{i},{}T{:02}:{:02}:00Z,{},{},{}.25,{}\n",
                first + chrono::Days::new(u64::from(day)),
                minute / 60,
                minute % 60,
                i % 30,
                i % 7,
                5 + (i * 37) % 200,
                i64::from(i % 23 == 4)
            ));
        }
        let path = dir.join("history.csv");
        std::fs::write(&path, csv).expect("write");
        let cfg = PipelineConfig::handbook().expect("shipped config");
        file::load(cfg.fraud().expect("fraud"), &path).expect("history")
    }

    /// The history's events in batches of `rows`, each with the labels due by its end.
    fn batches(h: &History, rows: usize) -> Vec<JobInput> {
        let mut source =
            crate::sources::history::HistorySource::new(std::sync::Arc::new(h.clone()), rows)
                .expect("source");
        std::iter::from_fn(|| match source.next_batch()?.payload {
            crate::sources::Payload::Rows { input, .. } => Some(input),
            crate::sources::Payload::Messages { .. } => None,
        })
        .collect()
    }

    fn job(cfg: &PipelineConfig) -> Job {
        build(cfg.fraud().expect("fraud"), cfg).expect("job")
    }

    /// Every one of `rows` events read from partition 0 of 1 (the repartitioned stages'
    /// input).
    fn in_partition_zero(rows: usize) -> Option<Partitions> {
        Some(Partitions {
            of_events: vec![0; rows],
            of_side: Vec::new(),
            held: std::sync::Arc::from([0]),
        })
    }

    /// Every alert's reasons, as JSON text.
    fn reasons(job: &mut Job, inputs: &[JobInput]) -> Vec<String> {
        let mut out = Vec::new();
        for input in inputs {
            let featured = job.features.process(input.clone()).expect("features");
            if featured.batch.num_rows() == 0 {
                continue;
            }
            let o = job.scoring.process(featured).expect("score");
            let alerts = o.alerts.expect("alerts").batch;
            let mut payloads = crate::encoders::Payloads::default();
            crate::encoders::Encoder::encode(
                &mut crate::encoders::JsonEncoder,
                "alerts",
                &alerts,
                &mut payloads,
            )
            .expect("encode");
            out.extend(
                payloads
                    .iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned()),
            );
        }
        out
    }

    /// Transactions with the given amounts, an hour apart, customer and terminal `i % 3`.
    fn amounts(dir: &Path, amounts: &[&str]) -> History {
        let mut csv =
            String::from("TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD\n");
        for (i, a) in amounts.iter().enumerate() {
            csv.push_str(&format!(
                "{i},2018-04-01T{i:02}:00:00Z,{},{},{a},0\n",
                i % 3,
                i % 3
            ));
        }
        let path = dir.join("amounts.csv");
        std::fs::write(&path, csv).expect("write");
        let cfg = PipelineConfig::handbook().expect("shipped config");
        file::load(cfg.fraud().expect("fraud"), &path).expect("history")
    }

    /// Through the driver, as a backtest runs: a number out of range is refused as `invalid`
    /// before any state, and an admitted event the model answers with no probability (the
    /// identity "model" scores its amount) is a `model` dead letter, never a score or alert;
    /// every other event is scored, each score in [0, 1].
    #[test]
    fn a_model_answer_that_is_no_probability_is_a_model_dead_letter_never_a_score() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = amounts(
            dir.path(),
            &["0.25", "0.5", "3.0", "0.75", "NaN", "1e16", "0.9", "1e15"],
        );
        let mut cfg = PipelineConfig::handbook().expect("shipped config");
        *cfg.model.primary_mut() = riskpipe_models::ModelConfig::new(
            riskpipe_models::shipped_model("tests/data/identity.onnx"),
        );
        cfg.drift = None;
        cfg.alerts.threshold = Some(0.6);
        let replayed = crate::backtest::replay(
            &cfg,
            std::sync::Arc::new(h),
            &indicatif::ProgressBar::hidden(),
        )
        .expect("replay");
        let mut refused: Vec<(&str, String)> = replayed
            .rejected()
            .iter()
            .map(|d| (d.kind.as_str(), d.reason.clone()))
            .collect();
        refused.sort();
        let beyond = "field TX_AMOUNT: beyond ±1e15, the range in which window sums, means and model inputs stay finite";
        assert_eq!(
            refused,
            vec![
                ("invalid", beyond.to_string()),
                (
                    "invalid",
                    "field TX_AMOUNT: not a finite number".to_string()
                ),
                (
                    "model",
                    "the model's score 1000000000000000 is no probability in [0, 1]".to_string()
                ),
                (
                    "model",
                    "the model's score 3 is no probability in [0, 1]".to_string()
                ),
            ]
        );
        let (scores, alerts) = replayed.records().expect("records");
        let scored: Vec<(i64, f64)> = scores
            .iter()
            .map(|s| {
                (
                    s["TRANSACTION_ID"].as_i64().expect("id"),
                    s["SCORE"].as_f64().expect("score"),
                )
            })
            .collect();
        assert_eq!(
            scored,
            vec![(0, 0.25), (1, 0.5), (3, 0.75), (6, 0.8999999761581421)]
        );
        let alerted: Vec<i64> = alerts
            .iter()
            .map(|a| a["TRANSACTION_ID"].as_i64().expect("id"))
            .collect();
        assert_eq!(alerted, vec![3, 6]);
    }

    /// An extreme amount that is admitted moves the explanation baseline no further than the
    /// drift reference's largest amount would: the alerts after it carry the reasons they
    /// carry without it (the baseline is clamped to the reference's ranges).
    #[test]
    fn an_extreme_admitted_amount_leaves_later_alerts_their_reasons() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = history(dir.path());
        let mut cfg = PipelineConfig::handbook().expect("shipped config");
        assert!(
            cfg.drift.is_some(),
            "the shipped config has a drift reference"
        );
        // More alerts to compare than at the shipped threshold.
        cfg.alerts.threshold = Some(0.02);
        let clean = batches(&h, 100);
        // A customer and terminal of their own: no other event's features change.
        let mut extreme = clean.clone();
        let last = extreme[2].events.num_rows() - 1;
        let row = extreme[2].events.slice(last, 1);
        let mut columns = row.columns().to_vec();
        let schema = row.schema();
        for (i, f) in schema.fields().iter().enumerate() {
            columns[i] = match f.name().as_str() {
                "TRANSACTION_ID" => {
                    std::sync::Arc::new(arrow::array::Int64Array::from(vec![9_999_999]))
                }
                "CUSTOMER_ID" | "TERMINAL_ID" => {
                    std::sync::Arc::new(arrow::array::Int64Array::from(vec![8_888_888]))
                }
                "TX_AMOUNT" => std::sync::Arc::new(arrow::array::Float64Array::from(vec![1e15])),
                _ => columns[i].clone(),
            };
        }
        let row = RecordBatch::try_new(schema.clone(), columns).expect("row");
        extreme[2].events =
            arrow::compute::concat_batches(&schema, [&extreme[2].events, &row]).expect("concat");
        if let Some(p) = &mut extreme[2].partitions {
            p.of_events.push(0);
        }
        // The alerts after the extreme event (their ids and reason names), and the baseline's
        // means at the end.
        let reasons_after = |inputs: &[JobInput]| {
            let mut job = job(&cfg);
            let all = reasons(&mut job, inputs);
            let snapshot = job.scoring.snapshot().expect("snapshot");
            let means = baseline_of(&snapshot.tables[0].1)
                .expect("baseline")
                .means()
                .expect("means");
            let later: Vec<String> = all
                .into_iter()
                .filter(|a| {
                    let v: serde_json::Value = serde_json::from_str(a).expect("alert");
                    v["TRANSACTION_ID"]
                        .as_i64()
                        .is_some_and(|id| (300..9_999_999).contains(&id))
                })
                .map(|a| {
                    let v: serde_json::Value = serde_json::from_str(&a).expect("alert");
                    // Which features, not their order: two of nearly equal contribution
                    // may trade places as the baseline moves by a reference value.
                    let mut names: Vec<String> = v["REASONS"]
                        .as_array()
                        .expect("reasons")
                        .iter()
                        .map(|r| r["feature"].as_str().expect("feature").to_string())
                        .collect();
                    names.sort();
                    format!("{}: {}", v["TRANSACTION_ID"], names.join(","))
                })
                .collect();
            (later, means)
        };
        let (expected, clean_means) = reasons_after(&clean);
        assert!(
            expected
                .iter()
                .filter(|r| r.matches(',').count() == 2)
                .count()
                >= 5,
            "alerts after the extreme one with three reasons: {expected:?}"
        );
        let (got, means) = reasons_after(&extreme);
        assert_eq!(got, expected);
        // Each mean moved by at most what one event at the reference's largest value moves it
        // (1,200 rows: TX_AMOUNT's reference maximum is 789.15, so under 0.66 + the mean).
        let reference = drift::Reference::read(&cfg.drift.as_ref().expect("drift").reference)
            .expect("reference");
        let model = cfg.load_model().expect("model");
        for (j, name) in model.features().iter().enumerate() {
            let [_, high] = reference
                .columns
                .iter()
                .find(|(c, _)| c == name)
                .and_then(|(_, b)| b.range)
                .expect("range");
            let moved = f64::from((means[j] - clean_means[j]).abs());
            assert!(
                moved <= (high + f64::from(clean_means[j]).abs()) / 1_200.0 + 1e-3,
                "{name}: the baseline mean moved by {moved}"
            );
        }
    }

    /// A transaction published twice, again in the same batch or three days later, is refused
    /// as a duplicate before it touches any state (a late copy is a duplicate, not late):
    /// every other row's features equal those of the clean input.
    #[test]
    fn a_transaction_published_twice_is_refused_and_changes_no_feature() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = history(dir.path());
        let cfg = PipelineConfig::handbook().expect("shipped config");
        let run = |inputs: &[JobInput]| {
            let mut stage = job(&cfg).features;
            let (mut out, mut refused) = (Vec::new(), Vec::new());
            for input in inputs {
                let f = stage.process(input.clone()).expect("features");
                refused.extend(f.rejects.iter().map(|r| (r.kind, r.reason.clone())));
                out.push(f.batch);
            }
            let out = arrow::compute::concat_batches(&out[0].schema(), &out).expect("concat");
            (out, refused)
        };
        let clean = batches(&h, 100);
        let (expected, none) = run(&clean);
        assert_eq!(none, Vec::new());

        let mut twice = clean.clone();
        let copy = twice[3].events.slice(5, 1);
        let schema = copy.schema();
        twice[3].events =
            arrow::compute::concat_batches(&schema, [&twice[3].events, &copy]).expect("concat");
        twice[6].events =
            arrow::compute::concat_batches(&schema, [&copy, &twice[6].events]).expect("concat");
        let (got, refused) = run(&twice);
        let reason = "TRANSACTION_ID taken in already: a transaction published twice counts once";
        assert_eq!(
            refused,
            vec![
                (super::super::RejectKind::Duplicate, reason.to_string()),
                (super::super::RejectKind::Duplicate, reason.to_string())
            ]
        );
        assert_eq!(got, expected);
    }

    /// The first stage of the repartitioned topology (customer windows only) refuses a
    /// transaction published twice as one process does: its windows remember ids, so the copy
    /// neither counts twice in its customer's windows nor is forwarded.
    #[test]
    fn the_first_stage_refuses_a_transaction_published_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = history(dir.path());
        let cfg = PipelineConfig::handbook().expect("shipped config");
        let fraud = cfg.fraud().expect("fraud");
        let first = partition_maker(fraud, "TERMINAL_ID", false, 1).expect("first");
        let run = |inputs: &[JobInput]| {
            let mut stage = first().expect("stage");
            let (mut out, mut refused) = (Vec::new(), Vec::new());
            for input in inputs {
                let mut input = input.clone();
                input.side = None;
                input.partitions = in_partition_zero(input.events.num_rows());
                let f = stage.process(input).expect("first stage");
                refused.extend(f.rejects.iter().map(|r| r.kind));
                out.push(f.batch);
            }
            let out = arrow::compute::concat_batches(&out[0].schema(), &out).expect("concat");
            (out, refused)
        };
        let clean = batches(&h, 100);
        let (expected, none) = run(&clean);
        assert_eq!(none, Vec::new());
        let mut twice = clean.clone();
        let copy = twice[3].events.slice(5, 1);
        twice[6].events = arrow::compute::concat_batches(&copy.schema(), [&copy, &twice[6].events])
            .expect("concat");
        let (got, refused) = run(&twice);
        assert_eq!(refused, vec![super::super::RejectKind::Duplicate]);
        assert_eq!(got, expected);
    }

    /// The explanation baseline and the drift counts survive a checkpoint: a score stage
    /// restored from one, or brought up to it by the silent replay, explains and measures
    /// drift exactly as the stage that never stopped.
    #[test]
    fn a_restored_or_warmed_score_stage_explains_and_monitors_as_the_original() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 60 days: drift counts only rows whose 37-day reach the state has seen.
        let h = history_over(dir.path(), 2400, 40);
        let mut cfg = PipelineConfig::handbook().expect("shipped config");
        // Every score alerts, so every row is explained.
        cfg.alerts.threshold = Some(0.0);
        let inputs = batches(&h, 97);
        let half = inputs.len() / 2;

        // A drift reference of the first days' scored rows.
        let mut plain = job(&cfg);
        let mut scored = Vec::new();
        for input in &inputs[..half] {
            let f = plain.features.process(input.clone()).expect("features");
            scored.extend(plain.scoring.process(f).expect("score").scored);
        }
        let mut monitored = vec![riskpipe_schemas::tx::TX_AMOUNT.to_string()];
        monitored.push(score::SCORE.to_string());
        let reference = drift::Reference::of(
            &scored,
            "TX_DATETIME",
            &monitored,
            i64::MIN..i64::MAX,
            "the first half".into(),
        )
        .expect("reference");
        let reference_path = dir.path().join("reference.json");
        reference.write(&reference_path).expect("write");
        cfg.drift = Some(drift::DriftConfig {
            reference: reference_path,
            threshold: 0.2,
            window_days: 3,
            min_rows: 1,
            warm_up: None,
        });

        let mut original = job(&cfg);
        let first = reasons(&mut original, &inputs[..half]);
        assert!(!first.is_empty());
        let features = original.features.snapshot().expect("features");
        let state = original.scoring.snapshot().expect("score state");
        assert_eq!(
            state
                .tables
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["explain_baseline", "drift", "drift_since"]
        );
        let expected = reasons(&mut original, &inputs[half..]);
        assert!(expected.len() > 100);

        // Restored from the snapshot.
        let mut restored = job(&cfg);
        restored
            .features
            .restore(features.clone())
            .expect("features");
        restored.scoring.restore(state).expect("score state");
        assert_eq!(reasons(&mut restored, &inputs[half..]), expected);

        // Rebuilt by the silent replay of the first half.
        let mut warmed = job(&cfg);
        for input in &inputs[..half] {
            let f = warmed.features.process(input.clone()).expect("features");
            warmed.scoring.warm(f).expect("warm");
        }
        assert_eq!(reasons(&mut warmed, &inputs[half..]), expected);

        // Without the state, the reasons differ (the baseline starts again).
        let mut fresh = job(&cfg);
        fresh.features.restore(features).expect("features");
        assert_ne!(reasons(&mut fresh, &inputs[half..]), expected);

        // The drift windows agree too, and count rows.
        let psi = |j: &Job| format!("{:?}", j.scoring.snapshot().expect("snapshot").tables);
        let counted = original.scoring.snapshot().expect("snapshot").tables[1]
            .1
            .num_rows();
        assert!(counted > 0, "no drift counts");
        assert_eq!(psi(&restored), psi(&original));
        assert_eq!(psi(&warmed), psi(&original));
    }

    /// The second stage of the repartitioned topology takes a re-forwarded row (the first
    /// stage's uncommitted tail, read again after a crash or a rebalance) once: the copy is
    /// refused as a duplicate, and every later row's features are those of a run without it
    /// (the terminal's history did not count the transaction twice).
    #[test]
    fn a_re_forwarded_row_counts_once_after_the_repartition() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = history(dir.path());
        let cfg = PipelineConfig::handbook().expect("shipped config");
        let fraud = cfg.fraud().expect("fraud");
        let first = partition_maker(fraud, "TERMINAL_ID", false, 1).expect("first");
        let mut stage_one = first().expect("stage");
        // The first stage's rows, as forwarded (every transaction in partition 0 of 1).
        let mut forwarded = Vec::new();
        let mut labels = Vec::new();
        for mut input in batches(&h, 50) {
            labels.extend(input.side.take());
            input.partitions = in_partition_zero(input.events.num_rows());
            forwarded.push(stage_one.process(input).expect("first stage").batch);
        }
        let labels = arrow::compute::concat_batches(&labels[0].schema(), &labels).expect("labels");
        let second = partition_maker(fraud, "TERMINAL_ID", true, 1).expect("second");
        let run = |batches: &[RecordBatch]| -> (Vec<RecordBatch>, usize) {
            let mut stage = second().expect("stage");
            let mut out = Vec::new();
            let mut duplicates = 0;
            for (i, b) in batches.iter().enumerate() {
                let f = stage
                    .process(JobInput {
                        // Every label up front: each counts from its label time only.
                        side: (i == 0).then(|| labels.clone()),
                        events: b.clone(),
                        partitions: in_partition_zero(b.num_rows()),
                    })
                    .expect("second stage");
                duplicates += f
                    .rejects
                    .iter()
                    .filter(|r| r.kind == super::super::RejectKind::Redelivered)
                    .count();
                out.push(f.batch);
            }
            (out, duplicates)
        };
        let (once, none) = run(&forwarded);
        assert_eq!(none, 0);
        // Batches 5 and 6 forwarded again after batch 7 (day 3; the terminal risk looks 7 days
        // back, so the 12 days see the difference a double count would make).
        let mut again = forwarded.clone();
        again.insert(8, forwarded[5].clone());
        again.insert(9, forwarded[6].clone());
        let (twice, duplicates) = run(&again);
        assert_eq!(
            duplicates,
            forwarded[5].num_rows() + forwarded[6].num_rows()
        );
        let rows = |bs: &[RecordBatch]| {
            let bs: Vec<&RecordBatch> = bs.iter().filter(|b| b.num_rows() > 0).collect();
            arrow::compute::concat_batches(&bs[0].schema(), bs).expect("concat")
        };
        assert_eq!(
            rows(&twice),
            rows(&once),
            "every row's features as without the copies"
        );
    }
}
