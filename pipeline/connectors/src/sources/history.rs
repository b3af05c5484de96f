//! A history in micro-batches: the source of every backtest, Kafka-range replay and export.
//!
//! Each batch is the next `batch_rows` events and every side event (fraud label) whose time is
//! at most the batch's last event time; the job applies the side events first, and uses a label
//! only from its label time on, so results do not depend on `batch_rows`.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::TimestampNanosecondType;
use riskpipe_operators::columns;

use super::{NoAck, Payload, Source, SourceBatch, Stop};
use crate::Result;
use riskpipe_core::{JobInput, Partitions};

/// Events ordered for replay, and the side events they may use.
#[derive(Debug, Clone)]
pub struct History {
    /// Events ordered by event time (fraud: then by the tie-break column; from a topic, each
    /// partition in offset order), event time as UTC nanoseconds in `event_time`.
    pub events: RecordBatch,
    /// The event-time column of `events`.
    pub event_time: String,
    /// Side events (fraud labels) ordered by `side_time`, if the job has them.
    pub side: Option<RecordBatch>,
    /// The time column of `side`: a side event is applied before the first batch whose last
    /// event is at or after it.
    pub side_time: String,
    /// Row of the source (file) of each event, when ordering moved them.
    pub source_rows: Option<Arc<[u32]>>,
    /// The input partition of each event, for a history read from a topic: each partition in
    /// offset order, merged by event time. `None`: one partition in event-time order.
    pub partitions: Option<Partitions>,
    /// Rows of the source (file) refused before ordering, as live refuses their messages: not
    /// among `events`.
    pub refused: Vec<Refused>,
}

/// A row of a history's source refused as its message would be refused live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Its row in the source (0-based).
    pub source_row: usize,
    /// The class of the problem.
    pub kind: riskpipe_core::RejectKind,
    /// What is wrong, as a decoder says it.
    pub reason: String,
}

impl History {
    /// The row in the source (0-based) of event `row`.
    pub fn source_row(&self, row: usize) -> usize {
        self.source_rows
            .as_ref()
            .and_then(|r| r.get(row))
            .map_or(row, |&r| r as usize)
    }

    /// The first `rows` events, with every side event.
    pub fn head(&self, rows: usize) -> History {
        let rows = rows.min(self.events.num_rows());
        History {
            events: self.events.slice(0, rows),
            partitions: self.partitions.as_ref().map(|p| p.slice(0, rows)),
            ..self.clone()
        }
    }
}

/// Replays a [`History`] in micro-batches.
#[derive(Debug)]
pub struct HistorySource {
    history: Arc<History>,
    times: arrow::buffer::ScalarBuffer<i64>,
    side_times: Option<arrow::buffer::ScalarBuffer<i64>>,
    batch_rows: usize,
    next_event: usize,
    next_side: usize,
}

impl HistorySource {
    /// Batches of `batch_rows` events.
    pub fn new(history: Arc<History>, batch_rows: usize) -> Result<Self> {
        let times =
            columns::primitive::<TimestampNanosecondType>(&history.events, &history.event_time)?
                .values()
                .clone();
        let side_times = match &history.side {
            Some(side) => Some(
                columns::primitive::<TimestampNanosecondType>(side, &history.side_time)?
                    .values()
                    .clone(),
            ),
            None => None,
        };
        Ok(Self {
            history,
            times,
            side_times,
            batch_rows: batch_rows.max(1),
            next_event: 0,
            next_side: 0,
        })
    }

    /// The next micro-batch, if any events are left.
    pub fn next_batch(&mut self) -> Option<SourceBatch<()>> {
        let events = &self.history.events;
        let start = self.next_event;
        if start >= events.num_rows() {
            return None;
        }
        let len = self.batch_rows.min(events.num_rows() - start);
        // The batch's latest event time (the last one's, unless a partition is out of order).
        let last_time = self.times[start..start + len]
            .iter()
            .copied()
            .max()
            .unwrap_or(i64::MIN);
        let side = match (&self.history.side, &self.side_times) {
            (Some(side), Some(times)) => {
                let from = self.next_side;
                let end = from + times[from..].partition_point(|&t| t <= last_time);
                self.next_side = end;
                Some(side.slice(from, end - from))
            }
            _ => None,
        };
        self.next_event += len;
        Some(SourceBatch {
            payload: Payload::Rows {
                input: JobInput {
                    side,
                    events: events.slice(start, len),
                    partitions: self
                        .history
                        .partitions
                        .as_ref()
                        .map(|p| p.slice(start, len)),
                },
                first_row: start,
            },
            ack: (),
        })
    }
}

impl Source for HistorySource {
    type Ack = ();
    type Acker = NoAck;

    async fn next(&mut self, stop: &mut Stop) -> Result<Option<SourceBatch<()>>> {
        if *stop.borrow() {
            return Ok(None);
        }
        Ok(self.next_batch())
    }

    fn acker(&self) -> NoAck {
        NoAck
    }

    fn names(&self) -> (&str, &str) {
        ("history", "history-side")
    }
}
