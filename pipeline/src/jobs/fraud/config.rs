//! `[job]` of a fraud pipeline (`kind = "fraud"`): features, how a labelled history is replayed,
//! and the backtest's train/delay/test split.

use riskpipe_operators::FeatureConfig;
use riskpipe_schemas::declared::{EventSchema, EventsConfig};
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
    /// The fraud labels as they arrive (`[job.labels]`): which field names the labelled
    /// event's id, which says fraud or not (`label`), and when the label became known (`time`).
    /// Required: a config without it is refused, listing it with every other problem.
    #[serde(default)]
    pub labels: Option<EventsConfig>,
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
    /// What score and alert records carry and what they are keyed by (`[job.outputs]`);
    /// without it, the records of the declared events (docs/getting-started/your-data.md).
    #[serde(default)]
    pub outputs: Option<OutputsConfig>,
}

/// `[job.outputs]`: the score and alert records as the user's tools want them. Every record
/// carries the event's id and time and what riskpipe adds (`SCORE`, `ALERT` or `THRESHOLD`,
/// `MODEL`, an alert's `REASONS`); between them, the listed declared fields and features, in
/// order.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputsConfig {
    /// The declared field both are keyed by (default: the entity, else the id).
    #[serde(default)]
    pub key: Option<String>,
    /// What a score record carries (default: the entity, where declared).
    #[serde(default)]
    pub scores: Option<Vec<String>>,
    /// What an alert record carries (default: every declared field).
    #[serde(default)]
    pub alerts: Option<Vec<String>>,
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

    /// Whether the declared labels name their event only: they lack the event time or a label
    /// risk's key, which riskpipe then takes from the event the label names.
    pub fn labels_name_the_event(&self) -> bool {
        let Some(labels) = self.declared_labels() else {
            return false;
        };
        let lacks = |name: &str| labels.index_of(name).is_none();
        !self.features.label_risk.is_empty()
            && (lacks(&self.features.event_time)
                || self
                    .features
                    .label_risk
                    .iter()
                    .any(|r| riskpipe_operators::key_parts(&r.key).into_iter().any(lacks)))
    }

    /// The checked declaration of the labels (`None` when it has problems).
    pub fn declared_labels(&self) -> Option<EventSchema> {
        self.labels_checked().ok()
    }

    /// The checked labels' declaration, or its problems (one when `[job.labels]` is missing).
    fn labels_checked(&self) -> Result<EventSchema, Vec<String>> {
        match &self.labels {
            Some(labels) => labels.check_as(LABELS),
            None => Err(vec![format!(
                "[{LABELS}] is missing: declare the fraud labels (id, label, time, fields)"
            )]),
        }
    }

    /// The checked declarations of the events and the labels, or a config error listing every
    /// problem of both.
    pub fn declarations(&self) -> crate::Result<(EventSchema, EventSchema)> {
        match (self.events.check(), self.labels_checked()) {
            (Ok(events), Ok(labels)) => Ok((events, labels)),
            (events, labels) => Err(crate::PipelineError::Config(
                events
                    .err()
                    .into_iter()
                    .chain(labels.err())
                    .flatten()
                    .collect(),
            )),
        }
    }

    /// The truth column of a history (`job.replay.label`, else the declared label's name).
    pub fn truth_column(&self) -> String {
        self.replay
            .label
            .clone()
            .or_else(|| self.labels.as_ref().and_then(|l| l.label.clone()))
            .unwrap_or_default()
    }

    /// Every problem of the job's settings (`job.*`).
    pub fn problems(&self) -> Vec<String> {
        let events = self.events.check();
        let labels = self.labels_checked();
        let mut p = Vec::new();
        if let Err(problems) = &events {
            p.extend(problems.iter().cloned());
        }
        if let Err(problems) = &labels {
            p.extend(problems.iter().cloned());
        }
        if self.events.label.is_some() {
            p.push("job.events.label: a label is declared under [job.labels]".into());
        }
        if self.labels.as_ref().is_some_and(|l| l.label.is_none()) {
            p.push(format!(
                "{LABELS}.label: name the field that says fraud (1 or true) or genuine"
            ));
        }
        if let (Ok(events), Ok(labels)) = (&events, &labels) {
            p.extend(agreement(self, events, labels));
        }
        // Against the declarations as far as they can be read: every problem at once.
        let labels = self.labels.as_ref().map(|l| l.best_effort_schema());
        p.extend(
            self.features
                .validate(&self.events.best_effort_schema(), labels.as_deref())
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
        if let (Some(o), Ok(events)) = (&self.outputs, &events) {
            p.extend(self.output_problems(o, events));
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

    /// Every problem of `[job.outputs]`: a listed column that is neither a declared field nor
    /// a feature, one listed twice or one riskpipe adds itself, a field declared sensitive
    /// "drop" (published nowhere), a key that is no declared field.
    fn output_problems(&self, o: &OutputsConfig, events: &EventSchema) -> Vec<String> {
        use riskpipe_schemas::declared::Sensitive;
        use riskpipe_schemas::score;
        let mut p = Vec::new();
        let features = self.features.feature_names().unwrap_or_default();
        let dropped = |n: &str| {
            events
                .index_of(n)
                .is_some_and(|i| events.fields[i].sensitive == Some(Sensitive::Drop))
        };
        if let Some(key) = &o.key {
            if events.index_of(key).is_none() {
                p.push(format!(
                    "job.outputs.key {key:?} is no declared field of the events"
                ));
            } else if dropped(key) {
                p.push(format!(
                    "job.outputs.key {key:?} is declared sensitive \"drop\": it is published nowhere, keys included"
                ));
            }
        }
        let (id, time) = (&self.events.id, &self.events.time.field);
        for (list, names) in [("scores", &o.scores), ("alerts", &o.alerts)] {
            let mut seen = std::collections::BTreeSet::new();
            for n in names.iter().flatten() {
                let at = format!("job.outputs.{list}: {n:?}");
                if !seen.insert(n) {
                    p.push(format!("{at} is listed twice"));
                } else if n == id || n == time {
                    p.push(format!(
                        "{at} is the event's id or time, which every record carries"
                    ));
                } else if [
                    score::SCORE,
                    score::ALERT,
                    score::MODEL,
                    score::THRESHOLD,
                    score::REASONS,
                ]
                .contains(&n.as_str())
                {
                    p.push(format!("{at} is a column riskpipe adds itself"));
                } else if events.index_of(n).is_none() && !features.contains(n) {
                    p.push(format!("{at} is neither a declared field nor a feature"));
                } else if dropped(n) {
                    p.push(format!(
                        "{at} is declared sensitive \"drop\": it is published nowhere"
                    ));
                }
            }
        }
        p
    }

    /// The column a report counts cards by: the declared entity, else the event id.
    pub fn entity_column(&self) -> &str {
        self.events.entity.as_deref().unwrap_or(&self.events.id)
    }

    /// Fills in what the features leave to the declarations: the event time and the id that
    /// orders equal times from `[job.events]`, each label risk's label and label time from
    /// `[job.labels]`.
    pub fn fill_from_declarations(&mut self) {
        let features = &mut self.features;
        if features.event_time.is_empty() {
            features.event_time = self.events.time.field.clone();
        }
        if features.order_by.is_empty() {
            features.order_by = self.events.id.clone();
        }
        if let Some(labels) = &self.labels {
            for r in &mut features.label_risk {
                if r.label.is_empty() {
                    r.label = labels.label.clone().unwrap_or_default();
                }
                if r.label_time.is_empty() {
                    r.label_time = labels.time.field.clone();
                }
            }
        }
    }
}

/// The config section declaring the labels.
const LABELS: &str = "job.labels";

/// Where the features and the declarations disagree on a column's role: the features order
/// events by the declared event time and id, and read labels by their declared id, label and
/// known-at time.
fn agreement(cfg: &FraudConfig, events: &EventSchema, labels: &EventSchema) -> Vec<String> {
    let name = |d: &EventSchema, i: usize| d.fields[i].name.clone();
    let mut p = Vec::new();
    let mut same = |what: &str, got: &str, role: &str, want: String| {
        if got != want {
            p.push(format!("{what} {got:?} is not {role} {want:?}"));
        }
    };
    let features = &cfg.features;
    same(
        "job.features.event_time",
        &features.event_time,
        "the declared event time (job.events.time.field)",
        name(events, events.time),
    );
    same(
        "job.features.order_by",
        &features.order_by,
        "the declared event id (job.events.id)",
        name(events, events.id),
    );
    same(
        "job.labels.id",
        &name(labels, labels.id),
        "the events' id field, which labels name the event by",
        name(events, events.id),
    );
    for (i, r) in features.label_risk.iter().enumerate() {
        if let Some(label) = labels.label {
            same(
                &format!("job.features.label_risk[{i}].label"),
                &r.label,
                "the declared label (job.labels.label)",
                name(labels, label),
            );
        }
        same(
            &format!("job.features.label_risk[{i}].label_time"),
            &r.label_time,
            "the declared time a label became known (job.labels.time.field)",
            name(labels, labels.time),
        );
    }
    p
}
