//! Counts of a run, updated as it goes (the demo and the benches read them while it runs).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

use super::stages::Work;
use crate::events;
use crate::sinks::Delivered;
use crate::sources::Payload;

/// Counts of a run.
#[derive(Debug, Default)]
pub struct Counters {
    /// Event messages or rows read (transactions, ticks).
    pub events: AtomicU64,
    /// Side-input messages or rows read (fraud labels).
    pub side: AtomicU64,
    /// Score records acknowledged by the sink.
    pub scores: AtomicU64,
    /// Alert records acknowledged by the sink.
    pub alerts: AtomicU64,
    /// Dead letters acknowledged by the sink.
    pub dead_letters: AtomicU64,
    /// Batches fully acknowledged.
    pub batches: AtomicU64,
    /// Latency from an event's producer timestamp (Kafka CreateTime, ms) to the sink's
    /// acknowledgement of its outputs, µs (over-states by under 1 ms: CreateTime is truncated).
    end_to_end_us: Mutex<Option<Histogram<u64>>>,
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Event messages or rows read.
    pub events: u64,
    /// Side-input messages or rows read.
    pub side: u64,
    /// Scores delivered.
    pub scores: u64,
    /// Alerts delivered.
    pub alerts: u64,
    /// Dead letters delivered.
    pub dead_letters: u64,
}

impl Counters {
    /// A snapshot.
    pub fn summary(&self) -> Summary {
        Summary {
            events: self.events.load(Ordering::Relaxed),
            side: self.side.load(Ordering::Relaxed),
            scores: self.scores.load(Ordering::Relaxed),
            alerts: self.alerts.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
        }
    }

    /// End-to-end latency quantile in ms (NaN before any delivery of a message source).
    pub fn end_to_end_ms(&self, q: f64) -> f64 {
        match self.end_to_end_us.lock() {
            Ok(h) => h
                .as_ref()
                .filter(|h| !h.is_empty())
                .map(|h| h.value_at_quantile(q) as f64 / 1e3)
                .unwrap_or(f64::NAN),
            Err(_) => f64::NAN,
        }
    }

    pub(super) fn consumed(&self, payload: &Payload) {
        let (events, side) = match payload {
            Payload::Messages { messages, .. } => {
                let side = messages.iter().filter(|m| m.side).count();
                (messages.len() - side, side)
            }
            Payload::Rows { input, .. } => (
                input.events.num_rows(),
                input.side.as_ref().map_or(0, |s| s.num_rows()),
            ),
        };
        self.events.fetch_add(events as u64, Ordering::Relaxed);
        self.side.fetch_add(side as u64, Ordering::Relaxed);
    }

    pub(super) fn delivered<A>(&self, work: &Work<A>, d: Delivered) {
        self.scores.fetch_add(d.scores, Ordering::Relaxed);
        self.alerts.fetch_add(d.alerts, Ordering::Relaxed);
        self.dead_letters
            .fetch_add(d.dead_letters, Ordering::Relaxed);
        for (output, n) in [
            ("scores", d.scores),
            ("alerts", d.alerts),
            ("challenger", d.challenger),
            ("decisions", d.decisions),
            ("repartition", d.forwarded),
            ("dead_letter", d.dead_letters),
        ] {
            events::events_out(output, n);
        }
        if work.created_ms.iter().any(Option::is_some) {
            let now_us = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros() as i64)
                .unwrap_or(0);
            let exported = events::end_to_end();
            if let Ok(mut h) = self.end_to_end_us.lock() {
                let h = h.get_or_insert_with(|| {
                    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant, valid bounds")
                });
                for created in work.created_ms.iter().flatten() {
                    let us = (now_us - created * 1000).max(1);
                    exported.record(us as f64 / 1e6);
                    let _ = h.record(us as u64);
                }
            }
        }
        self.batches.fetch_add(1, Ordering::Relaxed);
    }
}
