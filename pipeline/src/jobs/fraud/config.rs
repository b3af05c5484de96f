//! `[job]` of a fraud pipeline (`kind = "fraud"`): features, how a labelled history is replayed,
//! and the backtest's train/delay/test split.

use riskpipe_operators::FeatureConfig;
use riskpipe_schemas::declared::{EventSchema, EventsConfig};
use riskpipe_schemas::tx;
use serde::Deserialize;

use crate::jobs::event_time::EventTimeConfig;
pub use crate::sources::file::ReplayConfig;

/// A fraud-scoring job.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FraudConfig {
    /// The transactions as they arrive: their fields, types and rules, id and event time. The
    /// decoders read the events by it.
    pub events: EventsConfig,
    /// Feature definitions, shared by live scoring, replay and the batch export.
    pub features: FeatureConfig,
    /// How far a transaction may be ahead of or behind the watermark.
    #[serde(default)]
    pub event_time: EventTimeConfig,
    /// How a history file is replayed.
    #[serde(default)]
    pub replay: ReplayConfig,
    /// The backtest's train/delay/test split; without it the whole history is evaluated.
    #[serde(default)]
    pub backtest: Option<SplitConfig>,
}

impl FraudConfig {
    /// The fraud job's settings of `pipeline`, or a config error saying which job it has (a
    /// command, a bench or a test that needs a fraud job).
    pub fn of(pipeline: &crate::config::PipelineConfig) -> crate::Result<&FraudConfig> {
        pipeline.job.settings::<FraudConfig>().ok_or_else(|| {
            crate::PipelineError::Config(vec![format!(
                "this needs a fraud job (job.kind = \"fraud\"), not a {} job",
                pipeline.job.kind().name()
            )])
        })
    }
}

/// The handbook's evaluation split.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// First training day (UTC date, `YYYY-MM-DD`).
    pub train_start: String,
    /// Training days.
    pub train_days: u32,
    /// Days between training and test during which labels are not yet known.
    pub delay_days: u32,
    /// Test days.
    pub test_days: u32,
}

impl FraudConfig {
    /// The checked declaration of the events (`None` when it has problems, which
    /// [`FraudConfig::problems`] lists; a config is checked before a job is built).
    pub fn declared(&self) -> Option<EventSchema> {
        self.events.check().ok()
    }

    /// Every problem of the job's settings (`job.*`).
    pub fn problems(&self) -> Vec<String> {
        let mut p = match self.events.check() {
            Ok(declared) => handbook_shape(&declared),
            Err(problems) => problems,
        };
        p.extend(
            self.features
                .validate(
                    &riskpipe_schemas::transaction_schema(),
                    Some(&riskpipe_schemas::fraud_label_schema()),
                )
                .into_iter()
                .map(|e| format!("job.features: {e}")),
        );
        if self.event_time.max_future_skew.is_zero() {
            p.push(
                "job.event_time.max_future_skew must be more than 0 (time would stand still)"
                    .into(),
            );
        }
        if self.replay.batch_rows == 0 {
            p.push("job.replay.batch_rows must be at least 1".into());
        }
        if let Some(s) = &self.backtest {
            if chrono::NaiveDate::parse_from_str(&s.train_start, "%Y-%m-%d").is_err() {
                p.push(format!(
                    "job.backtest.train_start {:?} is not a YYYY-MM-DD date",
                    s.train_start
                ));
            }
            if s.train_days == 0 || s.test_days == 0 {
                p.push(
                    "job.backtest.train_days and job.backtest.test_days must be at least 1".into(),
                );
            }
        }
        p
    }

    /// The label-time column of label events.
    pub fn label_time(&self) -> String {
        self.features
            .label_risk
            .first()
            .map(|r| r.label_time.clone())
            .unwrap_or_else(|| riskpipe_schemas::label::LABEL_TIME.into())
    }
}

/// Where a declaration differs from the transactions the fraud job computes its features,
/// labels and records from (the published transaction schema's columns, id and time): it takes
/// no other shape yet, and says so rather than misread one.
fn handbook_shape(declared: &EventSchema) -> Vec<String> {
    let mut p = Vec::new();
    let expected = riskpipe_schemas::transaction_schema();
    let columns = |s: &arrow::datatypes::Schema| -> Vec<String> {
        s.fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect()
    };
    if declared.arrow_schema() != expected {
        p.push(format!(
            "job.events: the fraud job reads transactions of the columns {:?} (required, not null) for now; declared: {:?}",
            columns(&expected),
            columns(&declared.arrow_schema())
        ));
    }
    let name = |i: Option<usize>| i.map(|i| declared.fields[i].name.as_str());
    for (role, got, want) in [
        ("id", name(Some(declared.id)), tx::TRANSACTION_ID),
        ("time.field", name(Some(declared.time)), tx::TX_DATETIME),
        ("amount", name(declared.amount), tx::TX_AMOUNT),
        ("entity", name(declared.entity), tx::CUSTOMER_ID),
    ] {
        if got.is_some_and(|g| g != want) {
            p.push(format!(
                "job.events.{role}: the fraud job reads {want:?} in this role for now"
            ));
        }
    }
    p
}
