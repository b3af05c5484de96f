//! Health: liveness and readiness, set by the source and the command running the pipeline, read
//! by the health endpoint.

use std::sync::atomic::{AtomicBool, Ordering};

/// Liveness and readiness, shared by the source (which knows its assignment), the command
/// running the pipeline, and the health endpoint.
#[derive(Debug, Default)]
pub struct Health {
    /// The consumer holds a partition assignment.
    pub ready: AtomicBool,
    /// Set once the pipeline has stopped.
    pub stopped: AtomicBool,
    /// One consumer's part of a process with several: the process's readiness combines the
    /// parts, and only it is reported.
    part: bool,
}

impl Health {
    /// The readiness of one of several consumers of a process (see [`Self::part`]).
    pub fn part() -> Self {
        Self {
            part: true,
            ..Self::default()
        }
    }

    /// The consumer gained (`true`) or lost its partitions.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
        if !self.part {
            crate::events::ready(ready && !self.stopped.load(Ordering::Relaxed));
        }
    }

    /// The pipeline stopped: never ready again.
    pub fn set_stopped(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.set_ready(false);
    }
}
