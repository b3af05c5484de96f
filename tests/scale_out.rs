//! The scale-out topology (`[kafka.repartition]`) against a broker process: the first stage
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
use support::{Broker, Consumer, Pipeline, collect, drain, kafka_section, producer, reader};

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

/// Publishes the feed's labels (or transactions) at `rate` transactions/s (0: at once).
fn publish(feed: &Feed, bootstrap: &str, labels: bool, rate: f64) {
    let kafka = KafkaConfig::for_bootstrap(bootstrap);
    let only = feed.only(labels);
    Feeder::new(&only, Instant::now())
        .publish(
            &producer(bootstrap),
            &kafka,
            &only,
            rate,
            &AtomicBool::new(false),
        )
        .expect("publish");
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
    let broker = Broker::start(&TOPICS);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = repartitioned(dir.path(), &broker.bootstrap, &dir.path().join("state"));
    publish(&feed, &broker.bootstrap, true, 0.0);
    let mut pipeline = Pipeline::start(&config);
    pipeline.wait_ready();
    publish(&feed, &broker.bootstrap, false, 10_000.0);

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

    // The repartition topic: 4 partitions, each terminal in one of them.
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
        let row: serde_json::Value = serde_json::from_slice(&r.payload).expect("JSON row");
        assert_eq!(row["TERMINAL_ID"].to_string().as_bytes(), key.as_slice());
    }
    assert!(partition_of.values().collect::<BTreeSet<_>>().len() == 4);
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
