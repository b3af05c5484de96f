//! The aggregation registry: a kind defined and registered only here (the range, max − min)
//! is known to config validation, computes per key, round-trips a checkpoint and has its batch
//! twin checked, with nothing else added anywhere.

use std::sync::Arc;

use arrow::array::{AsArray, Float64Array, Int64Array, RecordBatch, TimestampNanosecondArray};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, TimeUnit};
use riskpipe_operators::FeatureConfig;
use riskpipe_operators::aggregate::{Doc, Kind, Twin, Window};

/// max − min of the window; 0 when it is empty.
struct Range;

impl Kind for Range {
    fn name(&self) -> &'static str {
        "range"
    }

    fn value(&self, window: &Window<'_>) -> f64 {
        let max = window.latest_first().reduce(f64::max);
        let min = window.latest_first().reduce(f64::min);
        max.zip(min).map_or(0.0, |(hi, lo)| hi - lo)
    }

    fn twin(&self, twin: &Twin) -> String {
        let (max_a, max_b) = twin.parts("MAX");
        let (min_a, min_b) = twin.parts("MIN");
        format!("COALESCE(GREATEST({max_a}, {max_b}) - LEAST({min_a}, {min_b}), 0.0)")
    }

    fn doc(&self) -> Doc {
        Doc {
            definition: "max − min",
            empty: "0",
            example: "",
        }
    }
}

riskpipe_operators::register_kind!(Range);

const S: i64 = 1_000_000_000;

const CONFIG: &str = r#"
event_time = "TIME"
order_by = "ID"

[[aggregate]]
key = "CARD"
kind = "range"
value = "AMOUNT"
spans = ["90s", "1h"]
name = "RANGE_{span}"
"#;

fn config() -> FeatureConfig {
    toml::from_str(CONFIG).expect("config")
}

/// Events as (id, seconds, card, amount), ordered by (time, id).
fn events(rows: &[(i64, i64, i64, f64)]) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("ID", DataType::Int64, false),
        Field::new(
            "TIME",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            false,
        ),
        Field::new("CARD", DataType::Int64, false),
        Field::new("AMOUNT", DataType::Float64, false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(
                TimestampNanosecondArray::from_iter_values(rows.iter().map(|r| r.1 * S))
                    .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.3))),
        ],
    )
    .expect("events")
}

fn history() -> RecordBatch {
    events(&[
        (1, 0, 7, 3.0),
        (2, 60, 7, 10.0),
        (3, 60, 8, 1.0),
        (4, 90, 7, 4.0),
        (5, 150, 7, 5.0),
        (6, 4000, 7, 2.0),
    ])
}

fn column(b: &RecordBatch, name: &str) -> Vec<f64> {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("no {name}"))
        .as_primitive::<Float64Type>()
        .values()
        .to_vec()
}

#[test]
fn a_kind_registered_in_a_test_is_known_to_validation() {
    let schema = history().schema();
    assert_eq!(config().validate(&schema, None), Vec::<String>::new());
    let mut typo = config();
    typo.aggregate[0].kind = "rnage".into();
    let problems = typo.validate(&schema, None).join("\n");
    assert!(problems.contains("unknown kind \"rnage\""), "{problems}");
    assert!(
        problems.contains("range"),
        "the known kinds list it: {problems}"
    );
    assert!(
        riskpipe_operators::aggregate::reference_table().contains("| `range` |"),
        "the reference lists it"
    );
}

/// By hand: card 7 has 3.0 at 0 s, 10.0 at 60 s, 4.0 at 90 s, 5.0 at 150 s, 2.0 at 4000 s.
#[test]
fn a_kind_registered_in_a_test_computes_and_round_trips_a_checkpoint() {
    let all = history();
    let whole = config()
        .build_chain()
        .expect("chain")
        .process(all.clone())
        .expect("process");
    // 90 s: at 90 the event at 0 is exactly t − span (out); at 150, (60, 150] holds 4 and 5.
    assert_eq!(
        column(&whole, "RANGE_1m30s"),
        [0.0, 7.0, 0.0, 6.0, 1.0, 0.0]
    );
    assert_eq!(column(&whole, "RANGE_1h"), [0.0, 7.0, 0.0, 7.0, 7.0, 0.0]);
    for cut in 1..all.num_rows() {
        let mut chain = config().build_chain().expect("chain");
        let first = chain.process(all.slice(0, cut)).expect("first part");
        let tables = chain.snapshot().expect("snapshot");
        assert_eq!(tables.len(), 1, "one table for the one aggregation");
        let mut restored = config().build_chain().expect("chain");
        restored.restore(&tables).expect("restore");
        let rest = restored
            .process(all.slice(cut, all.num_rows() - cut))
            .expect("rest");
        let joined =
            arrow::compute::concat_batches(&whole.schema(), &[first, rest]).expect("concat");
        assert_eq!(joined, whole, "cut at {cut}");
    }
}

#[cfg(feature = "sql")]
#[test]
fn a_kind_registered_in_a_test_has_its_batch_twin_checked() {
    use riskpipe_operators::batch::{batch_features, session};
    let all = history();
    let stream = config()
        .build_chain()
        .expect("chain")
        .process(all.clone())
        .expect("process");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let batch = rt.block_on(async {
        let ctx = session();
        ctx.register_batch("history", all.clone())
            .expect("register");
        let keep = vec!["ID".to_string()];
        let df = batch_features(&ctx, &config(), "history", &keep)
            .await
            .expect("plan");
        let out = df.collect().await.expect("run");
        arrow::compute::concat_batches(&out[0].schema(), &out).expect("concat")
    });
    for name in ["RANGE_1m30s", "RANGE_1h"] {
        assert_eq!(column(&stream, name), column(&batch, name), "{name}");
    }
}
