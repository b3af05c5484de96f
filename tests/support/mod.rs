//! Test and bench harness: the broker process, the pipeline process, configs, readers.
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::datatypes::{Float32Type, Int64Type};
use rdkafka::Offset;
pub(crate) use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use riskpipe_pipeline::demo::{Feed, Feeder};
use riskpipe_pipeline::kafka::KafkaConfig;
use riskpipe_pipeline::sources::history::History;
use riskpipe_pipeline::{PipelineConfig, backtest};

#[allow(unused_imports)] // not every test binary starts a broker
pub(crate) use riskpipe_testkit::Broker;

/// The repository root.
pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped handbook history.
pub(crate) fn handbook_data() -> PathBuf {
    let p = root().join("../shared/data/handbook/transactions.parquet");
    assert!(
        p.is_file(),
        "{} is missing: the suite needs ../shared/data beside the checkout",
        p.display()
    );
    p
}

/// The handbook pipeline config without its backtest split, with `kafka` appended, written to
/// `dir/pipeline.toml`.
pub(crate) fn write_config(dir: &Path, kafka: &str) -> PathBuf {
    let base =
        std::fs::read_to_string(root().join("config/fraud-handbook.toml")).expect("shipped config");
    let mut text = String::new();
    let mut skipping = false;
    for line in base.lines() {
        if line.starts_with('[') {
            let t = line.trim();
            skipping = t == "[job.backtest]" || t == "[observability]" || t.starts_with("[kafka");
        }
        if skipping {
            continue;
        }
        let line = if line.starts_with("path = ") {
            format!(
                "path = {:?}",
                root().join("models/fraud_blend.onnx").display().to_string()
            )
        } else if let Some(file) = line.strip_prefix("reference = \"../") {
            // The drift reference, beside the shipped model.
            format!(
                "reference = {:?}",
                root()
                    .join(file.trim_end_matches('"'))
                    .display()
                    .to_string()
            )
        } else {
            line.to_string()
        };
        text.push_str(&line);
        text.push('\n');
    }
    text.push_str(kafka);
    if !kafka.contains("[state]") {
        // A test that restarts nothing accepts empty state (`riskpipe run` refuses a stateful
        // job without this or checkpoints).
        text.push_str("\n[state]\nephemeral = true\n");
    }
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).expect("writing config");
    path
}

/// A `[kafka]` section for `bootstrap`.
pub(crate) fn kafka_section(bootstrap: &str, group: &str, extra: &str) -> String {
    format!(
        "\n[kafka]\ngroup_id = {group:?}\n{extra}\n[kafka.properties]\n\"bootstrap.servers\" = {bootstrap:?}\n\"compression.type\" = \"lz4\"\n"
    )
}

/// A running `riskpipe run` process.
pub(crate) struct Pipeline {
    /// The process.
    pub(crate) child: Child,
    /// Metrics/health address.
    pub(crate) metrics: String,
    stderr_lines: std::sync::mpsc::Receiver<String>,
    /// stderr so far (for failure messages).
    pub(crate) log: Vec<String>,
}

impl Pipeline {
    /// Starts `riskpipe run --config config` with metrics on a free port.
    pub(crate) fn start(config: &Path) -> Pipeline {
        Self::start_with_env(config, &[])
    }

    /// [`Pipeline::start`] with extra environment variables.
    pub(crate) fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Pipeline {
        let mut child = Command::new(env!("CARGO_BIN_EXE_riskpipe"))
            .args(["run", "--config"])
            .arg(config)
            .args(["--metrics-addr", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("riskpipe binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let (send, recv) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = Pipeline {
            child,
            metrics: String::new(),
            stderr_lines: recv,
            log: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while p.metrics.is_empty() {
            assert!(
                Instant::now() < deadline,
                "pipeline did not start: {:#?}",
                p.log
            );
            if let Ok(line) = p.stderr_lines.recv_timeout(Duration::from_millis(200)) {
                if let Some(i) = line.find("http://") {
                    p.metrics = line[i + 7..].trim().to_string();
                }
                p.log.push(line);
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("pipeline exited with {status}: {:#?}", p.log);
            }
        }
        p
    }

    /// GET `path` on the metrics endpoint: (status code, body).
    pub(crate) fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.metrics, path)
    }

    /// POST `path` (no body) on the metrics endpoint: (status code, body).
    pub(crate) fn post(&self, path: &str) -> (u16, String) {
        http(&self.metrics, "POST", path)
    }

    /// Sends `signal` (e.g. "HUP") to the process.
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// Waits until `metric{labels}` reaches `at_least`.
    pub(crate) fn wait_metric(&mut self, name: &str, labels: &str, at_least: f64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.metric(name, labels) < at_least {
            assert!(
                Instant::now() < deadline,
                "{name}{{{labels}}} never reached {at_least}: {:#?}",
                self.drain_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the consumer holds partitions.
    pub(crate) fn wait_ready(&mut self) {
        // Generous: joining the consumer group can take long on a loaded 2-core machine (a CI
        // run once saw a first start unassigned after 60 s while the Apache Kafka test's broker
        // started beside it).
        let deadline = Instant::now() + Duration::from_secs(180);
        while self.get("/ready").0 != 200 {
            assert!(
                Instant::now() < deadline,
                "never ready: {:#?}",
                self.drain_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Value of a counter in /metrics (summed over labels matching `labels`).
    pub(crate) fn metric(&self, name: &str, labels: &str) -> f64 {
        let (_, body) = self.get("/metrics");
        body.lines()
            .filter(|l| l.starts_with(name) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The counters and gauges that say where a stalled pipeline stands (events in and out,
    /// commits, transactions, consumer errors, re-deliveries skipped, lag), for failure messages.
    pub(crate) fn counters(&self) -> Vec<String> {
        const WHERE: [&str; 8] = [
            "riskpipe_events_in_total",
            "riskpipe_events_out_total",
            "riskpipe_commits_total",
            "riskpipe_transactions_total",
            "riskpipe_consumer_errors_total",
            "riskpipe_redelivered_skipped_total",
            "riskpipe_consumer_lag",
            "riskpipe_ready",
        ];
        let (_, body) = self.get("/metrics");
        body.lines()
            .filter(|l| WHERE.iter().any(|w| l.starts_with(w)))
            .map(str::to_string)
            .collect()
    }

    /// Collected stderr lines.
    pub(crate) fn drain_log(&mut self) -> Vec<String> {
        while let Ok(l) = self.stderr_lines.try_recv() {
            self.log.push(l);
        }
        self.log.clone()
    }

    /// The first log line so far that contains `needle`, without the log's colours.
    pub(crate) fn log_line(&mut self, needle: &str) -> String {
        let line = self
            .drain_log()
            .into_iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no log line with {needle:?}"));
        let mut plain = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                chars.by_ref().find(|&c| c == 'm');
            } else {
                plain.push(c);
            }
        }
        plain
    }

    /// Sends SIGTERM and waits for the exit; returns its success and stdout.
    pub(crate) fn terminate(mut self) -> (bool, String) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                let mut out = String::new();
                if let Some(mut o) = self.child.stdout.take() {
                    let _ = o.read_to_string(&mut out);
                }
                if !s.success() {
                    eprintln!("pipeline log: {:#?}", self.drain_log());
                }
                return (s.success(), out);
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no draining, no commit.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// Minimal HTTP/1.0 GET for the metrics endpoint.
pub(crate) fn http_get(addr: &str, path: &str) -> (u16, String) {
    http(addr, "GET", path)
}

/// `method path` over HTTP/1.0 with no body: (status code, body); (0, "") when nothing listens.
pub(crate) fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (code, body)
}

/// A consumer assigned to every partition of `topic` from the start (the demo's reader).
pub(crate) fn reader(bootstrap: &str, topic: &str) -> BaseConsumer {
    let mut kafka = riskpipe_pipeline::kafka::KafkaConfig::for_bootstrap(bootstrap);
    kafka.group_id = "test".into();
    riskpipe_pipeline::demo::reader(&kafka, &[topic]).expect("reader")
}

/// One consumed record.
#[derive(Debug, Clone)]
pub(crate) struct Got {
    /// Payload.
    pub(crate) payload: Vec<u8>,
    /// Key.
    pub(crate) key: Vec<u8>,
    /// Headers as strings.
    pub(crate) headers: HashMap<String, String>,
    /// The partition it was read from.
    pub(crate) partition: i32,
}

impl Got {
    /// The record of a consumed message.
    pub(crate) fn of(m: &rdkafka::message::BorrowedMessage<'_>) -> Got {
        let mut headers = HashMap::new();
        if let Some(h) = m.headers() {
            for hd in h.iter() {
                headers.insert(
                    hd.key.to_string(),
                    String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        Got {
            payload: m.payload().unwrap_or_default().to_vec(),
            key: m.key().unwrap_or_default().to_vec(),
            headers,
            partition: m.partition(),
        }
    }
}

/// Polls `consumer` until `done(records)` or the timeout (panics on timeout).
pub(crate) fn collect(
    consumer: &BaseConsumer,
    timeout: Duration,
    mut done: impl FnMut(&[Got]) -> bool,
) -> Vec<Got> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while !done(&out) {
        assert!(
            Instant::now() < deadline,
            "timed out after {} records",
            out.len()
        );
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            out.push(Got::of(&m.expect("consume")));
        }
    }
    out
}

/// Drains whatever arrives within `quiet` of the last record. librdkafka's notices of a broker
/// gone away (a test that kills one) are printed and ridden out, as the reader's client
/// reconnects or follows the new leaders; any other consume error fails the test.
pub(crate) fn drain(consumer: &BaseConsumer, quiet: Duration) -> Vec<Got> {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    let mut out = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < quiet {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                out.push(Got::of(&m));
                last = Instant::now();
            }
            Some(Err(
                e @ KafkaError::MessageConsumption(
                    RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown,
                ),
            )) => eprintln!("reader: {e}"),
            Some(Err(e)) => panic!("consume: {e:?}"),
            None => {}
        }
    }
    out
}

/// Reads everything up to the current end of every assigned partition (deterministic, unlike
/// waiting for a quiet period on a loaded machine).
pub(crate) fn drain_to_end(consumer: &BaseConsumer, topic: &str) -> Vec<Got> {
    let assignment = consumer.assignment().expect("assignment");
    let mut ends = HashMap::new();
    for e in assignment.elements_for_topic(topic) {
        let (_, high) = consumer
            .fetch_watermarks(topic, e.partition(), Duration::from_secs(10))
            .expect("watermarks");
        ends.insert(e.partition(), high);
    }
    // Where the reader stands now: partitions already read to their end need nothing more.
    let mut next: HashMap<i32, i64> = HashMap::new();
    let position = consumer.position().expect("position");
    for e in position.elements_for_topic(topic) {
        if let Offset::Offset(o) = e.offset() {
            next.insert(e.partition(), o);
        }
    }
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let behind = ends
            .iter()
            .any(|(p, &high)| next.get(p).copied().unwrap_or(0) < high);
        if !behind {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "could not read {topic} to its end"
        );
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.expect("consume");
            next.insert(m.partition(), m.offset() + 1);
            out.push(Got::of(&m));
        }
    }
}

/// `riskpipe backtest` of `history` through `cfg`, in process (the product's driver and job).
pub(crate) fn backtest(
    cfg: &riskpipe_pipeline::PipelineConfig,
    history: &Path,
    out: &Path,
) -> riskpipe_pipeline::backtest::Outcome {
    let started = Instant::now();
    let history = riskpipe_pipeline::backtest::load(cfg, history).expect("history");
    riskpipe_pipeline::backtest::run(
        cfg,
        std::sync::Arc::new(history),
        started,
        out,
        &riskpipe_pipeline::backtest::Options::default(),
    )
    .expect("backtest")
}

/// The topics of a fraud pipeline's live tests.
pub(crate) const TOPICS: [(&str, i32); 5] = [
    ("transactions", 1),
    ("fraud-labels", 1),
    ("scores", 4),
    ("alerts", 1),
    ("riskpipe-dead-letter", 1),
];

/// As [`TOPICS`], with transactions and labels on several partitions (the production setup:
/// partitions interleave, so event time is out of order across them).
pub(crate) const MULTI_PARTITION: [(&str, i32); 5] = [
    ("transactions", 4),
    ("fraud-labels", 3),
    ("scores", 4),
    ("alerts", 1),
    ("riskpipe-dead-letter", 1),
];

/// A feed producer for `bootstrap`.
pub(crate) fn producer(
    bootstrap: &str,
) -> rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext> {
    riskpipe_pipeline::demo::feed_producer(&riskpipe_pipeline::kafka::KafkaConfig::for_bootstrap(
        bootstrap,
    ))
    .expect("producer")
}

/// Score payloads of consumed records.
pub(crate) fn scores_of(records: &[Got]) -> Vec<riskpipe_schemas::Score> {
    records
        .iter()
        .map(|g| serde_json::from_slice(&g.payload).expect("score payload"))
        .collect()
}

/// The transaction ids of consumed transaction payloads.
pub(crate) fn transaction_ids(records: &[Got]) -> Vec<i64> {
    records
        .iter()
        .map(|g| {
            let tx: serde_json::Value =
                serde_json::from_slice(&g.payload).expect("transaction payload");
            tx["TRANSACTION_ID"].as_i64().expect("TRANSACTION_ID")
        })
        .collect()
}

/// A valid transaction payload: `id` at second `id` of 2018-04-01, of `customer`, terminal 9.
pub(crate) fn transaction_json(id: i64, customer: i64) -> String {
    format!(
        r#"{{"TRANSACTION_ID":{id},"TX_DATETIME":"2018-04-01T00:00:{id:02}Z","CUSTOMER_ID":{customer},"TERMINAL_ID":9,"TX_AMOUNT":12.5}}"#
    )
}

/// TRANSACTION_ID → SCORE of scored batches.
pub(crate) fn scores_by_id(
    batches: impl IntoIterator<Item = arrow::array::RecordBatch>,
) -> HashMap<i64, f32> {
    let mut out = HashMap::new();
    for b in batches {
        let id = b
            .column_by_name("TRANSACTION_ID")
            .expect("id")
            .as_primitive::<Int64Type>();
        let s = b
            .column_by_name("SCORE")
            .expect("score")
            .as_primitive::<Float32Type>();
        for i in 0..b.num_rows() {
            out.insert(id.value(i), s.value(i));
        }
    }
    out
}

/// What `riskpipe state inspect --dir dir` prints (it must succeed).
pub(crate) fn state_inspect(dir: &Path) -> String {
    let inspect = Command::new(env!("CARGO_BIN_EXE_riskpipe"))
        .args(["state", "inspect", "--dir"])
        .arg(dir)
        .output()
        .expect("riskpipe state inspect");
    let printed = String::from_utf8_lossy(&inspect.stdout).into_owned();
    assert!(inspect.status.success(), "{printed}");
    printed
}

/// Apache Kafka (`riskpipe_testkit::ApacheKafka`: one KRaft node of the pinned broker) with
/// `topics` (name, partitions) created: the broker of the tests of delivery, state and
/// scale-out, since only a real broker answers offsets-for-times, creates topics, returns a
/// whole fetch's worth of records and runs consumer groups as users' clusters do.
pub(crate) fn apache_kafka(topics: &[(&str, i32)]) -> riskpipe_testkit::ApacheKafka {
    let kafka = riskpipe_testkit::ApacheKafka::start();
    create_topics(&kafka.bootstrap, topics);
    kafka
}

/// The broker a bench runs against: Apache Kafka with `RISKPIPE_BENCH_BROKER=apache`, else the
/// mock cluster (`riskpipe-test-broker`), each with `topics` created.
pub(crate) enum BenchBroker {
    Mock(Broker),
    Apache(riskpipe_testkit::ApacheKafka),
}

impl BenchBroker {
    pub(crate) fn from_env(topics: &[(&str, i32)]) -> BenchBroker {
        match std::env::var("RISKPIPE_BENCH_BROKER").as_deref() {
            Ok("apache") => BenchBroker::Apache(apache_kafka(topics)),
            Ok("mock") | Err(_) => BenchBroker::Mock(Broker::start(topics)),
            Ok(other) => panic!("RISKPIPE_BENCH_BROKER={other}: apache or mock"),
        }
    }

    pub(crate) fn bootstrap(&self) -> &str {
        match self {
            BenchBroker::Mock(b) => &b.bootstrap,
            BenchBroker::Apache(k) => &k.bootstrap,
        }
    }

    /// For the report.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            BenchBroker::Mock(_) => "riskpipe-test-broker (librdkafka's mock cluster)",
            BenchBroker::Apache(_) => "Apache Kafka 4.1 (one KRaft node)",
        }
    }
}

/// Apache Kafka on three nodes (`riskpipe_testkit::ApacheKafkaCluster`) with `topics` created,
/// each partition on all three, two in sync required: the tests of a broker's loss.
pub(crate) fn apache_kafka_cluster(topics: &[(&str, i32)]) -> riskpipe_testkit::ApacheKafkaCluster {
    let cluster = riskpipe_testkit::ApacheKafkaCluster::start(3);
    create_replicated_topics(&cluster.bootstrap, topics, 3);
    cluster
}

/// Creates `topics` (name, partitions) on a broker that does not create them itself (Apache
/// Kafka as the tests run it), and waits until its metadata lists every partition.
pub(crate) fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) {
    create_replicated_topics(bootstrap, topics, 1);
}

/// [`create_topics`] with each partition on `replicas` brokers.
pub(crate) fn create_replicated_topics(bootstrap: &str, topics: &[(&str, i32)], replicas: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(replicas)))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for r in rt
        .block_on(admin.create_topics(&new, &AdminOptions::new()))
        .expect("create topics")
    {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("metadata consumer");
    let deadline = Instant::now() + Duration::from_secs(30);
    for (t, p) in topics {
        loop {
            let n = consumer
                .fetch_metadata(Some(t), Duration::from_secs(10))
                .ok()
                .and_then(|md| {
                    md.topics()
                        .iter()
                        .find(|m| m.name() == *t)
                        .map(|m| m.partitions().len())
                })
                .unwrap_or(0);
            if n == *p as usize {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "topic {t}: {n} of {p} partitions"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Waits for the pipeline to exit by itself; returns whether it succeeded and its log.
pub(crate) fn exit_of(pipeline: &mut Pipeline, within: Duration) -> (bool, String) {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = pipeline.child.try_wait() {
            return (status.success(), pipeline.drain_log().join("\n"));
        }
        assert!(
            started.elapsed() < within,
            "the pipeline did not exit: {:#?}",
            pipeline.drain_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Publishes `feed` at `rate` transactions/s on a thread of its own, flushed at the end.
pub(crate) fn feed_in_background(
    bootstrap: &str,
    feed: Feed,
    rate: f64,
) -> std::thread::JoinHandle<()> {
    feed_lingering(bootstrap, feed, rate, 1)
}

/// [`feed_in_background`] with the producer lingering `linger_ms` (fewer, larger record
/// batches: a backlog read back after a kill comes in fewer fetches).
pub(crate) fn feed_lingering(
    bootstrap: &str,
    feed: Feed,
    rate: f64,
    linger_ms: u32,
) -> std::thread::JoinHandle<()> {
    let bootstrap = bootstrap.to_string();
    std::thread::spawn(move || {
        let kafka = KafkaConfig::for_bootstrap(&bootstrap);
        let p: rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
            kafka
                .client()
                .set("compression.type", "zstd")
                .set("linger.ms", linger_ms.to_string())
                // Java's partitioner, as riskpipe's repartition topic: labels keyed by terminal
                // land in the partition the terminal's rows are forwarded to.
                .set("partitioner", "murmur2_random")
                // As the demo's feeder: a retry in a broker outage neither duplicates nor
                // reorders (a reordered second of feed is hours of event time: late).
                .set("enable.idempotence", "true")
                .create()
                .expect("producer");
        Feeder::new(&feed, Instant::now())
            .publish(&p, &kafka, &feed, rate, &AtomicBool::new(false))
            .expect("publish");
        rdkafka::producer::Producer::flush(&p, Duration::from_secs(120)).expect("flush");
    })
}

/// Every score of the backtest of the first `n` transactions of `history` under `cfg`.
pub(crate) fn backtest_scores(
    cfg: &PipelineConfig,
    history: &History,
    n: usize,
) -> HashMap<i64, f32> {
    let replayed = backtest::replay(
        cfg,
        Arc::new(history.head(n)),
        &indicatif::ProgressBar::hidden(),
    )
    .expect("backtest");
    scores_by_id(replayed.scored())
}

/// Checks the scores published: every id of `ids` scored, each score what `expected` says, and
/// every copy published again byte-identical (key and value) to the first. Returns the copies.
pub(crate) fn check_scores(
    got: &[Got],
    ids: &[i64],
    expected: impl Fn(i64) -> Option<f32>,
) -> usize {
    let mut first_copy: HashMap<i64, &Got> = HashMap::new();
    let (mut differ, mut duplicates) = (Vec::new(), 0);
    let mut copies: HashMap<i64, usize> = HashMap::new();
    for (at, (g, s)) in got.iter().zip(scores_of(got)).enumerate() {
        *copies.entry(s.transaction_id).or_default() += 1;
        match first_copy.get(&s.transaction_id) {
            Some(f) => {
                duplicates += 1;
                assert_eq!(
                    (&f.key, String::from_utf8_lossy(&f.payload)),
                    (&g.key, String::from_utf8_lossy(&g.payload)),
                    "re-published score of {} is not byte-identical",
                    s.transaction_id
                );
            }
            None => {
                first_copy.insert(s.transaction_id, g);
            }
        }
        let want = expected(s.transaction_id);
        if want != Some(s.score as f32) {
            differ.push((s.transaction_id, at, g.partition, s.score, want));
        }
    }
    // Which copy differed, where it came, and how many copies there were tell a re-score from
    // restored state from a first score gone wrong.
    let differ: Vec<String> = differ
        .iter()
        .map(|(id, at, partition, score, want)| {
            format!(
                "transaction {id}: {score} where the backtest has {want:?} (score {at} of {} read, partition {partition}, {} copies)",
                got.len(),
                copies[id]
            )
        })
        .collect();
    let all: BTreeSet<i64> = ids.iter().copied().collect();
    let scored: BTreeSet<i64> = first_copy.keys().copied().collect();
    assert_eq!(scored, all, "every transaction has a score");
    assert!(
        differ.is_empty(),
        "{} of {} scores differ from the backtest's (first: {:#?})",
        differ.len(),
        got.len(),
        &differ[..differ.len().min(5)]
    );
    duplicates
}

/// Publishes `feed`'s labels (or transactions) at `rate` transactions/s (0: at once).
pub(crate) fn publish_feed(feed: &Feed, bootstrap: &str, labels: bool, rate: f64) {
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

/// An S3 emulator (moto's server, in a virtual environment the testkit makes from
/// `tests/s3/requirements.txt`) on a free local port, with one bucket; stopped when dropped.
pub(crate) struct S3 {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub(crate) endpoint: String,
}

impl S3 {
    pub(crate) fn start(bucket: &str) -> S3 {
        let python =
            riskpipe_testkit::python_env("moto", &root().join("tests/s3/requirements.txt"));
        let mut child = Command::new(python)
            .arg(root().join("tests/s3/server.py"))
            .arg(bucket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the S3 emulator");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the S3 emulator's port");
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the S3 emulator printed {line:?}, not its port"));
        S3 {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// What a `riskpipe` process needs to reach it (object_store's AWS_* settings).
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "riskpipe-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "riskpipe-test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves `registry` on a free port of its own runtime thread; its URL.
pub(crate) fn serve_registry(
    registry: std::sync::Arc<riskpipe_pipeline::schema_registry::memory::MemoryRegistry>,
) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            registry.serve(listener).await.expect("serve");
        });
    });
    url
}

/// The Confluent frame of `value` written with `schema` (id `id`).
pub(crate) fn framed(
    id: u32,
    schema: &apache_avro::Schema,
    value: apache_avro::types::Value,
) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&id.to_be_bytes());
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .expect("writer");
    out.extend(writer.write_value_to_vec(value).expect("datum"));
    out
}
