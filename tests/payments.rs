//! A payments stream of another shape than the handbook's, declared by configuration alone
//! (`examples/payments/`): text ids, nested card / merchant / amount objects, an
//! epoch-millisecond time, signed amounts, categorical fields and a chargeback feed that reports
//! frauds only. Live on 4 partitions it scores every valid payment as the backtest of a Parquet
//! file of the same payments scores it, bit for bit; each declared rule broken once is a dead
//! letter naming the field and the rule.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{Field, Float32Type, Schema};
use rdkafka::producer::{BaseRecord, Producer};
use riskpipe_pipeline::{PipelineConfig, backtest};
use riskpipe_testkit::Broker;
use support::{Pipeline, collect, drain_to_end, producer, reader, root};

/// 2024-07-01T00:00:00Z in milliseconds.
const START_MS: i64 = 1_719_792_000_000;
const CARDS: u64 = 150;
const MERCHANTS: u64 = 40;
const CATEGORIES: [&str; 5] = ["grocery", "travel", "electronics", "restaurants", "gaming"];
const CHANNELS: [&str; 3] = ["pos", "online", "atm"];

/// A deterministic stream of numbers (splitmix64), so the payments are the same every run.
struct Numbers(u64);

impl Numbers {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone)]
struct Payment {
    id: String,
    created_at: i64,
    card: String,
    card_country: String,
    merchant: String,
    category: &'static str,
    merchant_country: Option<String>,
    channel: &'static str,
    amount: f64,
    currency: &'static str,
    fraud: bool,
}

impl Payment {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "payment_id": self.id,
            "created_at": self.created_at,
            "card": {"id": self.card, "country": self.card_country},
            "merchant": {
                "id": self.merchant,
                "category": self.category,
                "country": self.merchant_country,
            },
            "channel": self.channel,
            "amount": {"value": self.amount, "currency": self.currency},
        })
    }
}

/// `n` payments over about ten days in time order (some at the same millisecond), with fraud
/// bursts: a compromised card pays several times within minutes at night, online, large sums.
fn payments(n: usize) -> Vec<Payment> {
    let mut r = Numbers(42);
    let mut out = Vec::with_capacity(n);
    let mut t = START_MS;
    let mut burst: Option<(String, usize)> = None;
    for i in 0..n {
        // Ties: one payment in ten shares its predecessor's millisecond.
        if r.below(10) != 0 {
            t += 1 + r.below(400_000) as i64;
        }
        let (card, fraud) = match burst.take() {
            Some((card, left)) if left > 0 => {
                burst = Some((card.clone(), left - 1));
                (card, true)
            }
            _ => {
                let card = format!("card-{:04}", r.below(CARDS));
                let hour = (t / 3_600_000) % 24;
                if hour < 5 && r.below(40) == 0 {
                    burst = Some((card.clone(), 2 + r.below(4) as usize));
                    (card, true)
                } else {
                    (card, false)
                }
            }
        };
        let refund = !fraud && r.below(20) == 0;
        let cents = if fraud {
            20_000 + r.below(150_000)
        } else {
            100 + r.below(12_000)
        } as f64;
        out.push(Payment {
            id: format!("pay-{i:06}"),
            created_at: t,
            card_country: ["FR", "DE", "US"][(card.len() + i % 2) % 3].to_string(),
            card,
            merchant: format!("m-{:03}", r.below(MERCHANTS)),
            category: CATEGORIES[r.below(5) as usize],
            merchant_country: (r.below(4) != 0).then(|| "FR".to_string()),
            channel: if fraud {
                "online"
            } else {
                CHANNELS[r.below(3) as usize]
            },
            amount: if refund {
                -cents / 100.0
            } else {
                cents / 100.0
            },
            currency: ["EUR", "USD", "GBP"][r.below(3) as usize],
            fraud,
        });
    }
    out
}

/// The payments as a history file: one column per declared field, named by its path, and the
/// truth column `fraud`.
fn write_parquet(payments: &[Payment], path: &Path) {
    let text = |f: &dyn Fn(&Payment) -> Option<String>| -> ArrayRef {
        Arc::new(payments.iter().map(f).collect::<StringArray>())
    };
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("payment_id", text(&|p| Some(p.id.clone()))),
        (
            "created_at",
            Arc::new(Int64Array::from_iter_values(
                payments.iter().map(|p| p.created_at),
            )),
        ),
        ("card.id", text(&|p| Some(p.card.clone()))),
        ("card.country", text(&|p| Some(p.card_country.clone()))),
        ("merchant.id", text(&|p| Some(p.merchant.clone()))),
        ("merchant.category", text(&|p| Some(p.category.to_string()))),
        ("merchant.country", text(&|p| p.merchant_country.clone())),
        ("channel", text(&|p| Some(p.channel.to_string()))),
        (
            "amount.value",
            Arc::new(Float64Array::from_iter_values(
                payments.iter().map(|p| p.amount),
            )),
        ),
        ("amount.currency", text(&|p| Some(p.currency.to_string()))),
        (
            "fraud",
            Arc::new(
                payments
                    .iter()
                    .map(|p| Some(p.fraud))
                    .collect::<BooleanArray>(),
            ),
        ),
    ];
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, c)| Field::new(*name, c.data_type().clone(), c.null_count() > 0))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, c)| c).collect(),
    )
    .expect("batch");
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(path).expect("file"),
        schema,
        None,
    )
    .expect("writer");
    writer.write(&batch).expect("write");
    writer.close().expect("close");
}

/// The example's config with its files at absolute paths and `bootstrap` as the broker.
fn write_config(dir: &Path, bootstrap: &str) -> std::path::PathBuf {
    let example = root().join("examples/payments");
    let text = std::fs::read_to_string(example.join("payments.toml"))
        .expect("example config")
        .replace(
            "schema_file = \"payment.schema.json\"",
            &format!(
                "schema_file = {:?}",
                example.join("payment.schema.json").display().to_string()
            ),
        )
        .replace(
            "path = \"model.onnx\"",
            &format!(
                "path = {:?}",
                example.join("model.onnx").display().to_string()
            ),
        )
        .replace(
            "\"bootstrap.servers\" = \"localhost:9092\"",
            &format!("\"bootstrap.servers\" = {bootstrap:?}"),
        );
    let path = dir.join("payments.toml");
    std::fs::write(&path, text).expect("config");
    path
}

/// Each declared rule broken once (field, what the dead letter's reason says of it).
fn broken(good: &Payment) -> Vec<(serde_json::Value, &'static str, &'static str)> {
    let mut cases = Vec::new();
    let mut with = |edit: &dyn Fn(&mut serde_json::Value), field, rule| {
        let mut v = good.json();
        v["payment_id"] = serde_json::json!(format!("bad-{}", cases.len()));
        edit(&mut v);
        cases.push((v, field, rule));
    };
    with(
        &|v| v["payment_id"] = serde_json::json!("x".repeat(65)),
        "payment_id",
        "longer than 64 characters",
    );
    with(
        &|v| v["created_at"] = serde_json::json!(-5),
        "created_at",
        "below the minimum 0",
    );
    with(
        &|v| v["card"]["country"] = serde_json::json!("FRA"),
        "card.country",
        "longer than 2 characters",
    );
    with(
        &|v| v["merchant"]["category"] = serde_json::json!("casino"),
        "merchant.category",
        "not one of the allowed values",
    );
    with(
        &|v| v["channel"] = serde_json::json!("fax"),
        "channel",
        "not one of the allowed values",
    );
    with(
        &|v| v["amount"]["value"] = serde_json::json!(250_000.0),
        "amount.value",
        "above the maximum 100000",
    );
    with(
        &|v| v["amount"]["currency"] = serde_json::json!("BTC"),
        "amount.currency",
        "not one of the allowed values",
    );
    with(
        &|v| {
            if let Some(card) = v["card"].as_object_mut() {
                card.remove("id");
            }
        },
        "card.id",
        "missing",
    );
    with(
        &|v| v["amount"]["value"] = serde_json::json!("12.50"),
        "amount.value",
        "",
    );
    with(
        &|v| v["device"] = serde_json::json!("phone"),
        "device",
        "unknown field",
    );
    cases
}

/// The declared payments live on 4 partitions (keyed by card), with chargebacks on their own
/// topic, and the backtest of a Parquet file of the same payments: every valid payment scored
/// once, with the backtest's score bit for bit; each broken rule a dead letter naming the field
/// and the rule; score records carry the declared id, card and time, keyed by the card.
#[test]
fn declared_payments_score_live_as_the_file_backtest_and_broken_rules_are_dead_letters() {
    let n = 3_000;
    let payments = payments(n);
    let frauds = payments.iter().filter(|p| p.fraud).count();
    assert!(
        (20..n / 10).contains(&frauds),
        "{frauds} frauds among {n} payments"
    );
    let dir = tempfile::tempdir().expect("tempdir");

    // The file backtest.
    let broker = Broker::start(&[
        ("payments", 4),
        ("chargebacks", 2),
        ("payment-scores", 4),
        ("payment-alerts", 1),
        ("payments-dead-letter", 1),
    ]);
    let config = write_config(dir.path(), &broker.bootstrap);
    let cfg = PipelineConfig::load(&config).expect("the example config");
    assert!(cfg.problems().is_empty(), "{:#?}", cfg.problems());
    let file = dir.path().join("payments.parquet");
    write_parquet(&payments, &file);
    let history = backtest::load(&cfg, &file).expect("history");
    let replayed = backtest::replay(&cfg, Arc::new(history), &indicatif::ProgressBar::hidden())
        .expect("backtest");
    assert!(replayed.rejected().is_empty(), "{:?}", replayed.rejected());
    let mut expected: HashMap<String, f32> = HashMap::new();
    for b in replayed.scored() {
        let ids = b
            .column_by_name("payment_id")
            .expect("id")
            .as_string::<i32>();
        let scores = b
            .column_by_name("SCORE")
            .expect("score")
            .as_primitive::<Float32Type>();
        for i in 0..b.num_rows() {
            expected.insert(ids.value(i).to_string(), scores.value(i));
        }
    }
    assert_eq!(expected.len(), n, "one backtest score per payment");
    // The features see the declared shape: not every score is the same.
    let distinct: std::collections::BTreeSet<u32> =
        expected.values().map(|s| s.to_bits()).collect();
    assert!(distinct.len() > n / 2, "{} distinct scores", distinct.len());

    // The same payments live, each card's on one partition, the broken ones among them, and
    // a chargeback per fraud reported 30 days on.
    let p = producer(&broker.bootstrap);
    let bad = broken(&payments[n / 2]);
    let mut sent = 0;
    for (i, pay) in payments.iter().enumerate() {
        let body = pay.json().to_string();
        p.send(BaseRecord::to("payments").key(&pay.card).payload(&body))
            .expect("send");
        sent += 1;
        if i == n / 2 {
            for (v, _, _) in &bad {
                let body = v.to_string();
                p.send(BaseRecord::to("payments").key(&pay.card).payload(&body))
                    .expect("send");
            }
        }
        if pay.fraud {
            let report = serde_json::json!({
                "payment_id": pay.id,
                "reported_at": pay.created_at + 30 * 86_400_000,
                "fraud": true,
            })
            .to_string();
            p.send(BaseRecord::to("chargebacks").key(&pay.id).payload(&report))
                .expect("send");
        }
    }
    assert_eq!(sent, n);
    p.flush(Duration::from_secs(30)).expect("flush");
    let mut pipeline = Pipeline::start(&config);
    pipeline.wait_ready();
    let scores_reader = reader(&broker.bootstrap, "payment-scores");
    let _ = collect(&scores_reader, Duration::from_secs(300), |r| r.len() >= n);
    let (ok, _) = pipeline.terminate();
    assert!(ok);
    let read_all = |topic: &str| drain_to_end(&reader(&broker.bootstrap, topic), topic);
    let scores = read_all("payment-scores");
    let dead = read_all("payments-dead-letter");

    let mut live: BTreeMap<String, f32> = BTreeMap::new();
    for s in &scores {
        let v: serde_json::Value = serde_json::from_slice(&s.payload).expect("score json");
        let fields: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            fields,
            [
                "ALERT",
                "MODEL",
                "SCORE",
                "card.id",
                "created_at",
                "payment_id"
            ],
            "a score record carries the declared id, entity and time"
        );
        let id = v["payment_id"].as_str().expect("payment_id").to_string();
        assert_eq!(
            s.key,
            v["card.id"].as_str().expect("card").as_bytes(),
            "keyed by the card"
        );
        assert!(
            v["MODEL"]
                .as_str()
                .is_some_and(|m| m.starts_with("model.onnx@")),
            "{}",
            v["MODEL"]
        );
        let score = v["SCORE"].as_f64().expect("score") as f32;
        assert!(
            live.insert(id.clone(), score).is_none(),
            "{id} scored twice"
        );
    }
    assert_eq!(live.len(), n, "every valid payment scored once");
    let differ: Vec<(&String, f32, Option<&f32>)> = live
        .iter()
        .filter(|(id, s)| expected.get(*id).map(|e| e.to_bits()) != Some(s.to_bits()))
        .map(|(id, s)| (id, *s, expected.get(id)))
        .take(5)
        .collect();
    assert!(
        differ.is_empty(),
        "live differs from the backtest: {differ:?}"
    );

    // Each broken rule: one dead letter, its reason naming the field and the rule.
    assert_eq!(dead.len(), bad.len(), "one dead letter per broken payment");
    for (v, field, rule) in &bad {
        let body = v.to_string();
        let letter = dead
            .iter()
            .find(|d| d.payload == body.as_bytes())
            .unwrap_or_else(|| panic!("no dead letter for {body}"));
        let reason = &letter.headers["riskpipe.error"];
        assert!(
            reason.contains(field) && reason.contains(rule),
            "{field} / {rule}: {reason}"
        );
        let kind = &letter.headers["riskpipe.error.kind"];
        assert!(kind == "invalid" || kind == "schema", "{kind}");
    }
}
