//! Records to JSON objects, one per payload, with arrow-json's encoders: columnar, no per-record
//! serde structs. Times are RFC 3339 in UTC (`…Z`) with 0, 3, 6 or 9 fractional digits; absent
//! optional fields are omitted, as the JSON Schemas under `schemas/json/` describe.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StructArray, TimestampNanosecondArray};
use arrow::datatypes::{DataType, Field, FieldRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::json::writer::{EncoderFactory, EncoderOptions, NullableEncoder, make_encoder};
use chrono::{Datelike, Timelike};

use super::{Encoder, Payloads};
use crate::Result;

/// The JSON encoder.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonEncoder;

impl Encoder for JsonEncoder {
    fn encode(&mut self, _topic: &str, records: &RecordBatch, out: &mut Payloads) -> Result<()> {
        let rows = StructArray::from(records.clone());
        let field = Arc::new(Field::new(
            "record",
            DataType::Struct(records.schema().fields().clone()),
            false,
        ));
        let options = EncoderOptions::default().with_encoder_factory(Arc::new(Rfc3339Factory));
        let mut encoder = make_encoder(&field, &rows as &dyn Array, &options)?;
        for i in 0..records.num_rows() {
            out.push_with(|buf| encoder.encode(i, buf));
        }
        Ok(())
    }
}

/// Every time in a payload is a nanosecond timestamp in UTC: written digit by digit, as
/// [`super::rfc3339`] writes it. arrow-json's own path formats each value through a chrono
/// format string, parsed again per value: that was the largest cost of encoding a score.
#[derive(Debug)]
struct Rfc3339Factory;

impl EncoderFactory for Rfc3339Factory {
    fn make_default_encoder<'a>(
        &self,
        _field: &'a FieldRef,
        array: &'a dyn Array,
        _options: &'a EncoderOptions,
    ) -> std::result::Result<Option<NullableEncoder<'a>>, ArrowError> {
        match array.data_type() {
            DataType::Timestamp(TimeUnit::Nanosecond, Some(_)) => {
                let times = array.as_primitive::<arrow::datatypes::TimestampNanosecondType>();
                Ok(Some(NullableEncoder::new(
                    Box::new(Rfc3339Encoder(times.clone())),
                    times.nulls().cloned(),
                )))
            }
            _ => Ok(None),
        }
    }
}

struct Rfc3339Encoder(TimestampNanosecondArray);

impl arrow::json::writer::Encoder for Rfc3339Encoder {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        out.push(b'"');
        write_rfc3339(self.0.value(idx), out);
        out.push(b'"');
    }
}

/// Appends `ns` since the epoch as RFC 3339 in UTC, with 0, 3, 6 or 9 fractional digits (as few
/// as hold it exactly).
fn write_rfc3339(ns: i64, out: &mut Vec<u8>) {
    // i64 nanoseconds span the years 1677 to 2262: four digits always.
    let t = chrono::DateTime::from_timestamp_nanos(ns);
    digits(out, t.year() as u32, 4);
    out.push(b'-');
    digits(out, t.month(), 2);
    out.push(b'-');
    digits(out, t.day(), 2);
    out.push(b'T');
    digits(out, t.hour(), 2);
    out.push(b':');
    digits(out, t.minute(), 2);
    out.push(b':');
    digits(out, t.second(), 2);
    let (fraction, width) = match t.nanosecond() {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
        n if n % 1_000 == 0 => (n / 1_000, 6),
        n => (n, 9),
    };
    if width > 0 {
        out.push(b'.');
        digits(out, fraction, width);
    }
    out.push(b'Z');
}

/// Appends the last `width` (at most 9) decimal digits of `value`, zero-padded.
fn digits(out: &mut Vec<u8>, mut value: u32, width: usize) {
    let mut buf = [b'0'; 9];
    for d in buf[..width].iter_mut().rev() {
        *d = b'0' + (value % 10) as u8;
        value /= 10;
    }
    out.extend_from_slice(&buf[..width]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoders::rfc3339;
    use arrow::array::{
        BooleanArray, Float64Array, Int64Array, ListArray, StringArray, TimestampNanosecondArray,
    };
    use arrow::buffer::OffsetBuffer;
    use riskpipe_schemas::{
        Alert, LimitBreach, RiskScore, Score, alert_schema, limit_breach_schema, reason_fields,
        risk_score_schema, score_schema,
    };

    fn times(ns: &[i64]) -> Arc<TimestampNanosecondArray> {
        Arc::new(TimestampNanosecondArray::from(ns.to_vec()).with_timezone("UTC"))
    }

    fn encode(batch: &RecordBatch) -> Vec<String> {
        let mut out = Payloads::default();
        JsonEncoder.encode("t", batch, &mut out).expect("encode");
        out.iter()
            .map(|p| String::from_utf8(p.to_vec()).expect("utf-8"))
            .collect()
    }

    fn written(ns: i64) -> String {
        let mut out = Vec::new();
        write_rfc3339(ns, &mut out);
        String::from_utf8(out).expect("utf-8")
    }

    proptest::proptest! {
        /// The digit-by-digit writer writes what chrono's RFC 3339 writer does, for instants
        /// of every precision (whole seconds, millis, micros, nanos) over the whole range.
        #[test]
        fn times_are_written_as_chrono_writes_them(
            ns in proptest::prelude::any::<i64>(),
            unit in proptest::sample::select(vec![1, 1_000, 1_000_000, 1_000_000_000]),
        ) {
            let ns = ns / unit * unit;
            proptest::prop_assert_eq!(written(ns), rfc3339(ns));
        }
    }

    #[test]
    fn times_at_the_edges_are_written_as_chrono_writes_them() {
        // i64 nanoseconds span 1677 to 2262: always four-digit years.
        for ns in [
            0,
            -1,
            1,
            i64::MIN,
            i64::MAX,
            1_500,
            999_999_999,
            -999_999_999,
        ] {
            assert_eq!(written(ns), rfc3339(ns), "{ns}");
        }
    }

    #[test]
    fn rfc3339_round_trips_through_arrow_json_precision() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_522_540_831_000_000_000), "2018-04-01T00:00:31Z");
        assert_eq!(rfc3339(1_500), "1970-01-01T00:00:00.000001500Z");
    }

    /// Every output schema encodes to payloads the serde types (strict: unknown fields refused)
    /// read back with the same values, times as `rfc3339` writes them.
    #[test]
    fn records_encode_to_the_published_payloads() {
        let t = [1_522_540_831_000_000_000, 1_522_540_831_250_000_000, 1_500];
        let scores = RecordBatch::try_new(
            score_schema(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(Int64Array::from(vec![596, 7, 8])),
                times(&t),
                Arc::new(Float64Array::from(vec![0.125, 0.9, 1e-7])),
                Arc::new(BooleanArray::from(vec![false, true, false])),
                Arc::new(StringArray::from(vec!["m"; 3])),
            ],
        )
        .expect("scores");
        let payloads = encode(&scores);
        assert_eq!(payloads.len(), 3);
        let got: Vec<Score> = payloads
            .iter()
            .map(|p| serde_json::from_str(p).expect(p))
            .collect();
        assert_eq!(
            got[1],
            Score {
                transaction_id: 2,
                customer_id: 7,
                tx_datetime: rfc3339(t[1]),
                score: 0.9,
                alert: true,
                model: "m".into(),
            }
        );
        assert_eq!(got[2].tx_datetime, rfc3339(t[2]));
        assert_eq!(got[2].score, 1e-7);

        let reasons = arrow::array::StructArray::try_new(
            reason_fields(),
            vec![
                Arc::new(StringArray::from(vec!["A", "B"])),
                Arc::new(Float64Array::from(vec![1.5, 2.0])),
                Arc::new(Float64Array::from(vec![0.25, 0.125])),
            ],
            None,
        )
        .expect("reasons");
        let lists = ListArray::try_new(
            Arc::new(Field::new_struct("item", reason_fields(), false)),
            OffsetBuffer::from_lengths([2, 0]),
            Arc::new(reasons),
            None,
        )
        .expect("lists");
        let alerts = RecordBatch::try_new(
            alert_schema(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(Int64Array::from(vec![596, 7])),
                Arc::new(Int64Array::from(vec![3156, 9])),
                times(&t[..2]),
                Arc::new(Float64Array::from(vec![57.16, 3.0])),
                Arc::new(Float64Array::from(vec![0.93, 0.5])),
                Arc::new(Float64Array::from(vec![0.35, 0.35])),
                Arc::new(StringArray::from(vec!["m"; 2])),
                Arc::new(lists),
            ],
        )
        .expect("alerts");
        let got: Vec<Alert> = encode(&alerts)
            .iter()
            .map(|p| serde_json::from_str(p).expect(p))
            .collect();
        assert_eq!(got[0].reasons.len(), 2);
        assert_eq!(got[0].reasons[1].feature, "B");
        assert_eq!(got[0].reasons[1].contribution, 0.125);
        assert!(got[1].reasons.is_empty());
        assert_eq!(got[0].tx_amount, 57.16);

        let risk = RecordBatch::try_new(
            risk_score_schema(),
            vec![
                Arc::new(StringArray::from(vec![Some("^IXIC"), None])),
                Arc::new(StringArray::from(vec![None, Some("book")])),
                times(&t[..2]),
                Arc::new(Float64Array::from(vec![0.031, 125_000.0])),
                Arc::new(Float64Array::from(vec![0.99, 0.99])),
                Arc::new(Float64Array::from(vec![0.013, 0.02])),
                Arc::new(StringArray::from(vec!["v"; 2])),
            ],
        )
        .expect("risk");
        let got: Vec<RiskScore> = encode(&risk)
            .iter()
            .map(|p| serde_json::from_str(p).expect(p))
            .collect();
        assert_eq!(got[0].instrument.as_deref(), Some("^IXIC"));
        assert_eq!(got[0].portfolio, None);
        assert_eq!(got[1].portfolio.as_deref(), Some("book"));
        assert_eq!(got[1].var, 125_000.0);

        let breach = RecordBatch::try_new(
            limit_breach_schema(),
            vec![
                Arc::new(StringArray::from(vec!["book"])),
                times(&t[..1]),
                Arc::new(Float64Array::from(vec![125_000.0])),
                Arc::new(Float64Array::from(vec![100_000.0])),
                Arc::new(Float64Array::from(vec![0.99])),
                Arc::new(StringArray::from(vec!["v"])),
            ],
        )
        .expect("breach");
        let got: LimitBreach = serde_json::from_str(&encode(&breach)[0]).expect("breach");
        assert_eq!((got.var, got.limit), (125_000.0, 100_000.0));
    }
}
