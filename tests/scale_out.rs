//! The scale-out topology (`[kafka.repartition]`) against Apache Kafka (the mock broker where a
//! test needs a fault only it injects or a topic riskpipe must not create): the first stage
//! reads the transactions and forwards its rows keyed by terminal through the repartition
//! topic riskpipe creates; the second reads them with the labels and scores. Every score equals
//! the single-process backtest's.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use riskpipe_pipeline::demo::{Feed, Feeder, feed};
use riskpipe_pipeline::kafka::KafkaConfig;
use riskpipe_pipeline::{PipelineConfig, backtest};
use support::{Broker, Consumer, Pipeline, collect, drain, kafka_section, reader};

/// Transactions on 4 partitions keyed by customer, labels on 4 keyed by terminal, and the
/// repartition topic with 4 (librdkafka's mock cluster has no CreateTopics: the test broker
/// makes it; riskpipe checks its partition count).
const TOPICS: [(&str, i32); 6] = [
    ("transactions", 4),
    ("scale-by-terminal", 4),
    ("fraud-labels", 4),
    ("scores", 4),
    ("alerts", 1),
    ("riskpipe-dead-letter", 1),
];

/// [`TOPICS`] without the repartition topic, for a broker on which riskpipe creates it.
fn without_repartition_topic() -> Vec<(&'static str, i32)> {
    TOPICS
        .into_iter()
        .filter(|(t, _)| *t != "scale-by-terminal")
        .collect()
}

/// The handbook config in the scale-out topology, its checkpoints in `state` (shared by every
/// instance), one a second.
fn repartitioned(
    dir: &std::path::Path,
    bootstrap: &str,
    state: &std::path::Path,
) -> std::path::PathBuf {
    support::write_config(
        dir,
        &format!(
            "{}\n[state]\ndir = {:?}\ninterval = \"1s\"\n",
            kafka_section(
                bootstrap,
                "scale",
                "[kafka.repartition]\nby = \"TERMINAL_ID\"\nreplication_factor = 1\n",
            ),
            state.display().to_string()
        ),
    )
}

/// One instance of the repartitioned topology equals the single-process backtest bit for bit,
/// one score per transaction; the repartition topic holds each terminal's rows in one
/// partition (Java's murmur2 of the key).
#[test]
fn the_repartitioned_topology_scores_as_the_single_process_backtest() {
    let cfg = PipelineConfig::handbook().expect("shipped config");
    let history = backtest::load(&cfg, &support::handbook_data()).expect("history");
    // 12 days: the terminal risk features see labels for the last 5.
    let n = 100_000;
    let feed = feed(&history, &cfg, 0, n).expect("feed");
    // Every topic but the repartition topic: riskpipe creates it.
    let broker = support::apache_kafka(&without_repartition_topic());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = repartitioned(dir.path(), &broker.bootstrap, &dir.path().join("state"));
    support::publish_feed(&feed, &broker.bootstrap, true, 0.0);
    let mut pipeline = Pipeline::start(&config);
    pipeline.wait_ready();
    support::publish_feed(&feed, &broker.bootstrap, false, 10_000.0);

    let scores = reader(&broker.bootstrap, "scores");
    let got = collect(&scores, Duration::from_secs(600), |r| r.len() >= n);
    let extra = drain(&scores, Duration::from_secs(1));
    assert!(extra.is_empty(), "{} scores beyond one each", extra.len());
    let expected = support::scores_by_id(
        backtest::replay(
            &cfg,
            Arc::new(history.head(n)),
            &indicatif::ProgressBar::hidden(),
        )
        .expect("replay")
        .scored(),
    );
    let mut seen = BTreeSet::new();
    for s in support::scores_of(&got) {
        assert!(seen.insert(s.transaction_id), "{} twice", s.transaction_id);
        assert_eq!(
            s.score as f32, expected[&s.transaction_id],
            "transaction {}",
            s.transaction_id
        );
    }
    assert_eq!(seen.len(), n);

    // The repartition topic riskpipe created: 4 partitions, each terminal in one of them.
    let forwarded = reader(&broker.bootstrap, "scale-by-terminal");
    let metadata = forwarded
        .fetch_metadata(Some("scale-by-terminal"), Duration::from_secs(10))
        .expect("metadata");
    assert_eq!(metadata.topics()[0].partitions().len(), 4);
    let rows = collect(&forwarded, Duration::from_secs(60), |r| r.len() >= n);
    let mut partition_of: HashMap<Vec<u8>, i32> = HashMap::new();
    for r in &rows {
        let key = r.key.clone();
        let p = *partition_of.entry(key.clone()).or_insert(r.partition);
        assert_eq!(p, r.partition, "terminal {key:?} in two partitions");
        // librdkafka's murmur2_random and riskpipe's check of labels agree.
        assert_eq!(
            riskpipe_pipeline::kafka::murmur2_partition(&key, 4),
            r.partition
        );
        let row: serde_json::Value = serde_json::from_slice(&r.payload).expect("JSON row");
        assert_eq!(row["TERMINAL_ID"].to_string().as_bytes(), key.as_slice());
    }
    assert!(partition_of.values().collect::<BTreeSet<_>>().len() == 4);
    let bytes: usize = rows.iter().map(|r| r.payload.len()).sum();
    eprintln!(
        "forwarded rows: {} bytes each on average",
        bytes / rows.len()
    );
    assert_eq!(
        pipeline.metric("riskpipe_misrouted_total", ""),
        0.0,
        "every label in its terminal's partition, every transaction in its customer's"
    );
    let (ok, out) = pipeline.terminate();
    assert!(ok, "{out}");
    assert!(out.contains(&format!("{n} scores")), "{out}");
}

/// A repartition topic of another partition count than the transactions' is refused at start,
/// with both counts named.
#[test]
fn a_repartition_topic_of_another_partition_count_is_refused() {
    let mut topics = TOPICS;
    topics[1] = ("scale-by-terminal", 3);
    let broker = Broker::start(&topics);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pipeline = Pipeline::start(&repartitioned(
        dir.path(),
        &broker.bootstrap,
        &dir.path().join("state"),
    ));
    let (ok, log) = support::exit_of(&mut pipeline, Duration::from_secs(60));
    assert!(!ok);
    assert!(
        log.contains("\"scale-by-terminal\" has 3 partitions")
            && log.contains("\"transactions\" 4"),
        "{log}"
    );
}

/// The handbook config in the scale-out topology on `broker`, checkpoints in `state` every
/// `interval`, a dead member out of its group after 6 s.
fn shared(
    dir: &std::path::Path,
    bootstrap: &str,
    state: &std::path::Path,
    interval: &str,
) -> std::path::PathBuf {
    support::write_config(
        dir,
        &format!(
            "{}\n[state]\ndir = {:?}\ninterval = {interval:?}\n",
            kafka_section(
                bootstrap,
                "scale",
                "[kafka.repartition]\nby = \"TERMINAL_ID\"\nreplication_factor = 1\n[kafka.consumer_properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n",
            ),
            state.display().to_string()
        ),
    )
}

/// Polls `scores` into `got` until it holds `count` records.
fn poll_until(
    scores: &support::BaseConsumer,
    got: &mut Vec<support::Got>,
    count: usize,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    while got.len() < count {
        assert!(Instant::now() < deadline, "{} of {count} scores", got.len());
        if let Some(m) = scores.poll(Duration::from_millis(100)) {
            got.push(support::Got::of(&m.expect("consume")));
        }
    }
}

/// Partitions a pipeline restored from a checkpoint, by its log (the checkpoint field is logged
/// only when one was used).
fn restored_from_checkpoints(pipeline: &mut Pipeline) -> usize {
    pipeline
        .drain_log()
        .iter()
        .filter(|l| l.contains("state restored from") && l.contains("checkpoint"))
        .count()
}

/// Several instances share the work: one runs alone, a second and then a third join mid-stream
/// (the group moves partitions of each stage to them, and they restore their state from the
/// shared checkpoints and the gap after them), the first is killed with SIGKILL and the second
/// stopped cleanly (their partitions move to the third, restored the same way). Every
/// transaction is scored, every score equals the single-process backtest's bit for bit, and a
/// transaction scored twice (an uncommitted tail) was published twice byte for byte.
#[test]
fn instances_joining_and_leaving_mid_stream_score_as_the_single_process_backtest() {
    let cfg = PipelineConfig::handbook().expect("shipped config");
    let history = backtest::load(&cfg, &support::handbook_data()).expect("history");
    let n = 60_000;
    let feed = feed(&history, &cfg, 0, n).expect("feed");
    let expected = support::backtest_scores(&cfg, &history, n);
    let broker = support::apache_kafka(&without_repartition_topic());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = shared(
        dir.path(),
        &broker.bootstrap,
        &dir.path().join("state"),
        "1s",
    );
    support::publish_feed(&feed, &broker.bootstrap, true, 0.0);
    let mut first = Pipeline::start(&config);
    first.wait_ready();
    let feeding = support::feed_in_background(&broker.bootstrap, feed.only(false), 2_000.0);
    let scores = reader(&broker.bootstrap, "scores");
    let mut got = Vec::new();
    poll_until(&scores, &mut got, 6_000, Duration::from_secs(120));
    let mut second = Pipeline::start(&config);
    second.wait_ready();
    poll_until(&scores, &mut got, 16_000, Duration::from_secs(120));
    let mut third = Pipeline::start(&config);
    third.wait_ready();
    poll_until(&scores, &mut got, 26_000, Duration::from_secs(120));
    first.signal("KILL");
    let _ = first.child.wait();
    poll_until(&scores, &mut got, 36_000, Duration::from_secs(120));
    let joined = restored_from_checkpoints(&mut second);
    let (ok, out) = second.terminate();
    assert!(ok, "a clean stop: {out}");
    feeding.join().expect("feed");
    poll_until(&scores, &mut got, n, Duration::from_secs(300));
    got.extend(drain(&scores, Duration::from_secs(3)));
    let duplicates = support::check_scores(&got, &feed.ids, |id| expected.get(&id).copied());
    let took_over = restored_from_checkpoints(&mut third);
    // Each stage's partitions that moved were restored from checkpoints the others wrote.
    assert!(
        joined >= 2 && took_over >= 4,
        "restored from checkpoints: {joined} and {took_over}"
    );
    let (ok, out) = third.terminate();
    assert!(ok, "{out}");
    eprintln!(
        "{n} transactions, {} scores published, {duplicates} duplicates, partitions restored from checkpoints: {joined} by the second, {took_over} by the third",
        got.len()
    );
}

/// Labels produced with another partitioner than Java's (librdkafka's default, crc32) land in
/// partitions their terminals' rows are not forwarded to: counted and reported, not silently
/// lost.
#[test]
fn labels_in_the_wrong_partition_are_counted() {
    let cfg = PipelineConfig::handbook().expect("shipped config");
    let history = backtest::load(&cfg, &support::handbook_data()).expect("history");
    let feed = feed(&history, &cfg, 0, 120_000).expect("feed").only(true);
    let labels = feed.messages.len();
    assert!(labels > 50, "{labels} labels");
    let broker = Broker::start(&TOPICS);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = repartitioned(dir.path(), &broker.bootstrap, &dir.path().join("state"));
    let mut pipeline = Pipeline::start(&config);
    pipeline.wait_ready();
    let kafka = KafkaConfig::for_bootstrap(&broker.bootstrap);
    let crc32: rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
        kafka
            .client()
            .set("partitioner", "consistent_random")
            .create()
            .expect("producer");
    Feeder::new(&feed, Instant::now())
        .publish(&crc32, &kafka, &feed, 0.0, &AtomicBool::new(false))
        .expect("publish");
    pipeline.wait_metric(
        "riskpipe_events_in_total",
        "topic=\"fraud-labels\"",
        labels as f64,
    );
    // The feature stage counts them after the source has read them: wait for it to catch up.
    let counted = Instant::now() + Duration::from_secs(30);
    let mut misrouted = 0.0;
    while Instant::now() < counted {
        misrouted = pipeline.metric("riskpipe_misrouted_total", "input=\"labels\"");
        if misrouted > labels as f64 / 2.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // About 3 in 4 land elsewhere than murmur2 would put them.
    assert!(
        misrouted > labels as f64 / 2.0 && misrouted < labels as f64,
        "{misrouted} of {labels}"
    );
    let log = pipeline.drain_log().join("\n");
    assert!(log.contains("labels so far read from a partition"), "{log}");
    assert_eq!(
        pipeline.metric("riskpipe_misrouted_total", "input=\"transactions\""),
        0.0
    );
    let (ok, out) = pipeline.terminate();
    assert!(ok, "{out}");
}

/// The feed's transactions from `from` (index) to `to`.
fn transactions(feed: &Feed, from: usize, to: usize) -> Feed {
    Feed {
        messages: feed
            .messages
            .iter()
            .filter(|m| !m.0 && (from..to).contains(&m.3))
            .cloned()
            .collect(),
        transactions: feed.transactions,
        ids: feed.ids.clone(),
        frauds: feed.frauds.clone(),
    }
}

/// Two instances join at once beside one that has checkpointed nothing yet (its checkpoints
/// are an hour apart), so each rebuilds the partitions it is given from their earliest offsets
/// while the group rebalances again for the other: nothing crash-loops or deadlocks, and what is
/// fed afterwards is scored as the single-process backtest scores it.
#[test]
fn a_rebalance_during_a_restore_neither_crashes_nor_deadlocks() {
    let cfg = PipelineConfig::handbook().expect("shipped config");
    let history = backtest::load(&cfg, &support::handbook_data()).expect("history");
    let (n, before) = (100_000, 80_000);
    let feed = feed(&history, &cfg, 0, n).expect("feed");
    let expected = support::backtest_scores(&cfg, &history, n);
    let broker = support::apache_kafka(&without_repartition_topic());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = shared(
        dir.path(),
        &broker.bootstrap,
        &dir.path().join("state"),
        "1h",
    );
    support::publish_feed(&feed, &broker.bootstrap, true, 0.0);
    let mut first = Pipeline::start(&config);
    first.wait_ready();
    support::publish_feed(
        &transactions(&feed, 0, before),
        &broker.bootstrap,
        false,
        // Paced, as live traffic: a backlog read at once can put one partition days of event
        // time ahead of another, beyond what scores as the ordered backtest (see "Event time").
        10_000.0,
    );
    let scores = reader(&broker.bootstrap, "scores");
    let mut got = Vec::new();
    poll_until(&scores, &mut got, before, Duration::from_secs(300));
    let mut second = Pipeline::start(&config);
    let mut third = Pipeline::start(&config);
    second.wait_ready();
    third.wait_ready();
    // Both new instances have restored partitions (the group may still rebalance after this:
    // what is fed next is scored through whatever it settles on).
    let deadline = Instant::now() + Duration::from_secs(120);
    while [&mut second, &mut third]
        .iter_mut()
        .any(|p| p.metric("riskpipe_restore_seconds", "") == 0.0)
    {
        assert!(Instant::now() < deadline, "never restored");
        std::thread::sleep(Duration::from_millis(200));
    }
    support::publish_feed(
        &transactions(&feed, before, n),
        &broker.bootstrap,
        false,
        5_000.0,
    );
    poll_until(&scores, &mut got, n, Duration::from_secs(300));
    got.extend(drain(&scores, Duration::from_secs(3)));
    // The feeders are idempotent, so the input must hold each transaction once (stage one
    // would refuse a copy as a duplicate, leaving its transaction's single score to compare):
    // a score that differs is then riskpipe's doing.
    let published =
        support::drain_to_end(&reader(&broker.bootstrap, "transactions"), "transactions");
    let mut once = std::collections::HashSet::new();
    let twice: Vec<i64> = support::transaction_ids(&published)
        .into_iter()
        .filter(|id| !once.insert(*id))
        .collect();
    assert!(twice.is_empty(), "published twice: {twice:?}");
    assert_eq!(once.len(), n, "transactions on the topic");
    support::check_scores(&got, &feed.ids, |id| expected.get(&id).copied());
    for p in [first, second, third] {
        let (ok, out) = p.terminate();
        assert!(ok, "{out}");
    }
}

/// Exactly-once in the scale-out topology on Apache Kafka: a second instance joins mid-stream and
/// the first then stops cleanly. Each revoke waits for a commit of every batch its consumer
/// handed on, and the partitions' next owner starts from those offsets with the state
/// restored to there, so, with no transaction aborted, every transaction is scored exactly
/// once. The repartition topic is created by riskpipe.
#[test]
fn exactly_once_instances_joining_and_leaving_publish_every_score_once() {
    let cfg = PipelineConfig::handbook().expect("shipped config");
    let history = backtest::load(&cfg, &support::handbook_data()).expect("history");
    let n = 20_000;
    let feed = feed(&history, &cfg, 0, n).expect("feed");
    let expected = support::backtest_scores(&cfg, &history, n);
    let broker = support::apache_kafka(&without_repartition_topic());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = support::write_config(
        dir.path(),
        &format!(
            "{}\n[state]\ndir = {:?}\ninterval = \"5s\"\n",
            kafka_section(
                &broker.bootstrap,
                "scale",
                // Transactions 5 s long: at a revoke, the open one holds seconds of outputs.
                "commit_interval = \"5s\"\nprocessing_guarantee = \"exactly-once\"\ntransactional_id = \"riskpipe-scale-${env:RP_TEST_SLOT}\"\n[kafka.repartition]\nby = \"TERMINAL_ID\"\nreplication_factor = 1\n[kafka.consumer_properties]\n\"session.timeout.ms\" = \"3000\"\n\"heartbeat.interval.ms\" = \"500\"\n",
            ),
            dir.path().join("state").display().to_string()
        ),
    );
    support::publish_feed(&feed, &broker.bootstrap, true, 0.0);
    let mut first = Pipeline::start_with_env(&config, &[("RP_TEST_SLOT", "0")]);
    first.wait_ready();
    let feeding = support::feed_lingering(&broker.bootstrap, feed.only(false), 1_000.0, 100);
    let scores = reader(&broker.bootstrap, "scores");
    let mut got = Vec::new();
    poll_until(&scores, &mut got, 7_000, Duration::from_secs(120));
    let mut second = Pipeline::start_with_env(&config, &[("RP_TEST_SLOT", "1")]);
    second.wait_ready();
    poll_until(&scores, &mut got, 13_000, Duration::from_secs(120));
    let aborted = |p: &mut Pipeline| p.metric("riskpipe_transactions_total", "result=\"aborted\"");
    assert_eq!(aborted(&mut first), 0.0, "{:#?}", first.drain_log());
    let handed_over = first
        .drain_log()
        .iter()
        .filter(|l| l.contains("every batch read committed before the partitions go"))
        .count();
    let (ok, out) = first.terminate();
    assert!(ok, "a clean stop: {out}");
    feeding.join().expect("feed");
    poll_until(&scores, &mut got, n, Duration::from_secs(300));
    got.extend(drain(&scores, Duration::from_secs(3)));
    assert_eq!(aborted(&mut second), 0.0, "{:#?}", second.drain_log());
    let took_over = restored_from_checkpoints(&mut second);
    let duplicates = support::check_scores(&got, &feed.ids, |id| expected.get(&id).copied());
    assert_eq!(duplicates, 0, "scores published twice");
    assert!(
        handed_over >= 2,
        "the first instance's two stages handed partitions over {handed_over} times"
    );
    assert!(took_over >= 2, "restored from checkpoints: {took_over}");
    let metadata = scores
        .fetch_metadata(Some("scale-by-terminal"), Duration::from_secs(10))
        .expect("metadata");
    assert_eq!(
        metadata.topics()[0].partitions().len(),
        4,
        "the repartition topic riskpipe created"
    );
    let (ok, out) = second.terminate();
    assert!(ok, "{out}");
    eprintln!(
        "{n} transactions, {} scores, {duplicates} duplicates; hand-overs by the first: {handed_over}; partitions the second restored from checkpoints: {took_over}",
        got.len()
    );
}

/// Exactly-once in the scale-out topology on Apache Kafka, with a SIGKILL: a second instance
/// joins mid-stream, then the first is killed while its transactions are open. Its open
/// transactions end by `transaction.timeout.ms` (10 s here; the broker aborts them), its
/// partitions' new owner restores their state and goes on from the offsets last committed in a
/// transaction, and a `read_committed` reader sees every transaction scored once, equal to the
/// backtest, bit for bit; a `read_uncommitted` reader sees the killed instance's aborted records
/// too, so the test could fail. The repartition topic is created by riskpipe.
#[test]
fn exactly_once_scale_out_on_apache_kafka_survives_a_sigkill() {
    let cfg = PipelineConfig::handbook().expect("shipped config");
    let history = backtest::load(&cfg, &support::handbook_data()).expect("history");
    let n = 16_000;
    let feed = feed(&history, &cfg, 0, n).expect("feed");
    let expected = support::backtest_scores(&cfg, &history, n);
    let kafka = riskpipe_testkit::ApacheKafka::start();
    let topics: Vec<(&str, i32)> = TOPICS
        .iter()
        .copied()
        .filter(|(t, _)| *t != "scale-by-terminal")
        .collect();
    support::create_topics(&kafka.bootstrap, &topics);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = support::write_config(
        dir.path(),
        &format!(
            "{}\n[state]\ndir = {:?}\ninterval = \"2s\"\n",
            kafka_section(
                &kafka.bootstrap,
                // The repartition topic is named after the group: scale-by-terminal.
                "scale",
                "commit_interval = \"2s\"\nprocessing_guarantee = \"exactly-once\"\ntransactional_id = \"riskpipe-kill-${env:RP_TEST_SLOT}\"\n[kafka.repartition]\nby = \"TERMINAL_ID\"\nreplication_factor = 1\n[kafka.consumer_properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n[kafka.producer_properties]\n\"transaction.timeout.ms\" = \"10000\"\n",
            ),
            dir.path().join("state").display().to_string()
        ),
    );
    support::publish_feed(&feed, &kafka.bootstrap, true, 0.0);
    let mut first = Pipeline::start_with_env(&config, &[("RP_TEST_SLOT", "0")]);
    first.wait_ready();
    let feeding = support::feed_lingering(&kafka.bootstrap, feed.only(false), 1_000.0, 100);
    let scores = reader(&kafka.bootstrap, "scores");
    let mut got = Vec::new();
    poll_until(&scores, &mut got, 4_000, Duration::from_secs(120));
    let mut second = Pipeline::start_with_env(&config, &[("RP_TEST_SLOT", "1")]);
    second.wait_ready();
    poll_until(&scores, &mut got, 8_000, Duration::from_secs(120));
    // Killed while a transaction holds records: on some partition of the two topics riskpipe
    // writes, the high watermark (what read_uncommitted readers see) is past the last stable
    // offset (read_committed's end).
    let mut uncommitted = KafkaConfig::for_bootstrap(&kafka.bootstrap);
    uncommitted.group_id = "scale-eos-kill-uncommitted".into();
    uncommitted
        .properties
        .insert("isolation.level".into(), "read_uncommitted".into());
    let written = ["scores", "scale-by-terminal"];
    let log_end = {
        let mut k = uncommitted.clone();
        k.group_id = "scale-eos-kill-log-end".into();
        riskpipe_pipeline::demo::reader(&k, &written).expect("reader")
    };
    let mut committed_all = KafkaConfig::for_bootstrap(&kafka.bootstrap);
    committed_all.group_id = "scale-eos-kill-committed".into();
    let stable = {
        let mut k = committed_all.clone();
        k.group_id = "scale-eos-kill-stable".into();
        riskpipe_pipeline::demo::reader(&k, &written).expect("reader")
    };
    let open = |c: &support::BaseConsumer, topic: &str, p: i32| {
        c.fetch_watermarks(topic, p, Duration::from_secs(5))
            .expect("watermarks")
            .1
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !written
        .iter()
        .any(|t| (0..4).any(|p| open(&log_end, t, p) > open(&stable, t, p)))
    {
        assert!(Instant::now() < deadline, "no open transaction within 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    first.kill();
    let killed = Instant::now();
    feeding.join().expect("feed");
    poll_until(&scores, &mut got, n, Duration::from_secs(300));
    let done = killed.elapsed();
    got.extend(drain(&scores, Duration::from_secs(3)));
    let duplicates = support::check_scores(&got, &feed.ids, |id| expected.get(&id).copied());
    assert_eq!(duplicates, 0, "a read_committed reader saw a score twice");
    // Every record of both topics, as each isolation level reads them: the aborted ones only
    // read_uncommitted.
    let count = |k: &KafkaConfig| {
        drain(
            &riskpipe_pipeline::demo::reader(k, &written).expect("reader"),
            Duration::from_secs(3),
        )
        .len()
    };
    let (all, visible) = (count(&uncommitted), count(&committed_all));
    assert!(
        all > visible,
        "read_uncommitted sees the killed transaction's aborted records: {all} vs {visible}"
    );
    let metadata = scores
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    let repartition: Vec<(String, usize)> = metadata
        .topics()
        .iter()
        .map(|t| (t.name().to_string(), t.partitions().len()))
        .collect();
    assert!(
        repartition.contains(&("scale-by-terminal".to_string(), 4)),
        "the repartition topic riskpipe created: {repartition:?}"
    );
    let (ok, out) = second.terminate();
    assert!(ok, "{out}");
    eprintln!(
        "{n} transactions: {} scores read_committed; records of both topics {visible} read_committed, {all} read_uncommitted; all scored {:.1} s after the kill",
        got.len(),
        done.as_secs_f64()
    );
}
