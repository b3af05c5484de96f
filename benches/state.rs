//! Memory of the fraud job's keyed feature state: bytes per key and resident memory with 1M
//! distinct customers (and 100k terminals) in the windows; after the watermark has passed every
//! window; and with 1M new customers after that (memory freed is reused, not grown). Drives the
//! shipped handbook job's feature stage, as the driver does.
//!
//! Then each aggregation kind alone (keyed by the customer over 30 days, 1M customers with one
//! transaction each), each in a process of its own so that one's freed memory does not hide the
//! next one's.
//!
//! `cargo bench --bench state` (release). RISKPIPE_BENCH_KEYS sets the customers (default 1M).

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, TimestampNanosecondArray};
use riskpipe_pipeline::PipelineConfig;
use riskpipe_pipeline::jobs::{FeatureStage, JobInput, fraud};

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

/// Set in the child process measuring one aggregation kind.
const KIND_ENV: &str = "RISKPIPE_BENCH_KIND";

fn main() {
    let keys: i64 = std::env::var("RISKPIPE_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    if let Ok(kind) = std::env::var(KIND_ENV) {
        return one_kind(&kind, keys);
    }
    handbook(keys);
    for kind in riskpipe_operators::aggregate::kinds() {
        let status = std::process::Command::new(std::env::current_exe().expect("this bench"))
            .env(KIND_ENV, kind.name())
            .status()
            .expect("a process per kind");
        assert!(status.success(), "{}", kind.name());
    }
}

/// One aggregation kind alone over 30 days, `keys` customers with one transaction each: the
/// bytes per key its state holds.
fn one_kind(kind: &str, keys: i64) {
    let registered = riskpipe_operators::aggregate::kind(kind).expect("a registered kind");
    let params = riskpipe_operators::aggregate::example_parameters(registered);
    // One column per value for a kind that writes several.
    let columns = if params.contains("k =") { "{i}" } else { "" };
    let features: riskpipe_operators::FeatureConfig = toml::from_str(&format!(
        "event_time = \"TX_DATETIME\"\norder_by = \"TRANSACTION_ID\"\n[[aggregate]]\nkey = \"CUSTOMER_ID\"\nkind = \"{kind}\"\n{}{params}spans = [\"30d\"]\nname = \"F{columns}\"\n",
        if registered.reads_value() { "value = \"TX_AMOUNT\"\n" } else { "" }
    ))
    .expect("config");
    let mut chain = features.build_chain().expect("chain");
    let before = rss();
    for from in (0..keys).step_by(8192) {
        let to = (from + 8192).min(keys);
        let batch = transactions(
            from..to,
            START + from * (DAY / keys),
            (to - from) * (DAY / keys),
        );
        std::hint::black_box(chain.process(batch).expect("features"));
    }
    let loaded = rss();
    println!(
        "{kind}: {} keys held over 30 days, {:.0} bytes per key",
        chain.keys(),
        loaded.saturating_sub(before) as f64 / keys as f64,
    );
}

/// The shipped handbook job's feature stage.
fn handbook(keys: i64) {
    let cfg = PipelineConfig::handbook().expect("config");
    let mut stage = fraud::feature_stage(
        riskpipe_pipeline::jobs::fraud::FraudConfig::of(&cfg).expect("fraud job"),
    )
    .expect("stage");
    let mib = |bytes: u64| bytes as f64 / 1_048_576.0;
    let before = rss();
    wave(stage.as_mut(), 0..keys, 0);
    let loaded = rss();
    let keys_loaded = stage.state_keys().expect("the fraud job counts its keys");
    println!(
        "{keys} customers, 1 transaction each, in the windows: {keys_loaded} keys held (customers + terminals, per operator), RSS {:.0} MiB (+{:.0} MiB), {:.0} bytes per customer",
        mib(loaded),
        mib(loaded.saturating_sub(before)),
        loaded.saturating_sub(before) as f64 / keys as f64,
    );
    // Then 60 days with 100 new customers a day: the watermark passes every window (30 days;
    // the terminal risk's 7-day delay + 30 days) and the old keys are dropped.
    for day in 1..=60 {
        let from = keys + day * 100;
        wave(stage.as_mut(), from..from + 100, day);
    }
    let after = rss();
    println!(
        "60 days on: {} keys held, RSS {:.0} MiB ({:.0} MiB given back to the OS)",
        stage.state_keys().unwrap_or_default(),
        mib(after),
        mib(loaded.saturating_sub(after)),
    );
    // 1M new customers: the memory freed is reused.
    wave(stage.as_mut(), 2 * keys..3 * keys, 61);
    let again = rss();
    println!(
        "{keys} new customers: {} keys held, RSS {:.0} MiB (+{:.0} MiB over the first load's peak)",
        stage.state_keys().unwrap_or_default(),
        mib(again),
        mib(again.saturating_sub(loaded)),
    );
}

/// Every customer of `ids` once within day `day` (days after 2018-04-01), through the stage.
fn wave(stage: &mut dyn FeatureStage, ids: std::ops::Range<i64>, day: i64) {
    let n = ids.end - ids.start;
    for from in (ids.start..ids.end).step_by(8192) {
        let to = (from + 8192).min(ids.end);
        let batch = transactions(
            from..to,
            START + day * DAY + (from - ids.start) * (DAY / n),
            (to - from) * (DAY / n),
        );
        let rows = batch.num_rows();
        let out = stage
            .process(JobInput {
                side: None,
                events: batch,
                partitions: None,
            })
            .expect("features");
        assert_eq!(out.batch.num_rows(), rows, "nothing refused");
    }
}
