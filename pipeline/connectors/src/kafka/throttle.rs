//! Repeated log lines held back: one per period, with a count of the rest.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one log line per period for a problem that repeats (a dead broker makes librdkafka
/// report the same failure many times a second), saying how many were held back.
#[derive(Debug)]
pub(crate) struct Throttle {
    period: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub(crate) fn new(period: Duration) -> Self {
        Self {
            period,
            state: Mutex::new((None, 0)),
        }
    }

    /// Logs `message` unless a line went out less than a period ago.
    pub(crate) fn warn(&self, message: &dyn std::fmt::Display) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let (last, held) = &mut *state;
        if last.is_some_and(|t| t.elapsed() < self.period) {
            *held += 1;
            return;
        }
        if *held > 0 {
            tracing::warn!("{message} ({held} similar held back)");
        } else {
            tracing::warn!("{message}");
        }
        *last = Some(Instant::now());
        *held = 0;
    }
}

impl Throttle {
    /// A librdkafka log line: debug below warnings, else throttled.
    pub(crate) fn librdkafka(
        &self,
        level: rdkafka::config::RDKafkaLogLevel,
        facility: &str,
        message: &str,
    ) {
        use rdkafka::config::RDKafkaLogLevel;
        match level {
            RDKafkaLogLevel::Debug | RDKafkaLogLevel::Info | RDKafkaLogLevel::Notice => {
                tracing::debug!(target: "librdkafka", "{facility} {message}");
            }
            _ => self.warn(&format_args!("librdkafka: {facility} {message}")),
        }
    }
}
