//! The live Kafka path against a broker process (`riskpipe-test-broker`, librdkafka's mock
//! cluster over TCP) and the `riskpipe` binary: live == backtest, restarts lose nothing, Kafka
//! range replays equal file replays, the demo and validate. (Bad input: `tests/bad_input.rs`.)

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::producer::{DefaultProducerContext, ThreadedProducer};
use riskpipe_pipeline::demo::{Feed, Feeder, feed};
use riskpipe_pipeline::kafka::KafkaConfig;
use riskpipe_pipeline::sources::history::History;
use riskpipe_pipeline::{PipelineConfig, backtest};
use riskpipe_schemas::Alert;
use support::{
    Broker, MULTI_PARTITION, Pipeline, TOPICS, collect, drain, drain_to_end, kafka_section,
    producer, reader, scores_by_id, scores_of, write_config,
};

fn handbook() -> &'static (PipelineConfig, History) {
    static H: OnceLock<(PipelineConfig, History)> = OnceLock::new();
    H.get_or_init(|| {
        let cfg = PipelineConfig::handbook().expect("shipped config");
        let history = backtest::load(&cfg, &support::handbook_data()).expect("history");
        (cfg, history)
    })
}

/// Publishes the feed's labels or its transactions, at `rate` transactions/s (0: at once).
fn publish(
    feed: &Feed,
    p: &ThreadedProducer<DefaultProducerContext>,
    bootstrap: &str,
    labels: bool,
    rate: f64,
) {
    let kafka = KafkaConfig::for_bootstrap(bootstrap);
    let only = feed.only(labels);
    Feeder::new(&only, Instant::now())
        .publish(p, &kafka, &only, rate, &AtomicBool::new(false))
        .expect("publish");
}

/// TRANSACTION_ID → SCORE of the backtest (the product's driver over the file history).
fn backtest_scores(cfg: &PipelineConfig, history: History) -> HashMap<i64, f32> {
    let replayed = backtest::replay(cfg, Arc::new(history), &indicatif::ProgressBar::hidden())
        .expect("replay");
    scores_by_id(replayed.scored())
}

/// [`backtest_scores`] with the model file `model` in place of `cfg`'s.
fn backtest_scores_with_model(
    cfg: &PipelineConfig,
    history: History,
    model: &std::path::Path,
) -> HashMap<i64, f32> {
    let mut cfg = cfg.clone();
    cfg.model.primary_mut().path = model.to_path_buf();
    backtest_scores(&cfg, history)
}

/// How score records name the model at `path` when it is loaded as `file`.
fn model_label(file: &str, path: &std::path::Path) -> String {
    let bytes = std::fs::read(path).expect("model file");
    format!("{file}@{}", riskpipe_models::version_of(&bytes))
}

/// Publishes the feed's labels, starts the pipeline and waits until it consumed them all.
fn start_after_labels(config: &std::path::Path, feed: &Feed, bootstrap: &str) -> Pipeline {
    let labels = feed.messages.iter().filter(|m| m.0).count();
    publish(feed, &producer(bootstrap), bootstrap, true, 0.0);
    let mut pipeline = Pipeline::start(config);
    pipeline.wait_ready();
    pipeline.wait_metric(
        "riskpipe_events_in_total",
        "topic=\"fraud-labels\"",
        labels as f64,
    );
    pipeline
}

/// Live on a multi-partition topic equals the backtest bit for bit, one score per transaction.
#[test]
fn live_scores_equal_backtest_scores_one_per_transaction() {
    let (cfg, history) = handbook();
    // 12.5 days: labels (7-day delay) feed the terminal risk features for the last 5.5.
    let n = 120_000;
    let feed = feed(history, cfg, 0, n).expect("feed");
    let labels = feed.messages.iter().filter(|m| m.0).count();
    assert!(
        labels > 20,
        "slice must exercise the label features: {labels}"
    );

    // Transactions on 4 partitions and labels on 3, as in production: partitions interleave,
    // so event time runs out of order across them, and state must follow the watermark.
    let broker = Broker::start(&MULTI_PARTITION);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &kafka_section(&broker.bootstrap, "live-eq", ""));
    // Drift from the first row, as the backtest's report counts it (live waits for the
    // features' reach by default, beyond these three days).
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(text.contains("\nwindow_days = 7\n"), "{text}");
    std::fs::write(
        &config,
        text.replace(
            "\nwindow_days = 7\n",
            "\nwindow_days = 7\nwarm_up = \"0s\"\n",
        ),
    )
    .expect("config");
    let p = producer(&broker.bootstrap);
    // Labels first: an operator uses a label only from its label time on, so early labels
    // change nothing, and the run is deterministic however the two topics interleave.
    publish(&feed, &p, &broker.bootstrap, true, 0.0);
    let mut pipeline = Pipeline::start(&config);
    pipeline.wait_ready();
    let deadline = Instant::now() + Duration::from_secs(120);
    while pipeline.metric("riskpipe_events_in_total", "topic=\"fraud-labels\"") < labels as f64 {
        assert!(
            Instant::now() < deadline,
            "labels not consumed: {:#?}",
            pipeline.drain_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // As live traffic: the partitions advance together. (A backlog read at once can put one
    // partition days ahead of another; exactness then needs them within the terminal risk's
    // 7-day label delay less the allowed lateness, see tests/handbook.rs.)
    publish(&feed, &p, &broker.bootstrap, false, 10_000.0);

    let scores_reader = reader(&broker.bootstrap, "scores");
    let got = collect(&scores_reader, Duration::from_secs(600), |r| r.len() >= n);
    let got_scores = scores_of(&got);
    let extra = drain(&scores_reader, Duration::from_secs(1));
    assert!(
        extra.is_empty(),
        "{} scores beyond one per transaction",
        extra.len()
    );

    // The backtest engine over the same transactions and labels.
    let replayed = backtest::replay(
        cfg,
        Arc::new(history.head(n)),
        &indicatif::ProgressBar::hidden(),
    )
    .expect("replay");
    let expected = scores_by_id(replayed.scored());
    assert_eq!(expected.len(), n);
    let mut seen = BTreeSet::new();
    let mut differ = 0;
    for s in &got_scores {
        assert!(
            seen.insert(s.transaction_id),
            "duplicate score for {}",
            s.transaction_id
        );
        let want = expected
            .get(&s.transaction_id)
            .expect("scored id was published");
        if (s.score as f32) != *want {
            differ += 1;
        }
    }
    assert_eq!(seen.len(), n);
    assert_eq!(differ, 0, "{differ} live scores differ from the backtest's");
    let alerts_expected = expected
        .values()
        .filter(|&&s| f64::from(s) >= cfg.alerts.threshold.expect("fraud threshold"))
        .count();
    assert!(alerts_expected > 0, "slice should raise alerts");

    let alerts = collect(
        &reader(&broker.bootstrap, "alerts"),
        Duration::from_secs(60),
        |r| r.len() >= alerts_expected,
    );
    for a in &alerts {
        let a: Alert = serde_json::from_slice(&a.payload).expect("alert payload");
        assert!(a.score >= a.threshold);
        assert!(a.reasons.len() <= 3 && !a.reasons.is_empty(), "{a:?}");
        assert!(
            a.reasons
                .windows(2)
                .all(|w| w[0].contribution >= w[1].contribution)
        );
    }

    assert_eq!(pipeline.get("/health").0, 200);
    let metrics = pipeline.get("/metrics").1;
    for name in [
        "riskpipe_events_in_total",
        "riskpipe_events_out_total",
        "riskpipe_batch_rows",
        "riskpipe_stage_seconds",
        "riskpipe_end_to_end_seconds",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    assert_eq!(
        pipeline.metric("riskpipe_events_in_total", "topic=\"transactions\""),
        n as f64
    );
    // Live drift ([drift] of the shipped config) equals the backtest's drift of the same rows
    // on their last day: the same counts, however the partitions interleaved.
    let drift_cfg = cfg
        .drift
        .as_ref()
        .expect("the shipped config monitors drift");
    let reference =
        riskpipe_pipeline::jobs::drift::Reference::read(&drift_cfg.reference).expect("reference");
    let report = riskpipe_pipeline::jobs::drift::DriftReport::per_day(
        &replayed.scored(),
        "TX_DATETIME",
        &reference,
        i64::from(drift_cfg.window_days),
    )
    .expect("drift");
    let last = report.days.len() - 1;
    for (c, column) in report.columns.iter().enumerate() {
        let want = report.psi[c][last];
        let live = pipeline.metric("riskpipe_drift_psi", &format!("column=\"{column}\""));
        assert!(
            (live - want).abs() <= 1e-12 * want.abs().max(1.0),
            "{column}: live PSI {live}, backtest {want} on {}",
            report.days[last]
        );
    }
    let (ok, out) = pipeline.terminate();
    assert!(ok, "SIGTERM must end with exit 0");
    assert!(out.contains(&format!("{n} scores")), "{out}");
}

/// A model reloaded mid-stream: a file that is no model is refused (SIGHUP) and the old model
/// keeps scoring; another model is swapped in between two batches (`POST /admin/reload`).
/// Every transaction is scored once, each record names the model that scored it, and each
/// score equals that model's backtest; the old model scored every transaction before the
/// swap, the new one every transaction after it.
#[test]
fn a_model_reloaded_mid_stream_scores_each_transaction_once_by_the_model_it_names() {
    let (cfg, history) = handbook();
    let n = 24_000;
    let feed = feed(history, cfg, 0, n).expect("feed");
    let broker = Broker::start(&TOPICS);
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("model.onnx");
    let blend = support::root().join("models/fraud_blend.onnx");
    let gbm = support::root().join("models/fraud_gbm.onnx");
    std::fs::copy(&blend, &model).expect("model");
    let config = write_config(
        dir.path(),
        &kafka_section(&broker.bootstrap, "reload", "commit_interval = \"200ms\""),
    );
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text.replace(
        &format!("path = {:?}", blend.display().to_string()),
        &format!("path = {:?}", model.display().to_string()),
    ) + "\n[observability]\nadmin = true\n";
    assert!(text.contains("model.onnx"), "{text}");
    std::fs::write(&config, text).expect("config");
    // Replaced by a rename, as docs/guides/models.md advises.
    let replace = |from: &std::path::Path| {
        let next = dir.path().join("next.onnx");
        std::fs::copy(from, &next).expect("copy");
        std::fs::rename(&next, &model).expect("rename");
    };

    let mut pipeline = start_after_labels(&config, &feed, &broker.bootstrap);
    let bootstrap = broker.bootstrap.clone();
    let feeding = std::thread::spawn({
        let feed = feed.only(false);
        move || {
            let p = producer(&bootstrap);
            publish(&feed, &p, &bootstrap, false, 2_500.0);
        }
    });
    let scores = reader(&broker.bootstrap, "scores");
    let mut got = collect(&scores, Duration::from_secs(120), |r| r.len() >= 4_000);

    // Not a model: refused, the old one keeps scoring.
    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"not an ONNX model").expect("garbage");
    replace(&garbage);
    pipeline.signal("HUP");
    pipeline.wait_metric("riskpipe_model_reloads_total", "result=\"refused\"", 1.0);
    got.extend(collect(&scores, Duration::from_secs(120), |r| {
        r.len() >= 2_000
    }));

    // Another model, asked for over HTTP.
    replace(&gbm);
    assert_eq!(pipeline.post("/admin/reload").0, 202);
    pipeline.wait_metric("riskpipe_model_reloads_total", "result=\"swapped\"", 1.0);
    feeding.join().expect("feeder");
    let deadline = Instant::now() + Duration::from_secs(300);
    while got.len() < n {
        assert!(Instant::now() < deadline, "{} of {n} scored", got.len());
        got.extend(drain(&scores, Duration::from_millis(500)));
    }
    got.extend(drain(&scores, Duration::from_secs(1)));
    let swap_seconds = pipeline.metric("riskpipe_model_swap_seconds", "");
    let (ok, _) = pipeline.terminate();
    assert!(ok, "SIGTERM exits 0");

    let old = model_label("model.onnx", &blend);
    let new = model_label("model.onnx", &gbm);
    let expected_old = backtest_scores(cfg, history.head(n));
    let expected_new = backtest_scores_with_model(cfg, history.head(n), &gbm);
    let mut seen = BTreeSet::new();
    let (mut last_old, mut first_new) = (i64::MIN, i64::MAX);
    let mut by_new = 0;
    for s in scores_of(&got) {
        assert!(
            seen.insert(s.transaction_id),
            "{} scored twice",
            s.transaction_id
        );
        let expected = if s.model == old {
            last_old = last_old.max(s.transaction_id);
            &expected_old
        } else if s.model == new {
            first_new = first_new.min(s.transaction_id);
            by_new += 1;
            &expected_new
        } else {
            panic!("score names {:?}, neither {old} nor {new}", s.model);
        };
        assert_eq!(
            s.score as f32, expected[&s.transaction_id],
            "{} scored by {} differs from its backtest",
            s.transaction_id, s.model
        );
    }
    assert_eq!(seen.len(), n, "every transaction scored once");
    assert!(
        by_new > 0 && by_new < n,
        "both models scored: {by_new} by the new one"
    );
    assert!(
        last_old < first_new,
        "the swap falls between two batches: old up to {last_old}, new from {first_new}"
    );
    eprintln!(
        "reload: {} by {old}, {by_new} by {new}, swap check {swap_seconds:.4} s",
        n - by_new
    );
}

/// A challenger live: its scores on their own topic, one per transaction, each equal to its
/// backtest, never an alert; the champion's scores and alerts as without it.
#[test]
fn a_challenger_scores_every_transaction_on_its_topic_and_never_alerts() {
    let (cfg, history) = handbook();
    let n = 10_000;
    let feed = feed(history, cfg, 0, n).expect("feed");
    let mut topics = TOPICS.to_vec();
    topics.push(("scores-challenger", 2));
    let broker = Broker::start(&topics);
    let dir = tempfile::tempdir().expect("tempdir");
    let gbm = support::root().join("models/fraud_gbm.onnx");
    let config = write_config(
        dir.path(),
        &format!(
            "\n[challenger]\npath = {:?}\n{}",
            gbm.display().to_string(),
            kafka_section(&broker.bootstrap, "challenger", "")
        ),
    );
    let pipeline = start_after_labels(&config, &feed, &broker.bootstrap);
    publish(
        &feed,
        &producer(&broker.bootstrap),
        &broker.bootstrap,
        false,
        10_000.0,
    );
    let theirs = collect(
        &reader(&broker.bootstrap, "scores-challenger"),
        Duration::from_secs(300),
        |r| r.len() >= n,
    );
    let ours = collect(
        &reader(&broker.bootstrap, "scores"),
        Duration::from_secs(300),
        |r| r.len() >= n,
    );
    let agreement = pipeline.metric("riskpipe_challenger_rows_total", "");
    let (ok, _) = pipeline.terminate();
    assert!(ok);

    let expected_ours = backtest_scores(cfg, history.head(n));
    let expected_theirs = backtest_scores_with_model(cfg, history.head(n), &gbm);
    let label = model_label("fraud_gbm.onnx", &gbm);
    for (got, expected, model) in [
        (&theirs, &expected_theirs, label.as_str()),
        (&ours, &expected_ours, "fraud_blend.onnx@"),
    ] {
        let got = scores_of(got);
        assert_eq!(got.len(), n);
        let ids: BTreeSet<i64> = got.iter().map(|s| s.transaction_id).collect();
        assert_eq!(ids.len(), n, "one score per transaction");
        for s in &got {
            assert!(s.model.starts_with(model), "{} is not {model}", s.model);
            assert_eq!(s.score as f32, expected[&s.transaction_id], "{}", s.model);
        }
    }
    assert_ne!(expected_ours, expected_theirs);
    // Alerts are the champion's only.
    let alerts_expected = expected_ours
        .values()
        .filter(|&&s| f64::from(s) >= cfg.alerts.threshold.expect("threshold"))
        .count();
    let alerts = collect(
        &reader(&broker.bootstrap, "alerts"),
        Duration::from_secs(60),
        |r| r.len() >= alerts_expected,
    );
    let extra = drain(&reader(&broker.bootstrap, "alerts"), Duration::from_secs(1));
    assert_eq!(
        extra.len(),
        alerts.len(),
        "the alerts topic holds {alerts_expected}"
    );
    assert_eq!(alerts.len(), alerts_expected);
    for a in &alerts {
        let a: Alert = serde_json::from_slice(&a.payload).expect("alert");
        assert!(a.model.starts_with("fraud_blend.onnx@"), "{}", a.model);
    }
    assert_eq!(agreement, n as f64, "every row compared");
}

#[test]
fn restarts_lose_nothing_and_duplicate_only_the_uncommitted_tail() {
    let (cfg, history) = handbook();
    let n = 24_000;
    let feed = feed(history, cfg, 200_000, n).expect("feed");
    let broker = support::apache_kafka(&TOPICS);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        &kafka_section(
            &broker.bootstrap,
            "restart",
            // A killed member holds its partition until its session times out: keep that short.
            "commit_interval = \"200ms\"\n[kafka.consumer_properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"",
        ),
    );
    let bootstrap = broker.bootstrap.clone();
    let feeding = std::thread::spawn({
        let feed_tx = feed.only(false);
        move || {
            let p = producer(&bootstrap);
            Feeder::new(&feed_tx, Instant::now())
                .publish(
                    &p,
                    &KafkaConfig::for_bootstrap(&bootstrap),
                    &feed_tx,
                    3_000.0,
                    &AtomicBool::new(false),
                )
                .expect("publish");
        }
    });
    let scores = reader(&broker.bootstrap, "scores");
    let ids = |r: &[support::Got]| -> Vec<i64> {
        scores_of(r).iter().map(|s| s.transaction_id).collect()
    };

    // Phase 1: clean stop.
    let mut p1 = Pipeline::start(&config);
    p1.wait_ready();
    let mut phase1 = collect(&scores, Duration::from_secs(120), |r| r.len() >= 3_000);
    let (ok, _) = p1.terminate();
    assert!(ok, "SIGTERM exits 0");
    phase1.extend(drain_to_end(&scores, "scores"));
    let phase1 = ids(&phase1);

    // Phase 2: killed mid-stream.
    let mut p2 = Pipeline::start(&config);
    p2.wait_ready();
    let mut phase2 = collect(&scores, Duration::from_secs(120), |r| r.len() >= 6_000);
    // A backlog can be scored faster than the first auto-commit: kill only once phase 2 has
    // committed something, so that the uncommitted tail is a strict part of it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while p2.metric("riskpipe_commits_total", "result=\"ok\"") < 1.0 {
        assert!(Instant::now() < deadline, "phase 2 never committed");
        std::thread::sleep(Duration::from_millis(20));
    }
    p2.kill();
    phase2.extend(drain_to_end(&scores, "scores"));
    let phase2 = ids(&phase2);

    // Phase 3: runs to the end.
    let mut p3 = Pipeline::start(&config);
    p3.wait_ready();
    feeding.join().expect("feeder");
    let all_ids: BTreeSet<i64> = feed.ids.iter().copied().collect();
    let mut seen: BTreeSet<i64> = phase1.iter().chain(&phase2).copied().collect();
    let mut phase3 = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen.len() < n {
        assert!(Instant::now() < deadline, "{} of {n} scored", seen.len());
        let more = ids(&drain(&scores, Duration::from_millis(500)));
        seen.extend(&more);
        phase3.extend(more);
    }
    let (ok, _) = p3.terminate();
    assert!(ok);
    phase3.extend(ids(&drain_to_end(&scores, "scores")));

    assert_eq!(seen, all_ids, "every transaction has a score");
    let mut count: HashMap<i64, usize> = HashMap::new();
    for id in phase1.iter().chain(&phase2).chain(&phase3) {
        *count.entry(*id).or_default() += 1;
    }
    // Nothing scored before the clean stop is scored again.
    for id in &phase1 {
        assert_eq!(
            count[id], 1,
            "transaction {id} re-scored after a clean stop"
        );
    }
    // After SIGKILL only the uncommitted tail repeats: a contiguous run of phase 2's last ids.
    let dups: BTreeSet<i64> = count.iter().filter(|e| *e.1 > 1).map(|e| *e.0).collect();
    let p2: BTreeSet<i64> = phase2.iter().copied().collect();
    assert!(dups.is_subset(&p2), "duplicates outside the killed phase");
    if let Some(first) = dups.first() {
        let tail: BTreeSet<i64> = p2.range(first..).copied().collect();
        let gaps: Vec<&i64> = tail.difference(&dups).take(10).collect();
        assert!(
            gaps.is_empty(),
            "duplicates are not the uncommitted tail: {} dups from {first}, phase 2 {}..={:?}, not re-scored: {gaps:?}",
            dups.len(),
            p2.first().copied().unwrap_or_default(),
            p2.last()
        );
    }
    assert!(dups.len() < p2.len(), "phase 2 committed nothing");
}

#[test]
fn validate_lists_every_kafka_problem_without_connecting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        "\n[kafka]\nin_flight_batches = 0\n[kafka.topics]\nscores = \"transactions\"\n[kafka.properties]\n\"security.protocol\" = \"smoke-signals\"\n\"enable.auto.offset.store\" = \"true\"\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_riskpipe"))
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .expect("riskpipe");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "bootstrap.servers",
        "\"security.protocol\": Invalid value",
        "enable.auto.offset.store",
        "input topic",
        "in_flight_batches",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(!err.contains("smoke-signals"), "values stay out:\n{err}");
}

#[test]
fn demo_runs_embedded_and_scores_every_published_transaction() {
    // JSON, and Avro with the in-process schema registry.
    for format in ["json", "avro"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_riskpipe"))
            .args([
                "demo",
                "--transactions",
                "5000",
                "--skip",
                "100000",
                "--quiet",
                "--format",
                format,
            ])
            .arg("--input")
            .arg(support::handbook_data())
            .output()
            .expect("riskpipe demo");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{format} demo failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let field = |name: &str| -> u64 {
            stdout
                .lines()
                .find(|l| l.trim_start().starts_with(name))
                .and_then(|l| l.split_whitespace().find_map(|w| w.parse().ok()))
                .unwrap_or_else(|| panic!("no {name:?} in:\n{stdout}"))
        };
        assert_eq!(field("transactions published"), 5000, "{format}");
        assert_eq!(field("distinct scored"), 5000, "{format}");
        assert_eq!(field("dead letters"), 0, "{format}");
        assert!(stdout.contains("p99"), "{stdout}");
        // What to try next, with commands that exist.
        assert!(
            stdout.contains("next:")
                && stdout.contains("riskpipe backtest --input")
                && stdout.contains("--state-dir DIR"),
            "{stdout}"
        );
    }
}

#[test]
fn replay_of_a_topic_range_writes_the_backtest_outputs_with_the_same_scores() {
    let (cfg, history) = handbook();
    let n = 30_000;
    let feed = feed(history, cfg, 0, n).expect("feed");
    let broker = Broker::start(&TOPICS);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &kafka_section(&broker.bootstrap, "replay", ""));
    let p = producer(&broker.bootstrap);
    publish(&feed, &p, &broker.bootstrap, true, 0.0);
    publish(&feed, &p, &broker.bootstrap, false, 0.0);
    let out_dir = dir.path().join("out");
    // From offset 10000 to the end: the range is what gets scored.
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_riskpipe"))
        .args(["replay", "--quiet", "--from-offset", "10000", "--config"])
        .arg(&config)
        .arg("--output")
        .arg(&out_dir)
        .output()
        .expect("riskpipe replay");
    assert!(
        run.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    for f in ["scores.parquet", "report.json", "curves.png"] {
        assert!(out_dir.join(f).is_file(), "{f} missing");
    }
    let file = std::fs::File::open(out_dir.join("scores.parquet")).expect("scores");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .build()
        .expect("reader");
    let got = scores_by_id(reader.map(|b| b.expect("batch")));
    assert_eq!(got.len(), n - 10_000);
    // The same range replayed from the file history: a cold start at the range's first event.
    let slice = History {
        events: history.events.slice(10_000, n - 10_000),
        ..history.clone()
    };
    let expected = backtest_scores(cfg, slice);
    for (id, score) in &expected {
        assert_eq!(got.get(id), Some(score), "id {id}");
    }
    assert_eq!(expected.len(), n - 10_000);
}

/// The outcomes and the two deciding rules of the live decision tests: a block rule on amount
/// and a review rule on velocity and score.
const BLOCK_LARGE_REVIEW_BUSY: &str = r#"
[decisions]
outcomes = ["allow", "review", "block"]
[[decisions.rules]]
name = "large"
when = "TX_AMOUNT > 220"
outcome = "block"
[[decisions.rules]]
name = "busy_and_risky"
when = "CUSTOMER_ID_NB_TX_1DAY_WINDOW >= 3 AND SCORE >= 0.1"
outcome = "review"
"#;

/// Decisions live equal the backtest of the rules version they name: 30,000 handbook
/// transactions on four partitions through a block rule on the amount, a review rule on
/// velocity and score, a shadow rule and a block list. Every transaction gets one decision
/// record naming the rules' version, and its outcome, matching rules and score equal the
/// backtest's decision of it (the same config replayed by the product's driver); the alerts
/// are the review and block decisions. (The reasons are not compared: they are measured
/// against a baseline of the rows scored so far, which depends on batch boundaries.)
#[test]
fn live_decisions_equal_the_backtest_of_the_rules_version_they_name() {
    let (cfg, history) = handbook();
    let n = 30_000;
    let feed = feed(history, cfg, 0, n).expect("feed");
    let mut topics = MULTI_PARTITION.to_vec();
    topics.push(("decisions", 4));
    let broker = Broker::start(&topics);
    let dir = tempfile::tempdir().expect("tempdir");
    let blocked: Vec<i64> = (0..40).map(|i| i * 97).collect();
    std::fs::write(
        dir.path().join("blocked.txt"),
        blocked.iter().map(|c| format!("{c}\n")).collect::<String>(),
    )
    .expect("list");
    let rules = format!(
        r#"{BLOCK_LARGE_REVIEW_BUSY}[[decisions.rules]]
name = "watch"
when = "SCORE >= 0.5"
outcome = "block"
shadow = true
[[decisions.rules]]
name = "blocked"
when = "in_list('blocked_customers', CUSTOMER_ID)"
outcome = "block"
[[decisions.lists]]
name = "blocked_customers"
file = "blocked.txt"
"#
    );
    let config = write_config(
        dir.path(),
        &format!(
            "{rules}{}",
            kafka_section(&broker.bootstrap, "live-decisions", "")
        ),
    );
    let pipeline = start_after_labels(&config, &feed, &broker.bootstrap);
    publish(
        &feed,
        &producer(&broker.bootstrap),
        &broker.bootstrap,
        false,
        10_000.0,
    );
    let decisions = reader(&broker.bootstrap, "decisions");
    let got = collect(&decisions, Duration::from_secs(300), |r| r.len() >= n);
    let extra = drain(&decisions, Duration::from_secs(1));
    assert!(
        extra.is_empty(),
        "{} decisions beyond one per transaction",
        extra.len()
    );

    let live_cfg = PipelineConfig::load(&config).expect("config");
    let expected = backtest_decisions(&live_cfg, None, history.head(n));
    assert_eq!(expected.len(), n, "the backtest decides every transaction");
    let (mut seen, mut outcomes) = (BTreeSet::new(), HashMap::<String, usize>::new());
    let version = riskpipe_pipeline::jobs::fraud::DecisionsSection::rules(
        live_cfg.decisions.as_ref().expect("decisions"),
        dir.path(),
    )
    .expect("rules")
    .version();
    for g in &got {
        let v: serde_json::Value = serde_json::from_slice(&g.payload).expect("decision");
        assert_eq!(v["RULES_VERSION"], version.as_str());
        *outcomes
            .entry(v["DECISION"].as_str().expect("decision").to_string())
            .or_default() += 1;
        let (id, text) = decision_key(&v);
        assert!(seen.insert(id), "two decisions of {id}");
        assert_eq!(Some(&text), expected.get(&id), "decision of {id}");
    }
    assert_eq!(seen.len(), n);
    for o in ["allow", "review", "block"] {
        assert!(
            outcomes.get(o).copied().unwrap_or(0) > 0,
            "no {o}: {outcomes:?}"
        );
    }
    let alerts = outcomes["review"] + outcomes["block"];
    let got_alerts = collect(
        &reader(&broker.bootstrap, "alerts"),
        Duration::from_secs(60),
        |r| r.len() >= alerts,
    );
    assert_eq!(
        got_alerts.len(),
        alerts,
        "alerts are the review and block decisions"
    );
    assert!(
        pipeline.metric("riskpipe_rule_hits_total", "rule=\"blocked\"") > 0.0,
        "the block list matched"
    );
    assert_eq!(
        pipeline.metric("riskpipe_decisions_total", ""),
        n as f64,
        "one decision counted per transaction"
    );
    let (ok, _) = pipeline.terminate();
    assert!(ok, "SIGTERM exits 0");
}

/// The decisions of the backtest of `cfg` (with the rules of `rules_file`, where given), by
/// transaction id, as their JSON text without the reasons.
fn backtest_decisions(
    cfg: &PipelineConfig,
    rules_file: Option<&std::path::Path>,
    history: History,
) -> HashMap<i64, String> {
    let mut cfg = cfg.clone();
    if let (Some(d), Some(file)) = (cfg.decisions.as_mut(), rules_file) {
        d.file = Some(file.to_path_buf());
    }
    let replayed = backtest::replay(&cfg, Arc::new(history), &indicatif::ProgressBar::hidden())
        .expect("replay");
    let mut out = HashMap::new();
    for o in &replayed.collected.outputs {
        let Some(r) = &o.decisions else { continue };
        let mut payloads = riskpipe_pipeline::encoders::Payloads::default();
        riskpipe_pipeline::encoders::Encoder::encode(
            &mut riskpipe_pipeline::encoders::JsonEncoder,
            "decisions",
            &r.batch,
            &mut payloads,
        )
        .expect("encode");
        for p in payloads.iter() {
            let (id, text) = decision_key(&serde_json::from_slice(p).expect("json"));
            out.insert(id, text);
        }
    }
    out
}

/// A decision record's transaction id and its JSON text without the reasons.
fn decision_key(v: &serde_json::Value) -> (i64, String) {
    let mut v = v.clone();
    let id = v["TRANSACTION_ID"].as_i64().expect("id");
    if let Some(o) = v.as_object_mut() {
        o.remove("REASONS");
    }
    (id, v.to_string())
}

/// Rules reloaded under load: 24,000 transactions at 2,500/s decided by a rules file; a broken
/// rules file (an undeclared outcome, a missing column) is refused on SIGHUP with every
/// problem logged and the running rules keep deciding; new rules and a new block list are
/// taken on `POST /admin/reload` from one batch on. Every transaction is decided once, each
/// decision equal to the backtest of the rules version it names, every decision of the old
/// version before every one of the new, and the change is appended to `[decisions] changes`.
#[test]
fn rules_reloaded_under_load_decide_from_one_batch_on_and_a_broken_file_is_refused() {
    let (cfg, history) = handbook();
    let n = 24_000;
    let feed = feed(history, cfg, 0, n).expect("feed");
    let mut topics = TOPICS.to_vec();
    topics.push(("decisions", 1));
    let broker = Broker::start(&topics);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name);
    let rules = |amount: u32, list: &str| {
        format!(
            r#"
outcomes = ["allow", "review", "block"]
[[rules]]
name = "large"
when = "TX_AMOUNT > {amount}"
outcome = "block"
[[rules]]
name = "busy_and_risky"
when = "CUSTOMER_ID_NB_TX_1DAY_WINDOW >= 3 AND SCORE >= 0.1"
outcome = "review"
[[rules]]
name = "blocked"
when = "in_list('blocked_customers', CUSTOMER_ID)"
outcome = "block"
[[lists]]
name = "blocked_customers"
file = "{list}"
"#
        )
    };
    std::fs::write(path("old.txt"), "0\n97\n194\n").expect("list");
    std::fs::write(path("new.txt"), "0\n97\n194\n291\n388\n485\n582\n679\n").expect("list");
    std::fs::write(path("v1.toml"), rules(220, "old.txt")).expect("v1");
    std::fs::write(path("v2.toml"), rules(150, "new.txt")).expect("v2");
    let broken = rules(220, "old.txt")
        .replace("outcome = \"review\"", "outcome = \"escalate\"")
        .replace("TX_AMOUNT > 220", "NO_SUCH_COLUMN > 220");
    // Replaced by a rename, as a deploy would.
    let install = |text: &str| {
        std::fs::write(path("next.toml"), text).expect("write");
        std::fs::rename(path("next.toml"), path("rules.toml")).expect("rename");
    };
    install(&rules(220, "old.txt"));
    let config = write_config(
        dir.path(),
        &format!(
            "\n[decisions]\nfile = \"rules.toml\"\nchanges = \"changes.jsonl\"\n{}\n[observability]\nadmin = true\n",
            kafka_section(
                &broker.bootstrap,
                "rules-reload",
                "commit_interval = \"200ms\""
            )
        ),
    );
    let mut pipeline = start_after_labels(&config, &feed, &broker.bootstrap);
    let bootstrap = broker.bootstrap.clone();
    let feeding = std::thread::spawn({
        let feed = feed.only(false);
        move || {
            let p = producer(&bootstrap);
            publish(&feed, &p, &bootstrap, false, 2_500.0);
        }
    });
    let decisions = reader(&broker.bootstrap, "decisions");
    let mut got = collect(&decisions, Duration::from_secs(120), |r| r.len() >= 4_000);

    install(&broken);
    pipeline.signal("HUP");
    pipeline.wait_metric("riskpipe_rules_reloads_total", "result=\"refused\"", 1.0);
    let log = pipeline.drain_log().join("\n");
    for problem in ["escalate", "NO_SUCH_COLUMN"] {
        assert!(log.contains(problem), "the refusal names {problem}: {log}");
    }
    got.extend(collect(&decisions, Duration::from_secs(120), |r| {
        r.len() >= 2_000
    }));

    install(&rules(150, "new.txt"));
    assert_eq!(pipeline.post("/admin/reload").0, 202);
    pipeline.wait_metric("riskpipe_rules_reloads_total", "result=\"swapped\"", 1.0);
    feeding.join().expect("feeder");
    let deadline = Instant::now() + Duration::from_secs(300);
    while got.len() < n {
        assert!(Instant::now() < deadline, "{} of {n} decided", got.len());
        got.extend(drain(&decisions, Duration::from_millis(500)));
    }
    got.extend(drain(&decisions, Duration::from_secs(1)));
    let (ok, _) = pipeline.terminate();
    assert!(ok, "SIGTERM exits 0");

    let live_cfg = PipelineConfig::load(&config).expect("config");
    let version = |file: &str| {
        riskpipe_pipeline::jobs::fraud::DecisionsSection {
            file: Some(path(file)),
            ..Default::default()
        }
        .rules(dir.path())
        .expect("rules")
        .version()
    };
    let (v1, v2) = (version("v1.toml"), version("v2.toml"));
    assert_ne!(v1, v2);
    let expected_v1 = backtest_decisions(&live_cfg, Some(&path("v1.toml")), history.head(n));
    let expected_v2 = backtest_decisions(&live_cfg, Some(&path("v2.toml")), history.head(n));
    let mut seen = BTreeSet::new();
    let (mut last_v1, mut first_v2, mut by_v2) = (i64::MIN, i64::MAX, 0);
    for g in &got {
        let v: serde_json::Value = serde_json::from_slice(&g.payload).expect("decision");
        let (id, text) = decision_key(&v);
        assert!(seen.insert(id), "{id} decided twice");
        let named = v["RULES_VERSION"].as_str().expect("version");
        let expected = if named == v1 {
            last_v1 = last_v1.max(id);
            &expected_v1
        } else if named == v2 {
            first_v2 = first_v2.min(id);
            by_v2 += 1;
            &expected_v2
        } else {
            panic!("a decision names {named:?}, neither {v1} nor {v2}");
        };
        assert_eq!(
            Some(&text),
            expected.get(&id),
            "decision of {id} by {named}"
        );
    }
    assert_eq!(seen.len(), n, "every transaction decided once");
    assert!(
        by_v2 > 0 && by_v2 < n,
        "both versions decided: {by_v2} by {v2}"
    );
    assert!(
        last_v1 < first_v2,
        "the swap falls between two batches: {v1} up to {last_v1}, {v2} from {first_v2}"
    );
    let changes = std::fs::read_to_string(path("changes.jsonl")).expect("changes");
    let lines: Vec<serde_json::Value> = changes
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 1, "{changes}");
    assert_eq!(lines[0]["from"], v1.as_str());
    assert_eq!(lines[0]["to"], v2.as_str());
    assert_eq!(lines[0]["trigger"], "request");
    eprintln!(
        "rules reload: {} decided by {v1}, {by_v2} by {v2}",
        n - by_v2
    );
}

/// Decisions through a SIGKILL on Apache Kafka, at-least-once with durable state: 12,000
/// transactions at 3,000/s, riskpipe killed once it has committed, then run to the end. Every
/// transaction has a decision, each equal to the backtest's (reasons aside), so a decision the
/// restart repeats is the same decision as its first copy.
#[test]
fn decisions_after_a_sigkill_repeat_only_the_same_decisions() {
    let (cfg, history) = handbook();
    let n = 12_000;
    let feed = feed(history, cfg, 0, n).expect("feed");
    let mut topics = TOPICS.to_vec();
    topics.push(("decisions", 1));
    let broker = support::apache_kafka(&topics);
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = BLOCK_LARGE_REVIEW_BUSY;
    let config = write_config(
        dir.path(),
        &format!(
            "{rules}\n[state]\ndir = {:?}\ninterval = \"1s\"\n{}",
            dir.path().join("state").display().to_string(),
            kafka_section(
                &broker.bootstrap,
                "decisions-kill",
                "commit_interval = \"200ms\"\n[kafka.consumer_properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"",
            )
        ),
    );
    let first = start_after_labels(&config, &feed, &broker.bootstrap);
    let bootstrap = broker.bootstrap.clone();
    let feeding = std::thread::spawn({
        let feed = feed.only(false);
        move || {
            let p = producer(&bootstrap);
            publish(&feed, &p, &bootstrap, false, 3_000.0);
        }
    });
    let decisions = reader(&broker.bootstrap, "decisions");
    let mut got = collect(&decisions, Duration::from_secs(120), |r| r.len() >= 4_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    while first.metric("riskpipe_commits_total", "result=\"ok\"") < 1.0 {
        assert!(Instant::now() < deadline, "never committed");
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill();
    let mut second = Pipeline::start(&config);
    second.wait_ready();
    feeding.join().expect("feeder");
    let mut ids = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        ids.extend(
            got.iter()
                .map(|g| decision_key(&serde_json::from_slice(&g.payload).expect("json")).0),
        );
        if ids.len() >= n {
            break;
        }
        assert!(Instant::now() < deadline, "{} of {n} decided", ids.len());
        got.extend(drain(&decisions, Duration::from_millis(500)));
    }
    let (ok, _) = second.terminate();
    assert!(ok, "SIGTERM exits 0");
    got.extend(drain_to_end(&decisions, "decisions"));

    let expected = backtest_decisions(
        &PipelineConfig::load(&config).expect("config"),
        None,
        history.head(n),
    );
    let mut copies: HashMap<i64, usize> = HashMap::new();
    for g in &got {
        let (id, text) = decision_key(&serde_json::from_slice(&g.payload).expect("json"));
        *copies.entry(id).or_default() += 1;
        assert_eq!(Some(&text), expected.get(&id), "decision of {id}");
    }
    assert_eq!(copies.len(), n, "every transaction decided");
    let repeated = copies.values().filter(|&&c| c > 1).count();
    eprintln!(
        "{n} transactions decided through a SIGKILL; {repeated} decisions repeated, each the same"
    );
}
