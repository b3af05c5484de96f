//! Labels that name their transaction only (its id, the label, the label time: no key, no event
//! time, as a chargeback feed carries them): label risk computed from them equals label risk
//! computed from the same labels carrying the key and the event time, row for row and bit for
//! bit, whatever the batch cuts, wherever the labels arrive (before their transaction too, or
//! naming none), and through a checkpoint restore.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, TimestampNanosecondArray};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use proptest::prelude::*;
use riskpipe_operators::{FeatureChain, FeatureConfig};

const HOUR: i64 = 3_600_000_000_000;

const CONFIG: &str = r#"
event_time = "TX_DATETIME"
order_by = "TRANSACTION_ID"

[[label_risk]]
key = "TERMINAL_ID"
delay = "12h"
spans = ["1d", "2d"]
count = "T_N_{days}"
risk = "T_R_{days}"
label = "TX_FRAUD"
label_time = "LABEL_TIME"

[[label_risk]]
key = ["CUSTOMER_ID", "TERMINAL_ID"]
delay = "6h"
spans = ["2d"]
risk = "CT_R_{days}"
label = "TX_FRAUD"
label_time = "LABEL_TIME"
"#;

#[derive(Debug, Clone)]
struct Event {
    id: i64,
    time: i64,
    customer: i64,
    terminal: i64,
}

/// A label: the transaction it names (an index into the events, or past them: an unknown id),
/// when it became known (hours after that transaction), fraud or not, and the batch before
/// which it arrives.
#[derive(Debug, Clone)]
struct Label {
    event: usize,
    after_hours: i64,
    fraud: bool,
    arrives: usize,
}

fn events() -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec((0i64..24, 0i64..3, 0i64..3), 1..50).prop_map(|raw| {
        let mut ev: Vec<Event> = raw
            .into_iter()
            .enumerate()
            .map(|(i, (slot, customer, terminal))| Event {
                id: i as i64,
                time: slot * 3 * HOUR,
                customer,
                terminal,
            })
            .collect();
        ev.sort_by_key(|e| (e.time, e.id));
        ev
    })
}

fn utc(values: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampNanosecondArray::from_iter_values(values).with_timezone("UTC"))
}

fn utc_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

fn event_batch(ev: &[Event]) -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("TRANSACTION_ID", DataType::Int64, false),
            Field::new("TX_DATETIME", utc_type(), false),
            Field::new("CUSTOMER_ID", DataType::Int64, false),
            Field::new("TERMINAL_ID", DataType::Int64, false),
        ])),
        vec![
            Arc::new(Int64Array::from_iter_values(ev.iter().map(|e| e.id))),
            utc(ev.iter().map(|e| e.time)),
            Arc::new(Int64Array::from_iter_values(ev.iter().map(|e| e.customer))),
            Arc::new(Int64Array::from_iter_values(ev.iter().map(|e| e.terminal))),
        ],
    )
    .expect("events")
}

/// `labels` as label events, carrying the key and the event time (`keyed`) or naming their
/// transaction only. A label of an unknown transaction names an id no event has.
fn label_batch(ev: &[Event], labels: &[&Label], keyed: bool) -> RecordBatch {
    let of = |l: &Label| ev.get(l.event);
    let ids = labels
        .iter()
        .map(|l| of(l).map_or(10_000 + l.event as i64, |e| e.id));
    let known: Vec<i64> = labels
        .iter()
        .map(|l| of(l).map_or(0, |e| e.time) + l.after_hours * HOUR)
        .collect();
    let mut fields = vec![Field::new("TRANSACTION_ID", DataType::Int64, false)];
    let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_iter_values(ids))];
    if keyed {
        fields.extend([
            Field::new("TX_DATETIME", utc_type(), false),
            Field::new("CUSTOMER_ID", DataType::Int64, false),
            Field::new("TERMINAL_ID", DataType::Int64, false),
        ]);
        columns.extend([
            utc(labels.iter().map(|l| of(l).map_or(0, |e| e.time))),
            Arc::new(Int64Array::from_iter_values(
                labels.iter().map(|l| of(l).map_or(-1, |e| e.customer)),
            )) as ArrayRef,
            Arc::new(Int64Array::from_iter_values(
                labels.iter().map(|l| of(l).map_or(-1, |e| e.terminal)),
            )),
        ]);
    }
    fields.extend([
        Field::new("LABEL_TIME", utc_type(), false),
        Field::new("TX_FRAUD", DataType::Int64, false),
    ]);
    columns.extend([
        utc(known),
        Arc::new(Int64Array::from_iter_values(
            labels.iter().map(|l| i64::from(l.fraud)),
        )) as ArrayRef,
    ]);
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("labels")
}

fn chain(by_event: bool) -> FeatureChain {
    let cfg: FeatureConfig = toml::from_str(CONFIG).expect("config");
    cfg.build_chain_for(by_event).expect("chain")
}

/// The events cut at `cuts`, each batch preceded by the labels arriving before it and the
/// watermark at its first event; with `restart`, the chain is restored from its snapshot before
/// that batch.
fn run(
    ev: &[Event],
    labels: &[Label],
    cuts: &[usize],
    keyed: bool,
    restart: Option<usize>,
) -> RecordBatch {
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (ev.len() + 1)).collect();
    bounds.extend([0, ev.len()]);
    bounds.sort_unstable();
    bounds.dedup();
    let batches = bounds.len() - 1;
    let all = event_batch(ev);
    let mut chain = chain(!keyed);
    let mut outs = Vec::new();
    for (i, w) in bounds.windows(2).enumerate() {
        if restart == Some(i) {
            let tables = chain.snapshot().expect("snapshot");
            chain = self::chain(!keyed);
            chain.restore(&tables).expect("restore");
        }
        let arriving: Vec<&Label> = labels.iter().filter(|l| l.arrives % batches == i).collect();
        chain
            .observe_labels(&label_batch(ev, &arriving, keyed))
            .expect("labels");
        chain.advance_watermark(ev[w[0]].time);
        outs.push(
            chain
                .process(all.slice(w[0], w[1] - w[0]))
                .expect("process"),
        );
    }
    concat_batches(&outs[0].schema(), &outs).expect("concat")
}

fn labels_of(n: usize) -> impl Strategy<Value = Vec<Label>> {
    prop::collection::vec(
        (0..n + 3, 0i64..40, prop::bool::weighted(0.7), 0usize..8),
        0..n + 3,
    )
    .prop_map(|raw| {
        raw.into_iter()
            .map(|(event, after_hours, fraud, arrives)| Label {
                event,
                after_hours,
                fraud,
                arrives,
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Labels anywhere in the stream, before their transaction too, some naming none: the
    /// same features from labels naming the transaction only as from labels carrying its key
    /// and time.
    #[test]
    fn labels_naming_the_event_only_count_as_keyed_labels(
        (ev, labels) in events().prop_flat_map(|ev| {
            let n = ev.len();
            (Just(ev), labels_of(n))
        }),
        cuts in prop::collection::vec(0usize..60, 0..5),
    ) {
        let keyed = run(&ev, &labels, &cuts, true, None);
        let by_event = run(&ev, &labels, &cuts, false, None);
        prop_assert_eq!(by_event, keyed);
    }

    /// Labels arriving after their transaction's batch (as live: a chargeback comes after the
    /// payment), and a restore from a checkpoint before one batch: the same features as the
    /// keyed labels without a restart.
    #[test]
    fn labels_naming_the_event_only_survive_a_restore(
        ev in events(),
        cuts in prop::collection::vec(0usize..60, 1..5),
        restart in 0usize..6,
        fraud_every in 1usize..4,
    ) {
        let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (ev.len() + 1)).collect();
        bounds.extend([0, ev.len()]);
        bounds.sort_unstable();
        bounds.dedup();
        let batches = bounds.len() - 1;
        // Each label arrives before the batch after its transaction's.
        let labels: Vec<Label> = (0..ev.len())
            .filter(|i| i % fraud_every == 0)
            .map(|i| Label {
                event: i,
                after_hours: 9,
                fraud: i % 2 == 0,
                arrives: bounds.partition_point(|&b| b <= i).min(batches - 1),
            })
            .collect();
        let keyed = run(&ev, &labels, &cuts, true, None);
        let restored = run(&ev, &labels, &cuts, false, Some(restart % batches));
        prop_assert_eq!(restored, keyed);
    }
}
