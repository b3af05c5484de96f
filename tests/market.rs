//! The market-risk building blocks on real data: the RiskMetrics baseline (EWMA λ = 0.94,
//! normal 99% VaR) over the daily NASDAQ Composite, through the keyed series operator and the
//! VaR backtest statistics. Issue text: RiskMetrics gives about 1.8% exceedances here and green
//! in about half of the 250-day windows.

use std::io::Read;
use std::sync::Arc;

use arrow::array::{AsArray, Float64Array, RecordBatch, StringArray, TimestampNanosecondArray};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, TimeUnit};
use riskpipe_operators::{Operator, SeriesFeatures, SeriesOperator};
use riskpipe_pipeline::var::var_stats;

/// (days since epoch, adjusted close) in file order.
fn nasdaq() -> Vec<(i64, f64)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/market/nasdaq_daily_1999_2018.csv.gz");
    let file = std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("{} is needed beside the checkout: {e}", path.display()));
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .expect("gzip CSV");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let date = header
        .iter()
        .position(|h| *h == "Date")
        .expect("Date column");
    let adj = header
        .iter()
        .position(|h| *h == "Adj Close")
        .expect("Adj Close column");
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let mdy: Vec<i64> = f[date]
                .split('/')
                .map(|x| x.parse().expect("date"))
                .collect();
            let day = chrono::NaiveDate::from_ymd_opt(mdy[2] as i32, mdy[0] as u32, mdy[1] as u32)
                .expect("valid date")
                .signed_duration_since(chrono::NaiveDate::default())
                .num_days();
            (day, f[adj].parse().expect("price"))
        })
        .collect()
}

#[test]
fn riskmetrics_baseline_on_nasdaq_matches_the_known_figures() {
    let rows = nasdaq();
    assert_eq!(rows.len(), 5031);
    let schema = Arc::new(Schema::new(vec![
        Field::new("INSTRUMENT", DataType::Utf8, false),
        Field::new(
            "TIME",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        Field::new("PRICE", DataType::Float64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["^IXIC"; rows.len()])),
            Arc::new(
                TimestampNanosecondArray::from(
                    rows.iter()
                        .map(|r| r.0 * 86_400_000_000_000)
                        .collect::<Vec<_>>(),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
        ],
    )
    .expect("batch");
    let spec = SeriesFeatures {
        log_return: Some("R".into()),
        ewma_variance: Some(("EWMA_VAR".into(), 0.94)),
        ..SeriesFeatures::default()
    };
    let mut op = SeriesOperator::new("INSTRUMENT", "TIME", "PRICE", spec).expect("operator");
    let out = op.process(batch).expect("features");
    let r: Vec<Option<f64>> = out
        .column_by_name("R")
        .expect("R")
        .as_primitive::<Float64Type>()
        .iter()
        .collect();
    let var: Vec<Option<f64>> = out
        .column_by_name("EWMA_VAR")
        .expect("EWMA_VAR")
        .as_primitive::<Float64Type>()
        .iter()
        .collect();
    // VaR for day t+1 from data up to day t only: z_0.99 · σ_t; exceedance when the loss
    // −r_{t+1} is larger. The first 250 days are warm-up.
    let z = 2.326_347_874_040_841;
    let hits: Vec<bool> = (250..rows.len() - 1)
        .map(|t| {
            let forecast = z * var[t].expect("variance after warm-up").sqrt();
            -r[t + 1].expect("return") > forecast
        })
        .collect();
    let s = var_stats(&hits, 0.99);
    eprintln!("RiskMetrics on NASDAQ 1999-2018: {s:?}");
    assert_eq!(s.observations, 4780);
    assert!((0.015..=0.021).contains(&s.rate), "rate {}", s.rate);
    assert!(
        s.kupiec_p < 0.05,
        "RiskMetrics should fail Kupiec here: {}",
        s.kupiec_p
    );
    assert!(
        (0.3..=0.7).contains(&s.green_share),
        "green {}",
        s.green_share
    );
}
