//! The one validation of ticks, live and in backtests alike: a tick a price series cannot take
//! (a non-positive or non-finite price, or a time before its instrument's last tick) is
//! rejected before it touches any state.

use std::collections::HashMap;

use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, TimestampNanosecondType};
use riskpipe_operators::columns;
use riskpipe_schemas::market;

use crate::encoders::rfc3339;
use crate::jobs::{Reject, RejectKind};
use crate::{PipelineError, Result};

/// Each instrument's last accepted tick time.
#[derive(Debug, Default)]
pub(crate) struct TickCheck {
    last_time: HashMap<String, i64>,
}

impl TickCheck {
    /// Splits `ticks` (tick schema) into the ticks a series can take, in order, and the
    /// rejected rows with their reasons.
    pub(crate) fn split(&self, ticks: &RecordBatch) -> Result<(RecordBatch, Vec<Reject>)> {
        let ids = columns::string(ticks, market::INSTRUMENT)?;
        let times = columns::primitive::<TimestampNanosecondType>(ticks, market::TIME)?;
        let prices = columns::primitive::<Float64Type>(ticks, market::PRICE)?;
        let mut last: HashMap<&str, i64> = HashMap::new();
        let mut keep = Vec::with_capacity(ticks.num_rows());
        let mut rejects = Vec::new();
        let out_of_range = crate::jobs::value_range::OutOfRange::of(ticks);
        for row in 0..ticks.num_rows() {
            let (id, t, p) = (ids.value(row), times.value(row), prices.value(row));
            let previous = last
                .get(id)
                .copied()
                .or_else(|| self.last_time.get(id).copied());
            let reason = if let Some(reason) = out_of_range.reason(row) {
                Some(reason.to_string())
            } else if p <= 0.0 {
                Some(format!("{}: price {p} is not positive", market::PRICE))
            } else {
                previous.filter(|&prev| t < prev).map(|prev| {
                    format!(
                        "tick at {} is older than its instrument's last tick at {}",
                        rfc3339(t),
                        rfc3339(prev)
                    )
                })
            };
            keep.push(reason.is_none());
            match reason {
                Some(reason) => rejects.push(Reject {
                    row,
                    kind: RejectKind::Invalid,
                    reason,
                }),
                None => {
                    last.insert(id, t);
                }
            }
        }
        Ok((
            filter_record_batch(ticks, &BooleanArray::from(keep))?,
            rejects,
        ))
    }

    /// Records the last time of every instrument in `accepted`.
    pub(crate) fn observe(&mut self, accepted: &RecordBatch) -> Result<()> {
        let ids = columns::string(accepted, market::INSTRUMENT)?;
        let times = columns::primitive::<TimestampNanosecondType>(accepted, market::TIME)?;
        for row in 0..accepted.num_rows() {
            // An instrument's id is allocated once, not per tick.
            match self.last_time.get_mut(ids.value(row)) {
                Some(t) => *t = times.value(row),
                None => {
                    self.last_time
                        .insert(ids.value(row).to_string(), times.value(row));
                }
            }
        }
        Ok(())
    }

    /// Each instrument's last accepted tick time: `instrument`, `last_time` (ns).
    pub(crate) fn snapshot(&self) -> Result<RecordBatch> {
        let mut entries: Vec<(&String, &i64)> = self.last_time.iter().collect();
        entries.sort();
        let schema = Schema::new(vec![
            Field::new("instrument", DataType::Utf8, false),
            Field::new("last_time", DataType::Int64, false),
        ]);
        Ok(RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from_iter_values(entries.iter().map(|e| e.0))),
                Arc::new(Int64Array::from_iter_values(entries.iter().map(|e| *e.1))),
            ],
        )?)
    }

    /// Replaces the last times with a [`TickCheck::snapshot`] table's.
    pub(crate) fn restore(&mut self, table: &RecordBatch) -> Result<()> {
        let unfit = |what: &str| PipelineError::Checkpoint {
            id: 0,
            reason: format!("tick table: {what}"),
        };
        let ids = table
            .column_by_name("instrument")
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| unfit("no Utf8 column instrument"))?;
        let times = table
            .column_by_name("last_time")
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| unfit("no Int64 column last_time"))?;
        if ids.null_count() + times.null_count() > 0 {
            return Err(unfit("nulls"));
        }
        self.last_time = (0..table.num_rows())
            .map(|row| (ids.value(row).to_string(), times.value(row)))
            .collect();
        Ok(())
    }
}
