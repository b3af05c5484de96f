//! Window invariants on random event streams, and the promise of zero train/serve skew: the
//! streaming chain and the DataFusion batch query agree on every row (the `sql` feature), for
//! every aggregation kind too: with ties, edges exactly at t − span, arbitrary batch splits, the
//! watermark freeing state and a restore from a snapshot in the middle.
#![cfg(feature = "sql")]

use std::sync::Arc;

use arrow::array::{
    AsArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray,
};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, TimeUnit};
use proptest::prelude::*;
use riskpipe_operators::FeatureConfig;
use riskpipe_operators::batch::{batch_features, session};

const HOUR: i64 = 3_600_000_000_000;

const CONFIG: &str = r#"
[calendar]
weekend = "WE"
night = "NI"

[[windows]]
key = "CUSTOMER_ID"
value = "TX_AMOUNT"
spans = ["1d", "2d"]
count = "C_N_{days}"
sum = "C_S_{days}"
mean = "C_M_{days}"

[[windows]]
key = ["CUSTOMER_ID", "TERMINAL_ID"]
value = "TX_AMOUNT"
spans = ["2d"]
count = "CT_N_{days}"
sum = "CT_S_{days}"

[[aggregate]]
key = "CUSTOMER_ID"
kind = "count"
spans = ["6h", "1d"]
name = "A_count_{span}"

[[aggregate]]
key = ["CUSTOMER_ID", "TERMINAL_ID"]
kind = "count"
spans = ["12h"]
include_current = false
name = "B_count_{span}"

[[aggregate]]
key = "CUSTOMER_ID"
kind = "sum"
value = "TX_AMOUNT"
spans = ["6h", "1d"]
name = "A_sum_{span}"

[[aggregate]]
key = ["CUSTOMER_ID", "TERMINAL_ID"]
kind = "sum"
value = "TX_AMOUNT"
spans = ["12h"]
include_current = false
name = "B_sum_{span}"

[[aggregate]]
key = "CUSTOMER_ID"
kind = "mean"
value = "TX_AMOUNT"
spans = ["6h", "1d"]
name = "A_mean_{span}"

[[aggregate]]
key = ["CUSTOMER_ID", "TERMINAL_ID"]
kind = "mean"
value = "TX_AMOUNT"
spans = ["12h"]
include_current = false
name = "B_mean_{span}"

[[aggregate]]
key = "CUSTOMER_ID"
kind = "min"
value = "TX_AMOUNT"
spans = ["6h", "1d"]
name = "A_min_{span}"

[[aggregate]]
key = ["CUSTOMER_ID", "TERMINAL_ID"]
kind = "min"
value = "TX_AMOUNT"
spans = ["12h"]
include_current = false
name = "B_min_{span}"

[[aggregate]]
key = "CUSTOMER_ID"
kind = "max"
value = "TX_AMOUNT"
spans = ["6h", "1d"]
name = "A_max_{span}"

[[aggregate]]
key = ["CUSTOMER_ID", "TERMINAL_ID"]
kind = "max"
value = "TX_AMOUNT"
spans = ["12h"]
include_current = false
name = "B_max_{span}"

[[aggregate]]
key = "CUSTOMER_ID"
kind = "variance"
value = "TX_AMOUNT"
spans = ["6h", "1d"]
name = "A_variance_{span}"

[[aggregate]]
key = ["CUSTOMER_ID", "TERMINAL_ID"]
kind = "variance"
value = "TX_AMOUNT"
spans = ["12h"]
include_current = false
name = "B_variance_{span}"

[[aggregate]]
key = "CUSTOMER_ID"
kind = "stddev"
value = "TX_AMOUNT"
spans = ["6h", "1d"]
name = "A_stddev_{span}"

[[aggregate]]
key = ["CUSTOMER_ID", "TERMINAL_ID"]
kind = "stddev"
value = "TX_AMOUNT"
spans = ["12h"]
include_current = false
name = "B_stddev_{span}"

[[aggregate]]
key = "CUSTOMER_ID"
kind = "first"
value = "TX_AMOUNT"
spans = ["6h", "1d"]
name = "A_first_{span}"

[[aggregate]]
key = ["CUSTOMER_ID", "TERMINAL_ID"]
kind = "first"
value = "TX_AMOUNT"
spans = ["12h"]
include_current = false
name = "B_first_{span}"

[[aggregate]]
key = "CUSTOMER_ID"
kind = "last"
value = "TX_AMOUNT"
spans = ["6h", "1d"]
name = "A_last_{span}"

[[aggregate]]
key = ["CUSTOMER_ID", "TERMINAL_ID"]
kind = "last"
value = "TX_AMOUNT"
spans = ["12h"]
include_current = false
name = "B_last_{span}"

[[aggregate]]
key = "CUSTOMER_ID"
kind = "since_previous"
spans = ["6h", "1d"]
name = "A_since_previous_{span}"

[[label_risk]]
key = "TERMINAL_ID"
delay = "1d"
spans = ["1d", "2d"]
count = "T_N_{days}"
risk = "T_R_{days}"

[[sql]]
name = "LOG_AMOUNT"
expr = "ln(TX_AMOUNT + 1)"
"#;

#[derive(Debug, Clone)]
struct Event {
    id: i64,
    time: i64,
    customer: i64,
    terminal: i64,
    amount: f64,
    fraud: i64,
}

impl Event {
    /// The merchant's name: one of a few, from the amount; none for one amount in seven.
    fn merchant(&self) -> Option<String> {
        let cents = (self.amount * 4.0) as i64;
        (cents % 7 != 0).then(|| format!("m{}", cents % 5))
    }
}

/// Events on a 6-hour grid over 5 days: many ties and many events exactly on window edges.
fn events() -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec(
        (
            0i64..20,
            0i64..4,
            0i64..3,
            1u32..500,
            prop::bool::weighted(0.2),
        ),
        1..60,
    )
    .prop_map(|raw| {
        let mut ev: Vec<Event> = raw
            .into_iter()
            .enumerate()
            .map(|(i, (slot, customer, terminal, cents, fraud))| Event {
                id: i as i64,
                time: slot * 6 * HOUR,
                customer,
                terminal,
                amount: f64::from(cents) / 4.0,
                fraud: i64::from(fraud),
            })
            .collect();
        ev.sort_by_key(|e| (e.time, e.id));
        ev
    })
}

/// The allowed lateness of [`late_events`].
const LATENESS: i64 = 12 * HOUR;

/// [`events`] in an order of arrival where each may come up to [`LATENESS`] late: ordered by
/// its time plus a delay of 0, 6 or 12 hours (ties by id).
fn late_events() -> impl Strategy<Value = Vec<Event>> {
    (events(), prop::collection::vec(0i64..3, 60)).prop_map(|(mut ev, delays)| {
        ev.sort_by_key(|e| {
            (
                e.time + delays[e.id as usize % delays.len()] * 6 * HOUR,
                e.id,
            )
        });
        ev
    })
}

fn utc() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

fn batch(ev: &[Event]) -> RecordBatch {
    let schema = Schema::new(vec![
        Field::new("TRANSACTION_ID", DataType::Int64, false),
        Field::new("TX_DATETIME", utc(), false),
        Field::new("CUSTOMER_ID", DataType::Int64, false),
        Field::new("TERMINAL_ID", DataType::Int64, false),
        Field::new("TX_AMOUNT", DataType::Float64, false),
        Field::new("TX_FRAUD", DataType::Int64, false),
        Field::new("MERCHANT", DataType::Utf8, true),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(Int64Array::from_iter_values(ev.iter().map(|e| e.id))),
            Arc::new(
                TimestampNanosecondArray::from_iter_values(ev.iter().map(|e| e.time))
                    .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from_iter_values(ev.iter().map(|e| e.customer))),
            Arc::new(Int64Array::from_iter_values(ev.iter().map(|e| e.terminal))),
            Arc::new(Float64Array::from_iter_values(ev.iter().map(|e| e.amount))),
            Arc::new(Int64Array::from_iter_values(ev.iter().map(|e| e.fraud))),
            Arc::new(StringArray::from_iter(ev.iter().map(|e| e.merchant()))),
        ],
    )
    .expect("batch")
}

/// Label events: each fraud known one day (the configured delay) after its transaction.
fn labels(ev: &[Event]) -> RecordBatch {
    let frauds: Vec<&Event> = ev.iter().filter(|e| e.fraud == 1).collect();
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
            Arc::new(Int64Array::from_iter_values(frauds.iter().map(|e| e.id))),
            Arc::new(Int64Array::from_iter_values(
                frauds.iter().map(|e| e.terminal),
            )),
            Arc::new(
                TimestampNanosecondArray::from_iter_values(frauds.iter().map(|e| e.time))
                    .with_timezone("UTC"),
            ),
            Arc::new(
                TimestampNanosecondArray::from_iter_values(
                    frauds.iter().map(|e| e.time + 24 * HOUR),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from_iter_values(frauds.iter().map(|_| 1))),
        ],
    )
    .expect("labels")
}

/// Every kind again over the events a filter selects: a terminal (a field), or the big
/// payments (an expression feature that reads only the event, computed before the
/// aggregations); and an expression reading an aggregation.
fn filtered() -> String {
    let mut text = String::from(
        "\n[[sql]]\nname = \"Z\"\nexpr = \"(TX_AMOUNT - A_mean_6h) / (F_stddev_6h + 1)\"\n\n[[sql]]\nname = \"BIG\"\nexpr = \"TX_AMOUNT >= 60\"\n",
    );
    // Every registered kind.
    for (i, kind) in riskpipe_operators::aggregate::kinds()
        .into_iter()
        .enumerate()
    {
        // A kind that reads text reads the merchant (text; null for some events).
        let value = match (kind.reads_value(), kind.reads_text()) {
            (false, _) => "",
            (true, false) => "value = \"TX_AMOUNT\"\n",
            (true, true) => "value = \"MERCHANT\"\n",
        };
        let params = riskpipe_operators::aggregate::example_parameters(kind);
        let value = format!("{value}{params}");
        // One column per value for a kind that writes several.
        let columns = if params.contains("k =") { "_{i}" } else { "" };
        let (takes_current, kind) = (kind.takes_current(), kind.name());
        // Half of them without the current event (where the kind takes it).
        let current = match (takes_current, i % 2) {
            (false, _) | (_, 0) => "",
            _ => "include_current = false\n",
        };
        text.push_str(&format!(
            "\n[[aggregate]]\nkey = \"CUSTOMER_ID\"\nkind = \"{kind}\"\n{value}spans = [\"6h\", \"1d\"]\n{current}filter = \"TERMINAL_ID = 1\"\nname = \"F_{kind}{columns}_{{span}}\"\n"
        ));
        text.push_str(&format!(
            "\n[[aggregate]]\nkey = [\"CUSTOMER_ID\", \"TERMINAL_ID\"]\nkind = \"{kind}\"\n{value}spans = [\"12h\"]\n{current}filter = \"BIG\"\nname = \"G_{kind}{columns}_{{span}}\"\n"
        ));
    }
    text
}

fn config() -> FeatureConfig {
    let mut cfg = toml::from_str(&format!("{CONFIG}{}", filtered())).expect("config");
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

/// Runs the streaming chain over `ev` cut into batches at `cuts`; labels all arrive first (the
/// operators must only use each from its label time on).
fn stream(ev: &[Event], cuts: &[usize]) -> RecordBatch {
    stream_with_watermark(ev, cuts, false).0
}

/// As [`stream`]; with `watermark`, before each batch the watermark moves to the batch's first
/// event time (no later event is earlier), and after the last to beyond every window. Returns
/// the keys still held at the end.
fn stream_with_watermark(ev: &[Event], cuts: &[usize], watermark: bool) -> (RecordBatch, usize) {
    stream_restarted(ev, cuts, watermark, None)
}

/// As [`stream_with_watermark`]; with `restart`, before batch `restart` (modulo the batches)
/// the chain is replaced by a new one restored from its snapshot, as after a restart.
fn stream_restarted(
    ev: &[Event],
    cuts: &[usize],
    watermark: bool,
    restart: Option<usize>,
) -> (RecordBatch, usize) {
    stream_arriving(ev, cuts, watermark, restart, None)
}

/// As [`stream_restarted`], the events in their order of arrival: with `lateness`, an event
/// may arrive after later ones, up to `lateness` behind the latest time seen, and the watermark
/// before each batch is that latest time less the lateness (what no event still to come can be
/// at or before).
fn stream_arriving(
    ev: &[Event],
    cuts: &[usize],
    watermark: bool,
    restart: Option<usize>,
    lateness: Option<i64>,
) -> (RecordBatch, usize) {
    let mut chain = config().build_chain().expect("chain");
    chain.observe_labels(&labels(ev)).expect("labels");
    let all = batch(ev);
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (ev.len() + 1)).collect();
    bounds.extend([0, ev.len()]);
    bounds.sort_unstable();
    bounds.dedup();
    let batches = bounds.len() - 1;
    let outs: Vec<RecordBatch> = bounds
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            if restart.is_some_and(|r| r % batches == i) {
                let tables = chain.snapshot().expect("snapshot");
                chain = config().build_chain().expect("chain");
                chain.restore(&tables).expect("restore");
                assert_eq!(
                    chain.snapshot().expect("snapshot again").len(),
                    tables.len()
                );
            }
            if watermark {
                let to = match lateness {
                    None => Some(ev[w[0]].time),
                    Some(late) => ev[..w[0]]
                        .iter()
                        .map(|e| e.time)
                        .max()
                        .map(|m| m - late - 1),
                };
                if let Some(to) = to {
                    chain.advance_watermark(to);
                }
            }
            chain
                .process(all.slice(w[0], w[1] - w[0]))
                .expect("process")
        })
        .collect();
    if watermark {
        let last = ev.iter().map(|e| e.time).max().unwrap_or_default();
        chain.advance_watermark(last + 100 * 24 * HOUR);
    }
    (
        concat_batches(&outs[0].schema(), &outs).expect("concat"),
        chain.keys(),
    )
}

fn batch_query(ev: &[Event]) -> RecordBatch {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let ctx = session();
        ctx.register_batch("history", batch(ev)).expect("register");
        let keep: Vec<String> = batch(ev)
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let df = batch_features(&ctx, &config(), "history", &keep)
            .await
            .expect("plan");
        let out = df.collect().await.expect("run");
        concat_batches(&out[0].schema(), &out).expect("concat")
    })
}

/// Equal within 1e-9 relative; near zero (a variance whose batch twin, sliding, leaves a
/// ~1e-15 residue) within a billionth of a unit.
fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn batch_boundaries_do_not_change_results(ev in events(), cuts in prop::collection::vec(0usize..64, 0..6)) {
        let whole = stream(&ev, &[]);
        let split = stream(&ev, &cuts);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn the_watermark_frees_every_key_and_changes_no_value(ev in events(), cuts in prop::collection::vec(0usize..64, 0..8)) {
        let (kept, _) = stream_with_watermark(&ev, &cuts, false);
        let (freed, keys) = stream_with_watermark(&ev, &cuts, true);
        prop_assert_eq!(kept, freed);
        prop_assert_eq!(keys, 0, "keys held after the watermark passed every window");
    }

    #[test]
    fn a_chain_restored_from_its_snapshot_computes_what_the_original_does(ev in events(), cuts in prop::collection::vec(0usize..64, 1..8), at in 0usize..8, watermark: bool) {
        let (whole, keys) = stream_restarted(&ev, &cuts, watermark, None);
        let (restarted, keys_restarted) = stream_restarted(&ev, &cuts, watermark, Some(at));
        prop_assert_eq!(whole, restarted);
        prop_assert_eq!(keys, keys_restarted);
    }

    /// The window features alone (the first stage of the repartitioned topology) remember the
    /// ids of the events they hold, through a snapshot and restore: no event of a batch is
    /// known before it, every one after it (the watermark frees only events before a batch).
    #[test]
    fn windows_remember_the_ids_they_hold_through_a_restore(ev in events(), cuts in prop::collection::vec(0usize..64, 1..8), at in 0usize..8) {
        let windows_only = || {
            let mut c = config();
            c.label_risk.clear();
            c.sql.clear();
            c.aggregate.clear();
            c.build_chain().expect("chain")
        };
        let mut chain = windows_only();
        let all = batch(&ev);
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (ev.len() + 1)).collect();
        bounds.extend([0, ev.len()]);
        bounds.sort_unstable();
        bounds.dedup();
        for (i, w) in bounds.windows(2).enumerate() {
            if i == at % (bounds.len() - 1) {
                let tables = chain.snapshot().expect("snapshot");
                chain = windows_only();
                chain.restore(&tables).expect("restore");
            }
            chain.advance_watermark(ev[w[0]].time);
            let slice = all.slice(w[0], w[1] - w[0]);
            let before = chain.seen(&slice).expect("seen").expect("windows remember ids");
            prop_assert!(!before.contains(&true), "known before batch {}", i);
            chain.process(slice.clone()).expect("process");
            let after = chain.seen(&slice).expect("seen").expect("windows remember ids");
            prop_assert!(!after.contains(&false), "forgotten after batch {}", i);
        }
    }

    /// Events arriving up to the allowed lateness late (slotted in by time): neither the batch
    /// splits, nor the watermark freeing state behind the lateness, nor a restore from a
    /// snapshot in the middle change a value of any feature; every key is freed at the end.
    #[test]
    fn late_events_give_the_same_values_whatever_the_batches_the_watermark_or_a_restore(ev in late_events(), cuts in prop::collection::vec(0usize..64, 1..8), at in 0usize..8) {
        let (whole, _) = stream_arriving(&ev, &[], false, None, Some(LATENESS));
        let (split, keys) = stream_arriving(&ev, &cuts, true, Some(at), Some(LATENESS));
        prop_assert_eq!(whole, split);
        prop_assert_eq!(keys, 0, "keys held after the watermark passed every window");
    }

    #[test]
    fn window_invariants(ev in events()) {
        let out = stream(&ev, &[]);
        let c = |n: &str| out.column_by_name(n).expect("col").as_primitive::<Int64Type>().values().to_vec();
        let f = |n: &str| out.column_by_name(n).expect("col").as_primitive::<Float64Type>().values().to_vec();
        let (n1, n2, s1, m1, m2) = (c("C_N_1"), c("C_N_2"), f("C_S_1"), f("C_M_1"), f("C_M_2"));
        let (tn1, tn2, tr1) = (c("T_N_1"), c("T_N_2"), f("T_R_1"));
        for i in 0..ev.len() {
            // The current event always counts; a longer window holds at least as much.
            prop_assert!(n1[i] >= 1 && n2[i] >= n1[i]);
            prop_assert!(close(s1[i], m1[i] * n1[i] as f64));
            // A mean lies within the customer's amounts.
            let amounts: Vec<f64> = ev.iter().filter(|e| e.customer == ev[i].customer).map(|e| e.amount).collect();
            let (lo, hi) = amounts.iter().fold((f64::MAX, f64::MIN), |(l, h), a| (l.min(*a), h.max(*a)));
            prop_assert!(m2[i] >= lo - 1e-9 && m2[i] <= hi + 1e-9);
            prop_assert!(tn2[i] >= tn1[i]);
            prop_assert!((0.0..=1.0).contains(&tr1[i]));
        }
    }

    #[test]
    fn stream_equals_batch_query(ev in events()) {
        let s = stream(&ev, &[3, 17]);
        let b = batch_query(&ev);
        prop_assert_eq!(s.num_rows(), b.num_rows());
        for field in b.schema().fields() {
            let name = field.name();
            let (sc, bc) = (s.column_by_name(name).expect("stream col"), b.column_by_name(name).expect("batch col"));
            match sc.data_type() {
                DataType::Float64 => {
                    let (x, y) = (sc.as_primitive::<Float64Type>(), bc.as_primitive::<Float64Type>());
                    // Kinds that pick a value or subtract times: bit for bit.
                    if ["min", "max", "first", "last", "last_k", "since_previous"].iter().any(|k| name.contains(&format!("_{k}_"))) {
                        for i in 0..x.len() {
                            prop_assert_eq!(x.value(i).to_bits(), y.value(i).to_bits(), "{} row {}: stream {} batch {}", name, i, x.value(i), y.value(i));
                        }
                        continue;
                    }
                    for i in 0..x.len() {
                        prop_assert!(close(x.value(i), y.value(i)), "{} row {}: stream {} batch {}", name, i, x.value(i), y.value(i));
                    }
                }
                DataType::Int64 => {
                    let y = arrow::compute::cast(bc, &DataType::Int64).expect("cast");
                    prop_assert_eq!(sc.as_primitive::<Int64Type>().values(), y.as_primitive::<Int64Type>().values(), "{}", name);
                }
                _ => {}
            }
        }
    }
}
