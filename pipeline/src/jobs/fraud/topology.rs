//! The fraud job split at a repartition (scale-out): the first stage admits transactions,
//! computes the features keyed like its input and forwards each row keyed by the next stage's
//! key; the second computes the rest, scores and alerts.

use riskpipe_engine::repartition::{Forward, Part, origin_field};

use super::build;
use super::config::FraudConfig;
use super::features::FraudFeatures;
use crate::Result;
use crate::config::PipelineConfig;
use crate::jobs::{FeatureStage, Inputs, Job};

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
            side: None,
            ..super::inputs(cfg)
        },
        features: Box::new(per_partition(
            cfg,
            before,
            Part::BeforeRepartition,
            partitions,
        )?),
        // Of a key of several fields, the first: each combination then lands in one partition.
        scoring: Box::new(Forward {
            key: riskpipe_operators::key_parts(by)[0].to_string(),
        }),
    })
}

/// The rows [`first_stage`] forwards: the transaction, its first features, its partition.
pub fn forwarded_schema(cfg: &FraudConfig, by: &str) -> Result<arrow::datatypes::SchemaRef> {
    let (before, _) = cfg.features.split_by(by)?;
    let events = super::inputs(cfg).events;
    let mut fields: Vec<arrow::datatypes::FieldRef> = events.fields().iter().cloned().collect();
    fields.extend(before.output_fields(&events)?);
    fields.push(origin_field());
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
    let labels = cfg.declared_labels();
    job.inputs = Inputs {
        events: forwarded_schema(cfg, by)?,
        side: labels.as_ref().map(|l| l.arrow_schema()),
        declared: labels.into_iter().map(std::sync::Arc::new).collect(),
    };
    job.features = Box::new(per_partition(cfg, after, Part::AfterRepartition, origins)?);
    Ok(job)
}

/// The features of `part` with state per input partition (see [`crate::jobs::partitioned`]); after a
/// repartition, each partition's watermark waits for the `origins` partitions rows come from.
fn per_partition(
    cfg: &FraudConfig,
    features: riskpipe_operators::FeatureConfig,
    part: Part,
    origins: i32,
) -> Result<crate::jobs::partitioned::PerPartition> {
    crate::jobs::partitioned::PerPartition::new(maker(cfg, features, part, origins))
}

fn maker(
    cfg: &FraudConfig,
    features: riskpipe_operators::FeatureConfig,
    part: Part,
    origins: i32,
) -> crate::jobs::partitioned::MakeStage {
    let cfg = cfg.clone();
    // Each partition's rows must be all of their key's: the label risk's key after the
    // repartition, the windows' before it.
    // (Of a key combining several fields, the first: the one the topic is keyed by.)
    let first = |key: &str| riskpipe_operators::key_parts(key)[0].to_string();
    let by = match part {
        Part::AfterRepartition => features.label_risk.first().map(|r| first(&r.key)),
        _ => features
            .windows
            .first()
            .map(|w| first(&w.key))
            .or_else(|| features.aggregate.first().map(|a| first(&a.key))),
    };
    std::sync::Arc::new(move || {
        let mut stage = FraudFeatures::new(&cfg, &features, part)?;
        if part == Part::AfterRepartition {
            stage
                .admission
                .clock
                .hold(&(0..origins).collect::<Vec<_>>());
        }
        if origins > 0
            && let Some(by) = &by
        {
            stage.admission.keyed_by(by.clone(), origins);
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
) -> Result<crate::jobs::partitioned::MakeStage> {
    let (before, later) = cfg.features.split_by(by)?;
    Ok(match after {
        false => maker(cfg, before, Part::BeforeRepartition, origins),
        true => maker(cfg, later, Part::AfterRepartition, origins),
    })
}
