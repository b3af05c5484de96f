//! The pipeline configuration file (TOML): features, model, alerts, replay and backtest split.

use std::path::{Path, PathBuf};
use std::time::Duration;

use riskpipe_models::ModelConfig;
use riskpipe_operators::FeatureConfig;
use serde::Deserialize;

use crate::kafka::KafkaConfig;
use crate::{PipelineError, Result};

/// The shipped fraud pipeline (handbook features, shipped model): the embedded default.
pub const HANDBOOK_CONFIG: &str = include_str!("../../config/fraud-handbook.toml");

/// Directory the embedded default's relative paths are resolved against.
pub fn handbook_config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

/// One pipeline: what to compute, how to score, when to alert.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Feature definitions, shared by live scoring, replay and the batch export.
    pub features: FeatureConfig,
    /// The scoring model.
    pub model: ModelConfig,
    /// Alerting.
    pub alerts: AlertConfig,
    /// Replay settings.
    #[serde(default)]
    pub replay: ReplayConfig,
    /// The backtest's train/delay/test split; without it the whole history is evaluated.
    #[serde(default)]
    pub backtest: Option<SplitConfig>,
    /// Kafka source and sinks of the live pipeline (`riskpipe run`, `riskpipe replay`).
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    /// Metrics and health endpoints.
    #[serde(default)]
    pub observability: ObservabilityConfig,
}

/// Where the Prometheus and health endpoints listen.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservabilityConfig {
    /// `host:port` of `/metrics`, `/health` and `/ready` (e.g. "0.0.0.0:9898"); none = off.
    #[serde(default)]
    pub listen: Option<String>,
}

/// When a score becomes an alert.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// Scores at or above this raise an alert (0–1).
    pub threshold: f64,
}

fn default_batch_rows() -> usize {
    8192
}
fn default_label_delay() -> Duration {
    Duration::from_secs(7 * 86_400)
}
fn default_label() -> String {
    riskpipe_schemas::label::TX_FRAUD.into()
}

/// How a history file is replayed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    /// Rows per micro-batch.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// A fraud's label event is emitted this long after its transaction.
    #[serde(default = "default_label_delay", with = "humantime_serde")]
    pub label_delay: Duration,
    /// Label column of the history (1 = fraud).
    #[serde(default = "default_label")]
    pub label: String,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            batch_rows: default_batch_rows(),
            label_delay: default_label_delay(),
            label: default_label(),
        }
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

/// Parses a TOML config; every config error is a [`PipelineError::Config`].
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| PipelineError::Config(vec![e.to_string()]))
}

/// A config file's text and the directory its relative paths are resolved against.
pub(crate) fn read_config(path: &Path) -> Result<(String, &Path)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PipelineError::Config(vec![format!("reading {}: {e}", path.display())]))?;
    Ok((text, path.parent().unwrap_or(Path::new("."))))
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
        resolve(&mut cfg.model.path, base_dir);
        Ok(cfg)
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let (text, dir) = read_config(path)?;
        Self::from_toml(&text, dir)
    }

    /// The embedded default: the handbook fraud pipeline with the shipped model.
    pub fn handbook() -> Result<Self> {
        Self::from_toml(HANDBOOK_CONFIG, &handbook_config_dir())
    }

    /// Every problem of the config, without touching the model or any data.
    pub fn problems(&self) -> Vec<String> {
        let mut p = self.features.validate(
            &riskpipe_schemas::transaction_schema(),
            Some(&riskpipe_schemas::fraud_label_schema()),
        );
        if !(0.0..=1.0).contains(&self.alerts.threshold) {
            p.push(format!(
                "alerts.threshold must be within 0..=1, not {}",
                self.alerts.threshold
            ));
        }
        if self.replay.batch_rows == 0 {
            p.push("replay.batch_rows must be at least 1".into());
        }
        if self.model.threads == 0 {
            p.push("model.threads must be at least 1".into());
        }
        if self.model.providers.is_empty() {
            p.push("model.providers is empty (list at least \"cpu\")".into());
        }
        if !self.model.path.is_file() {
            p.push(format!(
                "model.path {} does not exist",
                self.model.path.display()
            ));
        }
        if let Some(k) = &self.kafka {
            p.extend(k.problems());
        }
        if let Some(listen) = &self.observability.listen
            && listen.parse::<std::net::SocketAddr>().is_err()
        {
            p.push(format!(
                "observability.listen {listen:?} is not a host:port socket address"
            ));
        }
        if let Some(s) = &self.backtest {
            if chrono::NaiveDate::parse_from_str(&s.train_start, "%Y-%m-%d").is_err() {
                p.push(format!(
                    "backtest.train_start {:?} is not a YYYY-MM-DD date",
                    s.train_start
                ));
            }
            if s.train_days == 0 || s.test_days == 0 {
                p.push("backtest.train_days and backtest.test_days must be at least 1".into());
            }
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
