//! The model slot: between a reloader and the score stage, the checked model (and decision
//! rules) waiting to be swapped in between batches, and the versions in use now.

use std::sync::Mutex;

use riskpipe_models::Model;
use riskpipe_operators::decisions::DecisionsConfig;

/// Between the reloader and the score stage: the checked model waiting to be swapped in, and
/// the version scoring now.
#[derive(Debug, Default)]
pub struct ModelSlot {
    next: Mutex<Option<Model>>,
    scoring: Mutex<String>,
    /// Checked decision rules waiting, with what asked for them.
    rules: Mutex<Option<(DecisionsConfig, &'static str)>>,
    deciding: Mutex<String>,
}

impl ModelSlot {
    /// Offers `model` to the score stage (replacing one not yet taken).
    pub fn offer(&self, model: Model) {
        if let Ok(mut next) = self.next.lock() {
            *next = Some(model);
        }
    }

    /// The model offered since the last call, if any.
    pub fn take(&self) -> Option<Model> {
        self.next.lock().ok()?.take()
    }

    /// The score stage now scores with `version`.
    pub fn scoring(&self, version: &str) {
        if let Ok(mut v) = self.scoring.lock() {
            *v = version.to_string();
        }
    }

    /// Whether `version` is scoring now or waiting to be swapped in.
    pub fn has(&self, version: &str) -> bool {
        let scoring = self.scoring.lock().map(|v| *v == version).unwrap_or(false);
        let offered = self
            .next
            .lock()
            .map(|n| n.as_ref().is_some_and(|s| s.version() == version))
            .unwrap_or(false);
        scoring || offered
    }

    /// Offers checked decision `rules` (asked for by `trigger`) to the score stage.
    pub fn offer_rules(&self, rules: DecisionsConfig, trigger: &'static str) {
        if let Ok(mut next) = self.rules.lock() {
            *next = Some((rules, trigger));
        }
    }

    /// The rules offered since the last call, if any, and what asked for them.
    pub fn take_rules(&self) -> Option<(DecisionsConfig, &'static str)> {
        self.rules.lock().ok()?.take()
    }

    /// The score stage now decides with rules `version`.
    pub fn deciding(&self, version: &str) {
        if let Ok(mut v) = self.deciding.lock() {
            *v = version.to_string();
        }
    }

    /// Whether rules `version` decide now or wait to be swapped in.
    pub fn has_rules(&self, version: &str) -> bool {
        let deciding = self.deciding.lock().map(|v| *v == version).unwrap_or(false);
        let offered = self
            .rules
            .lock()
            .map(|n| n.as_ref().is_some_and(|(r, _)| r.version() == version))
            .unwrap_or(false);
        deciding || offered
    }
}
