//! Keyed sliding event-time window aggregates.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, FieldRef};

use crate::columns::{self, KeyedState};
use crate::{Appender, Operator, Result};

/// What a window output computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// Number of events (Int64).
    Count,
    /// Sum of the value (Float64).
    Sum,
    /// Mean of the value (Float64).
    Mean,
}

/// One key's events in time order with running prefix sums, so that any window's count and sum
/// are two binary searches away.
#[derive(Debug, Default)]
struct Series {
    times: VecDeque<i64>,
    /// `prefix[i]` = sum of values up to and including `times[i]`, offset by `evicted`.
    prefix: VecDeque<f64>,
    /// Sum of the values already evicted (the prefix before `prefix[0]`).
    evicted: f64,
    latest: i64,
}

impl Series {
    /// Inserts an event after every event of equal or earlier time; returns its position.
    fn insert(&mut self, t: i64, v: f64) -> usize {
        let in_order = self.times.back().is_none_or(|&last| last <= t);
        if in_order {
            let p = self.prefix.back().copied().unwrap_or(self.evicted) + v;
            self.times.push_back(t);
            self.prefix.push_back(p);
            self.latest = t;
            return self.times.len() - 1;
        }
        // A late event: slot it in and shift the prefix sums after it.
        let pos = self.times.partition_point(|&x| x <= t);
        let before = if pos == 0 {
            self.evicted
        } else {
            self.prefix[pos - 1]
        };
        self.times.insert(pos, t);
        self.prefix.insert(pos, before + v);
        for p in self.prefix.iter_mut().skip(pos + 1) {
            *p += v;
        }
        pos
    }

    /// Count and sum over events with time > `after` up to and including position `pos`.
    fn window(&self, pos: usize, after: i64) -> (i64, f64) {
        let lo = self.times.partition_point(|&x| x <= after);
        let before = if lo == 0 {
            self.evicted
        } else {
            self.prefix[lo - 1]
        };
        ((pos + 1 - lo) as i64, self.prefix[pos] - before)
    }

    /// Drops events no later event can see.
    fn evict(&mut self, max_span: i64) {
        let horizon = self.latest.saturating_sub(max_span);
        while self.times.front().is_some_and(|&t| t <= horizon) {
            self.times.pop_front();
            if let Some(p) = self.prefix.pop_front() {
                self.evicted = p;
            }
        }
    }
}

/// Count / sum / mean of a value per key over sliding event-time windows (t - span, t].
///
/// Events must arrive in (event time, tie-break) order: the current event is counted and, among
/// events of equal time, exactly those that came before it. An event later than the key's
/// latest is slotted in by time (its window then sees what the key still holds).
#[derive(Debug)]
pub struct WindowAggregate {
    name: String,
    key: String,
    value: String,
    time: String,
    spans: Vec<i64>,
    max_span: i64,
    outputs: Vec<(Aggregate, usize)>,
    fields: Vec<FieldRef>,
    state: KeyedState<Series>,
    appender: Appender,
}

impl WindowAggregate {
    /// `spans` in nanoseconds; `outputs` as (aggregate, index into spans, column name).
    pub fn new(
        key: &str,
        value: &str,
        time: &str,
        spans: Vec<i64>,
        outputs: Vec<(Aggregate, usize, String)>,
    ) -> Self {
        let fields = outputs
            .iter()
            .map(|(agg, _, name)| {
                let dt = if *agg == Aggregate::Count {
                    DataType::Int64
                } else {
                    DataType::Float64
                };
                Arc::new(Field::new(name, dt, false))
            })
            .collect();
        Self {
            name: format!("window({key})"),
            key: key.into(),
            value: value.into(),
            time: time.into(),
            max_span: spans.iter().copied().max().unwrap_or(0),
            spans,
            outputs: outputs.into_iter().map(|(a, s, _)| (a, s)).collect(),
            fields,
            state: KeyedState::default(),
            appender: Appender::default(),
        }
    }
}

impl Operator for WindowAggregate {
    fn name(&self) -> &str {
        &self.name
    }

    fn output_fields(&self) -> &[FieldRef] {
        &self.fields
    }

    fn process(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let keys = columns::keys(&batch, &self.key)?;
        let times = columns::event_times(&batch, &self.time)?;
        let values = columns::f64_values(&batch, &self.value)?;
        let values = values.values();
        let n = batch.num_rows();
        let ns = self.spans.len();
        // Per row and span: (count, sum).
        let mut agg = vec![(0i64, 0f64); n * ns];
        let (spans, max_span) = (&self.spans, self.max_span);
        self.state.for_each_row(&keys, |row, series| {
            let t = times[row];
            let pos = series.insert(t, values[row]);
            for (s, span) in spans.iter().enumerate() {
                agg[row * ns + s] = series.window(pos, t.saturating_sub(*span));
            }
            series.evict(max_span);
        });
        let arrays: Vec<ArrayRef> = self
            .outputs
            .iter()
            .map(|&(a, s)| -> ArrayRef {
                let col = (0..n).map(|r| agg[r * ns + s]);
                match a {
                    Aggregate::Count => Arc::new(Int64Array::from_iter_values(col.map(|(c, _)| c))),
                    Aggregate::Sum => Arc::new(Float64Array::from_iter_values(col.map(|(_, x)| x))),
                    Aggregate::Mean => Arc::new(Float64Array::from_iter_values(
                        col.map(|(c, x)| x / c as f64),
                    )),
                }
            })
            .collect();
        self.appender.append(batch, &self.fields, arrays)
    }
}
