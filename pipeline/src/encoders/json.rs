//! Records to JSON objects, one per payload, with arrow-json's encoders: columnar, no per-record
//! serde structs. Times are RFC 3339 in UTC (`…Z`) with 0, 3, 6 or 9 fractional digits; absent
//! optional fields are omitted, as the JSON Schemas under `schemas/json/` describe.

use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StructArray};
use arrow::datatypes::{DataType, Field};
use arrow::json::writer::{EncoderOptions, make_encoder};

use super::{Encoder, Payloads};
use crate::Result;

/// chrono's `%.f` prints no fraction for whole seconds, else 3, 6 or 9 digits: the same as
/// [`super::rfc3339`].
const UTC_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.fZ";

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
        let options = EncoderOptions::default().with_timestamp_tz_format(UTC_FORMAT.into());
        let mut encoder = make_encoder(&field, &rows as &dyn Array, &options)?;
        for i in 0..records.num_rows() {
            out.push_with(|buf| encoder.encode(i, buf));
        }
        Ok(())
    }
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
