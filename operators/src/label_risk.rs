//! Keyed fraud rate from delayed labels.
//!
//! Labels are facts about transactions: a label counts for the transaction it names, once
//! however often it arrives, only if the key saw that transaction, and a later label of the same
//! transaction (a correction) takes over from its own label time on. So live scoring, where labels
//! may repeat or name transactions the pipeline never saw, gives what a replay of the same
//! transactions gives.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, FieldRef};

use crate::columns::{self, EventId, Keys};
use crate::config::key_parts;
use crate::config::{LabelRiskConfig, RiskOutput, ns};
use crate::state::{Expiring, Key, KeyedState, StateReader, StateTable, Watermark};
use crate::{Appender, Operator, OperatorError, Result};

/// The labels of one transaction: its time, and (label time, fraud) in label-time order.
#[derive(Debug, Default)]
struct Labels {
    time: i64,
    versions: Vec<(i64, bool)>,
}

impl Labels {
    /// Records a label; the same label again changes nothing.
    fn add(&mut self, known: i64, fraud: bool) {
        if !self.versions.contains(&(known, fraud)) {
            let at = self.versions.partition_point(|&(k, _)| k <= known);
            self.versions.insert(at, (known, fraud));
        }
    }

    /// Whether the transaction is a known fraud at `t`: its latest label known by then says so.
    fn fraud_at(&self, t: i64) -> bool {
        self.versions
            .iter()
            .rev()
            .find(|&&(known, _)| known <= t)
            .is_some_and(|&(_, fraud)| fraud)
    }
}

#[derive(Debug, Default)]
struct KeyHistory {
    /// Event times of the key's transactions, sorted (apart from their ids: the windows'
    /// binary searches read times only, densely packed).
    times: VecDeque<i64>,
    /// The id of each transaction in `times`, in the same order.
    ids: VecDeque<EventId>,
    /// Ids of the transactions in `times`.
    seen: HashSet<EventId, ahash::RandomState>,
    /// Labels by transaction id (also of transactions not seen yet: labels may come first).
    labels: HashMap<EventId, Labels, ahash::RandomState>,
}

impl KeyHistory {
    fn insert(&mut self, t: i64, id: EventId) {
        self.seen.insert(id.clone());
        if self.times.back().is_none_or(|&last| last <= t) {
            self.times.push_back(t);
            self.ids.push_back(id);
        } else {
            let pos = self.times.partition_point(|&x| x <= t);
            self.times.insert(pos, t);
            self.ids.insert(pos, id);
        }
    }
}

impl Expiring for KeyHistory {
    /// Drops transactions, and labels of transactions, at or before `horizon`.
    fn evict(&mut self, horizon: i64) {
        while self.times.front().is_some_and(|&t| t <= horizon) {
            self.times.pop_front();
            if let Some(id) = self.ids.pop_front() {
                self.seen.remove(&id);
            }
        }
        if self.labels.values().any(|l| l.time <= horizon) {
            self.labels.retain(|_, l| l.time > horizon);
        }
    }

    fn is_empty(&self) -> bool {
        self.times.is_empty() && self.labels.is_empty()
    }
}

/// Where each transaction held is, for labels that name the transaction only (no key, no event
/// time): its key and time by id, in time order for eviction, and the labels that came before
/// their transaction.
#[derive(Debug, Default)]
struct ByEvent {
    /// Each transaction held: its key (as an id-like value) and event time.
    index: HashMap<EventId, (EventId, i64), ahash::RandomState>,
    /// (event time, id) of `index`, in arrival order (mostly time order): evicted from the
    /// front.
    order: VecDeque<(i64, EventId)>,
    /// Labels of transactions not seen (yet): (label time, fraud) versions by id.
    pending: HashMap<EventId, Vec<(i64, bool)>, ahash::RandomState>,
}

impl ByEvent {
    fn hold(&mut self, id: EventId, key: EventId, t: i64) {
        self.order.push_back((t, id.clone()));
        self.index.insert(id, (key, t));
    }

    /// Forgets transactions at or before `horizon`, and labels known by then whose
    /// transaction never came (it would lie before the horizon too).
    fn evict(&mut self, horizon: i64) {
        while self.order.front().is_some_and(|&(t, _)| t <= horizon) {
            if let Some((t, id)) = self.order.pop_front()
                && self.index.get(&id).is_some_and(|&(_, held)| held == t)
            {
                self.index.remove(&id);
            }
        }
        if !self.pending.is_empty() {
            self.pending
                .retain(|_, versions| versions.iter().any(|&(known, _)| known > horizon));
        }
    }
}

/// The state key of a key given as an id-like value.
fn state_key(key: &EventId) -> Key<'_> {
    match key {
        EventId::Int(i) => Key::Int(*i),
        EventId::Str(s) => Key::Str(s),
    }
}

/// Per key: how many of the key's transactions fall in (t - delay - span, t - delay] and which
/// fraction of them are frauds known by time t (through label events with label time <= t).
///
/// Labels may arrive early (a replay hands over a whole batch's labels first): each is used only
/// from its label time on, so results do not depend on batch boundaries.
#[derive(Debug)]
pub struct LabelRisk {
    name: String,
    key: String,
    time: String,
    id: String,
    label: String,
    label_time: String,
    delay: i64,
    spans: Vec<i64>,
    /// (span index, emit count, emit risk)
    outputs: Vec<(usize, bool, bool)>,
    fields: Vec<FieldRef>,
    state: KeyedState<KeyHistory>,
    /// Set when labels may name their transaction only ([`LabelRisk::naming_events`]).
    by_event: Option<ByEvent>,
    watermark: Watermark,
    appender: Appender,
}

impl LabelRisk {
    /// Builds the operator from its config, the event-time and transaction-id columns and the
    /// outputs (span index, count name, risk name).
    pub fn new(cfg: &LabelRiskConfig, time: &str, id: &str, outputs: Vec<RiskOutput>) -> Self {
        let mut fields: Vec<FieldRef> = Vec::new();
        for (_, c, r) in &outputs {
            if let Some(c) = c {
                fields.push(Arc::new(Field::new(c, DataType::Int64, false)));
            }
            if let Some(r) = r {
                fields.push(Arc::new(Field::new(r, DataType::Float64, false)));
            }
        }
        let spans: Vec<i64> = cfg.spans.iter().map(|s| ns(*s)).collect();
        let delay = ns(cfg.delay);
        // How far back from an event its windows look: delay + the longest span.
        let reach = delay.saturating_add(spans.iter().copied().max().unwrap_or(0));
        Self {
            name: format!("label_risk({})", cfg.key),
            key: cfg.key.clone(),
            time: time.into(),
            id: id.into(),
            label: cfg.label.clone(),
            label_time: cfg.label_time.clone(),
            delay,
            spans,
            outputs: outputs
                .into_iter()
                .map(|(s, c, r)| (s, c.is_some(), r.is_some()))
                .collect(),
            fields,
            state: KeyedState::default(),
            by_event: None,
            watermark: Watermark::new(reach),
            appender: Appender::default(),
        }
    }
}

impl LabelRisk {
    /// This operator taking labels that name their transaction only (its id, the label and its
    /// label time, no key and no event time): each is counted for the key and at the time of
    /// the transaction it names, as a label carrying them would be; one naming a transaction
    /// not seen yet waits for it (until its label time falls behind the horizon).
    pub fn naming_events(mut self) -> Self {
        self.by_event = Some(ByEvent::default());
        self
    }

    /// Labels without the key or the event time: routed by the id of their transaction.
    fn observe_by_event(&mut self, labels: &RecordBatch, is_fraud: &[bool]) -> Result<bool> {
        let Some(by_event) = self.by_event.as_mut() else {
            return Ok(false);
        };
        let lacks = |name: &str| labels.column_by_name(name).is_none();
        if !(key_parts(&self.key).into_iter().any(lacks) || lacks(&self.time)) {
            return Ok(false);
        }
        let ids = columns::keys(labels, &self.id)?;
        let known = columns::event_times(labels, &self.label_time)?;
        for (row, &fraud) in is_fraud.iter().enumerate() {
            let id = ids.id(row);
            match by_event.index.get(&id) {
                Some((key, t)) => {
                    let labels = self
                        .state
                        .entry(state_key(key))
                        .labels
                        .entry(id)
                        .or_default();
                    labels.time = *t;
                    labels.add(known[row], fraud);
                }
                None => by_event
                    .pending
                    .entry(id)
                    .or_default()
                    .push((known[row], fraud)),
            }
        }
        Ok(true)
    }
}

impl Operator for LabelRisk {
    fn name(&self) -> &str {
        &self.name
    }

    fn output_fields(&self) -> &[FieldRef] {
        &self.fields
    }

    fn seen(&self, batch: &RecordBatch) -> Result<Option<Vec<bool>>> {
        let keys = columns::keys(batch, &self.key)?;
        let ids = columns::keys(batch, &self.id)?;
        let mut seen = vec![false; batch.num_rows()];
        self.state.for_each_present(&keys, |row, h| {
            seen[row] = h.seen.contains(&ids.id(row));
        });
        Ok(Some(seen))
    }

    fn observe_labels(&mut self, labels: &RecordBatch) -> Result<()> {
        if labels.num_rows() == 0 {
            return Ok(());
        }
        let is_fraud: Vec<bool> = match labels.column_by_name(&self.label) {
            Some(c) if c.data_type() == &DataType::Boolean => {
                if c.null_count() > 0 {
                    return Err(OperatorError::BadInput(format!(
                        "column {:?} has nulls",
                        self.label
                    )));
                }
                c.as_boolean().values().iter().collect()
            }
            _ => columns::i64_values(labels, &self.label)?
                .values()
                .iter()
                .map(|&v| v != 0)
                .collect(),
        };
        if self.observe_by_event(labels, &is_fraud)? {
            return Ok(());
        }
        let keys = columns::keys(labels, &self.key)?;
        let times = columns::event_times(labels, &self.time)?;
        let ids = columns::keys(labels, &self.id)?;
        let known = columns::event_times(labels, &self.label_time)?;
        self.state.for_each_row(&keys, |row, h| {
            let labels = h.labels.entry(ids.id(row)).or_default();
            labels.time = times[row];
            labels.add(known[row], is_fraud[row]);
        });
        Ok(())
    }

    fn process(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let keys = columns::keys(&batch, &self.key)?;
        let times = columns::event_times(&batch, &self.time)?;
        let ids = columns::keys(&batch, &self.id)?;
        let n = batch.num_rows();
        let ns = self.spans.len();
        let mut counts = vec![0i64; n * ns];
        let mut frauds = vec![0i64; n * ns];
        let (spans, delay) = (&self.spans, self.delay);
        let horizon = self.watermark.horizon();
        let mut by_event = self.by_event.as_mut();
        self.state.for_each_row(&keys, |row, h| {
            let t = times[row];
            let end = t.saturating_sub(delay);
            let hi = h.times.partition_point(|&x| x <= end);
            for (s, span) in spans.iter().enumerate() {
                let start = end.saturating_sub(*span);
                let lo = h.times.partition_point(|&x| x <= start);
                counts[row * ns + s] = (hi - lo) as i64;
                frauds[row * ns + s] = h
                    .labels
                    .iter()
                    .filter(|&(id, l)| {
                        l.time > start && l.time <= end && h.seen.contains(id) && l.fraud_at(t)
                    })
                    .count() as i64;
            }
            let id = ids.id(row);
            if let Some(by_event) = by_event.as_deref_mut() {
                // Labels that came before their transaction count from now on.
                if let Some(versions) = by_event.pending.remove(&id) {
                    let labels = h.labels.entry(id.clone()).or_default();
                    labels.time = t;
                    for (known, fraud) in versions {
                        labels.add(known, fraud);
                    }
                }
                by_event.hold(id.clone(), keys.id(row), t);
            }
            h.insert(t, id);
            h.evict(horizon);
        });
        if let Some(by_event) = by_event {
            by_event.evict(horizon);
        }
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.fields.len());
        for &(s, count, risk) in &self.outputs {
            if count {
                arrays.push(Arc::new(Int64Array::from_iter_values(
                    (0..n).map(|r| counts[r * ns + s]),
                )));
            }
            if risk {
                arrays.push(Arc::new(Float64Array::from_iter_values((0..n).map(|r| {
                    let c = counts[r * ns + s];
                    if c == 0 {
                        0.0
                    } else {
                        frauds[r * ns + s] as f64 / c as f64
                    }
                }))));
            }
        }
        self.appender.append(batch, &self.fields, arrays)
    }

    fn advance_watermark(&mut self, watermark: i64) {
        self.state.advance(&mut self.watermark, watermark);
    }

    fn keys(&self) -> usize {
        self.state.len()
    }

    /// One row per transaction held (`label_time` null) and one per label version held:
    /// key, transaction id, transaction time, label time, fraud.
    fn snapshot(&self) -> Result<Option<RecordBatch>> {
        let rows = self
            .state
            .iter()
            .map(|(_, h)| {
                h.times.len() + h.labels.values().map(|l| l.versions.len()).sum::<usize>()
            })
            .sum();
        let mut table = StateTable::with_capacity(rows);
        let (mut ids, mut times) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
        // Label time and flag, valid on label rows only.
        let (mut known, mut fraud) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
        let mut is_label = Vec::with_capacity(rows);
        for (key, h) in self.state.iter() {
            table.key_rows(key, h.times.len());
            for (t, id) in h.times.iter().zip(&h.ids) {
                ids.push(id);
                times.push(*t);
            }
            known.resize(ids.len(), 0);
            fraud.resize(ids.len(), false);
            is_label.resize(ids.len(), false);
            for (id, labels) in &h.labels {
                table.key_rows(key, labels.versions.len());
                for &(k, f) in &labels.versions {
                    ids.push(id);
                    times.push(labels.time);
                    known.push(k);
                    fraud.push(f);
                    is_label.push(true);
                }
            }
        }
        let labelled = NullBuffer::from(is_label);
        table
            .finish(
                vec![
                    id_column(&ids)?,
                    (
                        "time",
                        DataType::Int64,
                        false,
                        Arc::new(Int64Array::from(times)),
                    ),
                    (
                        "label_time",
                        DataType::Int64,
                        true,
                        Arc::new(Int64Array::new(known.into(), Some(labelled.clone()))),
                    ),
                    (
                        "fraud",
                        DataType::Boolean,
                        true,
                        Arc::new(BooleanArray::new(fraud.into(), Some(labelled))),
                    ),
                ],
                Some(&self.watermark),
            )
            .map(Some)
    }

    fn restore(&mut self, table: &RecordBatch) -> Result<()> {
        let r = StateReader::new(table)?;
        let ids = match r.column("transaction_id")?.data_type() {
            DataType::Utf8 => Keys::Str(r.string("transaction_id")?.clone()),
            _ => Keys::Int(
                r.primitive::<arrow::datatypes::Int64Type>("transaction_id")?
                    .clone(),
            ),
        };
        let times = r.primitive::<arrow::datatypes::Int64Type>("time")?;
        let known = r.primitive::<arrow::datatypes::Int64Type>("label_time")?;
        let fraud = r.column("fraud")?.as_boolean_opt().ok_or_else(|| {
            OperatorError::Checkpoint("state column \"fraud\" is not Boolean".into())
        })?;
        let mut state = KeyedState::<KeyHistory>::default();
        for row in 0..r.rows() {
            let h = state.entry(r.key(row)?);
            let (id, t) = (ids.id(row), times.value(row));
            if known.is_valid(row) {
                if !fraud.is_valid(row) {
                    return Err(OperatorError::Checkpoint(format!(
                        "label row {row} has a label time but no fraud flag"
                    )));
                }
                let labels = h.labels.entry(id).or_default();
                labels.time = t;
                labels.add(known.value(row), fraud.value(row));
            } else {
                h.insert(t, id);
            }
        }
        self.watermark = r.watermark(self.watermark.reach())?;
        // Where each transaction held is, again (labels pending at the checkpoint are not in
        // it: a label that came before its transaction, across a restart, counts nowhere).
        if self.by_event.is_some() {
            let mut held: Vec<(i64, EventId, EventId)> = Vec::new();
            for (key, h) in state.iter() {
                let key = match key {
                    Key::Int(i) => EventId::Int(i),
                    Key::Str(s) => EventId::Str(s.into()),
                };
                held.extend(
                    h.times
                        .iter()
                        .zip(&h.ids)
                        .map(|(&t, id)| (t, id.clone(), key.clone())),
                );
            }
            held.sort_by_key(|(t, _, _)| *t);
            let mut by_event = ByEvent::default();
            for (t, id, key) in held {
                by_event.hold(id, key, t);
            }
            self.by_event = Some(by_event);
        }
        self.state = state;
        Ok(())
    }
}

/// The checkpoint column of the ids held: Int64 for integer ids, Utf8 for text ids (an
/// operator's ids are of one kind: its events' declared id).
fn id_column(ids: &[&EventId]) -> Result<(&'static str, DataType, bool, ArrayRef)> {
    let ints: Option<Vec<i64>> = ids
        .iter()
        .map(|id| match id {
            EventId::Int(i) => Some(*i),
            EventId::Str(_) => None,
        })
        .collect();
    let texts = || -> Option<Vec<&str>> {
        ids.iter()
            .map(|id| match id {
                EventId::Str(s) => Some(s.as_ref()),
                EventId::Int(_) => None,
            })
            .collect()
    };
    let array: ArrayRef = match (ints, texts()) {
        (Some(ints), _) => Arc::new(Int64Array::from(ints)),
        (None, Some(texts)) => Arc::new(arrow::array::StringArray::from(texts)),
        (None, None) => {
            return Err(OperatorError::Checkpoint(
                "label risk holds integer and text ids at once".into(),
            ));
        }
    };
    Ok(("transaction_id", array.data_type().clone(), false, array))
}
