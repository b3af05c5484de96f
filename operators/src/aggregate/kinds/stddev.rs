//! `stddev`: the population standard deviation of the window's values.

use super::variance::{population_variance, twin_variance};
use crate::aggregate::{Doc, Kind, Twin, Window};

pub(crate) struct StdDev;

impl Kind for StdDev {
    fn name(&self) -> &'static str {
        "stddev"
    }

    fn value(&self, window: &Window<'_>) -> f64 {
        population_variance(window).sqrt()
    }

    fn twin(&self, twin: &Twin) -> String {
        // A sliding VAR_POP can come out a hair below zero where the true value is 0.
        format!("SQRT(GREATEST({}, 0.0))", twin_variance(twin))
    }

    fn doc(&self) -> Doc {
        Doc {
            definition: "√ of the `variance` (population)",
            empty: "0 (also for one event)",
            example: r#"{ key = "card.id", kind = "stddev", value = "amount", spans = ["7d"], name = "card_std_{span}" }"#,
        }
    }
}

crate::register_kind!(StdDev);
