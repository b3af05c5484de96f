//! Calendar flags of the event time (UTC).

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, FieldRef};

use crate::columns;
use crate::{Appender, Operator, Result};

const DAY_NS: i64 = 86_400 * 1_000_000_000;
const HOUR_NS: i64 = 3_600 * 1_000_000_000;

/// Weekday of a UTC instant, 0 = Sunday … 6 = Saturday (1970-01-01 was a Thursday).
pub(crate) fn weekday(t_ns: i64) -> i64 {
    (t_ns.div_euclid(DAY_NS) + 4).rem_euclid(7)
}

/// Hour of day (0–23) of a UTC instant.
pub(crate) fn hour(t_ns: i64) -> i64 {
    t_ns.rem_euclid(DAY_NS) / HOUR_NS
}

/// Appends 1/0 flags: weekend (Saturday, Sunday) and night (hour <= `night_last_hour`).
#[derive(Debug)]
pub struct CalendarFlags {
    time: String,
    weekend: bool,
    night: bool,
    night_last_hour: i64,
    fields: Vec<FieldRef>,
    appender: Appender,
}

impl CalendarFlags {
    /// Flags named `weekend` / `night` (either may be absent).
    pub fn new(
        time: &str,
        weekend: Option<String>,
        night: Option<String>,
        night_last_hour: u32,
    ) -> Self {
        let fields = weekend
            .iter()
            .chain(night.iter())
            .map(|n| Arc::new(Field::new(n, DataType::Int64, false)))
            .collect();
        Self {
            time: time.into(),
            weekend: weekend.is_some(),
            night: night.is_some(),
            night_last_hour: i64::from(night_last_hour),
            fields,
            appender: Appender::default(),
        }
    }
}

impl Operator for CalendarFlags {
    fn name(&self) -> &str {
        "calendar"
    }

    fn output_fields(&self) -> &[FieldRef] {
        &self.fields
    }

    fn process(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let times = columns::event_times(&batch, &self.time)?;
        let mut arrays: Vec<ArrayRef> = Vec::new();
        if self.weekend {
            let w = times
                .iter()
                .map(|&t| i64::from(matches!(weekday(t), 0 | 6)));
            arrays.push(Arc::new(Int64Array::from_iter_values(w)));
        }
        if self.night {
            let last = self.night_last_hour;
            let n = times.iter().map(|&t| i64::from(hour(t) <= last));
            arrays.push(Arc::new(Int64Array::from_iter_values(n)));
        }
        self.appender.append(batch, &self.fields, arrays)
    }
}
