//! State: a stage's keyed state as Arrow tables ([`StateSnapshot`], what a checkpoint stores),
//! and the stages restored per input partition off the feature thread ([`Installs`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;

use crate::Result;
use crate::stage::FeatureStage;

/// Keyed state of a stage as Arrow tables: what a checkpoint stores.
#[derive(Debug, Clone, Default)]
pub struct StateSnapshot {
    /// Named tables.
    pub tables: Vec<(String, RecordBatch)>,
    /// What definitions made the state (a hash of them): state is restored only into a stage
    /// of the same definitions.
    pub fingerprint: String,
}

/// Prefix of the score stage's tables in a job's snapshot ([`StateSnapshot::join`]).
const SCORE_TABLES: &str = "score/";

impl StateSnapshot {
    /// One snapshot of a job's two stages taken after the same batch: the feature stage's tables
    /// as they are, the score stage's prefixed `score/`, the fingerprints joined by `+`.
    pub fn join(features: StateSnapshot, score: Option<StateSnapshot>) -> StateSnapshot {
        let Some(score) = score else {
            return features;
        };
        let mut tables = features.tables;
        tables.extend(
            score
                .tables
                .into_iter()
                .map(|(name, t)| (format!("{SCORE_TABLES}{name}"), t)),
        );
        StateSnapshot {
            tables,
            fingerprint: format!("{}+{}", features.fingerprint, score.fingerprint),
        }
    }

    /// The two stages' snapshots [`StateSnapshot::join`] made (the score stage's is `None` when
    /// the job's snapshot has none).
    pub fn split(self) -> (StateSnapshot, Option<StateSnapshot>) {
        let (features_fp, score_fp) = match self.fingerprint.split_once('+') {
            Some((f, s)) => (f.to_string(), Some(s.to_string())),
            None => (self.fingerprint, None),
        };
        let (mut features, mut score) = (Vec::new(), Vec::new());
        for (name, t) in self.tables {
            match name.strip_prefix(SCORE_TABLES) {
                Some(n) => score.push((n.to_string(), t)),
                None => features.push((name, t)),
            }
        }
        let score = match score_fp {
            Some(fingerprint) => Some(StateSnapshot {
                tables: score,
                fingerprint,
            }),
            // Tables without a fingerprint stay with the features, which refuse them.
            None => {
                features.extend(
                    score
                        .into_iter()
                        .map(|(n, t)| (format!("{SCORE_TABLES}{n}"), t)),
                );
                None
            }
        };
        (
            StateSnapshot {
                tables: features,
                fingerprint: features_fp,
            },
            score,
        )
    }
}

/// A short hash of definitions (their `Debug` text): a checkpoint's state is restored only into
/// a stage built from the same definitions.
pub fn fingerprint(definitions: &impl std::fmt::Debug) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{definitions:?}").as_bytes());
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// Builds the stage of a newly held partition.
pub type MakeStage = Arc<dyn Fn() -> Result<Box<dyn FeatureStage>> + Send + Sync>;

/// Stages restored off the feature thread (a partition assigned to this instance, its state
/// read from its checkpoint and brought up to the committed offsets), waiting to be taken in.
#[derive(Default)]
pub struct Installs {
    /// Per partition: its restored stage, or `None` when it was given up.
    stages: std::sync::Mutex<BTreeMap<i32, Option<Box<dyn FeatureStage>>>>,
}

impl std::fmt::Debug for Installs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Installs").finish_non_exhaustive()
    }
}

impl Installs {
    /// Offers `stage` as partition `p`'s state, to be taken before the next batch.
    pub fn put(&self, p: i32, stage: Box<dyn FeatureStage>) {
        if let Ok(mut s) = self.stages.lock() {
            s.insert(p, Some(stage));
        }
    }

    /// Partition `p` was given up (every batch with its rows has gone through): its stage is
    /// dropped before the next batch.
    pub fn give_up(&self, p: i32) {
        if let Ok(mut s) = self.stages.lock() {
            s.insert(p, None);
        }
    }

    /// The stages offered (and partitions given up) since the last call.
    pub fn take(&self) -> BTreeMap<i32, Option<Box<dyn FeatureStage>>> {
        self.stages
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array};

    fn table(v: i64) -> RecordBatch {
        RecordBatch::try_from_iter([("v", Arc::new(Int64Array::from(vec![v])) as ArrayRef)])
            .expect("table")
    }

    #[test]
    fn a_joined_snapshot_splits_into_the_stages_snapshots() {
        let features = StateSnapshot {
            tables: vec![
                ("clock".into(), table(1)),
                ("features/0-w".into(), table(2)),
            ],
            fingerprint: "f1".into(),
        };
        let score = StateSnapshot {
            tables: vec![("latest".into(), table(3))],
            fingerprint: "s1".into(),
        };
        let joined = StateSnapshot::join(features.clone(), Some(score.clone()));
        assert_eq!(joined.fingerprint, "f1+s1");
        assert_eq!(joined.tables[2].0, "score/latest");
        let (f, s) = joined.split();
        assert_eq!(f.tables, features.tables);
        assert_eq!(f.fingerprint, "f1");
        let s = s.expect("the score stage's snapshot");
        assert_eq!((s.tables, s.fingerprint), (score.tables, score.fingerprint));
        // Without a score stage's state, nothing changes.
        let (f, s) = StateSnapshot::join(features.clone(), None).split();
        assert!(s.is_none());
        assert_eq!(
            (f.tables, f.fingerprint),
            (features.tables, features.fingerprint)
        );
    }
}
