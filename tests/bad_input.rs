//! Bad input and bad surroundings on the live path, against the broker process and the
//! `riskpipe` binary: malformed and schema-breaking messages are dead-lettered with reasons
//! while their neighbours are scored; a poison pill too large to dead-letter is referenced, not
//! a stop; an unreachable or dead Kafka shows in readiness and in a clear exit; published ids can
//! be keyed pseudonyms; events too far ahead or behind in event time are refused alike live and
//! in a Kafka replay, touching no state.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, Producer};
use riskpipe_pipeline::demo::{Feed, Feeder, feed};
use riskpipe_pipeline::kafka::KafkaConfig;
use riskpipe_pipeline::sources::kafka_range::Bound;
use riskpipe_pipeline::{PipelineConfig, backtest};
use riskpipe_schemas::Score;
use support::{
    Broker, MULTI_PARTITION, Pipeline, TOPICS, collect, drain_to_end, kafka_section, producer,
    reader, scores_by_id, scores_of, transaction_json, write_config,
};

#[test]
fn malformed_messages_are_dead_lettered_with_reasons_and_neighbours_scored() {
    let broker = Broker::start(&TOPICS);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &kafka_section(&broker.bootstrap, "dlq", "max_message_bytes = 1024"),
    );
    let mut pipeline = Pipeline::start(&config);
    pipeline.wait_ready();
    let tx = |id: i64| transaction_json(id, 7);
    let bad: Vec<(&str, String)> = vec![
        ("transactions", tx(2)[..30].to_string()),
        ("transactions", tx(3).replace("12.5", "\"twelve\"")),
        ("transactions", "<xml>not json</xml>".to_string()),
        ("transactions", format!("{}{}", tx(4), " ".repeat(2000))),
        ("transactions", tx(5).replace(",\"TERMINAL_ID\":9", "")),
        ("transactions", tx(6).replace('}', ",\"SURPRISE\":1}")),
        ("fraud-labels", "{\"TRANSACTION_ID\":1}".to_string()),
    ];
    let p = producer(&broker.bootstrap);
    let send = |topic: &str, payload: &str| {
        let record: BaseRecord<'_, str, str> = BaseRecord::to(topic).key("7").payload(payload);
        p.send(record).map_err(|(e, _)| e).expect("send");
    };
    send("transactions", &tx(1));
    for (topic, payload) in &bad {
        send(topic, payload);
    }
    send("transactions", &tx(7));
    p.flush(Duration::from_secs(10)).expect("flush");

    let dead = collect(
        &reader(&broker.bootstrap, "riskpipe-dead-letter"),
        Duration::from_secs(60),
        |r| r.len() >= bad.len(),
    );
    assert_eq!(dead.len(), bad.len());
    for (topic, payload) in &bad {
        // Original bytes kept; the order across topics is not defined.
        let d = dead
            .iter()
            .find(|d| d.payload == payload.as_bytes())
            .unwrap_or_else(|| panic!("no dead letter for {payload:?}"));
        assert_eq!(
            d.headers.get("riskpipe.source.topic").map(String::as_str),
            Some(*topic)
        );
        assert!(d.headers.contains_key("riskpipe.source.partition"));
        assert!(d.headers["riskpipe.source.offset"].parse::<i64>().is_ok());
        assert!(!d.headers["riskpipe.error"].is_empty(), "reason given");
    }
    let oversized = dead
        .iter()
        .find(|d| d.payload.len() > 1024)
        .expect("oversized dead letter");
    assert_eq!(oversized.headers["riskpipe.error.kind"], "oversized");
    let scored = scores_of(&collect(
        &reader(&broker.bootstrap, "scores"),
        Duration::from_secs(60),
        |r| r.len() >= 2,
    ));
    let ids: BTreeSet<i64> = scored.iter().map(|s| s.transaction_id).collect();
    assert_eq!(ids, BTreeSet::from([1, 7]));
    assert_eq!(
        pipeline.metric("riskpipe_dead_letters_total", ""),
        bad.len() as f64
    );
    let (ok, _) = pipeline.terminate();
    assert!(ok);
}

/// A message too large for the dead-letter topic (a poison pill) neither stops the pipeline nor
/// loops it: a reference (source coordinates, size, SHA-256, short reason) goes in its place and
/// the next message is scored.
#[test]
fn a_poison_pill_too_large_to_dead_letter_is_referenced_and_the_pipeline_goes_on() {
    use sha2::Digest;
    let broker = Broker::start(&TOPICS);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &kafka_section(
            &broker.bootstrap,
            "poison",
            "max_message_bytes = 4096\n[kafka.producer_properties]\n\"message.max.bytes\" = \"3000\"",
        ),
    );
    let mut pipeline = Pipeline::start(&config);
    pipeline.wait_ready();
    let tx = |id: i64| transaction_json(id, 7);
    // Valid JSON, but over max_message_bytes, and over what the producer may send.
    let pill = format!("{}{}", tx(2), " 4111111111111111".repeat(400));
    assert!(pill.len() > 6000);
    let p = producer(&broker.bootstrap);
    for payload in [tx(1), pill.clone(), tx(3)] {
        let record: BaseRecord<'_, str, str> =
            BaseRecord::to("transactions").key("7").payload(&payload);
        p.send(record).map_err(|(e, _)| e).expect("send");
    }
    p.flush(Duration::from_secs(10)).expect("flush");

    let dead = collect(
        &reader(&broker.bootstrap, "riskpipe-dead-letter"),
        Duration::from_secs(60),
        |r| !r.is_empty(),
    );
    let d = &dead[0];
    assert!(d.payload.is_empty(), "a reference, not the bytes");
    assert_eq!(d.headers["riskpipe.error.kind"], "oversized");
    assert_eq!(d.headers["riskpipe.source.size"], pill.len().to_string());
    let sha: String = sha2::Sha256::digest(pill.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(d.headers["riskpipe.source.sha256"], sha);
    assert_eq!(d.headers["riskpipe.source.offset"], "1");
    let reason = &d.headers["riskpipe.error"];
    assert!(
        reason.contains("not forwarded") && reason.len() < 400,
        "{reason}"
    );
    assert!(
        !reason.contains("4111"),
        "the reason never echoes the payload: {reason}"
    );
    let scored = scores_of(&collect(
        &reader(&broker.bootstrap, "scores"),
        Duration::from_secs(60),
        |r| r.len() >= 2,
    ));
    let ids: BTreeSet<i64> = scored.iter().map(|s| s.transaction_id).collect();
    assert_eq!(
        ids,
        BTreeSet::from([1, 3]),
        "the pipeline went on past the pill"
    );
    assert_eq!(pipeline.get("/ready").0, 200);
    let log = pipeline.drain_log().join("\n");
    assert!(
        !log.contains("4111111111111111"),
        "no payload bytes in the log"
    );
    let (ok, _) = pipeline.terminate();
    assert!(ok);
}

/// A dead letter the client lets through but the broker refuses as too large for the topic
/// (the topic's `max.message.bytes` below the producer's) is referenced as well, once the
/// refusal comes back, and the pipeline goes on. The mock broker enforces no topic limit, so
/// the refusal is injected for the first produce request, which is the dead letter's: the
/// message is on the topic before riskpipe starts.
#[test]
fn a_dead_letter_the_broker_refuses_as_too_large_is_referenced_and_the_pipeline_goes_on() {
    use sha2::Digest;
    let mut broker = Broker::start(&TOPICS);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &kafka_section(&broker.bootstrap, "refused", ""));
    let bad = "<xml>not json</xml>";
    let p = producer(&broker.bootstrap);
    let record: BaseRecord<'_, str, str> = BaseRecord::to("transactions").key("7").payload(bad);
    p.send(record).map_err(|(e, _)| e).expect("send");
    p.flush(Duration::from_secs(10)).expect("flush");
    drop(p);
    broker.command("request-errors produce message-too-large 1");
    let mut pipeline = Pipeline::start(&config);
    pipeline.wait_ready();

    let dead = collect(
        &reader(&broker.bootstrap, "riskpipe-dead-letter"),
        Duration::from_secs(60),
        |r| !r.is_empty(),
    );
    assert_eq!(dead.len(), 1, "one dead letter: the reference");
    let d = &dead[0];
    assert!(d.payload.is_empty(), "a reference, not the bytes");
    assert_eq!(d.headers["riskpipe.error.kind"], "malformed");
    assert_eq!(d.headers["riskpipe.source.size"], bad.len().to_string());
    let sha: String = sha2::Sha256::digest(bad.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(d.headers["riskpipe.source.sha256"], sha);
    assert_eq!(d.headers["riskpipe.source.offset"], "0");
    assert!(
        d.headers["riskpipe.error"].contains("not forwarded"),
        "{:?}",
        d.headers["riskpipe.error"]
    );
    // The pipeline goes on: the next transaction is scored.
    let p = producer(&broker.bootstrap);
    let tx = transaction_json(1, 7);
    let record: BaseRecord<'_, str, str> = BaseRecord::to("transactions").key("7").payload(&tx);
    p.send(record).map_err(|(e, _)| e).expect("send");
    p.flush(Duration::from_secs(10)).expect("flush");
    let scored = scores_of(&collect(
        &reader(&broker.bootstrap, "scores"),
        Duration::from_secs(60),
        |r| !r.is_empty(),
    ));
    assert_eq!(
        scored.iter().map(|s| s.transaction_id).collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(pipeline.get("/ready").0, 200);
    let log = pipeline.drain_log().join("\n");
    assert!(
        log.contains("too large for its topic"),
        "the refusal is logged: {log}"
    );
    let (ok, _) = pipeline.terminate();
    assert!(ok);
}

/// Kafka that never answers: `run` exits non-zero after `startup_timeout` naming the problem,
/// and the repeated client errors are throttled in the log.
#[test]
fn an_unreachable_kafka_fails_the_start_with_a_clear_message() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &kafka_section(
            &format!("127.0.0.1:{port}"),
            "unreachable",
            "startup_timeout = \"4s\"",
        ),
    );
    let mut pipeline = Pipeline::start(&config);
    let started = Instant::now();
    let status = loop {
        if let Ok(Some(status)) = pipeline.child.try_wait() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "still running: {:#?}",
            pipeline.drain_log()
        );
        assert_ne!(pipeline.get("/ready").0, 200, "never ready without Kafka");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!status.success());
    let log = pipeline.drain_log();
    let text = log.join("\n");
    assert!(text.contains("no partition assignment within 4s"), "{text}");
    // Over ~4 s librdkafka reports the refused connection many times: a handful of lines.
    let warnings = log.iter().filter(|l| l.contains("WARN")).count();
    assert!(warnings <= 10, "{warnings} warnings:\n{text}");
}

/// Readiness follows the broker: it turns false within seconds of losing it.
#[test]
fn losing_the_broker_turns_ready_false_within_seconds() {
    let broker = Broker::start(&TOPICS);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &kafka_section(&broker.bootstrap, "lost", ""));
    let mut pipeline = Pipeline::start(&config);
    pipeline.wait_ready();
    let lost = Instant::now();
    drop(broker);
    while pipeline.get("/ready").0 == 200 {
        assert!(
            lost.elapsed() < Duration::from_secs(15),
            "/ready still 200 {:?} after the broker died",
            lost.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("not ready {:?} after the broker died", lost.elapsed());
    assert_eq!(pipeline.get("/health").0, 200, "alive, just not ready");
    pipeline.kill();
}

/// With `[kafka.pseudonyms]`, published scores carry keyed pseudonyms (HMAC-SHA256 of the id
/// under a secret from the environment), stable per customer, and their keys follow.
#[test]
fn published_ids_can_be_keyed_pseudonyms() {
    use hmac::{Hmac, Mac};
    let secret = "a-secret-of-sixteen-bytes-or-more";
    let broker = Broker::start(&TOPICS);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &kafka_section(
            &broker.bootstrap,
            "pseudonyms",
            "[kafka.pseudonyms]\nsecret_env = \"RISKPIPE_TEST_PSEUDONYM_KEY\"\ncolumns = [\"CUSTOMER_ID\", \"TERMINAL_ID\"]",
        ),
    );
    let mut pipeline =
        Pipeline::start_with_env(&config, &[("RISKPIPE_TEST_PSEUDONYM_KEY", secret)]);
    pipeline.wait_ready();
    let p = producer(&broker.bootstrap);
    for (id, customer) in [(1, 7), (2, 8), (3, 7)] {
        let payload = transaction_json(id, customer);
        let record: BaseRecord<'_, str, str> =
            BaseRecord::to("transactions").key("k").payload(&payload);
        p.send(record).map_err(|(e, _)| e).expect("send");
    }
    p.flush(Duration::from_secs(10)).expect("flush");
    let got = collect(
        &reader(&broker.bootstrap, "scores"),
        Duration::from_secs(60),
        |r| r.len() >= 3,
    );
    let pseudonym = |id: i64| -> i64 {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(&id.to_be_bytes());
        let d = mac.finalize().into_bytes();
        (u64::from_be_bytes(d[..8].try_into().expect("8 bytes")) >> 1) as i64
    };
    let mut by_tx = HashMap::new();
    for g in &got {
        let s: Score = serde_json::from_slice(&g.payload).expect("score");
        assert_eq!(String::from_utf8_lossy(&g.key), s.customer_id.to_string());
        by_tx.insert(s.transaction_id, s.customer_id);
    }
    assert_eq!(by_tx[&1], pseudonym(7));
    assert_eq!(by_tx[&3], pseudonym(7));
    assert_eq!(by_tx[&2], pseudonym(8));
    assert!(by_tx.values().all(|&c| c != 7 && c != 8));
    let (ok, _) = pipeline.terminate();
    assert!(ok);
}

/// A copy of transaction message `index` of `feed` with another id and its event time moved by
/// `shift_days`, published right after it under the same key (so on the same partition).
fn shifted_copy(feed: &mut Feed, index: usize, id: i64, shift_days: i64) {
    let at = feed
        .messages
        .iter()
        .position(|m| !m.0 && m.3 == index)
        .expect("transaction in feed");
    let (_, key, payload, _) = feed.messages[at].clone();
    let mut tx: serde_json::Value = serde_json::from_slice(&payload).expect("transaction json");
    let time = chrono::DateTime::parse_from_rfc3339(tx["TX_DATETIME"].as_str().expect("time"))
        .expect("rfc3339")
        + chrono::Duration::days(shift_days);
    tx["TX_DATETIME"] = serde_json::Value::from(time.to_rfc3339());
    tx["TRANSACTION_ID"] = serde_json::Value::from(id);
    let payload = serde_json::to_vec(&tx).expect("json");
    feed.messages
        .insert(at + 1, (false, key, payload, usize::MAX));
}

/// An identical copy of transaction message `index` of `feed` (same key, so the same partition),
/// published right after transaction `after`.
fn published_twice(feed: &mut Feed, index: usize, after: usize) {
    let position = |i: usize| {
        feed.messages
            .iter()
            .position(|m| !m.0 && m.3 == i)
            .expect("transaction in feed")
    };
    let (_, key, payload, _) = feed.messages[position(index)].clone();
    let at = position(after) + 1;
    feed.messages.insert(at, (false, key, payload, usize::MAX));
}

/// Event time on several partitions: a transaction dated 40 days ahead and one 3 days behind
/// its partition are dead letters (`invalid`, `late`) with their reasons and touch no state;
/// so are transactions published twice (`duplicate`: one copy right after the first, one
/// 2,000 transactions later): every other score equals the clean file backtest's bit for bit
/// (no key's features change, the bad events' own customers' included), and a Kafka replay of
/// the topic refuses the same four, for the same reasons, and gives the same scores.
#[test]
fn skewed_and_duplicated_events_are_refused_alike_live_and_in_replay_and_change_no_score() {
    let cfg = PipelineConfig::handbook().expect("shipped config");
    let history = backtest::load(&cfg, &support::handbook_data()).expect("history");
    let n = 20_000;
    let clean = feed(&history, &cfg, 0, n).expect("feed");
    let mut skewed = clean.only(false);
    let (future_id, late_id) = (90_000_001, 90_000_002);
    shifted_copy(&mut skewed, 5_000, future_id, 40);
    shifted_copy(&mut skewed, 15_000, late_id, -3);
    let (twice_at_once, twice_later) = (10_000, 10_001);
    published_twice(&mut skewed, twice_at_once, twice_at_once);
    published_twice(&mut skewed, twice_later, 12_000);
    let twice: Vec<i64> = [twice_at_once, twice_later]
        .iter()
        .map(|&i| clean.ids[i])
        .collect();

    let broker = Broker::start(&MULTI_PARTITION);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &kafka_section(&broker.bootstrap, "skew", ""));
    let p = producer(&broker.bootstrap);
    let kafka = KafkaConfig::for_bootstrap(&broker.bootstrap);
    let publish = |f: &Feed| {
        Feeder::new(f, Instant::now())
            .publish(&p, &kafka, f, 0.0, &AtomicBool::new(false))
            .expect("publish");
    };
    publish(&clean.only(true));
    publish(&skewed);
    let mut pipeline = Pipeline::start(&config);
    pipeline.wait_ready();

    let scores = scores_of(&collect(
        &reader(&broker.bootstrap, "scores"),
        Duration::from_secs(300),
        |r| r.len() >= n,
    ));
    let dead = collect(
        &reader(&broker.bootstrap, "riskpipe-dead-letter"),
        Duration::from_secs(60),
        |r| r.len() >= 4,
    );
    let kind_of = |id: i64| -> (String, String) {
        let d = dead
            .iter()
            .find(|d| {
                serde_json::from_slice::<serde_json::Value>(&d.payload)
                    .is_ok_and(|v| v["TRANSACTION_ID"] == id)
            })
            .unwrap_or_else(|| panic!("no dead letter for {id}"));
        (
            d.headers["riskpipe.error.kind"].clone(),
            d.headers["riskpipe.error"].clone(),
        )
    };
    let (future_kind, future_reason) = kind_of(future_id);
    assert_eq!(future_kind, "invalid");
    assert!(
        future_reason.contains("after the latest event time of its partition")
            && future_reason.contains("max_future_skew"),
        "{future_reason}"
    );
    let (late_kind, late_reason) = kind_of(late_id);
    assert_eq!(late_kind, "late");
    assert!(late_reason.contains("allowed_lateness"), "{late_reason}");
    assert_eq!(
        pipeline.metric("riskpipe_dead_letters_total", "kind=\"late\""),
        1.0
    );
    let mut duplicate_reasons = Vec::new();
    for &id in &twice {
        let (kind, reason) = kind_of(id);
        assert_eq!(kind, "duplicate", "{reason}");
        assert!(
            reason.contains("TRANSACTION_ID taken in already"),
            "{reason}"
        );
        duplicate_reasons.push(("duplicate", reason));
    }
    assert_eq!(
        pipeline.metric("riskpipe_dead_letters_total", "kind=\"duplicate\""),
        2.0
    );
    assert!(pipeline.metric("riskpipe_watermark_seconds", "") > 1.5e9);
    assert!(pipeline.metric("riskpipe_state_keys", "") > 0.0);

    // The clean backtest of the same transactions: every live score equal, bit for bit.
    let expected = backtest::replay(
        &cfg,
        Arc::new(history.head(n)),
        &indicatif::ProgressBar::hidden(),
    )
    .expect("backtest");
    let expected = scores_by_id(expected.scored());
    assert_eq!(scores.len(), n, "one score per good transaction");
    let differ = scores
        .iter()
        .filter(|s| expected.get(&s.transaction_id) != Some(&(s.score as f32)))
        .count();
    assert_eq!(
        differ, 0,
        "{differ} live scores differ from the clean backtest's"
    );
    let (ok, _) = pipeline.terminate();
    assert!(ok);

    // The topic replayed: each partition in offset order, the same policy.
    let run_cfg = PipelineConfig::load(&config).expect("config");
    let decoder = replay_decoder(&run_cfg);
    let (replay_history, undecodable) = riskpipe_pipeline::backtest::kafka_history(
        &run_cfg,
        decoder.as_ref(),
        Bound::Edge,
        Bound::Edge,
    )
    .expect("replay history");
    assert_eq!(undecodable.len(), 0);
    let replayed = backtest::replay(
        &run_cfg,
        Arc::new(replay_history),
        &indicatif::ProgressBar::hidden(),
    )
    .expect("replay");
    let mut refused: Vec<(&str, String)> = replayed
        .rejected()
        .iter()
        .map(|d| (d.kind.as_str(), d.reason.clone()))
        .collect();
    refused.sort();
    let mut live: Vec<(&str, String)> = vec![
        ("invalid", future_reason.clone()),
        ("late", late_reason.clone()),
    ];
    live.extend(duplicate_reasons);
    live.sort();
    assert_eq!(refused, live, "the replay refuses what live refused");
    assert_eq!(scores_by_id(replayed.scored()), expected);
}

/// A copy of transaction message `index` of `feed` with id `id`, a customer and a terminal of
/// its own (id `id`: no other event's features can see it) and `amount` as raw JSON text,
/// published right after it, keyed by its customer.
fn absurd_copy(feed: &mut Feed, index: usize, id: i64, amount: &str) {
    let at = feed
        .messages
        .iter()
        .position(|m| !m.0 && m.3 == index)
        .expect("transaction in feed");
    let mut tx: serde_json::Value =
        serde_json::from_slice(&feed.messages[at].2).expect("transaction json");
    for field in ["TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID"] {
        tx[field] = serde_json::Value::from(id);
    }
    tx["TX_AMOUNT"] = serde_json::Value::from(0.5);
    let text = serde_json::to_string(&tx).expect("json");
    let payload = text.replace("\"TX_AMOUNT\":0.5", &format!("\"TX_AMOUNT\":{amount}"));
    assert_ne!(payload, text);
    feed.messages.insert(
        at + 1,
        (false, id.to_string(), payload.into_bytes(), usize::MAX),
    );
}

/// `events` with a copy of row `index` after it: id, customer and terminal `id`, amount
/// `amount` (a file's version of [`absurd_copy`]).
fn with_absurd_row(
    events: &arrow::array::RecordBatch,
    index: usize,
    id: i64,
    amount: f64,
) -> arrow::array::RecordBatch {
    let row = events.slice(index, 1);
    let columns: Vec<arrow::array::ArrayRef> = row
        .schema()
        .fields()
        .iter()
        .zip(row.columns())
        .map(|(f, c)| -> arrow::array::ArrayRef {
            match f.name().as_str() {
                "TRANSACTION_ID" | "CUSTOMER_ID" | "TERMINAL_ID" => {
                    Arc::new(arrow::array::Int64Array::from(vec![id]))
                }
                "TX_AMOUNT" => Arc::new(arrow::array::Float64Array::from(vec![amount])),
                _ => c.clone(),
            }
        })
        .collect();
    let row = arrow::array::RecordBatch::try_new(row.schema(), columns).expect("row");
    arrow::compute::concat_batches(
        &events.schema(),
        [
            &events.slice(0, index + 1),
            &row,
            &events.slice(index + 1, events.num_rows() - index - 1),
        ],
    )
    .expect("concat")
}

/// An absurd transaction: the transaction index it follows, its id, its amount as JSON text and
/// as f64 in a file, and its refusal (kind, reason), if refused.
type Absurd<'a> = (usize, i64, &'a str, f64, Option<(&'a str, &'a str)>);

/// Absurd amounts among 20,000 handbook transactions on 4 partitions, each on a customer and
/// terminal of its own: the largest amount a real card could carry (10⁸) and the limit itself
/// (10¹⁵) are admitted, and scored with a probability (or refused as `model`); beyond the limit
/// and f64::MAX are `invalid`, 1e309 (no f64) a `schema` dead letter, each with its reason
/// naming the field. Every other score equals the clean backtest's bit for bit. A Kafka replay
/// of the topic and a backtest of a Parquet file holding the same events refuse them alike and
/// score the rest alike, and in the replay every alert after the first absurd event carries as
/// many reasons as in the clean backtest (the explanation baseline cannot be poisoned).
#[test]
fn absurd_amounts_are_refused_alike_live_in_replay_and_from_a_file_and_poison_nothing() {
    let mut cfg = PipelineConfig::handbook().expect("shipped config");
    cfg.alerts.threshold = Some(0.01);
    let history = backtest::load(&cfg, &support::handbook_data()).expect("history");
    let n = 20_000;
    let clean = feed(&history, &cfg, 0, n).expect("feed");
    let beyond = "field TX_AMOUNT: beyond ±1e15, the range in which window sums, means and model inputs stay finite";
    let absurd: [Absurd<'_>; 5] = [
        (4_000, 90_000_011, "100000000", 1e8, None),
        (5_000, 90_000_012, "1e15", 1e15, None),
        (
            6_000,
            90_000_013,
            "1000000000000000.2",
            1.000_000_000_000_000_2e15,
            Some(("invalid", beyond)),
        ),
        (
            7_000,
            90_000_014,
            "1.7976931348623157e308",
            f64::MAX,
            Some(("invalid", beyond)),
        ),
        (
            8_000,
            90_000_015,
            "1e309",
            f64::INFINITY,
            Some(("schema", "field TX_AMOUNT: number out of range")),
        ),
    ];
    let mut transactions = clean.only(false);
    for &(index, id, amount, _, _) in &absurd {
        absurd_copy(&mut transactions, index, id, amount);
    }

    let broker = Broker::start(&MULTI_PARTITION);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &kafka_section(&broker.bootstrap, "absurd", ""));
    // More alerts to compare reasons on than the shipped threshold gives on these days.
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(text.contains("\nthreshold = 0.35\n"));
    std::fs::write(
        &config,
        text.replace("\nthreshold = 0.35\n", "\nthreshold = 0.01\n"),
    )
    .expect("config");
    let p = producer(&broker.bootstrap);
    let kafka = KafkaConfig::for_bootstrap(&broker.bootstrap);
    let publish = |f: &Feed| {
        Feeder::new(f, Instant::now())
            .publish(&p, &kafka, f, 0.0, &AtomicBool::new(false))
            .expect("publish");
    };
    publish(&clean.only(true));
    publish(&transactions);
    let mut pipeline = Pipeline::start(&config);
    pipeline.wait_ready();

    // Every transaction taken in by then (the absurd ones are far from the end of each
    // partition); a clean stop drains the rest, then each output topic is read to its end.
    let _ = collect(
        &reader(&broker.bootstrap, "scores"),
        Duration::from_secs(300),
        |r| r.len() >= n,
    );
    assert_eq!(
        pipeline.metric("riskpipe_dead_letters_total", "kind=\"invalid\""),
        2.0
    );
    let (ok, _) = pipeline.terminate();
    assert!(ok);
    let read_all = |topic: &str| drain_to_end(&reader(&broker.bootstrap, topic), topic);
    let dead = read_all("riskpipe-dead-letter");
    let scores = scores_of(&read_all("scores"));
    let alerts = read_all("alerts");
    let admitted: Vec<i64> = absurd
        .iter()
        .filter(|a| a.4.is_none())
        .map(|a| a.1)
        .collect();
    let model_refused = |id: i64| {
        dead.iter().any(|d| {
            d.headers["riskpipe.error.kind"] == "model"
                && String::from_utf8_lossy(&d.payload).contains(&format!("\"TRANSACTION_ID\":{id}"))
        })
    };
    let refused_by_model = admitted.iter().filter(|&&id| model_refused(id)).count();
    let expected_scores = n + admitted.len() - refused_by_model;
    let mut live_refused = Vec::new();
    for &(_, id, _, _, refusal) in &absurd {
        let letter = dead.iter().find(|d| {
            String::from_utf8_lossy(&d.payload).contains(&format!("\"TRANSACTION_ID\":{id}"))
        });
        let score = scores.iter().find(|s| s.transaction_id == id);
        match refusal {
            Some((kind, reason)) => {
                let d = letter.unwrap_or_else(|| panic!("no dead letter for {id}"));
                assert_eq!(d.headers["riskpipe.error.kind"], kind, "{id}");
                assert_eq!(d.headers["riskpipe.error"], reason, "{id}");
                assert!(score.is_none(), "{id} refused and scored");
                live_refused.push((kind.to_string(), reason.to_string()));
            }
            None => match (score, letter) {
                (Some(s), None) => assert!((0.0..=1.0).contains(&s.score), "{id}: {}", s.score),
                (None, Some(d)) if d.headers["riskpipe.error.kind"] == "model" => {
                    live_refused.push(("model".to_string(), d.headers["riskpipe.error"].clone()))
                }
                _ => panic!("{id} neither scored nor refused as model"),
            },
        }
    }
    assert_eq!(dead.len(), 3 + refused_by_model);

    // The clean backtest of the same transactions: every other live score equal, bit for bit.
    let expected = backtest::replay(
        &cfg,
        Arc::new(history.head(n)),
        &indicatif::ProgressBar::hidden(),
    )
    .expect("backtest");
    let expected_by_id = scores_by_id(expected.scored());
    let differ = scores
        .iter()
        .filter(|s| !admitted.contains(&s.transaction_id))
        .filter(|s| expected_by_id.get(&s.transaction_id) != Some(&(s.score as f32)))
        .count();
    assert_eq!(
        scores.len(),
        expected_scores,
        "one score per admitted transaction"
    );
    assert_eq!(
        differ, 0,
        "{differ} live scores differ from the clean backtest's"
    );

    // The topic replayed: the same refusals (1e309 does not decode), the same scores.
    let run_cfg = PipelineConfig::load(&config).expect("config");
    let decoder = replay_decoder(&run_cfg);
    let (replay_history, undecodable) = riskpipe_pipeline::backtest::kafka_history(
        &run_cfg,
        decoder.as_ref(),
        Bound::Edge,
        Bound::Edge,
    )
    .expect("replay history");
    let replayed = backtest::replay(
        &run_cfg,
        Arc::new(replay_history),
        &indicatif::ProgressBar::hidden(),
    )
    .expect("replay");
    // Refused as the decoder reads them, or after: as live refused them.
    let mut refused: Vec<(String, String)> = undecodable
        .iter()
        .map(|r| (r.kind.as_str().to_string(), r.reason.clone()))
        .chain(
            replayed
                .rejected()
                .iter()
                .map(|d| (d.kind.as_str().to_string(), d.reason.clone())),
        )
        .collect();
    refused.sort();
    live_refused.sort();
    assert_eq!(
        refused, live_refused,
        "the replay refuses what live refused"
    );
    let live_by_id: HashMap<i64, f32> = scores
        .iter()
        .map(|s| (s.transaction_id, s.score as f32))
        .collect();
    assert_eq!(scores_by_id(replayed.scored()), live_by_id);

    // Every alert after the first absurd event carries as many reasons as in the clean
    // backtest (which ones may differ a little: each admitted event, at its reference maximum,
    // moves the baseline's means). Compared on the replay, which scores in the clean
    // backtest's order: live, the baseline an alert is measured against is the rows scored
    // before it, which depends on how the four partitions interleaved, so a marginal reason
    // may come or go there. Live alerts are the replay's alerts.
    let reasons_of = |alert: &serde_json::Value| -> usize {
        alert["REASONS"].as_array().expect("reasons").len()
    };
    let after: std::collections::HashSet<i64> =
        clean.ids[absurd[0].0 + 1..].iter().copied().collect();
    let reasons_after = |alerts: &[serde_json::Value]| -> HashMap<i64, usize> {
        alerts
            .iter()
            .filter_map(|a| {
                let id = a["TRANSACTION_ID"].as_i64()?;
                after.contains(&id).then(|| (id, reasons_of(a)))
            })
            .collect()
    };
    let clean_alerts = reasons_after(&expected.records().expect("records").1);
    assert!(
        clean_alerts.len() >= 20,
        "{} alerts to compare",
        clean_alerts.len()
    );
    assert_eq!(
        reasons_after(&replayed.records().expect("records").1),
        clean_alerts,
        "the alerts after the absurd events and their reasons"
    );
    let live_alerts: std::collections::BTreeSet<i64> = alerts
        .iter()
        .filter_map(|g| {
            let a: serde_json::Value = serde_json::from_slice(&g.payload).ok()?;
            let id = a["TRANSACTION_ID"].as_i64()?;
            after.contains(&id).then_some(id)
        })
        .collect();
    assert_eq!(
        live_alerts,
        clean_alerts.keys().copied().collect(),
        "live alerts after the absurd events"
    );

    // A Parquet file with the same events (the infinite amount in place of 1e309).
    let mut events = history.head(n).events;
    for &(index, id, _, amount, _) in absurd.iter().rev() {
        events = with_absurd_row(&events, index, id, amount);
    }
    let file = dir.path().join("absurd.parquet");
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&file).expect("file"),
        events.schema(),
        None,
    )
    .expect("writer");
    writer.write(&events).expect("write");
    writer.close().expect("close");
    let from_file = backtest::replay(
        &cfg,
        Arc::new(backtest::load(&cfg, &file).expect("load")),
        &indicatif::ProgressBar::hidden(),
    )
    .expect("file backtest");
    let mut refused: Vec<(String, String)> = from_file
        .rejected()
        .iter()
        .map(|d| (d.kind.as_str().to_string(), d.reason.clone()))
        .collect();
    refused.sort();
    // No 1e309 in a file: the infinite amount in its place.
    let mut want: Vec<(String, String)> = live_refused
        .iter()
        .filter(|(kind, _)| kind != "schema")
        .cloned()
        .collect();
    want.push((
        "invalid".into(),
        "field TX_AMOUNT: not a finite number".into(),
    ));
    want.sort();
    assert_eq!(refused, want, "the file backtest refuses them alike");
    assert_eq!(scores_by_id(from_file.scored()), live_by_id);
}

/// The product's replay decoder: the config's formats, the job's declared events.
fn replay_decoder(cfg: &PipelineConfig) -> Box<dyn riskpipe_pipeline::decoders::Decoder> {
    cfg.kafka
        .as_ref()
        .expect("kafka")
        .decoder(cfg.streams(), &cfg.job.kind().inputs())
        .expect("decoder")
}
