//! Criterion micro-benchmarks of the streaming operators: events/s through the handbook's
//! customer windows and terminal label-risk on synthetic, time-ordered events; and each
//! aggregation kind alone, keyed by the customer, over 1 hour and over 30 days (count also over
//! a filter); and the cost of evaluating expressions per batch, beside the bare arrow kernel.

use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, TimestampNanosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use riskpipe_operators::FeatureConfig;

const EVENTS: usize = 100_000;
const BATCH: usize = 8192;

fn events() -> RecordBatch {
    events_over(EVENTS)
}

/// `n` events, ~10k a day (the handbook's density: 5k customers, 10k terminals).
fn events_over(n: usize) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("TRANSACTION_ID", DataType::Int64, false),
        Field::new(
            "TX_DATETIME",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        Field::new("CUSTOMER_ID", DataType::Int64, false),
        Field::new("TERMINAL_ID", DataType::Int64, false),
        Field::new("TX_AMOUNT", DataType::Float64, false),
    ]);
    let n = n as i64;
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Int64Array::from_iter_values(0..n)),
            Arc::new(
                TimestampNanosecondArray::from_iter_values(
                    (0..n).map(|i| i * 8_640_000_000_000 / 1000),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from_iter_values(
                (0..n).map(|i| (i * 7919) % 5000),
            )),
            Arc::new(Int64Array::from_iter_values(
                (0..n).map(|i| (i * 104_729) % 10_000),
            )),
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| (i % 997) as f64 / 7.0),
            )),
        ],
    )
    .expect("batch")
}

fn bench(c: &mut Criterion) {
    // The shipped handbook features, as defined once in config/fraud-handbook.toml.
    #[derive(serde::Deserialize)]
    struct Shipped {
        job: Job,
    }
    #[derive(serde::Deserialize)]
    struct Job {
        features: FeatureConfig,
    }
    let shipped: Shipped =
        toml::from_str(include_str!("../../config/fraud-handbook.toml")).expect("config");
    let mut cfg = shipped.job.features;
    // What the fraud job fills in from the declared labels.
    for r in &mut cfg.label_risk {
        r.label = "TX_FRAUD".into();
        r.label_time = "LABEL_TIME".into();
    }
    let input = events();
    let mut group = c.benchmark_group("handbook_features");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.sample_size(20);
    group.bench_function("stream_100k_events", |b| {
        b.iter(|| {
            let mut chain = cfg.build_chain().expect("chain");
            let mut start = 0;
            while start < EVENTS {
                let len = BATCH.min(EVENTS - start);
                std::hint::black_box(chain.process(input.slice(start, len)).expect("process"));
                start += len;
            }
        })
    });
    group.finish();
}

/// Events for the kinds: 40 days, so 30-day windows fill (~60 events per customer).
const KIND_EVENTS: usize = 400_000;

fn kinds(c: &mut Criterion) {
    let input = events_over(KIND_EVENTS);
    let mut group = c.benchmark_group("aggregation_kinds");
    group.throughput(Throughput::Elements(KIND_EVENTS as u64));
    group.sample_size(10);
    let every = riskpipe_operators::aggregate::kinds()
        .into_iter()
        .map(|k| (k.name().to_string(), k.reads_value(), ""));
    // A third of the events selected by a condition.
    let filtered = std::iter::once((
        "count_filtered".to_string(),
        false,
        "filter = \"TERMINAL_ID % 3 = 1\"\n",
    ));
    for (name, reads_value, filter) in every.chain(filtered) {
        for span in ["1h", "30d"] {
            let value = match reads_value {
                true => "value = \"TX_AMOUNT\"\n",
                false => "",
            };
            let kind = name.trim_end_matches("_filtered");
            let params = riskpipe_operators::aggregate::kind(kind)
                .map(riskpipe_operators::aggregate::example_parameters)
                .unwrap_or_default();
            // One column per value for a kind that writes several.
            let columns = if params.contains("k =") { "{i}" } else { "" };
            let mut cfg: FeatureConfig = toml::from_str(&format!(
                "[[aggregate]]\nkey = \"CUSTOMER_ID\"\nkind = \"{kind}\"\n{value}{filter}{params}spans = [\"{span}\"]\nname = \"F{columns}\"\n",
            ))
            .expect("config");
            cfg.event_time = "TX_DATETIME".into();
            cfg.order_by = "TRANSACTION_ID".into();
            group.bench_function(format!("{name}/{span}"), |b| {
                b.iter(|| {
                    let mut chain = cfg.build_chain().expect("chain");
                    let mut start = 0;
                    while start < KIND_EVENTS {
                        let len = BATCH.min(KIND_EVENTS - start);
                        // The watermark follows the events, as the job moves it.
                        chain.advance_watermark(time_of(&input, start));
                        std::hint::black_box(
                            chain.process(input.slice(start, len)).expect("process"),
                        );
                        start += len;
                    }
                })
            });
        }
    }
    group.finish();
}

/// Expressions evaluated on one batch of [`BATCH`] events, each planned once (as the operators
/// plan them once per schema); `bare ln` is the arrow kernel alone, what the `ln` expression
/// costs without DataFusion around it.
fn expressions(c: &mut Criterion) {
    use riskpipe_operators::expr::Expression;
    let input = events_over(BATCH);
    let mut group = c.benchmark_group("expressions");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, sql) in [
        (
            "arithmetic",
            "(\"TX_AMOUNT\" - 50.0) / (\"TX_AMOUNT\" + 1.0)",
        ),
        ("ln", "ln(\"TX_AMOUNT\" + 1)"),
        (
            "case",
            "CASE WHEN \"TX_AMOUNT\" > 100 THEN 1 WHEN \"TX_AMOUNT\" > 50 THEN 2 ELSE 3 END",
        ),
        (
            "hour_in_zone",
            "date_part('hour', \"TX_DATETIME\" AT TIME ZONE 'Europe/Paris')",
        ),
    ] {
        let mut e = Expression::new(sql);
        e.evaluate(&input).expect("plans");
        group.bench_function(name, |b| {
            b.iter(|| std::hint::black_box(e.evaluate(&input).expect("evaluate")))
        });
    }
    let mut filter = Expression::new("\"TERMINAL_ID\" % 3 = 1 AND \"TX_AMOUNT\" > 20");
    group.bench_function("filter", |b| {
        b.iter(|| std::hint::black_box(filter.matches(&input).expect("matches")))
    });
    group.bench_function("bare ln", |b| {
        b.iter(|| {
            use arrow::array::AsArray;
            let amounts = input
                .column(4)
                .as_primitive::<arrow::datatypes::Float64Type>();
            let out: Float64Array =
                arrow::compute::kernels::arity::unary(amounts, |x| (x + 1.0).ln());
            std::hint::black_box(out)
        })
    });
    group.finish();
}

fn time_of(batch: &RecordBatch, row: usize) -> i64 {
    use arrow::array::AsArray;
    batch
        .column(1)
        .as_primitive::<arrow::datatypes::TimestampNanosecondType>()
        .value(row)
}

criterion_group!(benches, bench, kinds, expressions);
criterion_main!(benches);
