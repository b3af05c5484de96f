//! Memory of the fraud job's keyed feature state: bytes per key and resident memory with 1M
//! distinct customers (and 100k terminals) in the windows, then after the watermark has passed
//! every window. Drives the shipped handbook job's feature stage, as the driver does.
//!
//! `cargo bench --bench state` (release). RISKPIPE_BENCH_KEYS sets the customers (default 1M).

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, TimestampNanosecondArray};
use riskpipe_pipeline::PipelineConfig;
use riskpipe_pipeline::jobs::{JobInput, fraud};

const DAY: i64 = 86_400_000_000_000;
/// 2018-04-01T00:00:00Z
const START: i64 = 1_522_540_800_000_000_000;

/// Resident memory in bytes (Linux `/proc/self/statm`, 4 KiB pages).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Transactions `ids`: one per customer `id`, terminal `id % 100_000`, spread over `span` from
/// `from`, in time order.
fn transactions(ids: std::ops::Range<i64>, from: i64, span: i64) -> RecordBatch {
    let n = (ids.end - ids.start).max(1);
    let times = ids
        .clone()
        .map(|i| from + (i - ids.start) * (span / n))
        .collect::<Vec<_>>();
    RecordBatch::try_new(
        riskpipe_schemas::transaction_schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(ids.clone())),
            Arc::new(TimestampNanosecondArray::from(times).with_timezone("UTC")),
            Arc::new(Int64Array::from_iter_values(ids.clone())),
            Arc::new(Int64Array::from_iter_values(
                ids.clone().map(|i| i % 100_000),
            )),
            Arc::new(Float64Array::from_iter_values(
                ids.map(|i| 10.0 + (i % 97) as f64),
            )),
        ],
    )
    .expect("batch")
}

fn main() {
    let keys: i64 = std::env::var("RISKPIPE_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let cfg = PipelineConfig::handbook().expect("config");
    let mut stage = fraud::feature_stage(cfg.fraud().expect("fraud job")).expect("stage");
    let mut run = |batch: RecordBatch| {
        let rows = batch.num_rows();
        let out = stage
            .process(JobInput {
                side: None,
                events: batch,
                partitions: None,
            })
            .expect("features");
        assert_eq!(out.batch.num_rows(), rows, "nothing refused");
    };
    let before = rss();
    // Every customer once within one day: all of them inside the windows.
    let step = 8192;
    for from in (0..keys).step_by(step) {
        let to = (from + step as i64).min(keys);
        run(transactions(
            from..to,
            START + from * (DAY / keys),
            (to - from) * (DAY / keys),
        ));
    }
    let loaded = rss();
    let per_key = loaded.saturating_sub(before) as f64 / keys as f64;
    println!(
        "{keys} customers + {} terminals in the windows: RSS {:.0} MiB (+{:.0} MiB), {per_key:.0} bytes per customer (with its transaction and terminal share)",
        keys.min(100_000),
        loaded as f64 / 1048576.0,
        loaded.saturating_sub(before) as f64 / 1048576.0,
    );
    // 60 days later, a trickle of new customers: the watermark passes every window (30 days,
    // and the terminal risk's 7-day delay + 30 days) and the old keys are dropped.
    for day in 0..60 {
        let from = keys + day * 100;
        run(transactions(from..from + 100, START + (day + 1) * DAY, DAY));
    }
    let after = rss();
    println!(
        "after the watermark passed every window: RSS {:.0} MiB ({:.0} MiB freed)",
        after as f64 / 1048576.0,
        loaded.saturating_sub(after) as f64 / 1048576.0
    );
}
