//! The fraud job's feature stage: transactions admitted by the engine (against the watermark,
//! the value range, once each), labels into the operators' state, then the feature chain.

use riskpipe_engine::admission::{Admission, Noun};
use riskpipe_engine::repartition::{Part, with_origins};
use riskpipe_operators::FeatureChain;

use super::config::FraudConfig;
use crate::jobs::{FeatureStage, Featured, JobInput, StateSnapshot};
use crate::{PipelineError, Result};

/// Transactions admitted by the engine ([`Admission`]); labels into the operators' state; then
/// the accepted transactions through the feature chain.
#[derive(Debug)]
pub(super) struct FraudFeatures {
    pub(super) chain: FeatureChain,
    pub(super) admission: Admission,
    pub(super) fingerprint: String,
}

/// What the fraud job's events are called in reasons and logs.
const TRANSACTIONS: Noun = Noun {
    one: "transaction",
    many: "transactions",
};

impl FraudFeatures {
    pub(super) fn new(
        cfg: &FraudConfig,
        features: &riskpipe_operators::FeatureConfig,
        part: Part,
    ) -> Result<Self> {
        Ok(Self {
            chain: features.build_chain_for(cfg.labels_name_the_event())?,
            admission: Admission::new(
                cfg.event_time,
                &features.event_time,
                &features.order_by,
                part,
                TRANSACTIONS,
            ),
            fingerprint: crate::jobs::fingerprint(features),
        })
    }
}

/// The clock's table in a snapshot; the operators' tables are prefixed [`FEATURES`].
pub(super) const CLOCK: &str = "event_clock";
pub(super) const FEATURES: &str = "features/";

impl FeatureStage for FraudFeatures {
    fn process(&mut self, mut input: JobInput) -> Result<Featured> {
        let admitted = self.admission.admit(&mut input, &mut self.chain)?;
        // Labels first: operators use a label only from its label time on.
        if let Some(labels) = input.side.as_ref().filter(|l| l.num_rows() > 0) {
            self.admission.check_side(labels, &input, "labels")?;
            self.chain.observe_labels(labels)?;
        }
        let batch = if admitted.events.num_rows() > 0 {
            self.chain.process(admitted.events)?
        } else {
            admitted.events
        };
        let batch = match self.admission.part() {
            Part::BeforeRepartition => with_origins(batch, admitted.origins)?,
            _ => batch,
        };
        crate::events::event_time(self.admission.clock.watermark(), self.chain.keys());
        Ok(Featured {
            batch,
            rejects: admitted.rejects,
        })
    }

    fn state_keys(&self) -> Option<usize> {
        Some(self.chain.keys())
    }

    fn snapshot(&self) -> Result<StateSnapshot> {
        let mut tables = vec![(CLOCK.to_string(), self.admission.clock.snapshot()?)];
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
        self.admission.clock.restore(&clock)?;
        self.chain.restore(&chain)?;
        Ok(())
    }
}
