//! Scored Arrow rows to the score and alert topic payloads (JSON, see `schemas/json/`).

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float32Type, Float64Type, Int64Type, TimestampNanosecondType};
use chrono::{DateTime, SecondsFormat};
use riskpipe_schemas::{Alert, Reason, Score, score, tx};

use crate::{PipelineError, Result};

/// One message to publish: key and JSON payload.
#[derive(Debug, Clone)]
pub struct Record {
    /// Message key (the customer id, so one customer's records stay in one partition).
    pub key: String,
    /// JSON payload.
    pub payload: Vec<u8>,
}

/// RFC 3339 UTC with as many fractional digits as needed.
pub fn rfc3339(ns: i64) -> String {
    DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a arrow::array::ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| PipelineError::Bug(format!("scored batch lacks {name}")))
}

/// Rows of a scored batch whose alert flag is set.
pub fn alert_rows(scored: &RecordBatch) -> Result<Vec<usize>> {
    let alert = column(scored, score::ALERT)?.as_boolean();
    Ok((0..scored.num_rows()).filter(|&i| alert.value(i)).collect())
}

/// One score record per row, and one alert record per alerted row (with `reasons[k]` for the
/// k-th alerted row).
pub fn encode(
    scored: &RecordBatch,
    event_time: &str,
    model: &str,
    threshold: f64,
    alerts: &[usize],
    reasons: Vec<Vec<Reason>>,
) -> Result<(Vec<Record>, Vec<Record>)> {
    let id = column(scored, tx::TRANSACTION_ID)?.as_primitive::<Int64Type>();
    let customer = column(scored, tx::CUSTOMER_ID)?.as_primitive::<Int64Type>();
    let terminal = column(scored, tx::TERMINAL_ID)?.as_primitive::<Int64Type>();
    let amount = column(scored, tx::TX_AMOUNT)?.as_primitive::<Float64Type>();
    let time = column(scored, event_time)?.as_primitive::<TimestampNanosecondType>();
    let value = column(scored, score::SCORE)?.as_primitive::<Float32Type>();
    let flag = column(scored, score::ALERT)?.as_boolean();
    let json = |e: serde_json::Error| PipelineError::Bug(format!("encoding JSON: {e}"));
    let mut scores = Vec::with_capacity(scored.num_rows());
    for i in 0..scored.num_rows() {
        let s = Score {
            transaction_id: id.value(i),
            customer_id: customer.value(i),
            tx_datetime: rfc3339(time.value(i)),
            score: f64::from(value.value(i)),
            alert: flag.value(i),
            model: model.to_string(),
        };
        scores.push(Record {
            key: s.customer_id.to_string(),
            payload: serde_json::to_vec(&s).map_err(json)?,
        });
    }
    let mut out = Vec::with_capacity(alerts.len());
    for (&i, reasons) in alerts.iter().zip(reasons) {
        let a = Alert {
            transaction_id: id.value(i),
            customer_id: customer.value(i),
            terminal_id: terminal.value(i),
            tx_datetime: rfc3339(time.value(i)),
            tx_amount: amount.value(i),
            score: f64::from(value.value(i)),
            threshold,
            model: model.to_string(),
            reasons,
        };
        out.push(Record {
            key: a.customer_id.to_string(),
            payload: serde_json::to_vec(&a).map_err(json)?,
        });
    }
    Ok((scores, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_through_arrow_json_precision() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_522_540_831_000_000_000), "2018-04-01T00:00:31Z");
        assert_eq!(rfc3339(1_500), "1970-01-01T00:00:00.000001500Z");
    }
}
