//! The pipeline configuration file (TOML): one root for every job. The shared sections
//! (`[model]`, `[alerts]`, `[kafka]`, `[observability]`) appear once; `[job]` says which job runs
//! (`kind = "fraud"` or `kind = "market"`) with that job's own settings. The root names no job:
//! each kind registers its settings type where it is defined
//! (`#[typetag::deserialize(name = "...")]` on its [`JobKind`] impl).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use riskpipe_models::{EnsembleConfig, Model, ModelConfig};
use serde::Deserialize;

use crate::jobs::JobKind;
use crate::kafka::KafkaConfig;
use crate::{PipelineError, Result};

/// The shipped fraud pipeline (handbook features, shipped model): the embedded default.
pub const HANDBOOK_CONFIG: &str = include_str!("../../config/fraud-handbook.toml");

/// Directory the embedded default's relative paths are resolved against.
pub fn handbook_config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

/// One pipeline: which job, its model, alerting, Kafka and observability.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// The job and its settings (features, replay, backtest split, portfolios, ...).
    pub job: JobConfig,
    /// The scoring model (the champion): one `[model]`, or several `[[model]]` entries combined
    /// as `[ensemble]` says.
    pub model: Models,
    /// How several `[[model]]` entries are combined (mean by default).
    #[serde(default)]
    pub ensemble: Option<EnsembleConfig>,
    /// A challenger (fraud jobs): scored on the same feature rows, published to
    /// `kafka.topics.challenger` only (never alerts), compared in the backtest report.
    #[serde(default)]
    pub challenger: Option<ModelConfig>,
    /// Alerting.
    #[serde(default)]
    pub alerts: AlertConfig,
    /// Decision rules over the scored events (fraud jobs): outcomes, rules, which outcomes
    /// are alerts; without it an event is an alert when its score reaches `[alerts] threshold`.
    #[serde(default)]
    pub decisions: Option<crate::jobs::fraud::DecisionsSection>,
    /// Live drift monitoring of the model inputs and the score (fraud jobs).
    #[serde(default)]
    pub drift: Option<crate::jobs::drift::DriftConfig>,
    /// Kafka source and sinks of the live pipeline (`riskpipe run`, `riskpipe replay`).
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    /// Metrics and health endpoints.
    #[serde(default)]
    pub observability: ObservabilityConfig,
    /// Checkpoints of the live pipeline's keyed state; none = state lives only in memory.
    #[serde(default)]
    pub state: Option<crate::state::StateConfig>,
    /// Model hot reload of `riskpipe run` (SIGHUP always reloads).
    #[serde(default)]
    pub reload: crate::reload::ReloadConfig,
    /// `[state] ephemeral = true`: the user accepts that every start of `riskpipe run` begins
    /// with empty state (`state` is then `None`).
    #[serde(skip)]
    pub ephemeral_state: bool,
    /// The directory relative paths of the file are resolved against.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// The `[model]` table, or several `[[model]]` entries (an ensemble); never empty.
#[derive(Debug, Clone)]
pub struct Models(Vec<ModelConfig>);

impl Models {
    /// The first (or only) model: the one a single-model job scores with.
    pub fn primary(&self) -> &ModelConfig {
        &self.0[0]
    }

    /// The first (or only) model, to change.
    pub fn primary_mut(&mut self) -> &mut ModelConfig {
        &mut self.0[0]
    }

    /// Every model, in configuration order.
    pub fn all(&self) -> &[ModelConfig] {
        &self.0
    }

    /// Every model, to change.
    pub fn all_mut(&mut self) -> &mut [ModelConfig] {
        &mut self.0
    }
}

impl<'de> Deserialize<'de> for Models {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(ModelConfig),
            Many(Vec<ModelConfig>),
        }
        match OneOrMany::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "model: expected one [model] table or [[model]] entries with the [model] fields (path, features, output, providers, threads, weight)",
            )
        })? {
            OneOrMany::One(m) => Ok(Models(vec![m])),
            OneOrMany::Many(v) if v.is_empty() => {
                Err(serde::de::Error::custom("model: at least one model is needed"))
            }
            OneOrMany::Many(v) => Ok(Models(v)),
        }
    }
}

/// The job a pipeline runs: the settings of the kind `[job] kind` names, as that kind
/// registered them.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "Box<dyn JobKind>")]
pub struct JobConfig(Arc<dyn JobKind>);

impl From<Box<dyn JobKind>> for JobConfig {
    fn from(kind: Box<dyn JobKind>) -> Self {
        JobConfig(Arc::from(kind))
    }
}

impl JobConfig {
    /// A job of these settings.
    pub fn new(kind: impl JobKind + 'static) -> Self {
        JobConfig(Arc::new(kind))
    }

    /// The job kind behind the settings.
    pub fn kind(&self) -> &dyn JobKind {
        &*self.0
    }

    /// Resolves the settings' files against the config file's directory (see
    /// [`JobKind::resolve`]); only a config being loaded holds its settings alone.
    fn resolve(&mut self, base_dir: &Path) {
        if let Some(kind) = Arc::get_mut(&mut self.0) {
            kind.resolve(base_dir);
        }
    }

    /// The settings, if they are of type `T` (code that needs one kind of job; it says why
    /// otherwise, e.g. `FraudConfig::of`).
    pub fn settings<T: JobKind + 'static>(&self) -> Option<&T> {
        let any: &dyn std::any::Any = &*self.0;
        any.downcast_ref::<T>()
    }
}

/// Where the Prometheus and health endpoints listen.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservabilityConfig {
    /// `host:port` of `/metrics`, `/health` and `/ready` (e.g. "0.0.0.0:9898"); none = off.
    #[serde(default)]
    pub listen: Option<String>,
    /// Serve `POST /admin/reload` (reload the model) on the same listener; off by default.
    #[serde(default)]
    pub admin: bool,
}

fn default_reasons() -> usize {
    3
}

/// When a score becomes an alert.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// Fraud jobs: scores at or above this raise an alert (0–1). Market jobs alert on portfolio
    /// limits instead (`[[job.portfolios]]`).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Fraud jobs: top contributing features reported with each alert.
    #[serde(default = "default_reasons")]
    pub reasons: usize,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            threshold: None,
            reasons: default_reasons(),
        }
    }
}

/// Parses a TOML config; every config error is a [`PipelineError::Config`].
fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| PipelineError::Config(vec![e.to_string()]))
}

/// `path` resolved against `base_dir` when relative.
pub(crate) fn resolve(path: &mut PathBuf, base_dir: &Path) {
    if path.is_relative() {
        *path = base_dir.join(&*path);
    }
}

impl PipelineConfig {
    /// Parses a config; relative paths are resolved against `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Self> {
        let mut cfg: PipelineConfig = parse_toml(text)?;
        cfg.job.resolve(base_dir);
        for m in cfg.model.all_mut() {
            resolve(&mut m.path, base_dir);
        }
        if let Some(r) = cfg.ensemble.as_mut().and_then(|e| e.reference.as_mut()) {
            resolve(r, base_dir);
        }
        if let Some(d) = &mut cfg.drift {
            resolve(&mut d.reference, base_dir);
        }
        if let Some(c) = &mut cfg.challenger {
            resolve(&mut c.path, base_dir);
        }
        if let Some(kafka) = &mut cfg.kafka {
            kafka.expand_env();
        }
        if cfg
            .state
            .as_ref()
            .is_some_and(|s| s.ephemeral && s.dir.trim().is_empty())
        {
            cfg.state = None;
            cfg.ephemeral_state = true;
        }
        if let Some(state) = &mut cfg.state {
            state.resolve(base_dir);
        }
        cfg.base_dir = base_dir.to_path_buf();
        Ok(cfg)
    }

    /// What `riskpipe run` does with a job's state when it starts, in words; `Err` when it
    /// refuses to start: a job that keeps state, with neither checkpoints (`[state] dir`) nor
    /// the user's explicit `[state] ephemeral = true`, would begin every restart with empty
    /// state and score unlike the backtest until its windows filled again.
    pub fn state_at_start(&self) -> std::result::Result<String, String> {
        let kind = self.job.kind();
        let reach = kind.rebuild_horizon(self).map(|h| {
            // In days: humantime's months (30.44 days) read oddly for a window's reach.
            let (days, hours) = (
                h.reach.as_secs() / 86_400,
                h.reach.as_secs() % 86_400 / 3_600,
            );
            match hours {
                0 => format!("{days} days"),
                _ => format!("{days} days {hours} h"),
            }
        });
        match (&self.state, self.ephemeral_state, kind.checkpoints()) {
            (_, _, false) => Ok(format!("a {} job keeps no state to restore", kind.name())),
            (Some(s), _, true) => Ok(format!(
                "restores the newest checkpoint in {} and replays from its offsets; a partition without one is rebuilt from {} ({})",
                s.dir,
                match s.rebuild {
                    crate::state::Rebuild::Horizon => "the features' reach back in the topic",
                    crate::state::Rebuild::Earliest => "the earliest retained offsets",
                },
                reach.as_deref().map_or("no bounded reach".into(), |r| format!("reach {r}")),
            )),
            (None, true, true) => Ok(
                "starts with empty state every time (state.ephemeral = true): scores differ from the backtest's until the windows fill again".into(),
            ),
            (None, false, true) => Err(format!(
                "a {} job keeps state (its windows and histories{}): without [state] every restart would begin with it empty and score unlike the backtest until it filled again. Add [state] dir = \"/var/lib/riskpipe/state\" (or run with --state-dir DIR) to checkpoint and restore it, or [state] ephemeral = true to accept empty state on every start",
                kind.name(),
                reach.map_or(String::new(), |r| format!(", reaching {r} back")),
            )),
        }
    }

    /// Checkpoints in `dir` (`riskpipe run --state-dir`): `[state]` with its defaults where the
    /// config has none, its `dir` replaced where it has one.
    pub fn set_state_dir(&mut self, dir: String) -> Result<()> {
        let mut state = match self.state.take() {
            Some(s) => s,
            None => parse_toml::<crate::state::StateConfig>("")?,
        };
        state.dir = dir;
        state.resolve(&std::env::current_dir().map_err(|e| {
            PipelineError::Config(vec![format!("--state-dir: no working directory: {e}")])
        })?);
        self.state = Some(state);
        self.ephemeral_state = false;
        Ok(())
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PipelineError::Config(vec![format!("reading {}: {e}", path.display())]))?;
        Self::from_toml(&text, path.parent().unwrap_or(Path::new(".")))
    }

    /// The embedded default: the handbook fraud pipeline with the shipped model.
    pub fn handbook() -> Result<Self> {
        Self::from_toml(HANDBOOK_CONFIG, &handbook_config_dir())
    }

    /// The input topics of the live pipeline: events, and the side input if the job has one.
    pub fn streams(&self) -> Streams {
        self.job.kind().streams()
    }

    /// The history a backtest reads when none is given, if the job names one.
    pub fn default_input(&self) -> Option<PathBuf> {
        self.job
            .kind()
            .default_input()
            .map(|p| self.base_dir.join(p))
    }

    /// Every problem of the config, without touching the model or any data.
    pub fn problems(&self) -> Vec<String> {
        let mut p = self.job.kind().problems(self);
        let several = self.model.all().len() > 1;
        for (i, m) in self.model.all().iter().enumerate() {
            let which = match several {
                true => format!("model {} ({})", i + 1, m.path.display()),
                false => "model".to_string(),
            };
            if m.threads == 0 {
                p.push(format!("{which}: threads must be at least 1"));
            }
            if m.providers.is_empty() {
                p.push(format!(
                    "{which}: providers is empty (list at least \"cpu\")"
                ));
            }
            if !m.path.is_file() {
                p.push(format!("{which}: path {} does not exist", m.path.display()));
            }
        }
        match (&self.ensemble, several) {
            (Some(e), _) => p.extend(e.problems(self.model.all())),
            (None, true) => p.extend(EnsembleConfig::default().problems(self.model.all())),
            (None, false) => {}
        }
        if let Some(c) = &self.challenger {
            if !c.path.is_file() {
                p.push(format!(
                    "challenger.path {} does not exist",
                    c.path.display()
                ));
            }
            if c.threads == 0 {
                p.push("challenger.threads must be at least 1".into());
            }
            if c.providers.is_empty() {
                p.push("challenger.providers is empty (list at least \"cpu\")".into());
            }
        }
        p.extend(self.reload.problems());
        if let Some(d) = &self.drift {
            p.extend(d.problems());
        }
        if self.observability.admin && self.observability.listen.is_none() {
            p.push("observability.admin serves POST /admin/reload on observability.listen, which is not set".into());
        }
        if let Some(k) = &self.kafka {
            p.extend(k.problems(self.streams()));
            if k.exactly_once() && self.state.is_none() {
                // An aborted transaction rewinds the input to the last commit; the state must
                // go back with it, which only a checkpoint and the replay after it can do.
                p.push("kafka.processing_guarantee = \"exactly-once\" needs [state]: after an aborted transaction the state goes back to the last committed one through a checkpoint".into());
            }
        }
        if self.kafka.as_ref().is_some_and(|k| k.repartition.is_some()) && self.state.is_none() {
            p.push("kafka.repartition needs [state]: a partition's state moves to the instance the group assigns it through its checkpoints".into());
        }
        if let Some(s) = &self.state {
            p.extend(s.problems());
            if self.kafka.is_none() {
                p.push(
                    "[state] checkpoints the live pipeline, which needs a [kafka] section".into(),
                );
            }
            if !self.job.kind().checkpoints() {
                p.push(format!(
                    "[state]: checkpoints of a {} job's state are not implemented yet",
                    self.job.kind().name()
                ));
            }
        }
        if let Some(listen) = &self.observability.listen
            && listen.parse::<std::net::SocketAddr>().is_err()
        {
            p.push(format!(
                "observability.listen {listen:?} is not a host:port socket address"
            ));
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

    /// The model's name in reports: its file name; for an ensemble, `<combine>(<file>, ...)`.
    pub fn model_name(&self) -> String {
        match self.model.all() {
            [one] if self.ensemble.is_none() => file_name(&one.path),
            all => format!(
                "{}({})",
                self.ensemble
                    .as_ref()
                    .map(|e| e.combine)
                    .unwrap_or_default()
                    .as_str(),
                all.iter()
                    .map(|m| file_name(&m.path))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Loads the model: the one `[model]`, or the `[[model]]` ensemble.
    pub fn load_model(&self) -> Result<Model> {
        Ok(Model::load(self.model.all(), self.ensemble.as_ref())?)
    }

    /// The challenger's file name, if there is one.
    pub fn challenger_name(&self) -> Option<String> {
        self.challenger.as_ref().map(|c| file_name(&c.path))
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub use riskpipe_core::Streams;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_kind_selects_the_job_and_unknown_fields_are_refused() {
        let fraud = PipelineConfig::handbook().expect("shipped config");
        assert!(
            fraud
                .job
                .settings::<crate::jobs::fraud::FraudConfig>()
                .is_some()
        );
        assert!(
            fraud
                .job
                .settings::<crate::jobs::market::MarketConfig>()
                .is_none()
        );
        let bad = HANDBOOK_CONFIG.replace("kind = \"fraud\"", "kind = \"fraud\"\nsurprise = 1");
        let e = PipelineConfig::from_toml(&bad, &handbook_config_dir()).expect_err("unknown");
        assert!(e.to_string().contains("surprise"), "{e}");
        let e = PipelineConfig::from_toml(
            "[job]\nkind = \"weather\"\n[model]\npath = \"m.onnx\"\n",
            Path::new("."),
        )
        .expect_err("unknown kind");
        assert!(e.to_string().contains("weather"), "{e}");
    }

    #[test]
    fn exactly_once_is_refused_without_state() {
        let eos = format!("{HANDBOOK_CONFIG}\n").replace(
            "[kafka]\n",
            "[kafka]\nprocessing_guarantee = \"exactly-once\"\ntransactional_id = \"riskpipe-0\"\n",
        );
        let cfg = PipelineConfig::from_toml(&eos, &handbook_config_dir()).expect("parses");
        let p = cfg.problems();
        assert!(p.len() == 1 && p[0].contains("needs [state]"), "{p:#?}");
        let with_state = format!("{eos}\n[state]\ndir = \"state\"\n");
        let cfg = PipelineConfig::from_toml(&with_state, &handbook_config_dir()).expect("parses");
        assert!(cfg.problems().is_empty(), "{:#?}", cfg.problems());
        let e = PipelineConfig::from_toml(
            &eos.replace("\"exactly-once\"", "\"exactly-twice\""),
            &handbook_config_dir(),
        )
        .expect_err("unknown guarantee");
        assert!(e.to_string().contains("exactly-twice"), "{e}");
    }
}
