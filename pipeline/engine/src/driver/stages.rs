//! The driver's stage loops and the work item that flows through them.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arrow::array::RecordBatch;
use tokio::sync::{mpsc, watch};

use crate::decoders::{Decoder, Rejection};
use crate::events::{self, Stage};
use crate::sinks::{DeadLetter, Origin, SinkBatch};
use crate::sources::{Message, Payload, SourceBatch};
use crate::{PipelineError, Result};
use riskpipe_core::{
    FeatureStage, Featured, Inputs, JobInput, JobOutput, Partitions, RejectKind, ScoreStage,
    StateSnapshot,
};

/// What travels with a batch from the decoder to the acknowledgement.
#[derive(Debug)]
pub(crate) struct Work<A> {
    /// The source's token, until whichever stage settles input takes it.
    pub(crate) ack: Option<A>,
    /// The message behind each event row (message sources), taken when the row is rejected.
    origins: Vec<Option<Message>>,
    /// The messages behind the side-input rows (message sources).
    side_origins: Vec<Message>,
    /// Index of the first event row in the source (row sources).
    first_row: Option<usize>,
    /// Whether each event row was rejected.
    rejected: Vec<bool>,
    /// Producer timestamp (ms) of each event row, for end-to-end latency (message sources).
    pub(crate) created_ms: Vec<Option<i64>>,
    dead: Vec<DeadLetter>,
    /// The job's feature state right after this batch, when a checkpoint is due: written once
    /// the batch is acknowledged.
    pub(crate) snapshot: Option<StateSnapshot>,
}

impl<A> Work<A> {
    fn new(ack: A, events: usize) -> Self {
        Self {
            ack: Some(ack),
            origins: Vec::new(),
            side_origins: Vec::new(),
            first_row: None,
            rejected: vec![false; events],
            created_ms: Vec::new(),
            dead: Vec::new(),
            snapshot: None,
        }
    }

    /// Event `row` of the batch becomes a dead letter.
    fn reject(&mut self, row: usize, kind: RejectKind, reason: String) {
        let origin = match self.first_row {
            Some(first) => Some(Origin::Row(first + row)),
            None => self
                .origins
                .get_mut(row)
                .and_then(Option::take)
                .map(Origin::Message),
        };
        if let Some(seen) = self.rejected.get_mut(row) {
            *seen = true;
        }
        if let Some(created) = self.created_ms.get_mut(row) {
            *created = None;
        }
        if kind == RejectKind::Redelivered {
            events::repartition_duplicate();
            return;
        }
        if let Some(origin) = origin {
            self.dead.push(DeadLetter {
                origin,
                kind,
                reason,
            });
        }
    }

    /// Every event row not rejected yet becomes a dead letter.
    fn reject_rest(&mut self, kind: RejectKind, reason: &str) {
        for row in 0..self.rejected.len() {
            if !self.rejected[row] {
                self.reject(row, kind, reason.to_string());
            }
        }
    }

    /// The side-input messages become dead letters (the feature stage could not apply them).
    fn reject_side(&mut self, kind: RejectKind, reason: &str) {
        for m in std::mem::take(&mut self.side_origins) {
            self.dead.push(DeadLetter {
                origin: Origin::Message(m),
                kind,
                reason: reason.to_string(),
            });
        }
    }

    /// Event rows not rejected, in order: the rows a score stage sees.
    fn kept(&self) -> Vec<usize> {
        (0..self.rejected.len())
            .filter(|&r| !self.rejected[r])
            .collect()
    }
}

/// Stops the pipeline when dropped armed: when its stage returns an error or panics, so that
/// the source stops reading instead of waiting on a quiet topic behind a dead stage.
pub(super) struct StopGuard {
    stop: watch::Sender<bool>,
    armed: bool,
}

impl StopGuard {
    pub(super) fn new(stop: &watch::Sender<bool>) -> Self {
        Self {
            stop: stop.clone(),
            armed: true,
        }
    }

    /// Passes `r` on; an `Ok` disarms the guard.
    pub(super) fn check<T>(mut self, r: Result<T>) -> Result<T> {
        self.armed = r.is_err();
        r
    }
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.stop.send(true);
        }
    }
}

/// Longest dead-letter reason (bytes): it travels in a header and a log line, so it stays short
/// whatever the input was.
pub(crate) const MAX_REASON: usize = 256;

/// Cuts `reason` to [`MAX_REASON`] bytes at a character boundary.
fn shorten(reason: &mut String) {
    if reason.len() > MAX_REASON {
        let mut end = MAX_REASON - 3;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push_str("...");
    }
}

/// Spawns a stage thread that stops the pipeline when it fails or panics.
pub(super) fn spawn<T: Send + 'static>(
    name: &str,
    stop: &watch::Sender<bool>,
    body: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    let guard = StopGuard::new(stop);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || guard.check(body()))
        .map_err(PipelineError::runtime("starting a stage thread"))
}

/// Waits for a stage thread off the async reactor.
pub(super) async fn join<T: Send + 'static>(
    handle: std::thread::JoinHandle<Result<T>>,
) -> Result<T> {
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .map_err(|e| PipelineError::Bug(format!("joining a stage thread: {e}")))?
        .map_err(|_| PipelineError::Bug("a stage thread panicked".into()))?
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Decodes the payloads of one stream; rejected messages become dead letters, accepted ones
/// come back in row order.
fn decode_stream(
    decoder: &dyn Decoder,
    schema: &arrow::datatypes::SchemaRef,
    messages: Vec<Message>,
    dead: &mut Vec<DeadLetter>,
) -> Result<(RecordBatch, Vec<Message>)> {
    // A stream is one topic (the events or the side input).
    let topic = messages.first().map_or("", |m| &m.topic);
    let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload.as_slice()).collect();
    let stamps: Vec<Option<i64>> = messages.iter().map(|m| m.created_ms).collect();
    let decoded = decoder.decode_records(topic, schema, &payloads, &stamps)?;
    drop(payloads);
    let mut slots: Vec<Option<Message>> = messages.into_iter().map(Some).collect();
    for Rejection {
        index,
        reason,
        kind,
    } in decoded.rejected
    {
        if let Some(m) = slots.get_mut(index).and_then(Option::take) {
            dead.push(DeadLetter {
                origin: Origin::Message(m),
                kind,
                reason,
            });
        }
    }
    let accepted = decoded
        .accepted
        .iter()
        .filter_map(|&i| slots.get_mut(i).and_then(Option::take))
        .collect();
    Ok((decoded.batch, accepted))
}

/// Stage 1: payloads to Arrow (its own thread, so decoding overlaps the job).
pub(super) fn decode<A: Send>(
    mut batches: mpsc::Receiver<SourceBatch<A>>,
    out: mpsc::Sender<(Work<A>, JobInput)>,
    decoder: &dyn Decoder,
    inputs: &Inputs,
    names: &(Arc<str>, Arc<str>),
) -> Result<()> {
    while let Some(batch) = batches.blocking_recv() {
        let started = Instant::now();
        events::batch_rows(super::rows(&batch.payload));
        let (work, input) = match batch.payload {
            Payload::Rows { input, first_row } => {
                events::events_in(&names.0, input.events.num_rows() as u64);
                if let Some(side) = &input.side {
                    events::events_in(&names.1, side.num_rows() as u64);
                }
                let mut work = Work::new(batch.ack, input.events.num_rows());
                work.first_row = Some(first_row);
                (work, input)
            }
            Payload::Messages { messages, held } => {
                let mut per_topic: Vec<(Arc<str>, u64)> = Vec::new();
                for m in &messages {
                    match per_topic.iter_mut().find(|(t, _)| *t == m.topic) {
                        Some((_, n)) => *n += 1,
                        None => per_topic.push((m.topic.clone(), 1)),
                    }
                }
                for (topic, n) in per_topic {
                    events::events_in(&topic, n);
                }
                let (side, event_messages): (Vec<Message>, Vec<Message>) =
                    messages.into_iter().partition(|m| m.side);
                let mut dead = Vec::new();
                let mut side_origins = Vec::new();
                let side = match &inputs.side {
                    Some(schema) => {
                        let (batch, accepted) = decode_stream(decoder, schema, side, &mut dead)?;
                        side_origins = accepted;
                        Some(batch)
                    }
                    None => {
                        for m in side {
                            dead.push(DeadLetter {
                                origin: Origin::Message(m),
                                kind: RejectKind::Schema,
                                reason: "this job has no side input".into(),
                            });
                        }
                        None
                    }
                };
                let (events, origins) =
                    decode_stream(decoder, &inputs.events, event_messages, &mut dead)?;
                let partitions = Partitions {
                    of_events: origins.iter().map(|m| m.partition).collect(),
                    of_side: side_origins.iter().map(|m| m.partition).collect(),
                    held,
                };
                let mut work = Work::new(batch.ack, events.num_rows());
                work.created_ms = origins
                    .iter()
                    .map(|m| Some(m.created_ms.unwrap_or_else(now_ms)))
                    .collect();
                work.origins = origins.into_iter().map(Some).collect();
                work.side_origins = side_origins;
                work.dead = dead;
                let partitions = Some(partitions);
                (
                    work,
                    JobInput {
                        side,
                        events,
                        partitions,
                    },
                )
            }
        };
        events::stage_time(Stage::Decode, started.elapsed().as_secs_f64());
        if out.blocking_send((work, input)).is_err() {
            break; // a later stage stopped; it reports why
        }
    }
    Ok(())
}

/// When the feature stage snapshots its state for a checkpoint.
#[derive(Debug)]
pub(super) struct SnapshotTimer {
    pub(super) every: std::time::Duration,
    pub(super) last: Instant,
    /// Set while a checkpoint is being written: no second snapshot meanwhile.
    pub(super) writing: Arc<std::sync::atomic::AtomicBool>,
}

impl SnapshotTimer {
    /// Whether a snapshot is due now; if so, the timer restarts and a write is marked under way.
    fn due_now(&mut self) -> bool {
        use std::sync::atomic::Ordering;
        let due = self.last.elapsed() >= self.every
            && self
                .writing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        if due {
            self.last = Instant::now();
        }
        due
    }
}

/// Stage 2: the job's feature half (its own thread: CPU-heavy, off the async reactor); with a
/// timer, the state right after a batch travels with it when a checkpoint is due.
pub(super) fn features<A: Send>(
    mut batches: mpsc::Receiver<(Work<A>, JobInput)>,
    out: mpsc::Sender<(Work<A>, Option<Featured>)>,
    stage: &mut dyn FeatureStage,
    mut timer: Option<SnapshotTimer>,
) -> Result<()> {
    while let Some((mut work, input)) = batches.blocking_recv() {
        let started = Instant::now();
        let featured = match stage.process(input) {
            Ok(mut f) => {
                work.side_origins.clear(); // applied: nothing left to dead-letter
                for r in std::mem::take(&mut f.rejects) {
                    work.reject(r.row, r.kind, r.reason);
                }
                Some(f)
            }
            // The whole batch failed a check: dead-letter its events and side inputs, go on.
            Err(e) if super::dead_letters_batch(&e) => {
                let reason = e.to_string();
                work.reject_rest(RejectKind::Schema, &reason);
                work.reject_side(RejectKind::Schema, &reason);
                None
            }
            Err(e) => return Err(e),
        };
        events::stage_time(Stage::Features, started.elapsed().as_secs_f64());
        if let Some(t) = timer.as_mut()
            && t.due_now()
        {
            let started = Instant::now();
            match stage.snapshot() {
                Ok(s) => work.snapshot = Some(s),
                Err(e) => {
                    t.writing.store(false, std::sync::atomic::Ordering::Release);
                    events::checkpoint_failed();
                    tracing::warn!("state snapshot failed, no checkpoint this time: {e}");
                }
            }
            events::stage_time(Stage::Snapshot, started.elapsed().as_secs_f64());
        }
        if out.blocking_send((work, featured)).is_err() {
            break;
        }
    }
    Ok(())
}

/// Stage 3: the job's scoring half (its own thread), then the batch's dead letters counted.
/// A batch that carries the feature state for a checkpoint takes the score stage's state too,
/// right after it (when the stage keeps any); `writing` is the timer's flag, cleared when that
/// fails so the next checkpoint is not held back.
pub(super) fn score<A: Send>(
    mut batches: mpsc::Receiver<(Work<A>, Option<Featured>)>,
    out: mpsc::Sender<(Work<A>, SinkBatch)>,
    stage: &mut dyn ScoreStage,
    writing: Option<Arc<std::sync::atomic::AtomicBool>>,
) -> Result<()> {
    while let Some((mut work, featured)) = batches.blocking_recv() {
        let started = Instant::now();
        let mut output = JobOutput::default();
        if let Some(f) = featured.filter(|f| f.batch.num_rows() > 0) {
            match stage.process(f) {
                Ok(mut o) => {
                    if !o.rejects.is_empty() {
                        // The score stage saw the kept rows; its rejects are numbered among them.
                        let kept = work.kept();
                        for r in std::mem::take(&mut o.rejects) {
                            if let Some(&row) = kept.get(r.row) {
                                work.reject(row, r.kind, r.reason);
                            }
                        }
                    }
                    output = o;
                }
                Err(e) if super::dead_letters_batch(&e) => {
                    work.reject_rest(RejectKind::Schema, &e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        events::stage_time(Stage::Score, started.elapsed().as_secs_f64());
        if stage.has_state()
            && let Some(features) = work.snapshot.take()
        {
            let started = Instant::now();
            match stage.snapshot() {
                Ok(s) => work.snapshot = Some(StateSnapshot::join(features, Some(s))),
                Err(e) => {
                    if let Some(w) = &writing {
                        w.store(false, std::sync::atomic::Ordering::Release);
                    }
                    events::checkpoint_failed();
                    tracing::warn!("score state snapshot failed, no checkpoint this time: {e}");
                }
            }
            events::stage_time(Stage::Snapshot, started.elapsed().as_secs_f64());
        }
        let mut dead = std::mem::take(&mut work.dead);
        for d in &mut dead {
            shorten(&mut d.reason);
            events::dead_letter(d.kind.as_str());
            match &d.origin {
                Origin::Message(m) => tracing::warn!(
                    topic = &*m.topic,
                    partition = m.partition,
                    offset = m.offset,
                    kind = d.kind.as_str(),
                    "dead letter: {}",
                    d.reason
                ),
                Origin::Row(row) | Origin::FileRow(row) => {
                    tracing::debug!(row, kind = d.kind.as_str(), "rejected: {}", d.reason);
                }
            }
        }
        if out
            .blocking_send((work, SinkBatch { output, dead }))
            .is_err()
        {
            break;
        }
    }
    Ok(())
}
