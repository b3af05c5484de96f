//! Hand-computed windows: ties, empty windows, edges exactly at t - span, delayed labels.

use std::sync::Arc;

use arrow::array::{
    Array, AsArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, TimeUnit};
use riskpipe_operators::{FeatureConfig, OperatorError};

const S: i64 = 1_000_000_000;
const DAY: i64 = 86_400 * S;
const HOUR: i64 = 3_600 * S;

fn ts(v: Vec<i64>) -> Arc<TimestampNanosecondArray> {
    Arc::new(TimestampNanosecondArray::from(v).with_timezone("UTC"))
}

fn utc() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

/// Transactions as (id, time ns, customer, terminal, amount).
fn tx(rows: &[(i64, i64, i64, i64, f64)]) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("TRANSACTION_ID", DataType::Int64, false),
        Field::new("TX_DATETIME", utc(), false),
        Field::new("CUSTOMER_ID", DataType::Int64, false),
        Field::new("TERMINAL_ID", DataType::Int64, false),
        Field::new("TX_AMOUNT", DataType::Float64, false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            ts(rows.iter().map(|r| r.1).collect()),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.4))),
        ],
    )
    .expect("batch")
}

/// Fraud labels as (transaction id, terminal, transaction time, label time, label).
fn labels(rows: &[(i64, i64, i64, i64, i64)]) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("TRANSACTION_ID", DataType::Int64, false),
        Field::new("TERMINAL_ID", DataType::Int64, false),
        Field::new("TX_DATETIME", utc(), false),
        Field::new("LABEL_TIME", utc(), false),
        Field::new("TX_FRAUD", DataType::Int64, false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ts(rows.iter().map(|r| r.2).collect()),
            ts(rows.iter().map(|r| r.3).collect()),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.4))),
        ],
    )
    .expect("labels")
}

fn config(text: &str) -> FeatureConfig {
    let mut cfg = toml::from_str(text).expect("config");
    handbook_columns(&mut cfg);
    cfg
}

/// The handbook's columns where the config leaves them out (the fraud job fills them in from
/// its declared events and labels; these tests have no job).
fn handbook_columns(cfg: &mut FeatureConfig) {
    if cfg.event_time.is_empty() {
        cfg.event_time = "TX_DATETIME".into();
    }
    if cfg.order_by.is_empty() {
        cfg.order_by = "TRANSACTION_ID".into();
    }
    for r in &mut cfg.label_risk {
        if r.label.is_empty() {
            r.label = "TX_FRAUD".into();
        }
        if r.label_time.is_empty() {
            r.label_time = "LABEL_TIME".into();
        }
    }
}

fn ints(b: &RecordBatch, c: &str) -> Vec<i64> {
    b.column_by_name(c)
        .unwrap_or_else(|| panic!("no {c}"))
        .as_primitive::<Int64Type>()
        .values()
        .to_vec()
}

fn floats(b: &RecordBatch, c: &str) -> Vec<f64> {
    b.column_by_name(c)
        .unwrap_or_else(|| panic!("no {c}"))
        .as_primitive::<Float64Type>()
        .values()
        .to_vec()
}

const CUSTOMER: &str = r#"
[[windows]]
key = "CUSTOMER_ID"
value = "TX_AMOUNT"
spans = ["1d", "2d"]
count = "N_{days}"
sum = "S_{days}"
mean = "M_{days}"
"#;

#[test]
fn customer_windows_by_hand() {
    let mut chain = config(CUSTOMER).build_chain().expect("chain");
    // Customer 1: t=0 (10), t=0 (20, a tie later in the order), t=1d exactly (30: the t=0
    // events sit exactly at t - 1d and leave the 1-day window), t=1d+1s (40). Customer 2 between.
    let out = chain
        .process(tx(&[
            (1, 0, 1, 9, 10.0),
            (2, 0, 1, 9, 20.0),
            (3, 5 * S, 2, 9, 7.0),
            (4, DAY, 1, 9, 30.0),
            (5, DAY + S, 1, 9, 40.0),
        ]))
        .expect("process");
    assert_eq!(ints(&out, "N_1"), vec![1, 2, 1, 1, 2]);
    assert_eq!(floats(&out, "S_1"), vec![10.0, 30.0, 7.0, 30.0, 70.0]);
    assert_eq!(floats(&out, "M_1"), vec![10.0, 15.0, 7.0, 30.0, 35.0]);
    assert_eq!(ints(&out, "N_2"), vec![1, 2, 1, 3, 4]);
    assert_eq!(floats(&out, "M_2"), vec![10.0, 15.0, 7.0, 20.0, 25.0]);
    // State carries across batches; at exactly 2d the t=0 events leave the 2-day window.
    let out = chain
        .process(tx(&[(6, 2 * DAY, 1, 9, 50.0)]))
        .expect("process");
    assert_eq!(ints(&out, "N_1"), vec![2]); // 40 (1d+1s) and 50; 30 sits at the edge
    assert_eq!(ints(&out, "N_2"), vec![3]); // 30, 40, 50
    assert_eq!(floats(&out, "S_2"), vec![120.0]);
}

const TERMINAL: &str = r#"
[[label_risk]]
key = "TERMINAL_ID"
delay = "7d"
spans = ["1d"]
count = "NB_{days}"
risk = "RISK_{days}"
"#;

#[test]
fn delayed_label_risk_by_hand() {
    let mut chain = config(TERMINAL).build_chain().expect("chain");
    // Terminal 5: transactions at 0, 12h, 1d; the one at 12h is a fraud, known at 7d12h.
    chain
        .observe_labels(&labels(&[(2, 5, 12 * HOUR, 7 * DAY + 12 * HOUR, 1)]))
        .expect("labels");
    let first = chain
        .process(tx(&[
            (1, 0, 1, 5, 1.0),
            (2, 12 * HOUR, 1, 5, 1.0),
            (3, DAY, 1, 5, 1.0),
        ]))
        .expect("process");
    // Nothing is 7 days old yet: empty windows give count 0 and risk 0.
    assert_eq!(ints(&first, "NB_1"), vec![0, 0, 0]);
    assert_eq!(floats(&first, "RISK_1"), vec![0.0, 0.0, 0.0]);
    let out = chain
        .process(tx(&[
            (4, 7 * DAY, 2, 5, 1.0), // window (-1d, 0]: the t=0 transaction
            (5, 7 * DAY + 12 * HOUR - S, 2, 5, 1.0), // (-12h-1s, 12h-1s]: t=0 only
            (6, 7 * DAY + 12 * HOUR, 2, 5, 1.0), // (-12h, 12h]: t=0 and the fraud, now known
            (7, 8 * DAY, 2, 5, 1.0), // (0, 1d]: 12h and 1d; t=0 is at the edge
            (8, 8 * DAY, 2, 6, 1.0), // another terminal: empty window
        ]))
        .expect("process");
    assert_eq!(ints(&out, "NB_1"), vec![1, 1, 2, 2, 0]);
    assert_eq!(floats(&out, "RISK_1"), vec![0.0, 0.0, 0.5, 0.5, 0.0]);
}

#[test]
fn labels_are_used_only_from_their_label_time() {
    let mut chain = config(TERMINAL).build_chain().expect("chain");
    chain.process(tx(&[(1, 0, 1, 5, 1.0)])).expect("process");
    // The label reaches the operator early but is known only at 9d.
    chain
        .observe_labels(&labels(&[(1, 5, 0, 9 * DAY, 1)]))
        .expect("labels");
    let out = chain
        .process(tx(&[(2, 7 * DAY, 1, 5, 1.0), (3, 9 * DAY - 1, 1, 5, 1.0)]))
        .expect("process");
    assert_eq!(floats(&out, "RISK_1"), vec![0.0, 0.0]);
    // Genuine labels (0) never count as fraud.
    chain
        .observe_labels(&labels(&[(2, 5, 7 * DAY, 7 * DAY, 0)]))
        .expect("labels");
    let out = chain
        .process(tx(&[(4, 14 * DAY, 1, 5, 1.0)]))
        .expect("process");
    assert_eq!(ints(&out, "NB_1"), vec![1]);
    assert_eq!(floats(&out, "RISK_1"), vec![0.0]);
}

/// Labels are facts about transactions: a repeated label counts once, a label of a transaction
/// the terminal never saw counts not at all, and a correction takes over from its label time on.
#[test]
fn labels_count_once_for_seen_transactions_and_corrections_take_over() {
    let mut chain = config(TERMINAL).build_chain().expect("chain");
    // Terminal 5: transactions 1 at 0 and 2 at 12h; 1 is a fraud, labelled twice; 99 (never
    // seen at terminal 5) is labelled fraud too.
    chain
        .observe_labels(&labels(&[
            (1, 5, 0, DAY, 1),
            (1, 5, 0, DAY, 1),
            (99, 5, 6 * HOUR, DAY, 1),
        ]))
        .expect("labels");
    chain
        .process(tx(&[(1, 0, 1, 5, 1.0), (2, 12 * HOUR, 1, 5, 1.0)]))
        .expect("process");
    // At 7d12h the window is (−12h, 12h]: transactions 1 and 2.
    let out = chain
        .process(tx(&[(3, 7 * DAY + 12 * HOUR, 2, 5, 1.0)]))
        .expect("process");
    assert_eq!(ints(&out, "NB_1"), vec![2]);
    assert_eq!(
        floats(&out, "RISK_1"),
        vec![0.5],
        "one fraud, counted once; 99 unseen"
    );
    // A correction known at 7d18h: transaction 1 was genuine after all.
    chain
        .observe_labels(&labels(&[(1, 5, 0, 7 * DAY + 18 * HOUR, 0)]))
        .expect("labels");
    let out = chain
        .process(tx(&[
            (4, 7 * DAY + 12 * HOUR + S, 2, 5, 1.0),
            (5, 7 * DAY + 18 * HOUR - S, 2, 5, 1.0),
        ]))
        .expect("process");
    // Before its label time the fraud label still holds; both windows hold transactions 1 and 2.
    assert_eq!(ints(&out, "NB_1"), vec![2, 2]);
    assert_eq!(floats(&out, "RISK_1"), vec![0.5, 0.5]);
    let out = chain
        .process(tx(&[(6, 7 * DAY + 18 * HOUR, 2, 5, 1.0)]))
        .expect("process");
    // From then on the correction holds: window (−6h, 18h] still has 1 and 2, no fraud.
    assert_eq!(ints(&out, "NB_1"), vec![2]);
    assert_eq!(floats(&out, "RISK_1"), vec![0.0]);
}

#[test]
fn calendar_flags_by_hand() {
    let cfg = config("[calendar]\nweekend = \"WE\"\nnight = \"NI\"\nnight_last_hour = 6\n");
    let mut chain = cfg.build_chain().expect("chain");
    // 2018-04-01T00:00:00Z (1522540800 s) was a Sunday.
    let sunday = 1_522_540_800 * S;
    let out = chain
        .process(tx(&[
            (1, sunday, 1, 1, 1.0),
            (2, sunday + 6 * HOUR + 3599 * S, 1, 1, 1.0), // 06:59:59: night
            (3, sunday + 7 * HOUR, 1, 1, 1.0),            // 07:00: day
            (4, sunday + DAY + 23 * HOUR, 1, 1, 1.0),     // Monday 23:00
            (5, sunday - DAY + HOUR, 1, 1, 1.0),          // Saturday 01:00
        ]))
        .expect("process");
    assert_eq!(ints(&out, "WE"), vec![1, 1, 1, 0, 1]);
    assert_eq!(ints(&out, "NI"), vec![1, 1, 0, 0, 1]);
}

#[test]
fn sql_features_see_earlier_features() {
    let cfg = config(&format!(
        "{CUSTOMER}\n[[sql]]\nname = \"LOG_AMOUNT\"\nexpr = \"ln(TX_AMOUNT + 1)\"\n\
         [[sql]]\nname = \"RATIO\"\nexpr = \"TX_AMOUNT / M_1\"\n"
    ));
    let mut chain = cfg.build_chain().expect("chain");
    let out = chain
        .process(tx(&[(1, 0, 1, 1, 10.0), (2, S, 1, 1, 30.0)]))
        .expect("process");
    let log = floats(&out, "LOG_AMOUNT");
    assert!((log[0] - 11f64.ln()).abs() < 1e-12 && (log[1] - 31f64.ln()).abs() < 1e-12);
    assert_eq!(floats(&out, "RATIO"), vec![1.0, 1.5]);
}

/// Expressions may be declared in any order: each runs after those it reads, and one that
/// reads only the event runs before the aggregations, which may aggregate it and filter by it.
#[test]
fn expressions_run_in_the_order_their_inputs_allow() {
    let cfg = config(
        r#"
[[sql]]
name = "Z"
expr = "(CENTS - CENTS_MEAN) / 100.0"

[[aggregate]]
key = "CUSTOMER_ID"
kind = "mean"
value = "CENTS"
spans = ["1d"]
name = "CENTS_MEAN"
filter = "BIG"

[[sql]]
name = "BIG"
expr = "CENTS >= 1000"

[[sql]]
name = "CENTS"
expr = "CAST(TX_AMOUNT * 100 AS BIGINT)"
"#,
    );
    let problems = cfg.validate(&riskpipe_schemas::transaction_schema(), None);
    assert!(problems.is_empty(), "{problems:?}");
    let mut chain = cfg.build_chain().expect("chain");
    // The chain appends the event's expressions first (in dependency order), then the
    // aggregation, then what reads it.
    assert_eq!(chain.feature_names(), ["CENTS", "BIG", "CENTS_MEAN", "Z"]);
    // Their types, as the published record schemas take them, before any event.
    let types: Vec<DataType> = cfg
        .output_fields(&tx(&[]).schema())
        .expect("fields")
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    assert_eq!(
        types,
        [
            DataType::Int64,
            DataType::Boolean,
            DataType::Float64,
            DataType::Float64
        ]
    );
    let out = chain
        .process(tx(&[
            (1, 0, 1, 1, 10.0),
            (2, S, 1, 1, 30.0),
            (3, 2 * S, 1, 1, 2.0),
        ]))
        .expect("process");
    assert_eq!(ints(&out, "CENTS"), [1000, 3000, 200]);
    // The 2.00 payment is not big: the mean stays over 10.00 and 30.00.
    assert_eq!(floats(&out, "CENTS_MEAN"), [1000.0, 2000.0, 2000.0]);
    assert_eq!(floats(&out, "Z"), [0.0, 10.0, -18.0]);
}

/// Every problem of the expressions is listed: a cycle, an unknown column, a filter that is
/// not a condition, a syntax error.
#[test]
fn every_expression_problem_is_listed() {
    let cfg = config(
        r#"
[[sql]]
name = "A"
expr = "B + 1"

[[sql]]
name = "B"
expr = "A * 2"

[[sql]]
name = "C"
expr = "NO_SUCH_FIELD + 1"

[[sql]]
name = "D"
expr = "TX_AMOUNT +* 2"

[[aggregate]]
key = "CUSTOMER_ID"
kind = "count"
spans = ["1h"]
name = "N"
filter = "TX_AMOUNT * 2"
"#,
    );
    let all = cfg
        .validate(&riskpipe_schemas::transaction_schema(), None)
        .join("\n");
    for expected in [
        "expression features [\"A\", \"B\"] read each other in a cycle",
        "sql[2] (C):",
        "NO_SUCH_FIELD",
        "sql[3] (D):",
        "aggregate[0].filter \"TX_AMOUNT * 2\" is Float64, not a condition",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
}

#[test]
fn string_keys_work_like_integer_keys() {
    let cfg = config(
        "[[windows]]\nkey = \"CARD\"\nvalue = \"TX_AMOUNT\"\nspans = [\"1h\"]\ncount = \"N\"\n",
    );
    let mut chain = cfg.build_chain().expect("chain");
    let schema = Schema::new(vec![
        Field::new("TX_DATETIME", utc(), false),
        Field::new("CARD", DataType::Utf8, false),
        Field::new("TX_AMOUNT", DataType::Float64, false),
    ]);
    let batch = RecordBatch::try_new(
        Arc::new(schema),
        vec![
            ts(vec![0, S, 2 * S]),
            Arc::new(StringArray::from(vec!["x", "y", "x"])),
            Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0])),
        ],
    )
    .expect("batch");
    assert_eq!(
        ints(&chain.process(batch).expect("process"), "N"),
        vec![1, 1, 2]
    );
}

/// A key may combine fields: `key = ["CARD", "MERCHANT"]` counts each (card, merchant) pair's
/// events, text and integer parts alike, and keeps pairs whose joined text would collide apart
/// ("a1" + "2" and "a" + "12"). A list of one name is refused.
#[test]
fn a_key_may_combine_fields() {
    let cfg = config(
        "[[windows]]\nkey = [\"CARD\", \"MERCHANT\"]\nvalue = \"TX_AMOUNT\"\nspans = [\"1h\"]\ncount = \"N\"\nsum = \"S\"\n",
    );
    assert_eq!(cfg.windows[0].key, "CARD \u{d7} MERCHANT");
    let mut chain = cfg.build_chain().expect("chain");
    let schema = Schema::new(vec![
        Field::new("TX_DATETIME", utc(), false),
        Field::new("CARD", DataType::Utf8, false),
        Field::new("MERCHANT", DataType::Int64, false),
        Field::new("TX_AMOUNT", DataType::Float64, false),
    ]);
    let batch = RecordBatch::try_new(
        Arc::new(schema),
        vec![
            ts(vec![0, S, 2 * S, 3 * S, 4 * S, 5 * S]),
            Arc::new(StringArray::from(vec!["x", "x", "y", "x", "a1", "a"])),
            Arc::new(Int64Array::from(vec![7, 8, 7, 7, 2, 12])),
            Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])),
        ],
    )
    .expect("batch");
    let out = chain.process(batch).expect("process");
    assert_eq!(ints(&out, "N"), vec![1, 1, 1, 2, 1, 1]);
    assert_eq!(floats(&out, "S"), vec![1.0, 2.0, 3.0, 5.0, 5.0, 6.0]);
    let one = toml::from_str::<FeatureConfig>(
        "[[windows]]\nkey = [\"CARD\"]\nvalue = \"A\"\nspans = [\"1d\"]\ncount = \"N\"\n",
    )
    .expect_err("one name");
    assert!(one.to_string().contains("at least two names"), "{one}");
}

#[test]
fn malformed_batches_get_clear_errors() {
    let mut chain = config(CUSTOMER).build_chain().expect("chain");
    let good = tx(&[(1, 0, 1, 1, 1.0), (2, 1, 1, 1, 2.0)]);
    let mut cols = good.columns().to_vec();
    cols[4] = Arc::new(Float64Array::from(vec![Some(1.0), None]));
    let nullable = Schema::new(
        good.schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    );
    let bad = RecordBatch::try_new(Arc::new(nullable), cols).expect("batch");
    let err = chain.process(bad).expect_err("null amount");
    assert!(matches!(err, OperatorError::BadInput(_)));
    assert!(
        err.to_string().contains("\"TX_AMOUNT\" is null at row 1"),
        "{err}"
    );
    let err = chain
        .process(good.project(&[0, 1, 2]).expect("project"))
        .expect_err("missing");
    assert!(
        err.to_string().contains("missing column \"TX_AMOUNT\""),
        "{err}"
    );
    assert_eq!(err.fault(), riskpipe_schemas::Fault::BadInput);
    let wrong_time = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("TX_DATETIME", DataType::Int64, false),
            Field::new("CUSTOMER_ID", DataType::Int64, false),
            Field::new("TX_AMOUNT", DataType::Float64, false),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![1])) as Arc<dyn Array>,
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(Float64Array::from(vec![1.0])),
        ],
    )
    .expect("batch");
    let err = chain.process(wrong_time).expect_err("int time");
    assert!(err.to_string().contains("must be a timestamp"), "{err}");
}

#[test]
fn invalid_config_lists_every_problem() {
    let cfg = config(
        r#"
event_time = "WHEN"
[calendar]
night_last_hour = 30
[[windows]]
key = "NOPE"
value = "TX_AMOUNT"
spans = ["1d", "12h"]
count = "N_{days}"
[[label_risk]]
key = "TERMINAL_ID"
delay = "0s"
spans = ["1d"]
risk = "TX_AMOUNT"
"#,
    );
    let problems = cfg.validate(
        &riskpipe_schemas::transaction_schema(),
        Some(&riskpipe_schemas::fraud_label_schema()),
    );
    let all = problems.join("\n");
    for expected in [
        "event_time column \"WHEN\" is not in the input",
        "calendar: name at least one of weekend, night",
        "night_last_hour must be 0..=23",
        "windows[0].key column \"NOPE\" is not in the input",
        "span 12h is not whole days",
        "delay must be longer than zero",
        "\"TX_AMOUNT\" is defined twice or clashes",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    assert!(problems.len() >= 7);
}

#[test]
fn unknown_config_keys_are_rejected() {
    let err = toml::from_str::<FeatureConfig>(
        "[[windows]]\nkey = \"A\"\nvalue = \"B\"\nspans = [\"1d\"]\ncuont = \"x\"\n",
    )
    .expect_err("typo");
    assert!(err.to_string().contains("unknown field `cuont`"), "{err}");
}

const MINUTE: i64 = 60 * S;

/// Every built-in aggregation kind over one customer's events, with the current event in its
/// window and without; spans of 30 minutes, 1 hour and 30 days.
const AGGREGATIONS: &str = r#"
[[aggregate]]
key = "CUSTOMER_ID"
kind = "count"
spans = ["30m", "1h"]
name = "count_{span}"

[[aggregate]]
key = "CUSTOMER_ID"
kind = "since_previous"
spans = ["1h", "30d"]
name = "since_{span}"
"#;

/// The value kinds, each twice (`include_current` true and false) over 1 hour.
fn value_kinds() -> String {
    let mut text = AGGREGATIONS.to_string();
    for kind in [
        "sum", "mean", "min", "max", "variance", "stddev", "first", "last",
    ] {
        for (suffix, current) in [("", true), ("_before", false)] {
            text.push_str(&format!(
                "\n[[aggregate]]\nkey = \"CUSTOMER_ID\"\nkind = \"{kind}\"\nvalue = \"TX_AMOUNT\"\nspans = [\"1h\"]\nname = \"{kind}{suffix}\"\ninclude_current = {current}\n"
            ));
        }
    }
    text
}

/// Derived by hand. Customer 1: 10.0 at 0, 4.0 at 0:30, 6.0 and 2.0 at 1:00 (ids 3 then 4),
/// 8.0 at 3:20; customer 2: 5.0 at 1:00. At 1:00 the event at 0 lies exactly at t − 1 h and is
/// out; at 3:20 every earlier event is more than an hour back.
#[test]
fn every_aggregation_kind_by_hand() {
    let cfg = config(&value_kinds());
    let rows = [
        (1, 0, 1, 0, 10.0),
        (2, 30 * MINUTE, 1, 0, 4.0),
        (3, 60 * MINUTE, 1, 0, 6.0),
        (4, 60 * MINUTE, 1, 0, 2.0),
        (6, 60 * MINUTE, 2, 0, 5.0),
        (5, 200 * MINUTE, 1, 0, 8.0),
    ];
    // Batches of one, two and three events: state carries across them.
    let mut chain = cfg.build_chain().expect("chain");
    let all = tx(&rows);
    let outs: Vec<RecordBatch> = [(0, 1), (1, 2), (3, 3)]
        .iter()
        .map(|&(at, n)| chain.process(all.slice(at, n)).expect("process"))
        .collect();
    let out = arrow::compute::concat_batches(&outs[0].schema(), &outs).expect("concat");
    // Rows: ids 1, 2, 3, 4, 6 (customer 2), 5.
    assert_eq!(ints(&out, "count_30m"), [1, 1, 1, 2, 1, 1]);
    assert_eq!(ints(&out, "count_1h"), [1, 2, 2, 3, 1, 1]);
    assert_eq!(
        floats(&out, "since_1h"),
        [3600.0, 1800.0, 1800.0, 0.0, 3600.0, 3600.0]
    );
    assert_eq!(
        floats(&out, "since_30days"),
        [2_592_000.0, 1800.0, 1800.0, 0.0, 2_592_000.0, 8400.0]
    );
    assert_eq!(floats(&out, "sum"), [10.0, 14.0, 10.0, 12.0, 5.0, 8.0]);
    assert_eq!(floats(&out, "mean"), [10.0, 7.0, 5.0, 4.0, 5.0, 8.0]);
    assert_eq!(floats(&out, "min"), [10.0, 4.0, 4.0, 2.0, 5.0, 8.0]);
    assert_eq!(floats(&out, "max"), [10.0, 10.0, 6.0, 6.0, 5.0, 8.0]);
    assert_eq!(
        floats(&out, "variance"),
        [0.0, 9.0, 1.0, 8.0 / 3.0, 0.0, 0.0]
    );
    assert_eq!(
        floats(&out, "stddev"),
        [0.0, 3.0, 1.0, (8.0f64 / 3.0).sqrt(), 0.0, 0.0]
    );
    assert_eq!(floats(&out, "first"), [10.0, 10.0, 4.0, 4.0, 5.0, 8.0]);
    assert_eq!(floats(&out, "last"), [10.0, 4.0, 6.0, 2.0, 5.0, 8.0]);
    // Without the current event: empty windows give 0.
    assert_eq!(floats(&out, "sum_before"), [0.0, 10.0, 4.0, 10.0, 0.0, 0.0]);
    assert_eq!(floats(&out, "mean_before"), [0.0, 10.0, 4.0, 5.0, 0.0, 0.0]);
    assert_eq!(floats(&out, "min_before"), [0.0, 10.0, 4.0, 4.0, 0.0, 0.0]);
    assert_eq!(floats(&out, "max_before"), [0.0, 10.0, 4.0, 6.0, 0.0, 0.0]);
    assert_eq!(
        floats(&out, "variance_before"),
        [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    );
    assert_eq!(
        floats(&out, "stddev_before"),
        [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    );
    assert_eq!(
        floats(&out, "first_before"),
        [0.0, 10.0, 4.0, 4.0, 0.0, 0.0]
    );
    assert_eq!(floats(&out, "last_before"), [0.0, 10.0, 4.0, 6.0, 0.0, 0.0]);
    // Types: counts are integers, every other kind a float; no column has a null.
    for f in out.schema().fields().iter().skip(5) {
        let expected = match f.name().starts_with("count") {
            true => DataType::Int64,
            false => DataType::Float64,
        };
        assert_eq!(f.data_type(), &expected, "{}", f.name());
        assert!(!f.is_nullable(), "{}", f.name());
    }
}

/// The kinds of novelty and spread, derived by hand on the rows of
/// `every_aggregation_kind_by_hand`, with terminals: customer 1 pays terminal 7 at 0, 8 at
/// 0:30, 7 and 7 at 1:00 (ids 3 then 4), 8 at 3:20; customer 2 pays 7 at 1:00.
#[test]
fn distinct_first_seen_last_k_and_decayed_kinds_by_hand() {
    let mut text = String::new();
    for (kind, extra, name) in [
        (
            "distinct",
            "value = \"TERMINAL_ID\"\nspans = [\"1h\"]",
            "distinct",
        ),
        (
            "distinct",
            "value = \"TERMINAL_ID\"\nspans = [\"1h\"]\ninclude_current = false",
            "distinct_before",
        ),
        (
            "last_k",
            "value = \"TX_AMOUNT\"\nk = 2\nspans = [\"1h\"]",
            "last{i}",
        ),
        (
            "last_k",
            "value = \"TX_AMOUNT\"\nk = 2\nspans = [\"1h\"]\ninclude_current = false",
            "last{i}_before",
        ),
        (
            "decayed_sum",
            "value = \"TX_AMOUNT\"\nhalf_life = \"30m\"\nspans = [\"1h\", \"12h\"]",
            "decayed_sum_{span}",
        ),
        (
            "decayed_count",
            "half_life = \"30m\"\nspans = [\"1h\"]",
            "decayed_count",
        ),
    ] {
        text.push_str(&format!(
            "\n[[aggregate]]\nkey = \"CUSTOMER_ID\"\nkind = \"{kind}\"\n{extra}\nname = \"{name}\"\n"
        ));
    }
    text.push_str(
        "\n[[aggregate]]\nkey = [\"CUSTOMER_ID\", \"TERMINAL_ID\"]\nkind = \"first_seen\"\nspans = [\"1h\", \"30d\"]\nname = \"new_terminal_{span}\"\n",
    );
    let cfg = config(&text);
    let rows = [
        (1, 0, 1, 7, 10.0),
        (2, 30 * MINUTE, 1, 8, 4.0),
        (3, 60 * MINUTE, 1, 7, 6.0),
        (4, 60 * MINUTE, 1, 7, 2.0),
        (6, 60 * MINUTE, 2, 7, 5.0),
        (5, 200 * MINUTE, 1, 8, 8.0),
    ];
    let mut chain = cfg.build_chain().expect("chain");
    let all = tx(&rows);
    let outs: Vec<RecordBatch> = [(0, 2), (2, 1), (3, 3)]
        .iter()
        .map(|&(at, n)| chain.process(all.slice(at, n)).expect("process"))
        .collect();
    let out = arrow::compute::concat_batches(&outs[0].schema(), &outs).expect("concat");
    // Rows: ids 1, 2, 3, 4, 6 (customer 2), 5. At 1:00 the event at 0 is out of the hour.
    assert_eq!(ints(&out, "distinct"), [1, 2, 2, 2, 1, 1]);
    assert_eq!(ints(&out, "distinct_before"), [0, 1, 1, 2, 0, 0]);
    // The latest first; 0 where the window has no such event.
    assert_eq!(floats(&out, "last1"), [10.0, 4.0, 6.0, 2.0, 5.0, 8.0]);
    assert_eq!(floats(&out, "last2"), [0.0, 10.0, 4.0, 6.0, 0.0, 0.0]);
    assert_eq!(
        floats(&out, "last1_before"),
        [0.0, 10.0, 4.0, 6.0, 0.0, 0.0]
    );
    assert_eq!(floats(&out, "last2_before"), [0.0, 0.0, 0.0, 4.0, 0.0, 0.0]);
    // Half-life 30 minutes: an event half an hour old weighs 1/2, an hour old 1/4.
    assert_eq!(
        floats(&out, "decayed_sum_1h"),
        [10.0, 4.0 + 5.0, 6.0 + 2.0, 2.0 + 6.0 + 2.0, 5.0, 8.0]
    );
    let w = |minutes: f64| (-minutes / 30.0).exp2();
    assert_eq!(
        floats(&out, "decayed_sum_12h"),
        [
            10.0,
            4.0 + 5.0,
            6.0 + 2.0 + 2.5,
            2.0 + 6.0 + 2.0 + 2.5,
            5.0,
            8.0 + 2.0 * w(140.0) + 6.0 * w(140.0) + 4.0 * w(170.0) + 10.0 * w(200.0),
        ]
    );
    assert_eq!(
        floats(&out, "decayed_count"),
        [1.0, 1.5, 1.5, 2.5, 1.0, 1.0]
    );
    // Customer × terminal: (1, 7) at 1:00 is new within the hour (0:00 is exactly an hour
    // back), not within 30 days; the second (1, 7) at 1:00 follows the first.
    assert_eq!(ints(&out, "new_terminal_1h"), [1, 1, 1, 0, 1, 1]);
    assert_eq!(ints(&out, "new_terminal_30days"), [1, 1, 0, 0, 1, 0]);
}

/// Every kind over the events a filter selects (`TX_AMOUNT >= 4`: all but the 2.0 at 1:00),
/// derived by hand on the rows of `every_aggregation_kind_by_hand`. An event the filter does not
/// select still gets the value of the window it would have joined, itself left out.
#[test]
fn every_aggregation_kind_over_a_filter_by_hand() {
    let mut text = String::new();
    for (kind, value) in [
        ("count", ""),
        ("since_previous", ""),
        ("sum", "TX_AMOUNT"),
        ("mean", "TX_AMOUNT"),
        ("min", "TX_AMOUNT"),
        ("max", "TX_AMOUNT"),
        ("variance", "TX_AMOUNT"),
        ("first", "TX_AMOUNT"),
        ("last", "TX_AMOUNT"),
    ] {
        let value = match value {
            "" => String::new(),
            v => format!("value = \"{v}\"\n"),
        };
        for (suffix, current) in [("", true), ("_before", false)] {
            if kind == "since_previous" && !current {
                continue;
            }
            let current = match kind {
                "since_previous" => String::new(),
                _ => format!("include_current = {current}\n"),
            };
            for (name, filter) in [("", "TX_AMOUNT >= 4"), ("_none", "TX_AMOUNT < 0")] {
                text.push_str(&format!(
                    "\n[[aggregate]]\nkey = \"CUSTOMER_ID\"\nkind = \"{kind}\"\n{value}spans = [\"1h\"]\nname = \"{kind}{suffix}{name}\"\n{current}filter = \"{filter}\"\n"
                ));
            }
        }
    }
    let cfg = config(&text);
    let rows = [
        (1, 0, 1, 0, 10.0),
        (2, 30 * MINUTE, 1, 0, 4.0),
        (3, 60 * MINUTE, 1, 0, 6.0),
        (4, 60 * MINUTE, 1, 0, 2.0),
        (6, 60 * MINUTE, 2, 0, 5.0),
        (5, 200 * MINUTE, 1, 0, 8.0),
    ];
    let mut chain = cfg.build_chain().expect("chain");
    let all = tx(&rows);
    let outs: Vec<RecordBatch> = [(0, 2), (2, 1), (3, 3)]
        .iter()
        .map(|&(at, n)| chain.process(all.slice(at, n)).expect("process"))
        .collect();
    let out = arrow::compute::concat_batches(&outs[0].schema(), &outs).expect("concat");
    // Rows: ids 1, 2, 3, 4 (not selected), 6 (customer 2), 5. At 1:00 the 10.0 at 0 is out.
    assert_eq!(ints(&out, "count"), [1, 2, 2, 2, 1, 1]);
    assert_eq!(
        floats(&out, "since_previous"),
        [3600.0, 1800.0, 1800.0, 0.0, 3600.0, 3600.0]
    );
    assert_eq!(floats(&out, "sum"), [10.0, 14.0, 10.0, 10.0, 5.0, 8.0]);
    assert_eq!(floats(&out, "mean"), [10.0, 7.0, 5.0, 5.0, 5.0, 8.0]);
    assert_eq!(floats(&out, "min"), [10.0, 4.0, 4.0, 4.0, 5.0, 8.0]);
    assert_eq!(floats(&out, "max"), [10.0, 10.0, 6.0, 6.0, 5.0, 8.0]);
    assert_eq!(floats(&out, "variance"), [0.0, 9.0, 1.0, 1.0, 0.0, 0.0]);
    assert_eq!(floats(&out, "first"), [10.0, 10.0, 4.0, 4.0, 5.0, 8.0]);
    assert_eq!(floats(&out, "last"), [10.0, 4.0, 6.0, 6.0, 5.0, 8.0]);
    assert_eq!(ints(&out, "count_before"), [0, 1, 1, 2, 0, 0]);
    assert_eq!(floats(&out, "sum_before"), [0.0, 10.0, 4.0, 10.0, 0.0, 0.0]);
    assert_eq!(floats(&out, "mean_before"), [0.0, 10.0, 4.0, 5.0, 0.0, 0.0]);
    assert_eq!(floats(&out, "min_before"), [0.0, 10.0, 4.0, 4.0, 0.0, 0.0]);
    assert_eq!(floats(&out, "max_before"), [0.0, 10.0, 4.0, 6.0, 0.0, 0.0]);
    assert_eq!(
        floats(&out, "variance_before"),
        [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    );
    assert_eq!(
        floats(&out, "first_before"),
        [0.0, 10.0, 4.0, 4.0, 0.0, 0.0]
    );
    assert_eq!(floats(&out, "last_before"), [0.0, 10.0, 4.0, 6.0, 0.0, 0.0]);
    // A filter that selects nothing: every window is empty.
    assert_eq!(ints(&out, "count_none"), [0; 6]);
    assert_eq!(floats(&out, "since_previous_none"), [3600.0; 6]);
    for kind in ["sum", "mean", "min", "max", "variance", "first", "last"] {
        for suffix in ["", "_before"] {
            assert_eq!(
                floats(&out, &format!("{kind}{suffix}_none")),
                [0.0; 6],
                "{kind}{suffix}"
            );
        }
    }
    assert_eq!(ints(&out, "count_before_none"), [0; 6]);
}

/// A window of equal values has a variance of exactly 0, however its sum rounds.
#[test]
fn equal_values_have_no_variance() {
    let cfg = config(
        r#"
[[aggregate]]
key = "CUSTOMER_ID"
kind = "variance"
value = "TX_AMOUNT"
spans = ["1d"]
name = "V"
"#,
    );
    let rows: Vec<(i64, i64, i64, i64, f64)> = (0..7).map(|i| (i, i * HOUR, 1, 0, 0.1)).collect();
    let out = cfg
        .build_chain()
        .expect("chain")
        .process(tx(&rows))
        .expect("process");
    assert_eq!(floats(&out, "V"), [0.0; 7]);
}

#[test]
fn every_aggregation_problem_is_listed() {
    let cfg = config(
        r#"
[[aggregate]]
key = "CUSTOMER_ID"
kind = "medain"
value = "TX_AMOUNT"
spans = ["1h"]
name = "A"

[[aggregate]]
key = "CUSTOMER_ID"
kind = "max"
spans = []
name = "B"

[[aggregate]]
key = "CUSTOMER_ID"
kind = "count"
value = "TX_AMOUNT"
spans = ["0s"]
name = "C"

[[aggregate]]
key = "NOPE"
kind = "since_previous"
spans = ["1h", "2h"]
include_current = false
name = "D"

[[aggregate]]
key = "CUSTOMER_ID"
kind = "last_k"
value = "TX_AMOUNT"
spans = ["1h"]
name = "E"

[[aggregate]]
key = "CUSTOMER_ID"
kind = "last_k"
value = "TX_AMOUNT"
k = 2
spans = ["1h"]
name = "F"

[[aggregate]]
key = "CUSTOMER_ID"
kind = "decayed_sum"
value = "TX_AMOUNT"
spans = ["1h"]
name = "G"

[[aggregate]]
key = "CUSTOMER_ID"
kind = "decayed_count"
half_life = "1m"
spans = ["30d"]
k = 2
name = "H"
"#,
    );
    let problems = cfg.validate(&riskpipe_schemas::transaction_schema(), None);
    let all = problems.join("\n");
    for expected in [
        "aggregate[0]: unknown kind \"medain\" (known: count, decayed_count, decayed_sum, distinct, first, first_seen, last, last_k, max, mean, min, since_previous, stddev, sum, variance",
        "aggregate[1]: max needs a value field",
        "aggregate[1]: spans is empty",
        "aggregate[2]: count reads no value, but value = \"TX_AMOUNT\" is given",
        "aggregate[2]: a span must be longer than zero",
        "aggregate[3].key column \"NOPE\" is not in the input",
        "aggregate[3]: since_previous is defined over the events before the current one; include_current does not apply",
        "feature \"D\" is defined twice",
        "aggregate[4]: last_k needs k",
        "aggregate[5]: last_k writes 2 columns per span: the name template needs {i} (1 to 2)",
        "aggregate[6]: decayed_sum needs half_life",
        "aggregate[7]: decayed_count takes no k",
        "aggregate[7]: span 30days is more than 1000 half-lives (1m)",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    assert!(cfg.build_chain().is_err());
}
