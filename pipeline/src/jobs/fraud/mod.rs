//! The fraud job: transactions and delayed fraud labels in; one score per transaction and an
//! alert (with its top reasons) per score at or over the threshold out.
//!
//! Features: transactions checked against the watermark ([`EventClock`](crate::jobs::event_time::EventClock): too far in the
//! future, or too late, is refused before touching state), fraud labels (operators use a label
//! only from its label time on, so the result does not depend on how labels and transactions
//! share micro-batches), then the accepted transactions through the [`FeatureChain`](riskpipe_operators::FeatureChain) of
//! `[job.features]`, whose state follows the watermark.
//! Score: the model ([`FraudModel`]), alerts and their occlusion reasons, output records.

pub mod backtest;
mod config;
mod decide;

mod export;
mod features;
pub mod metrics;
mod model;
mod records;
pub mod report;
mod scoring;
mod topology;

use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use riskpipe_models::{Model, Scorer};
use riskpipe_schemas::score;
use std::sync::Arc;

pub use config::{FraudConfig, OutputsConfig, ReplayConfig, SplitConfig};
pub use decide::{CandidateDiff, DecisionsSection, RulesBacktest};
pub use model::FraudModel;
pub use topology::{first_stage, forwarded_schema, partition_maker, second_stage};

use features::FraudFeatures;
use riskpipe_engine::repartition::Part;
use scoring::{Challenger, FraudScoring};

use super::Repeated;
use super::{FeatureStage, Inputs, Job, JobKind, Partitions};
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

/// Transactions and fraud labels (the side input) as `cfg` declares them.
pub fn inputs(cfg: &FraudConfig) -> Inputs {
    let events = cfg.declared();
    let labels = cfg.declared_labels();
    Inputs {
        events: events
            .as_ref()
            .map(|d| d.arrow_schema())
            .unwrap_or_else(|| Arc::new(arrow::datatypes::Schema::empty())),
        side: labels.as_ref().map(|d| d.arrow_schema()),
        declared: events.into_iter().chain(labels).map(Arc::new).collect(),
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

/// Builds the job: the feature chain, the model (checked: every model input is a transaction
/// column or a configured feature) and the alerting.
pub fn build(cfg: &FraudConfig, pipeline: &PipelineConfig) -> Result<Job> {
    let threshold = pipeline.alerts.threshold.ok_or_else(|| {
        PipelineError::Config(vec!["alerts.threshold is required for a fraud job".into()])
    })?;
    let declared = cfg.events.check().map_err(PipelineError::Config)?;
    let model = load_checked(cfg, pipeline)?;
    check_model(cfg, pipeline, &model)?;
    let drift = pipeline
        .drift
        .as_ref()
        .map(|d| {
            crate::jobs::drift::Monitor::new(d, &cfg.features.event_time, cfg.features.reach())
        })
        .transpose()?;
    if let Some(d) = &drift {
        let produced = cfg.features.feature_names()?;
        let events = declared.arrow_schema();
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
    if let Some(d) = &pipeline.decisions {
        let problems = d.problems(&pipeline.base_dir, &scored_schema(cfg, members_of(&model))?);
        if !problems.is_empty() {
            return Err(PipelineError::Config(problems));
        }
    }
    let decide = decide::Decide::new(pipeline.decisions.as_ref(), &pipeline.base_dir)?;
    let label = model.label().to_string();
    let reads_text = model.reads_text();
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
        inputs: inputs(cfg),
        features: feature_stage(cfg)?,
        scoring: Box::new(FraudScoring {
            model: scoring_model(model),
            reasons: pipeline.alerts.reasons,
            model_name: Repeated::new(label.clone()),
            label,
            updates: None,
            drift,
            challenger,
            records: records::RecordShapes::of(
                &declared,
                reads_text,
                cfg.outputs.as_ref(),
                &cfg.features.output_fields(&inputs(cfg).events)?,
            ),
            decide,
        }),
    })
}

/// How many member scores a scored row of `model` carries (none for a single model).
fn members_of(model: &Model) -> usize {
    match model.is_ensemble() {
        true => model.member_labels().len(),
        false => 0,
    }
}

/// The columns of a scored row a decision rule reads: the declared fields, the features, the
/// score and its threshold flag, and an ensemble's `members` scores.
fn scored_schema(cfg: &FraudConfig, members: usize) -> Result<arrow::datatypes::SchemaRef> {
    let events = inputs(cfg).events;
    let mut fields: Vec<arrow::datatypes::FieldRef> = events.fields().iter().cloned().collect();
    for f in cfg.features.output_fields(&events)? {
        if !fields.iter().any(|e| e.name() == f.name()) {
            fields.push(f);
        }
    }
    fields.extend(decide::scored_fields().map(Arc::new));
    fields.extend((0..members).map(|i| {
        Arc::new(arrow::datatypes::Field::new(
            score::member(i),
            DataType::Float32,
            false,
        ))
    }));
    Ok(Arc::new(arrow::datatypes::Schema::new(fields)))
}

/// Every model input must be a declared field or a configured feature, of the kind the model
/// reads it as (text for a string input, a number otherwise): every mismatch at once.
fn check_model(cfg: &FraudConfig, _pipeline: &PipelineConfig, model: &Model) -> Result<()> {
    let problems = column_problems(cfg, model.label(), model.columns())?;
    match problems.is_empty() {
        true => Ok(()),
        false => Err(PipelineError::Config(problems)),
    }
}

/// The problems of `columns` (a model's, `label`) against the declared fields and features.
fn column_problems(
    cfg: &FraudConfig,
    label: &str,
    columns: &[riskpipe_models::InputColumn],
) -> Result<Vec<String>> {
    let produced = cfg.features.feature_names()?;
    let events = cfg
        .events
        .check()
        .map_err(PipelineError::Config)?
        .arrow_schema();
    let mut problems = Vec::new();
    for c in columns {
        let reads = c.element.name();
        let text = match (
            produced.contains(&c.name),
            events.field_with_name(&c.name).ok(),
        ) {
            (true, _) => Some(false),
            (false, Some(f)) => match f.data_type() {
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(true),
                t if t.is_numeric() => Some(false),
                _ => None,
            },
            (false, None) => {
                problems.push(format!(
                    "model {label} reads {:?}, which is neither a declared field nor a configured feature",
                    c.name
                ));
                continue;
            }
        };
        match text {
            Some(true) if !c.element.is_text() => problems.push(format!(
                "model {label} reads {:?} as {reads}, but it is declared as text: bind it to a string input (or encode it in the model)",
                c.name
            )),
            Some(false) if c.element.is_text() => problems.push(format!(
                "model {label} reads {:?} as string, but it is a number",
                c.name
            )),
            None => problems.push(format!(
                "model {label} reads {:?} as {reads}, but it is neither a number nor text",
                c.name
            )),
            _ => {}
        }
    }
    Ok(problems)
}

/// Loads the model; where its bindings do not fit its graph, every problem of the graph and of
/// the columns that did bind (against the declared fields and features), at once.
fn load_checked(cfg: &FraudConfig, pipeline: &PipelineConfig) -> Result<Model> {
    match pipeline.load_model() {
        Err(PipelineError::Model(riskpipe_models::ModelError::Bindings {
            path,
            problems,
            columns,
        })) => {
            let mut all: Vec<String> = problems
                .into_iter()
                .map(|p| format!("model {path}: {p}"))
                .collect();
            all.extend(column_problems(cfg, &path, &columns)?);
            Err(PipelineError::Config(all))
        }
        other => other,
    }
}

#[typetag::deserialize(name = "fraud")]
impl JobKind for FraudConfig {
    fn name(&self) -> &'static str {
        "fraud"
    }

    fn resolve(&mut self, base_dir: &Path) {
        self.events.read_schema_file(base_dir);
        if let Some(labels) = &mut self.labels {
            labels.read_schema_file(base_dir);
        }
        self.fill_from_declarations();
    }

    fn problems(&self, pipeline: &PipelineConfig) -> Vec<String> {
        let mut p = FraudConfig::problems(self);
        if let Some(d) = &pipeline.decisions {
            // An ensemble's member scores are checked when the models are loaded.
            let models = pipeline.model.all().len();
            match scored_schema(self, if models > 1 { models } else { 0 }) {
                Ok(schema) => p.extend(d.problems(&pipeline.base_dir, &schema)),
                Err(e) => p.push(format!("decisions: {e}")),
            }
        }
        match pipeline.alerts.threshold {
            None => p.push("alerts.threshold is required for a fraud job (0..=1)".into()),
            Some(t) if !(0.0..=1.0).contains(&t) => {
                p.push(format!("alerts.threshold must be within 0..=1, not {t}"));
            }
            Some(_) => {}
        }
        if pipeline
            .kafka
            .as_ref()
            .is_some_and(|k| k.repartition.is_some())
            && self.labels_name_the_event()
        {
            p.push(
                "job.labels name their event only (no key or event time of a label risk): that needs the single-process topology, which sees every event; with [kafka.repartition] declare the key and the event time in the labels".into(),
            );
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
        // A pseudonym needs the secret of [kafka.pseudonyms].
        let pseudonymized: Vec<String> = [self.declared(), self.declared_labels()]
            .into_iter()
            .flatten()
            .flat_map(|d| d.fields)
            .filter(|f| f.sensitive == Some(riskpipe_schemas::declared::Sensitive::Pseudonymize))
            .map(|f| f.name)
            .collect();
        if !pseudonymized.is_empty()
            && pipeline
                .kafka
                .as_ref()
                .is_none_or(|k| k.pseudonyms.is_none())
        {
            p.push(format!(
                "sensitive fields {pseudonymized:?} are declared \"pseudonymize\", which needs [kafka.pseudonyms] (its secret_env)"
            ));
        }
        // An Avro output names its fields as the records do: each must be an Avro name.
        if let (Some(kafka), Some(declared)) = (&pipeline.kafka, self.declared()) {
            let features = self
                .features
                .output_fields(&inputs(self).events)
                .unwrap_or_default();
            let records =
                records::RecordShapes::of(&declared, false, self.outputs.as_ref(), &features);
            let avro_name = |n: &str| {
                n.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            };
            for (topic, format) in kafka.output_formats() {
                let schema = match topic {
                    t if t == kafka.topics.alerts => &records.alert,
                    t if t == kafka.topics.decisions => &records.decision,
                    _ => &records.score,
                };
                let bad: Vec<&str> = schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .filter(|n| !avro_name(n))
                    .collect();
                if format == crate::decoders::Format::Avro && !bad.is_empty() {
                    p.push(format!(
                        "kafka: topic {topic:?} is Avro, but its records carry fields whose names are no Avro names: {bad:?} (publish it as JSON: [kafka.formats])"
                    ));
                }
            }
        }
        p
    }

    fn streams(&self) -> Streams {
        STREAMS
    }

    fn inputs(&self) -> Inputs {
        inputs(self)
    }

    fn split_stage(
        &self,
        pipeline: &PipelineConfig,
        by: &str,
        origins: i32,
        side: super::Side,
    ) -> Result<Job> {
        match side {
            super::Side::Before => first_stage(self, by, origins),
            super::Side::After => second_stage(self, pipeline, by, origins),
        }
    }

    fn split_partition_stage(
        &self,
        by: &str,
        origins: i32,
        side: super::Side,
    ) -> Result<super::MakeStage> {
        partition_maker(self, by, side == super::Side::After, origins)
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

    fn record_schemas(&self, pipeline: &PipelineConfig) -> Result<Vec<super::RecordSchema>> {
        let (events, _) = self.declarations()?;
        let model = load_checked(self, pipeline)?;
        check_model(self, pipeline, &model)?;
        let reads_text = model.reads_text();
        let shapes = records::RecordShapes::of(
            &events,
            reads_text,
            self.outputs.as_ref(),
            &self.features.output_fields(&inputs(self).events)?,
        );
        let topics = pipeline.kafka.as_ref().map(|k| k.topics.clone());
        let (scores, alerts, decisions) = topics
            .map(|t| (t.scores, t.alerts, t.decisions))
            .unwrap_or_else(|| ("scores".into(), "alerts".into(), "decisions".into()));
        let mut schemas = vec![
            super::RecordSchema::of(
                "score",
                &scores,
                &format!("One score per event, keyed by {}", shapes.key()),
                &shapes.score,
            )?,
            super::RecordSchema::of(
                "alert",
                &alerts,
                &format!(
                    "An event whose score reached the alert threshold, keyed by {}",
                    shapes.key()
                ),
                &shapes.alert,
            )?,
        ];
        if pipeline.decisions.is_some() {
            schemas.push(super::RecordSchema::of(
                "decision",
                &decisions,
                &format!(
                    "One decision per event: its outcome, every matching rule and the rules' version, keyed by {}",
                    shapes.key()
                ),
                &shapes.decision,
            )?);
        }
        Ok(schemas)
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
        let (events, labels) = self.declarations()?;
        file::load(
            file::Shape::new(&events, &labels, &self.features, &self.replay)?,
            input,
        )
    }

    fn history(
        &self,
        source: &str,
        events: RecordBatch,
        side: Option<RecordBatch>,
        partitions: Partitions,
    ) -> Result<History> {
        let (declared, declared_labels) = self.declarations()?;
        file::from_decoded(
            file::Shape::new(&declared, &declared_labels, &self.features, &self.replay)?,
            source,
            events,
            side,
            partitions,
        )
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
        let mut files = outcome.files;
        if let Some(section) = &pipeline.decisions {
            let (rules, written) = decide::backtest(
                self,
                section,
                &pipeline.base_dir,
                &replayed.scored(),
                opts.rules_candidate.as_deref(),
                out_dir,
            )?;
            tracing::info!(
                "rules {}: {} rules over {} events (rules.csv, rules.json)",
                rules.version,
                rules.rules.len(),
                rules.events
            );
            files.extend(written);
        } else if opts.rules_candidate.is_some() {
            return Err(PipelineError::Config(vec![
                "--rules-candidate compares with the [decisions] of the config, which has none"
                    .into(),
            ]));
        }
        Ok((Box::new(outcome.report), files))
    }

    /// The DataFusion batch twin (`sql` cargo feature), proven equal to the streaming features.
    /// The declared fields, every feature, `LABEL` (the truth, 1 or 0) and `LABEL_KNOWN_AT`
    /// (when the label is known: `job.replay.label_delay` after the event), computed by the
    /// feature stage that scores live. A history file's other columns (the truth's among them)
    /// are left out: a live event has none of them.
    fn export(&self, pipeline: &PipelineConfig, input: &Path, output: &Path) -> Result<usize> {
        let featured = super::featured_history(pipeline, input)?;
        let delay = i64::try_from(self.replay.label_delay.as_nanos()).unwrap_or(i64::MAX);
        let (events, _) = self.declarations()?;
        let mut keep: Vec<String> = events.fields.iter().map(|f| f.name.clone()).collect();
        keep.extend(self.features.feature_names()?);
        keep.extend([score::LABEL.to_string(), score::LABEL_KNOWN_AT.to_string()]);
        let labelled = featured
            .iter()
            .map(|b| {
                let b =
                    export::with_labels(b, &self.truth_column(), &self.features.event_time, delay)?;
                let indices = keep
                    .iter()
                    .map(|c| b.schema().index_of(c).map_err(PipelineError::from))
                    .collect::<Result<Vec<_>>>()?;
                Ok(b.project(&indices)?)
            })
            .collect::<Result<Vec<_>>>()?;
        crate::sinks::parquet::write(output, &labelled, None)?;
        Ok(labelled.iter().map(|b| b.num_rows()).sum())
    }
}

#[cfg(test)]
mod tests;
