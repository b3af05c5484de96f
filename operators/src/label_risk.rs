//! Keyed fraud rate from delayed labels.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, FieldRef};

use crate::columns::{self, KeyedState};
use crate::config::{LabelRiskConfig, RiskOutput, ns};
use crate::{Appender, Operator, OperatorError, Result};

#[derive(Debug, Default)]
struct KeyHistory {
    /// Event times of the key's transactions, sorted.
    times: VecDeque<i64>,
    /// Frauds as (transaction time, time the label became known).
    frauds: Vec<(i64, i64)>,
    latest: i64,
}

impl KeyHistory {
    fn insert(&mut self, t: i64) {
        if self.times.back().is_none_or(|&last| last <= t) {
            self.times.push_back(t);
        } else {
            let pos = self.times.partition_point(|&x| x <= t);
            self.times.insert(pos, t);
        }
        self.latest = self.latest.max(t);
    }

    fn evict(&mut self, horizon_span: i64) {
        let horizon = self.latest.saturating_sub(horizon_span);
        while self.times.front().is_some_and(|&t| t <= horizon) {
            self.times.pop_front();
        }
        self.frauds.retain(|&(t, _)| t > horizon);
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
    label: String,
    label_time: String,
    delay: i64,
    spans: Vec<i64>,
    horizon: i64,
    /// (span index, emit count, emit risk)
    outputs: Vec<(usize, bool, bool)>,
    fields: Vec<FieldRef>,
    state: KeyedState<KeyHistory>,
    appender: Appender,
}

impl LabelRisk {
    /// Builds the operator from its config and the outputs (span index, count name, risk name).
    pub fn new(cfg: &LabelRiskConfig, time: &str, outputs: Vec<RiskOutput>) -> Self {
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
        Self {
            name: format!("label_risk({})", cfg.key),
            key: cfg.key.clone(),
            time: time.into(),
            label: cfg.label.clone(),
            label_time: cfg.label_time.clone(),
            delay,
            horizon: delay.saturating_add(spans.iter().copied().max().unwrap_or(0)),
            spans,
            outputs: outputs
                .into_iter()
                .map(|(s, c, r)| (s, c.is_some(), r.is_some()))
                .collect(),
            fields,
            state: KeyedState::default(),
            appender: Appender::default(),
        }
    }
}

impl Operator for LabelRisk {
    fn name(&self) -> &str {
        &self.name
    }

    fn output_fields(&self) -> &[FieldRef] {
        &self.fields
    }

    fn observe_labels(&mut self, labels: &RecordBatch) -> Result<()> {
        if labels.num_rows() == 0 {
            return Ok(());
        }
        let keys = columns::keys(labels, &self.key)?;
        let times = columns::event_times(labels, &self.time)?;
        let known = columns::event_times(labels, &self.label_time)?;
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
        self.state.for_each_row(&keys, |row, h| {
            if is_fraud[row] {
                h.frauds.push((times[row], known[row]));
            }
        });
        Ok(())
    }

    fn process(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let keys = columns::keys(&batch, &self.key)?;
        let times = columns::event_times(&batch, &self.time)?;
        let n = batch.num_rows();
        let ns = self.spans.len();
        let mut counts = vec![0i64; n * ns];
        let mut frauds = vec![0i64; n * ns];
        let (spans, delay, horizon) = (&self.spans, self.delay, self.horizon);
        self.state.for_each_row(&keys, |row, h| {
            let t = times[row];
            let end = t.saturating_sub(delay);
            let hi = h.times.partition_point(|&x| x <= end);
            for (s, span) in spans.iter().enumerate() {
                let start = end.saturating_sub(*span);
                let lo = h.times.partition_point(|&x| x <= start);
                counts[row * ns + s] = (hi - lo) as i64;
                frauds[row * ns + s] = h
                    .frauds
                    .iter()
                    .filter(|&&(ft, known)| ft > start && ft <= end && known <= t)
                    .count() as i64;
            }
            h.insert(t);
            h.evict(horizon);
        });
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
}
