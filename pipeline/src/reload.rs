//! Model hot reload: a new model is loaded and checked off the scoring thread, then swapped in by
//! the score stage between two batches, so no message is lost or scored twice and the only
//! pause is the check of the first batch the new model scores.
//!
//! Decision rules (`[decisions]`: the rules file, the lists' files) reload on the same
//! triggers: read and checked as `riskpipe validate` checks them, refused with every problem
//! listed (the running rules stay), else swapped in by the score stage from one batch on.
//!
//! Triggers: the model file changed (`[reload] watch`, polled; a file must be the same on two
//! checks in a row, so a copy in progress is not loaded), SIGHUP, `POST /admin/reload`
//! (`observability.admin`). A model that fails a check (it does not load, reads columns the job
//! does not produce, gives no probability on a smoke row or on the live batch) is refused with
//! a log line and `riskpipe_model_reloads_total{result="refused"}`, and the old one keeps
//! scoring.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use riskpipe_models::Model;
use serde::Deserialize;
use tokio::sync::Notify;

use crate::config::PipelineConfig;
use crate::events;
use crate::{PipelineError, Result};

/// `[reload]`: when `riskpipe run` reloads its model besides SIGHUP and the admin call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Reload when the model file changes (replace it by a rename to be safe).
    #[serde(default)]
    pub watch: bool,
    /// How often the file is checked.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
}

fn default_interval() -> Duration {
    Duration::from_secs(2)
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            watch: false,
            interval: default_interval(),
        }
    }
}

impl ReloadConfig {
    /// Every problem of the section.
    pub fn problems(&self) -> Vec<String> {
        match self.interval.is_zero() {
            true => vec!["reload.interval must be more than 0".into()],
            false => Vec::new(),
        }
    }
}

pub use riskpipe_core::ModelSlot;

/// Loads, checks and offers models when asked or when the file changes.
#[derive(Debug)]
pub struct Reloader {
    cfg: PipelineConfig,
    slot: Arc<ModelSlot>,
    wake: Notify,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// A new version passed the checks and waits for the next batch.
    Offered(String),
    /// The file holds the version already scoring (or already offered).
    Unchanged(String),
    /// Refused, with the reason; the old model keeps scoring.
    Refused(String),
}

impl Reloader {
    /// A reloader of `cfg`'s model.
    pub fn new(cfg: &PipelineConfig) -> Arc<Self> {
        Arc::new(Self {
            cfg: cfg.clone(),
            slot: Arc::default(),
            wake: Notify::new(),
        })
    }

    /// What the score stage takes new models from.
    pub fn slot(&self) -> Arc<ModelSlot> {
        self.slot.clone()
    }

    /// Asks for a reload (SIGHUP, the admin call); it happens on the reloader's task.
    pub fn request(&self) {
        self.wake.notify_one();
    }

    /// Reloads on each request, and when the watched file changes, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let watch = &self.cfg.reload;
        let mut paths: Vec<_> = self
            .cfg
            .model
            .all()
            .iter()
            .map(|m| m.path.clone())
            .collect();
        if let Some(d) = &self.cfg.decisions {
            paths.extend(d.files(&self.cfg.base_dir));
        }
        let stamps = || paths.iter().map(|p| stamp(p)).collect::<Option<Vec<_>>>();
        let mut loaded = stamps();
        let mut last = loaded.clone();
        let mut tick = tokio::time::interval(watch.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                () = self.wake.notified() => {
                    self.clone().reload("request").await;
                }
                _ = tick.tick(), if watch.watch => {
                    let now = stamps();
                    // Changed, and the same as one check ago: the copy is complete.
                    if now.is_some() && now != loaded && now == last {
                        loaded = now.clone();
                        self.clone().reload("file").await;
                    }
                    last = now;
                }
            }
        }
    }

    /// One reload off the async reactor; logged and counted.
    pub async fn reload(self: Arc<Self>, trigger: &'static str) -> Reloaded {
        let me = self.clone();
        let outcome = tokio::task::spawn_blocking(move || me.load())
            .await
            .unwrap_or_else(|e| Err(PipelineError::Bug(format!("model load task: {e}"))));
        let path = self.cfg.model_name();
        let reloaded = match outcome {
            Ok(Some(model)) => {
                let version = model.version().to_string();
                tracing::info!(
                    trigger,
                    version,
                    "model {path} loaded and checked; swapped in at the next batch"
                );
                self.slot.offer(model);
                Reloaded::Offered(version)
            }
            Ok(None) => {
                tracing::info!(trigger, "model {path} unchanged: nothing to reload");
                Reloaded::Unchanged(path.to_string())
            }
            Err(e) => {
                tracing::error!(
                    trigger,
                    "model reload refused, the old model keeps scoring: {e}"
                );
                Reloaded::Refused(e.to_string())
            }
        };
        events::model_reload(match &reloaded {
            Reloaded::Offered(_) => "offered",
            Reloaded::Unchanged(_) => "unchanged",
            Reloaded::Refused(_) => "refused",
        });
        if self.cfg.decisions.is_some() {
            let me = self.clone();
            let rules = tokio::task::spawn_blocking(move || me.load_rules())
                .await
                .unwrap_or_else(|e| Err(PipelineError::Bug(format!("rules load task: {e}"))));
            let result = match rules {
                Ok(Some(rules)) => {
                    tracing::info!(
                        trigger,
                        version = rules.version(),
                        "decision rules read and checked; swapped in at the next batch"
                    );
                    self.slot.offer_rules(rules, trigger);
                    "offered"
                }
                Ok(None) => {
                    tracing::info!(trigger, "decision rules unchanged: nothing to reload");
                    "unchanged"
                }
                Err(e) => {
                    tracing::error!(
                        trigger,
                        "decision rules refused, the running rules keep deciding: {e}"
                    );
                    "refused"
                }
            };
            events::rules_reload(result);
        }
        reloaded
    }

    /// Reads the decision rules and checks them as `riskpipe validate` does (every problem at
    /// once); `None` when they are the version deciding already.
    fn load_rules(&self) -> Result<Option<riskpipe_operators::decisions::DecisionsConfig>> {
        let Some(section) = &self.cfg.decisions else {
            return Ok(None);
        };
        let rules = section
            .rules(&self.cfg.base_dir)
            .map_err(PipelineError::Config)?;
        if self.slot.has_rules(&rules.version()) {
            return Ok(None);
        }
        let problems: Vec<String> = self
            .cfg
            .job
            .kind()
            .problems(&self.cfg)
            .into_iter()
            .filter(|p| p.starts_with("decisions"))
            .collect();
        match problems.is_empty() {
            true => Ok(Some(rules)),
            false => Err(PipelineError::Config(problems)),
        }
    }

    /// Loads and checks the model files (every member of an ensemble); `None` when they hold
    /// the version already scoring.
    fn load(&self) -> Result<Option<Model>> {
        let mut model = self.cfg.load_model()?;
        if self.slot.has(model.version()) {
            return Ok(None);
        }
        let kind = self.cfg.job.kind();
        kind.check_model(&self.cfg, &model)?;
        let smoke = model.score_inputs(&typical_row(model.columns()))?;
        kind.check_scores(&smoke).map_err(|why| {
            PipelineError::Config(vec![format!(
                "model {} on a row of typical values (0 for a number, \"\" for text): {why}",
                model.label()
            )])
        })?;
        Ok(Some(model))
    }
}

/// One row of the model's columns: 0 for a number, the empty text for a text input (a model
/// that cannot score it, say an encoder refusing unknown categories, is refused here rather
/// than on a live batch; the live batch is the second check, [`crate::jobs`]' swap).
fn typical_row(columns: &[riskpipe_models::InputColumn]) -> riskpipe_models::Inputs {
    use arrow::array::{ArrayRef, Float32Array, Float64Array, Int64Array, StringArray};
    use riskpipe_models::Element;
    use std::sync::Arc;
    let columns = columns
        .iter()
        .map(|c| -> ArrayRef {
            match c.element {
                Element::Float => Arc::new(Float32Array::from(vec![0.0])),
                Element::Double => Arc::new(Float64Array::from(vec![0.0])),
                Element::Int64 => Arc::new(Int64Array::from(vec![0])),
                Element::String => Arc::new(StringArray::from(vec![""])),
            }
        })
        .collect();
    riskpipe_models::Inputs { columns, rows: 1 }
}

/// Scores must be probabilities: finite, within 0..=1.
pub(crate) fn check_scores(scores: &[f32]) -> std::result::Result<(), String> {
    match scores
        .iter()
        .find(|s| !(s.is_finite() && (0.0..=1.0).contains(*s)))
    {
        Some(s) => Err(format!("score {s} is not a probability")),
        None => Ok(()),
    }
}

/// What tells a changed file: its modification time and length.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use riskpipe_models::{shipped_model, version_of};

    fn version(path: &Path) -> String {
        version_of(&std::fs::read(path).expect("model file"))
    }

    #[test]
    fn a_changed_model_file_is_offered_once_complete_and_a_bad_one_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = dir.path().join("model.onnx");
        let blend = shipped_model("fraud_blend.onnx");
        let gbm = shipped_model("fraud_gbm.onnx");
        std::fs::copy(&blend, &model).expect("copy");
        let mut cfg = PipelineConfig::handbook().expect("shipped config");
        cfg.model.primary_mut().path = model.clone();
        cfg.reload.watch = true;
        cfg.reload.interval = Duration::from_millis(50);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let reloader = Reloader::new(&cfg);
            let slot = reloader.slot();
            slot.scoring(&version(&blend));
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let watching = tokio::spawn(reloader.clone().run(async {
                let _ = stopped.await;
            }));
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(slot.take().is_none(), "nothing changed, nothing offered");

            // Replaced: offered once it is the same on two checks.
            let next = dir.path().join("next.onnx");
            std::fs::copy(&gbm, &next).expect("copy");
            std::fs::rename(&next, &model).expect("rename");
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let offered = loop {
                if let Some(s) = slot.take() {
                    break s;
                }
                assert!(std::time::Instant::now() < deadline, "never offered");
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            assert_eq!(offered.version(), version(&gbm));
            assert!(offered.label().starts_with("model.onnx@"));
            slot.scoring(offered.version());
            assert!(matches!(
                reloader.clone().reload("request").await,
                Reloaded::Unchanged(_)
            ));

            // Not a model: refused, nothing offered.
            std::fs::write(&model, b"not an ONNX model").expect("write");
            let refused = reloader.clone().reload("request").await;
            assert!(
                matches!(&refused, Reloaded::Refused(why) if why.contains("model.onnx")),
                "{refused:?}"
            );
            assert!(slot.take().is_none());
            let _ = stop.send(());
            watching.await.expect("watch task");
        });
    }

    /// An ensemble reloads whole: one member's file replaced, every member loaded again and
    /// the new combination offered under its new label.
    #[test]
    fn a_changed_member_reloads_the_whole_ensemble() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a.onnx"), dir.path().join("b.onnx"));
        std::fs::copy(shipped_model("fraud_gbm.onnx"), &a).expect("copy");
        std::fs::copy(shipped_model("fraud_mlp.onnx"), &b).expect("copy");
        let text = crate::config::HANDBOOK_CONFIG.replace(
            "[model]\n",
            &format!(
                "[[model]]\npath = {:?}\n[[model]]\npath = {:?}\n[model_was]\n",
                a.display().to_string(),
                b.display().to_string()
            ),
        );
        // The shipped [model] table's own lines now sit under a throwaway name: drop them.
        let start = text.find("[model_was]\n").expect("marker");
        let end = start + text[start..].find("\n\n").expect("end of the table");
        let text = format!("{}{}", &text[..start], &text[end..]);
        let cfg = PipelineConfig::from_toml(&text, &crate::config::handbook_config_dir())
            .expect("ensemble config");
        assert_eq!(cfg.model.all().len(), 2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let reloader = Reloader::new(&cfg);
            let slot = reloader.slot();
            let first = cfg.load_model().expect("ensemble");
            assert!(
                first.label().starts_with("mean(a.onnx@"),
                "{}",
                first.label()
            );
            slot.scoring(first.version());
            assert!(matches!(
                reloader.clone().reload("request").await,
                Reloaded::Unchanged(_)
            ));
            std::fs::copy(shipped_model("fraud_blend.onnx"), &b).expect("replace b");
            let reloaded = reloader.clone().reload("request").await;
            assert!(matches!(reloaded, Reloaded::Offered(_)), "{reloaded:?}");
            let offered = slot.take().expect("offered");
            assert_ne!(offered.version(), first.version());
            assert_eq!(
                offered.label(),
                format!(
                    "mean(a.onnx@{},b.onnx@{})",
                    version(&a),
                    version(&shipped_model("fraud_blend.onnx"))
                )
            );
        });
    }

    #[test]
    fn only_probabilities_pass() {
        assert!(check_scores(&[0.0, 0.5, 1.0]).is_ok());
        for bad in [f32::NAN, -0.1, 1.5, f32::INFINITY] {
            assert!(check_scores(&[0.2, bad]).is_err(), "{bad}");
        }
    }
}
