//! Keyed sliding event-time window aggregates.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, Int64Builder, RecordBatch};
use arrow::datatypes::{DataType, Field, FieldRef};

use crate::columns;
use crate::state::{Expiring, KeyedState, StateReader, StateTable, Watermark};
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

/// One key's events in time order with their values (and their ids, when the events have
/// integer ids). A window's sum adds its values in time order, so it depends only on which
/// events the window holds, never on when older events were evicted or whether the key was
/// dropped and made anew in between (live, with several input partitions, evicts at other
/// moments than a replay does, and must still give the same bits).
#[derive(Debug, Default)]
pub(crate) struct Series {
    pub(crate) times: VecDeque<i64>,
    pub(crate) values: VecDeque<f64>,
    /// One id per event, when every event held came with one (boxed: a key without them, as
    /// in an operator that does not remember ids, pays 8 bytes, not a third deque).
    #[allow(
        clippy::box_collection,
        reason = "a deque inline would add 24 bytes to every key, also where no id is kept"
    )]
    ids: Option<Box<VecDeque<i64>>>,
}

impl Series {
    /// Inserts an event after every event of equal or earlier time; returns its position.
    /// Ids are all or none: an event without one (from a batch without integer ids) ends the
    /// key's memory of ids until the key holds nothing again.
    pub(crate) fn insert(&mut self, t: i64, v: f64, id: Option<i64>) -> usize {
        if self.times.is_empty() {
            self.ids = id.map(|_| Box::default());
        } else if id.is_none() {
            self.ids = None;
        }
        let pos = if self.times.back().is_none_or(|&last| last <= t) {
            self.times.len()
        } else {
            // A late event: slotted in by time.
            self.times.partition_point(|&x| x <= t)
        };
        self.times.insert(pos, t);
        self.values.insert(pos, v);
        if let (Some(ids), Some(id)) = (&mut self.ids, id) {
            ids.insert(pos, id);
        }
        pos
    }

    /// Whether the key holds the event `id`.
    fn knows(&self, id: i64) -> bool {
        self.ids.as_ref().is_some_and(|ids| ids.contains(&id))
    }

    /// Count and sum, for each span, over events with time > `t - span` up to and including
    /// position `pos`, into `out` (by span index). `shortest_first` lists the span indices from
    /// the shortest span to the longest: one backward pass from `pos` serves every span, adding
    /// each window's values from its latest to its earliest.
    fn windows(
        &self,
        pos: usize,
        t: i64,
        spans: &[i64],
        shortest_first: &[usize],
        out: &mut [(i64, f64)],
    ) {
        let (mut next, mut sum) = (pos + 1, 0.0);
        for &s in shortest_first {
            let after = t.saturating_sub(spans[s]);
            let lo = self.times.partition_point(|&x| x <= after).min(next);
            while next > lo {
                next -= 1;
                sum += self.values[next];
            }
            out[s] = ((pos + 1 - lo) as i64, sum);
        }
    }
}

/// The `time` and `value` columns of a checkpoint table of series (one row per event held).
pub(crate) fn series_columns(
    times: Vec<i64>,
    values: Vec<f64>,
) -> Vec<(&'static str, DataType, bool, ArrayRef)> {
    vec![
        (
            "time",
            DataType::Int64,
            false,
            Arc::new(Int64Array::from(times)),
        ),
        (
            "value",
            DataType::Float64,
            false,
            Arc::new(Float64Array::from(values)),
        ),
    ]
}

impl Expiring for Series {
    fn evict(&mut self, horizon: i64) {
        while self.times.front().is_some_and(|&t| t <= horizon) {
            self.times.pop_front();
            self.values.pop_front();
            if let Some(ids) = &mut self.ids {
                ids.pop_front();
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.times.is_empty()
    }
}

/// Count / sum / mean of a value per key over sliding event-time windows (t - span, t].
///
/// Events must arrive in (event time, tie-break) order: the current event is counted and, among
/// events of equal time, exactly those that came before it. An event later than the key's
/// latest is slotted in by time (its window then sees what the key still holds). State follows
/// the watermark ([`Operator::advance_watermark`]): events no window can see any more are
/// dropped, and so are keys left with none. Given an id column of integers, events are
/// remembered by id ([`Operator::seen`]): a transaction published twice is told from a new one,
/// and no window need count it twice.
#[derive(Debug)]
pub struct WindowAggregate {
    name: String,
    key: String,
    value: String,
    time: String,
    /// The events' id column, when this operator is the one remembering ids.
    id: Option<String>,
    spans: Vec<i64>,
    /// Span indices from the shortest span to the longest.
    shortest_first: Vec<usize>,
    outputs: Vec<(Aggregate, usize)>,
    fields: Vec<FieldRef>,
    state: KeyedState<Series>,
    watermark: Watermark,
    appender: Appender,
}

impl WindowAggregate {
    /// `spans` in nanoseconds; `outputs` as (aggregate, index into spans, column name); `id`
    /// the events' id column, to remember them by (when it holds integers).
    pub fn new(
        key: &str,
        value: &str,
        time: &str,
        id: Option<&str>,
        spans: Vec<i64>,
        outputs: Vec<(Aggregate, usize, String)>,
    ) -> Self {
        let max_span = spans.iter().copied().max().unwrap_or(0);
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
            id: id.map(Into::into),
            shortest_first: {
                let mut order: Vec<usize> = (0..spans.len()).collect();
                order.sort_by_key(|&i| spans[i]);
                order
            },
            spans,
            outputs: outputs.into_iter().map(|(a, s, _)| (a, s)).collect(),
            fields,
            state: KeyedState::default(),
            watermark: Watermark::new(max_span),
            appender: Appender::default(),
        }
    }

    /// The batch's event ids, if it has them as integers (`None`: events are not told apart).
    fn ids(&self, batch: &RecordBatch) -> Result<Option<Int64Array>> {
        let Some(id) = &self.id else {
            return Ok(None);
        };
        match batch.column_by_name(id) {
            Some(c) if c.data_type().is_integer() => columns::i64_values(batch, id).map(Some),
            _ => Ok(None),
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
        let ids = self.ids(&batch)?;
        let n = batch.num_rows();
        let ns = self.spans.len();
        // Per row and span: (count, sum).
        let mut agg = vec![(0i64, 0f64); n * ns];
        let (spans, shortest_first) = (&self.spans, &self.shortest_first);
        let horizon = self.watermark.horizon();
        self.state.for_each_row(&keys, |row, series| {
            let t = times[row];
            let pos = series.insert(t, values[row], ids.as_ref().map(|i| i.value(row)));
            series.windows(
                pos,
                t,
                spans,
                shortest_first,
                &mut agg[row * ns..(row + 1) * ns],
            );
            series.evict(horizon);
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

    fn advance_watermark(&mut self, watermark: i64) {
        self.state.advance(&mut self.watermark, watermark);
    }

    fn seen(&self, batch: &RecordBatch) -> Result<Option<Vec<bool>>> {
        let Some(ids) = self.ids(batch)? else {
            return Ok(None);
        };
        let keys = columns::keys(batch, &self.key)?;
        let mut seen = vec![false; batch.num_rows()];
        self.state.for_each_present(&keys, |row, series| {
            seen[row] = series.knows(ids.value(row));
        });
        Ok(Some(seen))
    }

    fn keys(&self) -> usize {
        self.state.len()
    }

    /// One row per event held: key, time, value, id (null where unknown); the watermark in the
    /// metadata.
    fn snapshot(&self) -> Result<Option<RecordBatch>> {
        let rows = self.state.iter().map(|(_, s)| s.times.len()).sum();
        let mut table = StateTable::with_capacity(rows);
        let (mut times, mut values) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
        let mut ids = Int64Builder::with_capacity(rows);
        for (key, series) in self.state.iter() {
            table.key_rows(key, series.times.len());
            times.extend(series.times.iter().copied());
            values.extend(series.values.iter().copied());
            if let Some(held) = &series.ids {
                let (front, back) = held.as_slices();
                ids.append_slice(front);
                ids.append_slice(back);
            } else {
                ids.append_nulls(series.times.len());
            }
        }
        let mut columns = series_columns(times, values);
        columns.push(("id", DataType::Int64, true, Arc::new(ids.finish())));
        table.finish(columns, Some(&self.watermark)).map(Some)
    }

    fn restore(&mut self, table: &RecordBatch) -> Result<()> {
        let r = StateReader::new(table)?;
        let times = r.primitive::<arrow::datatypes::Int64Type>("time")?;
        let values = r.primitive::<arrow::datatypes::Float64Type>("value")?;
        // Checkpoints written before ids were remembered have no id column: their events are
        // restored without (a copy of one of them is not recognised).
        let ids = match r.column("id") {
            Ok(_) => Some(r.primitive::<arrow::datatypes::Int64Type>("id")?),
            Err(_) => None,
        };
        let mut state = KeyedState::<Series>::default();
        for row in 0..r.rows() {
            let id = ids.filter(|i| i.is_valid(row)).map(|i| i.value(row));
            state
                .entry(r.key(row)?)
                .insert(times.value(row), values.value(row), id);
        }
        self.watermark = r.watermark(self.watermark.reach())?;
        self.state = state;
        Ok(())
    }
}
