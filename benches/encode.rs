//! Encode speed of score payloads: riskpipe's JSON encoder against arrow-json's own timestamp
//! path (a chrono format string per value, which riskpipe used before) on the same score rows,
//! in the pipeline's batch size, in one run. Prints rows/s of each and their ratio (median of
//! 5 passes each).
//!
//! `cargo bench --bench encode`; RISKPIPE_ENCODE_ROWS (default 200000) sizes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    Array, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, StructArray,
    TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Field};
use arrow::json::writer::{EncoderOptions, make_encoder};
use riskpipe_pipeline::encoders::{Encoder, JsonEncoder, Payloads};

fn median(mut d: Vec<Duration>) -> Duration {
    d.sort();
    d[d.len() / 2]
}

/// Median time of 5 passes of `encode` over `batches`.
fn time(batches: &[RecordBatch], mut encode: impl FnMut(&RecordBatch, &mut Payloads)) -> Duration {
    let mut out = Payloads::default();
    median(
        (0..5)
            .map(|_| {
                let started = Instant::now();
                for b in batches {
                    out.clear();
                    encode(b, &mut out);
                    std::hint::black_box(out.len());
                }
                started.elapsed()
            })
            .collect(),
    )
}

/// Score rows as the fraud job publishes them: times at whole seconds, as the handbook's.
fn scores(rows: usize, from: usize) -> RecordBatch {
    let ids: Vec<i64> = (from..from + rows).map(|i| i as i64).collect();
    RecordBatch::try_new(
        riskpipe_schemas::score_schema(),
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(Int64Array::from_iter_values(ids.iter().map(|i| i % 5_000))),
            Arc::new(
                TimestampNanosecondArray::from_iter_values(
                    ids.iter()
                        .map(|i| 1_522_540_800_000_000_000 + i * 9_000_000_000),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from_iter_values(
                ids.iter()
                    .map(|i| (*i as f64 * 0.618_033_988_7).fract() * 0.01),
            )),
            Arc::new(BooleanArray::from_iter(
                ids.iter().map(|i| Some(i % 97 == 0)),
            )),
            Arc::new(StringArray::from(vec![
                "fraud_blend.onnx@35f34cff85ed";
                rows
            ])),
        ],
    )
    .expect("scores")
}

fn main() {
    let rows = std::env::var("RISKPIPE_ENCODE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000usize);
    let batch = 1024;
    let batches: Vec<RecordBatch> = (0..rows)
        .step_by(batch)
        .map(|from| scores(batch.min(rows - from), from))
        .collect();

    let riskpipe = time(&batches, |b, out| {
        JsonEncoder.encode("scores", b, out).expect("encode")
    });
    let arrow_json = time(&batches, |b, out| {
        let rows = StructArray::from(b.clone());
        let field = Arc::new(Field::new(
            "record",
            DataType::Struct(b.schema().fields().clone()),
            false,
        ));
        let options =
            EncoderOptions::default().with_timestamp_tz_format("%Y-%m-%dT%H:%M:%S%.fZ".into());
        let mut encoder = make_encoder(&field, &rows as &dyn Array, &options).expect("encoder");
        for i in 0..b.num_rows() {
            out.push_with(|buf| encoder.encode(i, buf));
        }
    });
    // The same bytes, or the comparison means nothing.
    let (mut a, mut b) = (Payloads::default(), Payloads::default());
    JsonEncoder
        .encode("scores", &batches[0], &mut a)
        .expect("encode");
    {
        let rows = StructArray::from(batches[0].clone());
        let field = Arc::new(Field::new(
            "record",
            DataType::Struct(batches[0].schema().fields().clone()),
            false,
        ));
        let options =
            EncoderOptions::default().with_timestamp_tz_format("%Y-%m-%dT%H:%M:%S%.fZ".into());
        let mut encoder = make_encoder(&field, &rows as &dyn Array, &options).expect("encoder");
        for i in 0..batches[0].num_rows() {
            b.push_with(|buf| encoder.encode(i, buf));
        }
    }
    assert!(
        a.iter().eq(b.iter()),
        "the two encoders wrote different bytes"
    );

    let rate = |d: Duration| rows as f64 / d.as_secs_f64();
    println!("score encoding ({rows} rows in batches of {batch}, median of 5 passes)");
    println!(
        "  riskpipe JSON encoder              {:>10.0} rows/s",
        rate(riskpipe)
    );
    println!(
        "  arrow-json, chrono format string   {:>10.0} rows/s",
        rate(arrow_json)
    );
    println!(
        "  riskpipe / arrow-json              {:>10.2}",
        rate(riskpipe) / rate(arrow_json)
    );
}
