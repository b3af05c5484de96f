//! The one validation of ticks, live and in backtests alike: a tick a price series cannot take
//! (a non-positive or non-finite price, or a time before its instrument's last tick) is
//! rejected before it touches any state.

use std::collections::HashMap;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Float64Type, TimestampNanosecondType};
use riskpipe_operators::columns;
use riskpipe_schemas::market;

use crate::Result;
use crate::encoders::rfc3339;
use crate::jobs::{Reject, RejectKind};

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
        for row in 0..ticks.num_rows() {
            let (id, t, p) = (ids.value(row), times.value(row), prices.value(row));
            let previous = last
                .get(id)
                .copied()
                .or_else(|| self.last_time.get(id).copied());
            let reason = if !(p.is_finite() && p > 0.0) {
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
}
