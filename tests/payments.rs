//! A payments stream of another shape than the handbook's, declared by configuration alone
//! (`examples/payments/`): text ids, nested card / merchant / amount objects, an
//! epoch-millisecond time, signed amounts, categorical fields and a chargeback feed that reports
//! frauds only. Live on 4 partitions, in JSON and in Avro, it scores every valid payment as the
//! backtest of a Parquet file of the same payments scores it, bit for bit; each declared rule
//! broken once is a dead letter naming the field and the rule.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::types::Value as AvroValue;
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{Field, Float32Type, Schema};
use rdkafka::producer::{BaseRecord, Producer};
use riskpipe_pipeline::schema_registry::memory::MemoryRegistry;
use riskpipe_pipeline::{PipelineConfig, backtest};
use riskpipe_testkit::Broker;
use support::{Got, Pipeline, collect, drain_to_end, producer, reader, root};

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

/// Payments as JSON (with their truth) written as a history file: each declared field's column
/// holds the member at its path (null where there is none).
fn write_parquet_rows(rows: &[(serde_json::Value, bool)], path: &Path) {
    let at = |v: &serde_json::Value, field: &str| -> serde_json::Value {
        v.pointer(&format!("/{}", field.replace('.', "/")))
            .cloned()
            .unwrap_or(serde_json::Value::Null)
    };
    let text = |field: &str| -> ArrayRef {
        Arc::new(
            rows.iter()
                .map(|(v, _)| at(v, field).as_str().map(str::to_string))
                .collect::<StringArray>(),
        )
    };
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("payment_id", text("payment_id")),
        (
            "created_at",
            Arc::new(
                rows.iter()
                    .map(|(v, _)| at(v, "created_at").as_i64())
                    .collect::<Int64Array>(),
            ),
        ),
        ("card.id", text("card.id")),
        ("card.country", text("card.country")),
        ("merchant.id", text("merchant.id")),
        ("merchant.category", text("merchant.category")),
        ("merchant.country", text("merchant.country")),
        ("channel", text("channel")),
        (
            "amount.value",
            Arc::new(
                rows.iter()
                    .map(|(v, _)| at(v, "amount.value").as_f64())
                    .collect::<Float64Array>(),
            ),
        ),
        ("amount.currency", text("amount.currency")),
    ];
    let mut columns = columns;
    // The Kafka record timestamp as a history holds it, where the rows carry one.
    if rows.iter().any(|(v, _)| v.get("kafka_time").is_some()) {
        columns.push((
            "kafka_time",
            Arc::new(
                rows.iter()
                    .map(|(v, _)| at(v, "kafka_time").as_i64())
                    .collect::<Int64Array>(),
            ),
        ));
    }
    columns.extend([(
        "fraud",
        Arc::new(rows.iter().map(|(_, f)| Some(*f)).collect::<BooleanArray>()) as ArrayRef,
    )]);
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

/// The example's config with its files at absolute paths, `bootstrap` as the broker and
/// `extra` appended.
fn write_config(dir: &Path, bootstrap: &str, extra: &str) -> std::path::PathBuf {
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
    std::fs::write(&path, text + extra).expect("config");
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

/// Each scored payment's score in a replay.
fn scores_by_payment(replayed: &backtest::Replayed) -> HashMap<String, f32> {
    let mut scores = HashMap::new();
    for b in replayed.scored() {
        let ids = b
            .column_by_name("payment_id")
            .expect("id")
            .as_string::<i32>();
        let score = b
            .column_by_name("SCORE")
            .expect("score")
            .as_primitive::<Float32Type>();
        for i in 0..b.num_rows() {
            scores.insert(ids.value(i).to_string(), score.value(i));
        }
    }
    scores
}

/// The backtest of a Parquet file of `payments` through `config`: each payment's score.
fn backtest_scores(config: &Path, payments: &[Payment], dir: &Path) -> HashMap<String, f32> {
    let rows: Vec<(serde_json::Value, bool)> =
        payments.iter().map(|p| (p.json(), p.fraud)).collect();
    backtest_scores_of(config, &rows, dir)
}

/// The backtest of a Parquet file of `payments` (as JSON, with their truth) through `config`:
/// each payment's score.
fn backtest_scores_of(
    config: &Path,
    payments: &[(serde_json::Value, bool)],
    dir: &Path,
) -> HashMap<String, f32> {
    let cfg = PipelineConfig::load(config).expect("the example config");
    assert!(cfg.problems().is_empty(), "{:#?}", cfg.problems());
    let file = dir.join("payments.parquet");
    write_parquet_rows(payments, &file);
    let history = backtest::load(&cfg, &file).expect("history");
    let replayed = backtest::replay(&cfg, Arc::new(history), &indicatif::ProgressBar::hidden())
        .expect("backtest");
    assert!(replayed.rejected().is_empty(), "{:?}", replayed.rejected());
    let expected = scores_by_payment(&replayed);
    assert_eq!(
        expected.len(),
        payments.len(),
        "one backtest score per payment"
    );
    // The features see the declared shape: not every score is the same.
    let distinct: std::collections::BTreeSet<u32> =
        expected.values().map(|s| s.to_bits()).collect();
    assert!(
        distinct.len() > payments.len() / 2,
        "{} distinct scores",
        distinct.len()
    );
    expected
}

/// A Parquet history of the payments with each broken rule a file can hold (a typed column
/// cannot hold a text amount, a table no undeclared member of one row) among them: the
/// backtest refuses exactly the broken rows, each with the reason live gives its message (a
/// missing card id, a null in a file, is named as a null), and scores every other payment as
/// the clean backtest does, bit for bit.
#[test]
fn a_file_history_refuses_the_rows_live_refuses_with_the_same_reasons() {
    let n = 3_000;
    let payments = payments(n);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "localhost:9092", "");
    let expected = backtest_scores(&config, &payments, dir.path());
    let bad: Vec<(serde_json::Value, &str, &str)> = broken(&payments[n / 2])
        .into_iter()
        .filter(|(v, field, _)| *field != "device" && !v["amount"]["value"].is_string())
        .collect();
    assert_eq!(bad.len(), 8);
    let mut rows: Vec<(serde_json::Value, bool)> =
        payments.iter().map(|p| (p.json(), p.fraud)).collect();
    let at = n / 2 + 1;
    rows.splice(at..at, bad.iter().map(|(v, _, _)| (v.clone(), false)));
    let file = dir.path().join("broken.parquet");
    write_parquet_rows(&rows, &file);
    let cfg = PipelineConfig::load(&config).expect("config");
    let history = backtest::load(&cfg, &file).expect("history");
    let replayed = backtest::replay(&cfg, Arc::new(history), &indicatif::ProgressBar::hidden())
        .expect("backtest");
    let refused = replayed.rejected();
    assert_eq!(refused.len(), bad.len(), "{refused:#?}");
    for (d, (_, field, rule)) in refused.iter().zip(&bad) {
        let rule = if *rule == "missing" {
            "null where a value is required"
        } else {
            rule
        };
        assert!(
            d.reason.starts_with(&format!("field {field}: {rule}")),
            "{field} / {rule}: {}",
            d.reason
        );
    }
    let got = scores_by_payment(&replayed);
    assert_eq!(got, expected);
}

/// The payments (key, payload) published in order onto `payments`, `bad` after the payment
/// `bad_after`, and a chargeback per fraud onto `chargebacks`; then `config` run live until
/// every valid payment is scored and stopped. The score and dead-letter records.
fn run_live(
    broker: &Broker,
    config: &Path,
    payments: &[(String, Vec<u8>)],
    bad: &[Vec<u8>],
    bad_after: usize,
    reports: &[(String, Vec<u8>)],
) -> (Vec<Got>, Vec<Got>) {
    let published = run_live_with(
        broker,
        config,
        &Live {
            payments,
            stamps: &[],
            bad,
            bad_after,
            reports,
            env: &[],
        },
    );
    (published.scores, published.dead)
}

/// Messages as (key, payload).
type Messages = Vec<(String, Vec<u8>)>;

/// The payments as the team publishes them, each keyed by its card, and a chargeback per fraud
/// (reported 30 days later), keyed by the payment.
fn as_published(payments: &[Payment]) -> (Messages, Messages) {
    let events = payments
        .iter()
        .map(|p| (p.card.clone(), p.json().to_string().into_bytes()))
        .collect();
    let reports = payments
        .iter()
        .filter(|p| p.fraud)
        .map(|p| {
            let report = serde_json::json!({
                "payment_id": p.id,
                "reported_at": p.created_at + 30 * 86_400_000,
                "fraud": true,
            });
            (p.id.clone(), report.to_string().into_bytes())
        })
        .collect();
    (events, reports)
}

/// A live run of the payments example.
struct Live<'a> {
    /// The payments (key, payload), published in order onto `payments`.
    payments: &'a [(String, Vec<u8>)],
    /// Each payment's Kafka record timestamp (ms; none: the producer's clock).
    stamps: &'a [i64],
    /// Broken payments, published after the payment `bad_after`.
    bad: &'a [Vec<u8>],
    bad_after: usize,
    /// The chargebacks (key, payload).
    reports: &'a [(String, Vec<u8>)],
    /// The pipeline's extra environment.
    env: &'a [(&'a str, &'a str)],
}

/// What a live run published: score, dead-letter and alert records.
struct Published {
    scores: Vec<Got>,
    dead: Vec<Got>,
    alerts: Vec<Got>,
}

/// `live` published, then `config` run until every valid payment is scored, and stopped.
fn run_live_with(broker: &Broker, config: &Path, live: &Live<'_>) -> Published {
    let p = producer(&broker.bootstrap);
    let send = |key: &str, body: &[u8], stamp: Option<i64>| {
        let mut record = BaseRecord::to("payments").key(key).payload(body);
        if let Some(t) = stamp {
            record = record.timestamp(t);
        }
        p.send(record).expect("send");
    };
    for (i, (card, body)) in live.payments.iter().enumerate() {
        send(card, body, live.stamps.get(i).copied());
        if i == live.bad_after {
            for body in live.bad {
                send(card, body, live.stamps.get(i).copied());
            }
        }
    }
    for (id, body) in live.reports {
        p.send(BaseRecord::to("chargebacks").key(id).payload(body))
            .expect("send");
    }
    p.flush(Duration::from_secs(30)).expect("flush");
    let mut pipeline = Pipeline::start_with_env(config, live.env);
    pipeline.wait_ready();
    let scores_reader = reader(&broker.bootstrap, "payment-scores");
    let n = live.payments.len();
    let _ = collect(&scores_reader, Duration::from_secs(300), |r| r.len() >= n);
    let (ok, _) = pipeline.terminate();
    assert!(ok);
    let read_all = |topic: &str| drain_to_end(&reader(&broker.bootstrap, topic), topic);
    Published {
        scores: read_all("payment-scores"),
        dead: read_all("payments-dead-letter"),
        alerts: read_all("payment-alerts"),
    }
}

/// Live score records checked (declared id, card and time, keyed by the card, the example's
/// model, once each) against the backtest's scores, bit for bit.
fn check_scores(scores: &[Got], expected: &HashMap<String, f32>) {
    check_scores_timed(scores, expected, "created_at");
}

/// [`check_scores`] of a model other than the example's (its file name).
fn check_scores_of(scores: &[Got], expected: &HashMap<String, f32>, model_file: &str) {
    check_scored(scores, expected, "created_at", model_file);
}

/// [`check_scores`] with the event time declared as `time`.
fn check_scores_timed(scores: &[Got], expected: &HashMap<String, f32>, time: &str) {
    check_scored(scores, expected, time, "model.onnx");
}

/// [`check_scores_timed`] of the model in `model_file`.
fn check_scored(scores: &[Got], expected: &HashMap<String, f32>, time: &str, model_file: &str) {
    let mut live: BTreeMap<String, f32> = BTreeMap::new();
    for s in scores {
        let v: serde_json::Value = serde_json::from_slice(&s.payload).expect("score json");
        let fields: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = vec!["ALERT", "MODEL", "SCORE", "card.id", time, "payment_id"];
        want.sort_unstable();
        assert_eq!(
            fields, want,
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
                .is_some_and(|m| m.starts_with(&format!("{model_file}@"))),
            "{}",
            v["MODEL"]
        );
        let score = v["SCORE"].as_f64().expect("score") as f32;
        assert!(
            live.insert(id.clone(), score).is_none(),
            "{id} scored twice"
        );
    }
    assert_eq!(
        live.len(),
        expected.len(),
        "every valid payment scored once"
    );
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
}

/// Each broken payment (its payload, the field, the rule): one dead letter, its reason naming
/// the field and the rule.
fn check_dead_letters(dead: &[Got], bad: &[(Vec<u8>, &str, &str)]) {
    assert_eq!(dead.len(), bad.len(), "one dead letter per broken payment");
    for (body, field, rule) in bad {
        let letter = dead
            .iter()
            .find(|d| &d.payload == body)
            .unwrap_or_else(|| panic!("no dead letter for {}", String::from_utf8_lossy(body)));
        let reason = &letter.headers["riskpipe.error"];
        assert!(
            reason.contains(field) && reason.contains(rule),
            "{field} / {rule}: {reason}"
        );
        let kind = &letter.headers["riskpipe.error.kind"];
        assert!(kind == "invalid" || kind == "schema", "{kind}");
    }
}

const TOPICS: [(&str, i32); 5] = [
    ("payments", 4),
    ("chargebacks", 2),
    ("payment-scores", 4),
    ("payment-alerts", 1),
    ("payments-dead-letter", 1),
];

/// The declared payments live in JSON on 4 partitions (keyed by card), with chargebacks on
/// their own topic, and the backtest of a Parquet file of the same payments: every valid payment
/// scored once, with the backtest's score bit for bit; each broken rule a dead letter naming the
/// field and the rule; score records carry the declared id, card and time, keyed by the card.
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
    let broker = Broker::start(&TOPICS);
    let config = write_config(dir.path(), &broker.bootstrap, "");
    let expected = backtest_scores(&config, &payments, dir.path());
    let bad: Vec<(Vec<u8>, &str, &str)> = broken(&payments[n / 2])
        .into_iter()
        .map(|(v, field, rule)| (v.to_string().into_bytes(), field, rule))
        .collect();
    let (events, reports) = as_published(&payments);
    let bodies: Vec<Vec<u8>> = bad.iter().map(|b| b.0.clone()).collect();
    let (scores, dead) = run_live(&broker, &config, &events, &bodies, n / 2, &reports);
    check_scores(&scores, &expected);
    check_dead_letters(&dead, &bad);
}

/// The event time taken from the Kafka record's timestamp (`format = "kafka_timestamp"`), three
/// hours after each payment's own `created_at` (so the night flag and windows read other times
/// than the payload's): live on 4 partitions, every payment scores as the backtest of a file
/// holding those timestamps in epoch milliseconds scores it, bit for bit, and differently from a
/// backtest by `created_at` for some payments; the score records carry the declared time
/// column.
#[test]
fn the_kafka_record_timestamp_as_the_event_time_scores_live_as_the_file_backtest() {
    let n = 1_500;
    let payments = payments(n);
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(&TOPICS);
    let by_payload = write_config(dir.path(), &broker.bootstrap, "");
    let by_created_at = backtest_scores(&by_payload, &payments, dir.path());
    let text = std::fs::read_to_string(&by_payload).expect("config");
    for from in [
        r#"time = { field = "created_at", format = "epoch_millis" }"#,
        r#"event_time = "created_at""#,
    ] {
        assert!(text.contains(from), "{from}");
    }
    let config = dir.path().join("stamped.toml");
    std::fs::write(
        &config,
        text.replace(
            r#"time = { field = "created_at", format = "epoch_millis" }"#,
            r#"time = { field = "kafka_time", format = "kafka_timestamp" }"#,
        )
        .replace(
            r#"event_time = "created_at""#,
            r#"event_time = "kafka_time""#,
        ),
    )
    .expect("config");
    const LATER_MS: i64 = 3 * 3_600_000;
    let stamps: Vec<i64> = payments.iter().map(|p| p.created_at + LATER_MS).collect();
    let rows: Vec<(serde_json::Value, bool)> = payments
        .iter()
        .zip(&stamps)
        .map(|(p, &t)| {
            let mut v = p.json();
            v["kafka_time"] = serde_json::json!(t);
            (v, p.fraud)
        })
        .collect();
    let expected = backtest_scores_of(&config, &rows, dir.path());
    let moved = expected
        .iter()
        .filter(|(id, s)| by_created_at.get(*id).map(|e| e.to_bits()) != Some(s.to_bits()))
        .count();
    assert!(moved > n / 20, "{moved} of {n} scores moved with the time");
    let (events, reports) = as_published(&payments);
    let published = run_live_with(
        &broker,
        &config,
        &Live {
            payments: &events,
            stamps: &stamps,
            bad: &[],
            bad_after: 0,
            reports: &reports,
            env: &[],
        },
    );
    assert!(
        published.dead.is_empty(),
        "{} dead letters",
        published.dead.len()
    );
    check_scores_timed(&published.scores, &expected, "kafka_time");
}

/// The card number-like fields of a payments stream kept out of what riskpipe publishes:
/// `card.country` declared sensitive "drop" and `card.id` (the entity, and the topic's key)
/// "pseudonymize". Live on 4 partitions with each declared rule broken once: every dead letter
/// carries its payload without the card's country and with the card id's keyed pseudonym
/// (HMAC-SHA256 under the secret, computed here by hand), keyed by it; alerts carry no
/// country and the pseudonym; scores are keyed by the pseudonym and equal the backtest's.
#[test]
fn sensitive_fields_are_dropped_or_pseudonymized_in_dead_letters_and_alerts() {
    use hmac::{Hmac, Mac};
    let secret = "payments-secret-of-sixteen-bytes";
    let pseudonym = |id: &str| -> String {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(id.as_bytes());
        mac.finalize().into_bytes()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let n = 1_500;
    let payments = payments(n);
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(&TOPICS);
    let plain = write_config(dir.path(), &broker.bootstrap, "");
    let expected = backtest_scores(&plain, &payments, dir.path());
    let text = std::fs::read_to_string(&plain).expect("config");
    let entity = "entity = \"card.id\"\n";
    assert!(text.contains(entity));
    let text = text.replacen(
        entity,
        &format!(
            "{entity}sensitive = {{ \"card.country\" = \"drop\", \"card.id\" = \"pseudonymize\" }}\n"
        ),
        1,
    );
    // A pseudonym needs the secret's section: its absence is a problem validate names.
    let config = dir.path().join("sensitive.toml");
    std::fs::write(&config, &text).expect("config");
    let problems = PipelineConfig::load(&config).expect("config").problems();
    assert!(
        problems.len() == 1 && problems[0].contains("[kafka.pseudonyms]"),
        "{problems:?}"
    );
    std::fs::write(
        &config,
        text + "\n[kafka.pseudonyms]\nsecret_env = \"RISKPIPE_TEST_PAYMENTS_KEY\"\n",
    )
    .expect("config");
    let bad: Vec<(serde_json::Value, &str, &str)> = broken(&payments[n / 2]);
    let bodies: Vec<Vec<u8>> = bad.iter().map(|b| b.0.to_string().into_bytes()).collect();
    let events: Vec<(String, Vec<u8>)> = payments
        .iter()
        .map(|p| (p.card.clone(), p.json().to_string().into_bytes()))
        .collect();
    let published = run_live_with(
        &broker,
        &config,
        &Live {
            payments: &events,
            stamps: &[],
            bad: &bodies,
            bad_after: n / 2,
            reports: &[],
            env: &[("RISKPIPE_TEST_PAYMENTS_KEY", secret)],
        },
    );
    let card = &payments[n / 2].card;
    assert_eq!(
        published.dead.len(),
        bad.len(),
        "one dead letter per broken payment"
    );
    for (original, _, _) in &bad {
        let mut want = original.clone();
        if let Some(c) = want["card"].as_object_mut() {
            c.remove("country");
            if let Some(id) = c.get("id").and_then(|v| v.as_str()).map(pseudonym) {
                c.insert("id".into(), serde_json::json!(id));
            }
        }
        let letter = published
            .dead
            .iter()
            .find(|d| {
                serde_json::from_slice::<serde_json::Value>(&d.payload)
                    .is_ok_and(|v| v["payment_id"] == original["payment_id"])
            })
            .unwrap_or_else(|| panic!("no dead letter for {}", original["payment_id"]));
        let got: serde_json::Value = serde_json::from_slice(&letter.payload).expect("json");
        assert_eq!(got, want, "the dead letter's payload");
        assert_eq!(
            letter.key,
            pseudonym(card).as_bytes(),
            "keyed by the pseudonym"
        );
        let raw = String::from_utf8_lossy(&letter.payload);
        assert!(!raw.contains(card.as_str()), "the card id in {raw}");
    }
    check_scores(&published.scores, &expected);
    let card_of: HashMap<&str, &str> = payments
        .iter()
        .map(|p| (p.id.as_str(), p.card.as_str()))
        .collect();
    assert!(!published.alerts.is_empty(), "no alerts to look at");
    for a in &published.alerts {
        let v: serde_json::Value = serde_json::from_slice(&a.payload).expect("alert json");
        assert!(v.get("card.country").is_none(), "a dropped field in {v}");
        let id = v["payment_id"].as_str().expect("id");
        let want = pseudonym(card_of[id]);
        assert_eq!(v["card.id"], serde_json::json!(want));
        assert_eq!(a.key, want.as_bytes());
    }
}

/// The repartitioned topology with a key of two fields: the card × merchant window of the
/// example re-keyed by merchant × category (which the model reads by its name) behind
/// `[kafka.repartition] by = ["merchant.id", "merchant.category"]`. The first stage keeps the
/// card windows and forwards each row keyed by the merchant (the key's first field), the
/// second computes the merchant × category window: every payment scores as the
/// single-process backtest of the same config, bit for bit. One partition: a window keyed by
/// the second key counts rows in the order they reach the second stage, which is event-time
/// order only from one partition of origin (rows of several interleave as stage one reads
/// them; label risk, whose delay covers that skew, is exact from several).
#[test]
fn a_repartition_by_a_key_of_two_fields_scores_as_the_single_process_backtest() {
    let n = 1_500;
    let payments = payments(n);
    let dir = tempfile::tempdir().expect("tempdir");
    let topics: [(&str, i32); 6] = [
        ("payments", 1),
        ("chargebacks", 1),
        ("payments-by-merchant", 1),
        ("payment-scores", 1),
        ("payment-alerts", 1),
        ("payments-dead-letter", 1),
    ];
    let broker = Broker::start(&topics);
    let plain = write_config(dir.path(), &broker.bootstrap, "");
    let text = std::fs::read_to_string(&plain).expect("config");
    let pair = r#"key = ["card.id", "merchant.id"]"#;
    assert!(text.contains(pair));
    let rekeyed = text.replace(pair, r#"key = ["merchant.id", "merchant.category"]"#);
    let single = dir.path().join("single.toml");
    std::fs::write(&single, &rekeyed).expect("config");
    let expected = backtest_scores(&single, &payments, dir.path());
    // The re-keyed window moves scores: the test sees it.
    let by_card = backtest_scores(&plain, &payments, dir.path());
    assert!(
        expected
            .iter()
            .filter(|(id, s)| by_card[*id] != **s)
            .count()
            > n / 20,
        "the merchant × category window changes scores"
    );
    let config = dir.path().join("repartitioned.toml");
    // A repartition moves each partition's state through checkpoints.
    let ephemeral = "[state]\nephemeral = true\n";
    assert!(rekeyed.contains(ephemeral));
    let state = format!(
        "[state]\ndir = {:?}\ninterval = \"1s\"\n",
        dir.path().join("state").display().to_string()
    );
    std::fs::write(
        &config,
        rekeyed.replace(ephemeral, &state)
            + "\n[kafka.repartition]\nby = [\"merchant.id\", \"merchant.category\"]\ntopic = \"payments-by-merchant\"\nreplication_factor = 1\n",
    )
    .expect("config");
    let problems = PipelineConfig::load(&config).expect("config").problems();
    assert!(problems.is_empty(), "{problems:?}");
    let (events, reports) = as_published(&payments);
    let published = run_live_with(
        &broker,
        &config,
        &Live {
            payments: &events,
            stamps: &[],
            bad: &[],
            bad_after: 0,
            reports: &reports,
            env: &[],
        },
    );
    assert!(
        published.dead.is_empty(),
        "{} dead letters",
        published.dead.len()
    );
    check_scores(&published.scores, &expected);
    let forwarded = drain_to_end(
        &reader(&broker.bootstrap, "payments-by-merchant"),
        "payments-by-merchant",
    );
    assert_eq!(forwarded.len(), n);
    for r in &forwarded {
        let row: serde_json::Value = serde_json::from_slice(&r.payload).expect("JSON row");
        assert_eq!(
            row["merchant.id"].as_str().map(str::as_bytes),
            Some(r.key.as_slice()),
            "forwarded keyed by the key's first field"
        );
    }
}

/// Chargebacks name the payment only (its id, when it was reported, fraud): a merchant fraud
/// rate from them (a label risk keyed by `merchant.id`, in place of the example's card ×
/// merchant count, which the model reads by its name) scores every payment of a Parquet
/// backtest as the same label risk fed labels that carry the merchant and the payment's time
/// does, bit for bit, and otherwise than without it. With `[kafka.repartition]` such labels are
/// refused by `validate`, naming why.
#[test]
fn chargebacks_naming_the_payment_only_feed_label_risk_as_keyed_labels_would() {
    let n = 3_000;
    let payments = payments(n);
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = write_config(dir.path(), "localhost:9092", "");
    let without = backtest_scores(&plain, &payments, dir.path());
    let text = std::fs::read_to_string(&plain).expect("config");
    let window = "[[job.features.windows]]\nkey = [\"card.id\", \"merchant.id\"]\nvalue = \"amount.value\"\nspans = [\"7d\"]\ncount = \"card_merchant_count_{span}\"\n";
    let risk = "[[job.features.label_risk]]\nkey = \"merchant.id\"\ndelay = \"1d\"\nspans = [\"7d\"]\nrisk = \"card_merchant_count_{span}\"\n";
    let delay = "label_delay = \"30d\"";
    let fraud = "  { name = \"fraud\", type = \"boolean\" },\n]";
    for part in [window, delay, fraud] {
        assert!(text.contains(part), "{part}");
    }
    // Chargebacks two hours after the payment: the merchants' risk is known within the data.
    let by_event = text
        .replace(window, risk)
        .replace(delay, "label_delay = \"2h\"");
    let keyed = by_event.replace(
        fraud,
        "  { name = \"fraud\", type = \"boolean\" },\n  { name = \"merchant.id\", type = \"string\" },\n  { name = \"created_at\", type = \"timestamp\" },\n]",
    );
    let scores = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("config");
        let cfg = PipelineConfig::load(&path).expect("config");
        let fraud = riskpipe_pipeline::jobs::fraud::FraudConfig::of(&cfg).expect("fraud");
        (
            fraud.labels_name_the_event(),
            backtest_scores(&path, &payments, dir.path()),
        )
    };
    let (naming, from_ids) = scores("by-event.toml", &by_event);
    let (naming_keyed, from_keyed) = scores("keyed.toml", &keyed);
    assert!(naming && !naming_keyed);
    assert_eq!(from_ids, from_keyed, "the same scores from either labels");
    let moved = from_ids
        .iter()
        .filter(|(id, s)| without[*id].to_bits() != s.to_bits())
        .count();
    assert!(
        moved > n / 20,
        "{moved} of {n} scores moved with the merchants' risk"
    );

    let repartitioned = dir.path().join("repartitioned.toml");
    std::fs::write(
        &repartitioned,
        by_event.replace("[state]\nephemeral = true\n", "[state]\ndir = \"state\"\n")
            + "\n[kafka.repartition]\nby = \"merchant.id\"\n",
    )
    .expect("config");
    let problems = PipelineConfig::load(&repartitioned)
        .expect("config")
        .problems();
    assert!(
        problems.iter().any(|p| p.contains("name their event only")),
        "{problems:?}"
    );
}

/// The payments team's Avro writer schema: its own record names and namespace.
const PAYMENT_AVRO: &str = r#"{"type": "record", "name": "Payment", "namespace": "com.acme.payments", "fields": [
    {"name": "payment_id", "type": "string"},
    {"name": "created_at", "type": "long"},
    {"name": "card", "type": {"type": "record", "name": "Card", "fields": [
        {"name": "id", "type": "string"}, {"name": "country", "type": "string"}]}},
    {"name": "merchant", "type": {"type": "record", "name": "Merchant", "fields": [
        {"name": "id", "type": "string"}, {"name": "category", "type": "string"},
        {"name": "country", "type": ["null", "string"], "default": null}]}},
    {"name": "channel", "type": "string"},
    {"name": "amount", "type": {"type": "record", "name": "Amount", "fields": [
        {"name": "value", "type": "double"}, {"name": "currency", "type": "string"}]}}
]}"#;

const CHARGEBACK_AVRO: &str = r#"{"type": "record", "name": "Chargeback", "namespace": "com.acme.payments", "fields": [
    {"name": "payment_id", "type": "string"},
    {"name": "reported_at", "type": "long"},
    {"name": "fraud", "type": "boolean"}
]}"#;

/// A payment's JSON as the Avro writer writes it (`None`: the writer schema cannot say it, e.g.
/// a member it lacks or a text amount).
fn avro_of(v: &serde_json::Value) -> Option<AvroValue> {
    let text = |v: &serde_json::Value| v.as_str().map(|s| AvroValue::String(s.to_string()));
    let known = [
        "payment_id",
        "created_at",
        "card",
        "merchant",
        "channel",
        "amount",
    ];
    if v.as_object()?.keys().any(|k| !known.contains(&k.as_str())) {
        return None;
    }
    let country = match &v["merchant"]["country"] {
        serde_json::Value::Null => AvroValue::Union(0, Box::new(AvroValue::Null)),
        c => AvroValue::Union(1, Box::new(text(c)?)),
    };
    Some(AvroValue::Record(vec![
        ("payment_id".into(), text(&v["payment_id"])?),
        (
            "created_at".into(),
            AvroValue::Long(v["created_at"].as_i64()?),
        ),
        (
            "card".into(),
            AvroValue::Record(vec![
                ("id".into(), text(&v["card"]["id"])?),
                ("country".into(), text(&v["card"]["country"])?),
            ]),
        ),
        (
            "merchant".into(),
            AvroValue::Record(vec![
                ("id".into(), text(&v["merchant"]["id"])?),
                ("category".into(), text(&v["merchant"]["category"])?),
                ("country".into(), country),
            ]),
        ),
        ("channel".into(), text(&v["channel"])?),
        (
            "amount".into(),
            AvroValue::Record(vec![
                (
                    "value".into(),
                    AvroValue::Double(v["amount"]["value"].as_f64()?),
                ),
                ("currency".into(), text(&v["amount"]["currency"])?),
            ]),
        ),
    ]))
}

/// The same payments live in Avro (the team's own writer schemas in a schema registry, read by
/// the reader riskpipe makes from the declaration), scores published as JSON: every valid
/// payment scored as the file backtest scores it, bit for bit; each broken rule an Avro writer
/// can express a dead letter naming the field and the rule, as in JSON. Avro scores are refused
/// by `validate`: their field names (`card.id`) are no Avro names.
#[test]
fn declared_payments_in_avro_score_live_as_the_file_backtest() {
    let n = 3_000;
    let payments = payments(n);
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(&TOPICS);
    let registry = MemoryRegistry::new(None);
    let url = support::serve_registry(registry.clone());
    let payment_schema = apache_avro::Schema::parse_str(PAYMENT_AVRO).expect("payment schema");
    let payment_id = registry
        .register("payments-value", PAYMENT_AVRO)
        .expect("register");
    let report_schema = apache_avro::Schema::parse_str(CHARGEBACK_AVRO).expect("chargeback schema");
    let report_id = registry
        .register("chargebacks-value", CHARGEBACK_AVRO)
        .expect("register");
    let config = write_config(
        dir.path(),
        &broker.bootstrap,
        &format!(
            "\n[kafka.schema_registry]\nurl = {url:?}\n\n[kafka.formats]\nevents = \"avro\"\nlabels = \"avro\"\n"
        ),
    );
    // Scores in Avro too: their fields (card.id) are no Avro names, and validate says so.
    let all_avro = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        all_avro.path(),
        &broker.bootstrap,
        &format!("\n[kafka.schema_registry]\nurl = {url:?}\n"),
    );
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        text.replace("format = \"json\"", "format = \"avro\""),
    )
    .expect("config");
    let problems = PipelineConfig::load(&path).expect("config").problems();
    for topic in ["payment-scores", "payment-alerts"] {
        assert!(
            problems
                .iter()
                .any(|p| p.contains(&format!("topic {topic:?} is Avro"))
                    && p.contains("\"card.id\"")
                    && p.contains("[kafka.formats]")),
            "{topic}: {problems:#?}"
        );
    }
    let expected = backtest_scores(&config, &payments, dir.path());
    let bad: Vec<(Vec<u8>, &str, &str)> = broken(&payments[n / 2])
        .into_iter()
        .filter_map(|(v, field, rule)| {
            Some((
                support::framed(payment_id, &payment_schema, avro_of(&v)?),
                field,
                rule,
            ))
        })
        .collect();
    assert_eq!(bad.len(), 7, "the rules an Avro writer can break");
    let reports: Vec<(String, Vec<u8>)> = payments
        .iter()
        .filter(|p| p.fraud)
        .map(|p| {
            let report = AvroValue::Record(vec![
                ("payment_id".into(), AvroValue::String(p.id.clone())),
                (
                    "reported_at".into(),
                    AvroValue::Long(p.created_at + 30 * 86_400_000),
                ),
                ("fraud".into(), AvroValue::Boolean(true)),
            ]);
            (
                p.id.clone(),
                support::framed(report_id, &report_schema, report),
            )
        })
        .collect();
    let events: Vec<(String, Vec<u8>)> = payments
        .iter()
        .map(|p| {
            let v = avro_of(&p.json()).expect("a valid payment");
            (
                p.card.clone(),
                support::framed(payment_id, &payment_schema, v),
            )
        })
        .collect();
    let bodies: Vec<Vec<u8>> = bad.iter().map(|b| b.0.clone()).collect();
    let (scores, dead) = run_live(&broker, &config, &events, &bodies, n / 2, &reports);
    check_scores(&scores, &expected);
    check_dead_letters(&dead, &bad);
}

/// The `[model]` section binding an exported model of the example (`make_exported_models.py`):
/// its seven named inputs, each to the declared field or feature it was fitted on.
fn exported_model(file: &str) -> String {
    format!(
        r#"path = {:?}

[model.inputs]
merchant_category = "merchant.category"
channel = "channel"
card_count_1h = "card_count_1h"
amount = "amount.value"
card_mean_amount_7days = "card_mean_amount_7days"
night = "night"
card_merchant_count_7days = "card_merchant_count_7days"
"#,
        root()
            .join("examples/payments")
            .join(file)
            .display()
            .to_string()
    )
}

/// Each payment's score in a backtest (in a directory of `dir` of its own) of the example with
/// the exported model `file` as its `[model]`.
fn exported_backtest(file: &str, payments: &[Payment], dir: &Path) -> HashMap<String, f32> {
    let d = dir.join(file);
    std::fs::create_dir_all(&d).expect("dir");
    let config = write_config(&d, "localhost:9", "");
    replace_model(&config, &format!("[model]\n{}", exported_model(file)));
    backtest_scores(&config, payments, &d)
}

/// `config` with its `[model]` section (up to `[alerts]`) replaced by `section`.
fn replace_model(config: &Path, section: &str) {
    let text = std::fs::read_to_string(config).expect("config");
    let (from, to) = (
        text.find("\n[model]\n").expect("[model]"),
        text.find("\n[alerts]\n").expect("[alerts]"),
    );
    let text = format!("{}\n{section}\n{}", &text[..from], &text[to..]);
    std::fs::write(config, text).expect("config");
}

/// An scikit-learn pipeline exported with skl2onnx (one-hot encoder over the raw merchant
/// category and channel strings, a scaler, a logistic regression; string, int64 and float
/// inputs bound by name) scored live, from JSON and from Avro on 4 partitions each, as the
/// backtest of a Parquet file of the same payments scores it, bit for bit; alerts' reasons name
/// the categorical inputs where they mattered, with their value as text.
#[test]
fn an_exported_sklearn_pipeline_reading_raw_strings_scores_live_as_the_file_backtest() {
    let n = 3_000;
    let payments = payments(n);
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start(&TOPICS);
    let config = write_config(dir.path(), &broker.bootstrap, "");
    replace_model(
        &config,
        &format!("[model]\n{}", exported_model("sklearn_pipeline.onnx")),
    );
    let expected = backtest_scores(&config, &payments, dir.path());
    let alerted = expected.values().filter(|s| **s >= 0.5).count();
    assert!(
        (10..n / 5).contains(&alerted),
        "{alerted} alerts among {n} payments"
    );
    let (events, reports) = as_published(&payments);
    let published = run_live_with(
        &broker,
        &config,
        &Live {
            payments: &events,
            stamps: &[],
            bad: &[],
            bad_after: 0,
            reports: &reports,
            env: &[],
        },
    );
    check_scores_of(&published.scores, &expected, "sklearn_pipeline.onnx");
    assert_eq!(
        published.alerts.len(),
        alerted,
        "one alert per score >= 0.5"
    );
    // Reasons: a categorical input's carries its value as text and no number; a number's the
    // reverse. Some alert names a categorical input.
    let mut text_reasons = 0;
    for a in &published.alerts {
        let v: serde_json::Value = serde_json::from_slice(&a.payload).expect("alert json");
        let reasons = v["REASONS"].as_array().expect("reasons");
        assert!(!reasons.is_empty() && reasons.len() <= 2, "{v}");
        for r in reasons {
            let feature = r["feature"].as_str().expect("feature");
            if ["merchant.category", "channel"].contains(&feature) {
                text_reasons += 1;
                assert_eq!(r["text"], v[feature], "{v}");
                assert!(r.get("value").is_none(), "{v}");
            } else {
                assert!(r["value"].is_number() && r.get("text").is_none(), "{v}");
            }
            assert!(r["contribution"].as_f64().expect("contribution") > 0.0);
        }
    }
    assert!(text_reasons > 0, "no alert names a categorical input");

    // The same payments in Avro, through a schema registry, on a broker of their own.
    let broker = Broker::start(&TOPICS);
    let registry = MemoryRegistry::new(None);
    let url = support::serve_registry(registry.clone());
    let payment_schema = apache_avro::Schema::parse_str(PAYMENT_AVRO).expect("payment schema");
    let payment_id = registry
        .register("payments-value", PAYMENT_AVRO)
        .expect("register");
    let avro_dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        avro_dir.path(),
        &broker.bootstrap,
        &format!(
            "\n[kafka.schema_registry]\nurl = {url:?}\n\n[kafka.formats]\nevents = \"avro\"\n"
        ),
    );
    replace_model(
        &config,
        &format!("[model]\n{}", exported_model("sklearn_pipeline.onnx")),
    );
    let events: Vec<(String, Vec<u8>)> = payments
        .iter()
        .map(|p| {
            let v = avro_of(&p.json()).expect("a valid payment");
            (
                p.card.clone(),
                support::framed(payment_id, &payment_schema, v),
            )
        })
        .collect();
    let (scores, dead) = run_live(&broker, &config, &events, &[], 0, &reports);
    assert!(dead.is_empty(), "{} dead letters", dead.len());
    check_scores_of(&scores, &expected, "sklearn_pipeline.onnx");
}

/// The two exported models (the scikit-learn pipeline, and LightGBM with two categorical
/// features) as an ensemble, and the LightGBM model as the pipeline's challenger: the
/// ensemble's score of each payment is the mean of each model's own backtest score, and the
/// challenger's score is its own backtest's, bit for bit.
#[test]
fn exported_models_with_text_inputs_combine_as_an_ensemble_and_a_challenger() {
    let payments = payments(2_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let sklearn = exported_backtest("sklearn_pipeline.onnx", &payments, dir.path());
    let gbm = exported_backtest("lightgbm_categorical.onnx", &payments, dir.path());
    let differ = sklearn
        .iter()
        .filter(|(id, s)| gbm[*id].to_bits() != s.to_bits())
        .count();
    assert!(
        differ > payments.len() / 2,
        "the two models differ: {differ}"
    );

    let d = dir.path().join("ensemble");
    std::fs::create_dir_all(&d).expect("dir");
    let config = write_config(&d, "localhost:9", "");
    replace_model(
        &config,
        &format!(
            "[[model]]\n{}\n[[model]]\n{}\n[ensemble]\ncombine = \"mean\"\n",
            exported_model("sklearn_pipeline.onnx"),
            exported_model("lightgbm_categorical.onnx")
        ),
    );
    let ensemble = backtest_scores(&config, &payments, &d);
    for (id, s) in &ensemble {
        let mean = ((f64::from(sklearn[id]) + f64::from(gbm[id])) / 2.0) as f32;
        assert_eq!(s.to_bits(), mean.to_bits(), "{id}: {s} vs mean {mean}");
    }

    let d = dir.path().join("challenger");
    std::fs::create_dir_all(&d).expect("dir");
    let config = write_config(&d, "localhost:9", "");
    let challenger = exported_model("lightgbm_categorical.onnx")
        .replace("[model.inputs]", "[challenger.inputs]");
    replace_model(
        &config,
        &format!(
            "[model]\n{}\n[challenger]\n{challenger}",
            exported_model("sklearn_pipeline.onnx")
        ),
    );
    let cfg = PipelineConfig::load(&config).expect("config");
    assert!(cfg.problems().is_empty(), "{:#?}", cfg.problems());
    let file = d.join("payments.parquet");
    let rows: Vec<(serde_json::Value, bool)> =
        payments.iter().map(|p| (p.json(), p.fraud)).collect();
    write_parquet_rows(&rows, &file);
    let history = backtest::load(&cfg, &file).expect("history");
    let replayed = backtest::replay(&cfg, Arc::new(history), &indicatif::ProgressBar::hidden())
        .expect("backtest");
    assert_eq!(
        scores_by_payment(&replayed),
        sklearn,
        "the champion as alone"
    );
    let mut seen = 0;
    for b in replayed.scored() {
        let ids = b
            .column_by_name("payment_id")
            .expect("id")
            .as_string::<i32>();
        let theirs = b
            .column_by_name("CHALLENGER_SCORE")
            .expect("challenger score")
            .as_primitive::<Float32Type>();
        for i in 0..b.num_rows() {
            assert_eq!(
                theirs.value(i).to_bits(),
                gbm[ids.value(i)].to_bits(),
                "{}",
                ids.value(i)
            );
            seen += 1;
        }
    }
    assert_eq!(seen, payments.len());
}

/// Drift of a model's text inputs: a backtest with a split monitors the columns the model reads,
/// and bins the merchant category and the channel by their values (every value the payments
/// hold gets a bin), with a PSI per day for each.
#[test]
fn a_backtest_monitors_the_drift_of_the_models_text_inputs_by_their_values() {
    let payments = payments(2_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        "localhost:9",
        "\n[job.backtest]\ntrain_start = \"2024-07-01\"\ntrain_days = 2\ndelay_days = 0\ntest_days = 2\n",
    );
    replace_model(
        &config,
        &format!("[model]\n{}", exported_model("sklearn_pipeline.onnx")),
    );
    let cfg = PipelineConfig::load(&config).expect("config");
    assert!(cfg.problems().is_empty(), "{:#?}", cfg.problems());
    let file = dir.path().join("payments.parquet");
    let rows: Vec<(serde_json::Value, bool)> =
        payments.iter().map(|p| (p.json(), p.fraud)).collect();
    write_parquet_rows(&rows, &file);
    let history = backtest::load(&cfg, &file).expect("history");
    let out = dir.path().join("out");
    backtest::run(
        &cfg,
        Arc::new(history),
        std::time::Instant::now(),
        &out,
        &backtest::Options::default(),
    )
    .expect("backtest");
    let reference: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("drift_reference.json")).expect("drift reference"),
    )
    .expect("json");
    let columns = reference["columns"].as_array().expect("columns");
    let bins = |name: &str| {
        columns
            .iter()
            .find(|c| c[0] == name)
            .unwrap_or_else(|| panic!("{name} not monitored: {reference}"))[1]
            .clone()
    };
    let mut categories: Vec<&str> = CATEGORIES.to_vec();
    categories.sort_unstable();
    assert_eq!(
        bins("merchant.category")["categories"],
        serde_json::json!(categories)
    );
    let channel = bins("channel");
    assert_eq!(
        channel["categories"],
        serde_json::json!(["atm", "online", "pos"])
    );
    let shares: f64 = channel["shares"]
        .as_array()
        .expect("shares")
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .sum();
    assert!((shares - 1.0).abs() < 1e-9, "{channel}");
    // A number keeps its deciles.
    assert!(bins("amount.value").get("categories").is_none());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("report"))
            .expect("json");
    let drift = &report["drift"];
    let at = drift["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .position(|c| c == "channel")
        .expect("channel in the drift report");
    let psi = drift["psi"][at].as_array().expect("psi");
    assert!(
        !psi.is_empty() && psi.iter().all(|p| p.as_f64().is_some_and(f64::is_finite)),
        "{psi:?}"
    );
}

/// A model that reads text hot-reloaded under load: the exported scikit-learn pipeline scores
/// while payments stream in, the LightGBM model (the same named inputs) replaces its file and
/// `POST /admin/reload` swaps it in between two batches. Every payment is scored once, by the
/// model its record names, as that model's backtest scores it, bit for bit; both models scored.
#[test]
fn a_model_reading_text_is_hot_reloaded_under_load() {
    let n = 3_000;
    let payments = payments(n);
    let dir = tempfile::tempdir().expect("tempdir");
    let example = root().join("examples/payments");
    let (sklearn, gbm) = (
        example.join("sklearn_pipeline.onnx"),
        example.join("lightgbm_categorical.onnx"),
    );
    let (expected_old, expected_new) = (
        exported_backtest("sklearn_pipeline.onnx", &payments, dir.path()),
        exported_backtest("lightgbm_categorical.onnx", &payments, dir.path()),
    );
    let broker = Broker::start(&TOPICS);
    let model = dir.path().join("model.onnx");
    std::fs::copy(&sklearn, &model).expect("model");
    let config = write_config(
        dir.path(),
        &broker.bootstrap,
        "\n[observability]\nadmin = true\n",
    );
    replace_model(
        &config,
        &format!("[model]\n{}", exported_model("sklearn_pipeline.onnx")).replace(
            &format!("{:?}", sklearn.display().to_string()),
            &format!("{:?}", model.display().to_string()),
        ),
    );
    let label = |file: &Path| {
        format!(
            "model.onnx@{}",
            riskpipe_models::version_of(&std::fs::read(file).expect("model"))
        )
    };
    let (old, new) = (label(&sklearn), label(&gbm));

    let mut pipeline = Pipeline::start(&config);
    pipeline.wait_ready();
    let (events, _) = as_published(&payments);
    let bootstrap = broker.bootstrap.clone();
    let feeding = std::thread::spawn(move || {
        let p = producer(&bootstrap);
        for (card, body) in &events {
            p.send(BaseRecord::to("payments").key(card).payload(body))
                .expect("send");
            std::thread::sleep(Duration::from_micros(2_000));
        }
        p.flush(Duration::from_secs(30)).expect("flush");
    });
    let scores = reader(&broker.bootstrap, "payment-scores");
    let mut got = collect(&scores, Duration::from_secs(120), |r| r.len() >= n / 4);
    // Replaced by a rename, as docs/guides/models.md advises.
    let next = dir.path().join("next.onnx");
    std::fs::copy(&gbm, &next).expect("copy");
    std::fs::rename(&next, &model).expect("rename");
    assert_eq!(pipeline.post("/admin/reload").0, 202);
    pipeline.wait_metric("riskpipe_model_reloads_total", "result=\"swapped\"", 1.0);
    feeding.join().expect("feeder");
    let have = got.len();
    got.extend(collect(&scores, Duration::from_secs(300), |r| {
        r.len() + have >= n
    }));
    let (ok, _) = pipeline.terminate();
    assert!(ok, "SIGTERM exits 0");
    got.extend(support::drain(&scores, Duration::from_secs(1)));

    let mut seen = std::collections::BTreeSet::new();
    let mut by_new = 0;
    for s in &got {
        let v: serde_json::Value = serde_json::from_slice(&s.payload).expect("score json");
        let id = v["payment_id"].as_str().expect("id").to_string();
        let score = v["SCORE"].as_f64().expect("score") as f32;
        let by = v["MODEL"].as_str().expect("model");
        let expected = if by == old {
            &expected_old
        } else if by == new {
            by_new += 1;
            &expected_new
        } else {
            panic!("{id} scored by {by}, neither {old} nor {new}");
        };
        assert_eq!(
            score.to_bits(),
            expected[&id].to_bits(),
            "{id} scored by {by} differs from its backtest"
        );
        assert!(seen.insert(id.clone()), "{id} scored twice");
    }
    assert_eq!(seen.len(), n, "every payment scored once");
    assert!(
        by_new > 0 && by_new < n,
        "both models scored: {by_new} by the new one"
    );
}

/// Declared outputs: `[job.outputs]` keys scores and alerts by the channel and lists what each
/// carries (declared fields and a feature). Live, scores in Avro through a schema registry and
/// alerts in JSON: each score record holds exactly the id, the listed columns, the time and
/// riskpipe's own, keyed by the channel, its score the backtest's bit for bit; the Avro schema
/// riskpipe registered is the one `riskpipe schemas` writes (the registry gives it the same id),
/// and every alert holds the listed columns and validates against the JSON Schema it writes.
#[test]
fn declared_outputs_carry_the_listed_columns_keyed_by_the_declared_field() {
    let n = 3_000;
    let payments = payments(n);
    let dir = tempfile::tempdir().expect("tempdir");
    let outputs = "\n[job.outputs]\nkey = \"channel\"\nscores = [\"channel\", \"card_count_1h\"]\nalerts = [\"merchant.id\", \"merchant.category\", \"channel\", \"amount.value\", \"card_count_1h\"]\n";
    let plain = write_config(dir.path(), "localhost:9", "");
    let expected = backtest_scores(&plain, &payments, dir.path());
    let broker = Broker::start(&TOPICS);
    let registry = MemoryRegistry::new(None);
    let url = support::serve_registry(registry.clone());
    let live_dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        live_dir.path(),
        &broker.bootstrap,
        &format!(
            "{outputs}\n[kafka.schema_registry]\nurl = {url:?}\n\n[kafka.formats]\nscores = \"avro\"\n"
        ),
    );
    let cfg = PipelineConfig::load(&config).expect("config");
    assert!(cfg.problems().is_empty(), "{:#?}", cfg.problems());
    let schemas = cfg.job.kind().record_schemas(&cfg).expect("schemas");
    let (score_schema, alert_schema) = (&schemas[0], &schemas[1]);
    assert_eq!(
        (score_schema.topic.as_str(), alert_schema.topic.as_str()),
        ("payment-scores", "payment-alerts")
    );
    let (events, reports) = as_published(&payments);
    let published = run_live_with(
        &broker,
        &config,
        &Live {
            payments: &events,
            stamps: &[],
            bad: &[],
            bad_after: 0,
            reports: &reports,
            env: &[],
        },
    );

    let avro = apache_avro::Schema::parse_str(&score_schema.avro_schema).expect("avro schema");
    let id = registry
        .register("payment-scores-value", &score_schema.avro_schema)
        .expect("register");
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(&avro)
        .build()
        .expect("reader");
    let mut seen = std::collections::BTreeSet::new();
    for s in &published.scores {
        assert_eq!(s.payload[0], 0, "Confluent framing");
        assert_eq!(
            u32::from_be_bytes(s.payload[1..5].try_into().expect("id")),
            id,
            "the registered schema is the generated one"
        );
        let AvroValue::Record(fields) = reader
            .read_value(&mut &s.payload[5..])
            .expect("score datum")
        else {
            panic!("no record");
        };
        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "payment_id",
                "channel",
                "card_count_1h",
                "created_at",
                "SCORE",
                "ALERT",
                "MODEL"
            ]
        );
        let (AvroValue::String(payment), AvroValue::String(channel), AvroValue::Double(score)) =
            (&fields[0].1, &fields[1].1, &fields[4].1)
        else {
            panic!("{fields:?}");
        };
        assert_eq!(s.key, channel.as_bytes(), "keyed by the channel");
        assert_eq!(
            (*score as f32).to_bits(),
            expected[payment].to_bits(),
            "{payment}"
        );
        assert!(seen.insert(payment.clone()), "{payment} scored twice");
    }
    assert_eq!(seen.len(), n, "every payment scored once");

    let json: serde_json::Value =
        serde_json::from_str(&alert_schema.json_schema).expect("json schema");
    let validator = jsonschema::validator_for(&json).expect("a JSON Schema");
    assert!(!published.alerts.is_empty());
    for a in &published.alerts {
        let v: serde_json::Value = serde_json::from_slice(&a.payload).expect("alert json");
        let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{v}: {errors:?}");
        let names: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = vec![
            "payment_id",
            "merchant.id",
            "merchant.category",
            "channel",
            "amount.value",
            "card_count_1h",
            "created_at",
            "SCORE",
            "THRESHOLD",
            "MODEL",
            "REASONS",
        ];
        want.sort_unstable();
        let mut names = names;
        names.sort_unstable();
        assert_eq!(names, want);
        assert_eq!(a.key, v["channel"].as_str().expect("channel").as_bytes());
    }
    // An alert without a listed column is refused by the schema (it can fail).
    let mut short: serde_json::Value =
        serde_json::from_slice(&published.alerts[0].payload).expect("alert");
    short
        .as_object_mut()
        .expect("object")
        .remove("card_count_1h");
    assert!(!validator.is_valid(&short));
}

/// `[job.outputs]` problems, every one at once.
#[test]
fn declared_outputs_that_do_not_fit_are_refused_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        "localhost:9",
        "\n[job.outputs]\nkey = \"nope\"\nscores = [\"channel\", \"channel\", \"SCORE\", \"payment_id\"]\nalerts = [\"no_such_feature\"]\n",
    );
    let problems = PipelineConfig::load(&config).expect("config").problems();
    for want in [
        "job.outputs.key \"nope\" is no declared field",
        "job.outputs.scores: \"channel\" is listed twice",
        "job.outputs.scores: \"SCORE\" is a column riskpipe adds itself",
        "job.outputs.scores: \"payment_id\" is the event's id or time",
        "job.outputs.alerts: \"no_such_feature\" is neither a declared field nor a feature",
    ] {
        assert!(
            problems.iter().any(|p| p.contains(want)),
            "missing {want:?} in {problems:#?}"
        );
    }
}

/// Every aggregation kind, keyed by the card over an hour and a day (with the payment in its
/// window and without, over every payment and over two filters), and an expression over them,
/// published in each score record (`[job.outputs] scores`): live on 4 partitions with
/// chargebacks, every payment's aggregations equal the file backtest's bit for bit.
#[test]
fn every_aggregation_kind_live_equals_the_backtest_bit_for_bit() {
    let n = 3_000;
    let payments = payments(n);
    let mut extra = String::new();
    let mut names = Vec::new();
    // Every registered kind; a kind that reads text counts merchant categories.
    for registered in riskpipe_operators::aggregate::kinds() {
        let kind = registered.name();
        let value = match (registered.reads_value(), registered.reads_text()) {
            (false, _) => String::new(),
            (true, false) => "value = \"amount.value\"\n".into(),
            (true, true) => "value = \"merchant.category\"\n".into(),
        };
        let value = format!(
            "{value}{}",
            riskpipe_operators::aggregate::example_parameters(registered)
        );
        // One column per value for a kind that writes several (last_k: k = 3).
        let columns: Vec<String> = match value.contains("k =") {
            true => (1..=3).map(|i| format!("_{i}")).collect(),
            false => vec![String::new()],
        };
        let template = if columns.len() > 1 { "_{i}" } else { "" };
        let mut declare = |name: &str, more: &str| {
            extra.push_str(&format!(
                "\n[[job.features.aggregate]]\nkey = \"card.id\"\nkind = \"{kind}\"\n{value}spans = [\"1h\", \"1d\"]\nname = \"{name}{template}_{{span}}\"\n{more}"
            ));
            for s in ["1h", "1day"] {
                names.extend(columns.iter().map(|c| format!("{name}{c}_{s}")));
            }
        };
        for current in [true, false] {
            if !registered.takes_current() && !current {
                continue;
            }
            let name = format!("{kind}_{}", if current { "with" } else { "before" });
            let extra = match registered.takes_current() {
                false => String::new(),
                true => format!("include_current = {current}\n"),
            };
            declare(&name, &extra);
        }
        // Online payments alone, and payments at night where the card holder lives (an
        // expression the filter reads).
        for (filter, label) in [("channel = 'online'", "online"), ("at_night", "night")] {
            declare(
                &format!("{kind}_{label}"),
                &format!("filter = \"{filter}\"\n"),
            );
        }
    }
    // Expressions: one the aggregations read (declared after them), one reading aggregations.
    extra.push_str(
        "\n[[job.features.sql]]\nname = \"z\"\nexpr = \"(\\\"amount.value\\\" - mean_with_1day) / (stddev_with_1day + 1)\"\n\
         \n[[job.features.sql]]\nname = \"at_night\"\nexpr = \"date_part('hour', created_at AT TIME ZONE 'Europe/Paris') < 6\"\n",
    );
    names.push("z".into());
    extra.push_str(&format!("\n[job.outputs]\nscores = {names:?}\n"));

    // The backtest's aggregations per payment, as bits.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "localhost:9", &extra);
    let cfg = PipelineConfig::load(&config).expect("config");
    assert!(cfg.problems().is_empty(), "{:#?}", cfg.problems());
    let file = dir.path().join("payments.parquet");
    let rows: Vec<(serde_json::Value, bool)> =
        payments.iter().map(|p| (p.json(), p.fraud)).collect();
    write_parquet_rows(&rows, &file);
    let history = backtest::load(&cfg, &file).expect("history");
    let replayed = backtest::replay(&cfg, Arc::new(history), &indicatif::ProgressBar::hidden())
        .expect("backtest");
    let mut expected: HashMap<String, Vec<u64>> = HashMap::new();
    for b in replayed.scored() {
        let ids = b
            .column_by_name("payment_id")
            .expect("id")
            .as_string::<i32>();
        let columns: Vec<Vec<u64>> = names
            .iter()
            .map(|name| {
                let c = arrow::compute::cast(
                    b.column_by_name(name).expect("feature"),
                    &arrow::datatypes::DataType::Float64,
                )
                .expect("cast");
                c.as_primitive::<arrow::datatypes::Float64Type>()
                    .values()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            })
            .collect();
        for row in 0..b.num_rows() {
            expected.insert(
                ids.value(row).to_string(),
                columns.iter().map(|c| c[row]).collect(),
            );
        }
    }
    assert_eq!(expected.len(), n);
    // Not vacuous: payments share cards within an hour, and some keep the card's history.
    for (i, name) in names.iter().enumerate() {
        let distinct: std::collections::BTreeSet<u64> = expected.values().map(|v| v[i]).collect();
        // A flag (first_seen) has two values; the rest more.
        let least = if name.starts_with("first_seen") { 2 } else { 3 };
        assert!(
            distinct.len() >= least,
            "{name}: {} distinct values",
            distinct.len()
        );
    }

    let broker = Broker::start(&TOPICS);
    let live_dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(live_dir.path(), &broker.bootstrap, &extra);
    let (events, reports) = as_published(&payments);
    let (scores, dead) = run_live(&broker, &config, &events, &[], usize::MAX, &reports);
    assert!(dead.is_empty(), "{} dead letters", dead.len());
    let mut seen = std::collections::BTreeSet::new();
    for s in &scores {
        let v: serde_json::Value = serde_json::from_slice(&s.payload).expect("score json");
        let id = v["payment_id"].as_str().expect("payment_id").to_string();
        let want = expected.get(&id).expect("a payment the backtest scored");
        for (i, name) in names.iter().enumerate() {
            let got = v[name.as_str()].as_f64().unwrap_or(f64::NAN);
            assert_eq!(
                got.to_bits(),
                want[i],
                "{id} {name}: live {got}, backtest {}",
                f64::from_bits(want[i])
            );
        }
        seen.insert(id);
    }
    assert_eq!(seen.len(), n, "every payment scored live");
}
