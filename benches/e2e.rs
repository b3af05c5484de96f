//! End-to-end benchmark of the live path against a broker process: `riskpipe-test-broker`
//! (librdkafka's mock cluster), or Apache Kafka with `RISKPIPE_BENCH_BROKER=apache`.
//!
//! In one run, on the same handbook messages:
//! 1. ceiling A: a bare rdkafka consume loop (no work) over the transactions topic;
//! 2. ceiling B: bare ONNX scoring of the same rows' features with the shipped model, one
//!    thread, in the pipeline's batch size (the median of three passes after a first);
//! 3. riskpipe's live pipeline (the code `riskpipe run` runs): transactions → scores, from the
//!    first consumed message to the broker's acknowledgement of the last score; the median of
//!    three runs after a first one (warm-up), each a new group over the same messages;
//! 4. latency from a transaction's send to its score's arrival at a downstream consumer, at a
//!    fixed offered load of half the measured throughput: p50 / p99 / p99.9;
//! 5. the live pipeline of 3 again, with `[state]` checkpoints every 100 ms (a new group over
//!    the same messages): the throughput cost of checkpointing, as the ratio to 3;
//! 6. the live pipeline of 3 in exactly-once mode (transactions every 100 ms, no checkpoint
//!    within the run), to the acknowledgement as 3, and to the run's return (its last commit
//!    and the final checkpoint);
//! 7. the latency through the scale-out topology (`[kafka.repartition]`: two stages and the
//!    repartition topic, in one process) beside that of 4, at the load of 4 but at most
//!    20,000 ev/s: what the extra hop adds;
//! 8. the latency floor of 4: a bare relay (consume each transaction, produce it unchanged to a
//!    scores topic, with riskpipe's fetch wait and linger) at the same offered load, read by the
//!    same watcher: what the broker and the two hops cost without any of riskpipe's work.
//!
//! `cargo bench --bench e2e`. RISKPIPE_E2E_TRANSACTIONS (default 200000: more than the
//! consumer prefetches, 100,000 messages, so a stall after a full prefetch shows) and
//! RISKPIPE_E2E_LATENCY_SECS (default 10) size it; RISKPIPE_E2E_TRACE prints the throughput
//! runs' progress every 50 ms; RISKPIPE_E2E_LATENCY_RATE sets the offered
//! load of 4 and 8 (default: half the measured throughput). Targets: throughput ≥ 90% of the lower
//! ceiling; p99 ≤ 10 ms at half the measured throughput.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use riskpipe_pipeline::demo::{Feed, Feeder, Watcher, feed, feed_producer, reader};
use riskpipe_pipeline::driver::Counters;
use riskpipe_pipeline::kafka::KafkaConfig;
use riskpipe_pipeline::live::run;
use riskpipe_pipeline::observe::Health;
use riskpipe_pipeline::sources::history::History;
use riskpipe_pipeline::state::StateConfig;
use riskpipe_pipeline::{PipelineConfig, backtest};

fn env_or(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn topics(prefix: &str) -> Vec<(String, i32)> {
    [
        ("transactions", 1),
        ("fraud-labels", 1),
        ("scores", 4),
        ("alerts", 1),
        ("dead-letter", 1),
    ]
    .iter()
    .map(|(t, p)| (format!("{prefix}{t}"), *p))
    .collect()
}

fn kafka_for(bootstrap: &str, prefix: &str, group: &str) -> KafkaConfig {
    let mut k = KafkaConfig::for_bootstrap(bootstrap);
    k.group_id = group.into();
    k.batch.max_delay = Duration::from_micros(env_or("RISKPIPE_E2E_MAX_DELAY_US", 0.0) as u64);
    k.topics.events = Some(format!("{prefix}transactions"));
    k.topics.labels = Some(format!("{prefix}fraud-labels"));
    k.topics.scores = format!("{prefix}scores");
    k.topics.alerts = format!("{prefix}alerts");
    k.topics.dead_letter = format!("{prefix}dead-letter");
    k
}

fn bare_consume(bootstrap: &str, topic: &str, n: usize) -> Duration {
    let consumer = support::reader(bootstrap, topic);
    let mut got = 0;
    let mut started = None;
    while got < n {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            m.expect("consume");
            started.get_or_insert_with(Instant::now);
            got += 1;
        }
    }
    started.map(|s| s.elapsed()).unwrap_or_default()
}

/// Relays every message of `from` to `to` unchanged (key and payload), one at a time, with the
/// live pipeline's client settings (fetch wait 5 ms, linger 1 ms), until `done`.
fn bare_relay(kafka: &KafkaConfig, from: &str, to: &str, done: &AtomicBool) {
    use rdkafka::Message as _;
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::producer::{BaseRecord, Producer as _};
    let mut c = kafka.client();
    c.set("group.id", "bench-relay")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5");
    let consumer: BaseConsumer = c.create().expect("relay consumer");
    let md = consumer
        .fetch_metadata(Some(from), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in md.topics().iter().flat_map(|t| t.partitions()) {
        tpl.add_partition_offset(from, p.id(), rdkafka::Offset::Beginning)
            .expect("assign");
    }
    consumer.assign(&tpl).expect("assign");
    let mut c = kafka.client();
    c.set("linger.ms", "1")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random");
    let producer: rdkafka::producer::ThreadedProducer<_> = c.create().expect("relay producer");
    let mut relayed = 0u64;
    while !done.load(Ordering::Relaxed) {
        let Some(m) = consumer.poll(Duration::from_millis(20)) else {
            continue;
        };
        let m = m.expect("relay consume");
        let mut record = BaseRecord::<[u8], [u8]>::to(to).payload(m.payload().unwrap_or_default());
        record.key = m.key();
        while let Err((e, back)) = producer.send(record) {
            assert!(
                matches!(
                    e,
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull
                    )
                ),
                "relay produce: {e}"
            );
            record = back;
            std::thread::sleep(Duration::from_micros(200));
        }
        relayed += 1;
    }
    producer
        .flush(Duration::from_secs(10))
        .expect("relay flush");
    assert!(relayed > 0, "the relay moved nothing");
}

/// The latency of [`bare_relay`] on the `rel-` topics at `rate`, over `m` transactions of the
/// history from `from` (the same ones the pipeline was timed on: the topics are new).
fn relay_latency(
    bootstrap: &str,
    history: &History,
    cfg: &PipelineConfig,
    from: usize,
    m: usize,
    rate: f64,
) -> Watcher {
    let feed_relay: Feed = feed(history, cfg, from, m).expect("feed");
    let kafka = kafka_for(bootstrap, "rel-", "bench-relay");
    let feeder = Feeder::new(&feed_relay, Instant::now());
    let watcher = Watcher::default();
    let done = AtomicBool::new(false);
    let relay_done = AtomicBool::new(false);
    let producer = feed_producer(&kafka).expect("producer");
    let watch_reader = reader(&kafka, &[&kafka.topics.scores]).expect("reader");
    let events = kafka
        .events_topic(riskpipe_pipeline::jobs::fraud::STREAMS)
        .to_string();
    std::thread::scope(|s| {
        let relaying = s.spawn(|| bare_relay(&kafka, &events, &kafka.topics.scores, &relay_done));
        let watching =
            s.spawn(|| watcher.watch(&watch_reader, &kafka, &feed_relay, &feeder, &done));
        std::thread::sleep(Duration::from_millis(500));
        feeder
            .publish(&producer, &kafka, &feed_relay, rate, &done)
            .expect("publish");
        let deadline = Instant::now() + Duration::from_secs(60);
        while watcher.distinct.load(Ordering::Relaxed) < m as u64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        done.store(true, Ordering::Relaxed);
        relay_done.store(true, Ordering::Relaxed);
        relaying.join().expect("relay");
        watching.join().expect("watcher").expect("watch");
    });
    assert_eq!(
        watcher.distinct.load(Ordering::Relaxed),
        m as u64,
        "the relay lost transactions"
    );
    watcher
}

fn bare_scoring(
    cfg: &PipelineConfig,
    history: &History,
    skip: usize,
    n: usize,
    batch: usize,
) -> Duration {
    let fraud = riskpipe_pipeline::jobs::fraud::FraudConfig::of(cfg).expect("a fraud config");
    let mut chain = fraud.features.build_chain().expect("chain");
    let mut scorer = riskpipe_models::Scorer::load(cfg.model.primary()).expect("model");
    if let Some(labels) = &history.side {
        chain.observe_labels(labels).expect("labels");
    }
    let rows = history.events.slice(skip, n);
    let features = chain.process(rows).expect("features");
    // A first pass warms the session up; the ceiling is the median of the three after it.
    let mut passes: Vec<Duration> = (0..4)
        .map(|_| {
            let started = Instant::now();
            let mut at = 0;
            while at < n {
                let len = batch.min(n - at);
                let s = scorer.score(&features.slice(at, len)).expect("score");
                assert_eq!(s.len(), len);
                at += len;
            }
            started.elapsed()
        })
        .skip(1)
        .collect();
    passes.sort();
    passes[1]
}

/// Runs the live pipeline of `cfg` until `n` scores are acknowledged: the time from its first
/// consumed message to the acknowledgement, and its batches.
fn throughput(rt: &tokio::runtime::Runtime, cfg: &PipelineConfig, n: usize) -> (Duration, u64) {
    let (to_ack, _, batches) = throughput_to(rt, cfg, n);
    (to_ack, batches)
}

/// [`throughput`], with the time to the run's return too (the drain, a transactional sink's
/// last commit and the last checkpoint).
fn throughput_to(
    rt: &tokio::runtime::Runtime,
    cfg: &PipelineConfig,
    n: usize,
) -> (Duration, Duration, u64) {
    let health = Arc::new(Health::default());
    let counters = Arc::new(Counters::default());
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let trace = std::env::var_os("RISKPIPE_E2E_TRACE").is_some();
    let mut traced = Instant::now();
    rt.block_on(run(cfg, health, counters.clone(), async {
        loop {
            let consumed = counters.events.load(Ordering::Relaxed);
            if consumed > 0 && first.is_none() {
                first = Some(Instant::now());
            }
            if trace && traced.elapsed() >= Duration::from_millis(50) {
                traced = Instant::now();
                eprintln!(
                    "  {:>6.3} s: {consumed} consumed, {} scored, {} batches",
                    first.map_or(0.0, |f| f.elapsed().as_secs_f64()),
                    counters.scores.load(Ordering::Relaxed),
                    counters.batches.load(Ordering::Relaxed)
                );
            }
            if counters.scores.load(Ordering::Relaxed) >= n as u64 {
                last = Instant::now();
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }))
    .expect("pipeline");
    let first = first.unwrap_or(last);
    (
        last - first,
        first.elapsed(),
        counters.batches.load(Ordering::Relaxed).max(1),
    )
}

/// Latency of the live pipeline of `cfg` (whose `kafka` names fresh topics) with `feed`
/// offered at `rate`: the watcher's histogram of send-to-score times.
fn pipeline_latency(
    rt: &tokio::runtime::Runtime,
    cfg: &PipelineConfig,
    feed: &Feed,
    rate: f64,
) -> Watcher {
    let kafka = cfg.kafka.clone().expect("a kafka section");
    let m = feed.transactions;
    let feeder = Feeder::new(feed, Instant::now());
    let watcher = Watcher::default();
    let done = AtomicBool::new(false);
    let producer = feed_producer(&kafka).expect("producer");
    let watch_reader = reader(&kafka, &[&kafka.topics.scores]).expect("reader");
    let health = Arc::new(Health::default());
    let counters = Arc::new(Counters::default());
    std::thread::scope(|s| {
        let feeding = s.spawn(|| {
            while !health.ready.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
            // Let the group settle before the clock starts.
            std::thread::sleep(Duration::from_millis(500));
            feeder
                .publish(&producer, &kafka, feed, rate, &done)
                .expect("publish");
        });
        let watching = s.spawn(|| watcher.watch(&watch_reader, &kafka, feed, &feeder, &done));
        // A pipeline far behind loses rows to the test broker's retention (5 MiB a partition):
        // give up then, rather than wait forever.
        let deadline = Instant::now() + Duration::from_secs_f64(m as f64 / rate + 120.0);
        rt.block_on(run(cfg, health.clone(), counters.clone(), async {
            while watcher.distinct.load(Ordering::Relaxed) < m as u64 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }))
        .expect("pipeline");
        done.store(true, Ordering::Relaxed);
        feeding.join().expect("feeder");
        watching.join().expect("watcher").expect("watch");
    });
    assert_eq!(
        watcher.distinct.load(Ordering::Relaxed),
        m as u64,
        "transactions scored at {rate:.0} ev/s offered"
    );
    watcher
}

fn main() {
    let n = env_or("RISKPIPE_E2E_TRANSACTIONS", 200_000.0) as usize;
    let latency_secs = env_or("RISKPIPE_E2E_LATENCY_SECS", 10.0);
    let skip = 300_000;
    let mut all_topics = topics("tp-");
    all_topics.extend(topics("lat-"));
    all_topics.extend(topics("rel-"));
    all_topics.extend(topics("rep-"));
    all_topics.extend(topics("hop-"));
    // The mock cluster has no CreateTopics: the repartition topic is made here.
    all_topics.push(("bench-rep-by-terminal".into(), 1));
    let specs: Vec<(&str, i32)> = all_topics.iter().map(|(t, p)| (t.as_str(), *p)).collect();
    let broker = support::BenchBroker::from_env(&specs);
    let mut cfg = PipelineConfig::handbook().expect("config");
    // Runs without [state] start empty by choice (each is one uninterrupted run).
    cfg.ephemeral_state = true;
    let history = backtest::load(&cfg, &support::handbook_data()).expect("history");
    let feed_all = feed(&history, &cfg, skip, n).expect("feed");
    let kafka = kafka_for(broker.bootstrap(), "tp-", "bench-throughput");
    let producer = feed_producer(&kafka).expect("producer");
    Feeder::new(&feed_all, Instant::now())
        .publish(&producer, &kafka, &feed_all, 0.0, &AtomicBool::new(false))
        .expect("publish");
    drop(producer); // its polling thread would compete for the 2 cores

    // Ceiling A: consume the same messages, doing nothing.
    let consume = bare_consume(
        broker.bootstrap(),
        kafka.topics.events.as_deref().expect("set above"),
        n,
    );
    // Ceiling B: score the same rows alone.
    let scoring = bare_scoring(&cfg, &history, skip, n, kafka.batch.max_rows);

    // riskpipe: the live pipeline over the same messages.
    cfg.kafka = Some(kafka.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The first run in a process is slower (warm-up: allocator, thread pools, the model's
    // first calls): reported, but the throughput is the median of three later runs, each on a
    // group of its own, one before and one after each of the checkpoint and exactly-once runs.
    let (first, _) = throughput(&rt, &cfg, n);
    let plain = |group: &str| {
        let mut c = cfg.clone();
        c.kafka = Some(kafka_for(broker.bootstrap(), "tp-", group));
        throughput(&rt, &c, n)
    };
    let (plain_a, tp_batches) = plain("bench-throughput-a");
    // The same with checkpoints every second, on a group of its own.
    let state_dir = tempfile::tempdir().expect("tempdir");
    let mut with_state = cfg.clone();
    with_state.kafka = Some(kafka_for(
        broker.bootstrap(),
        "tp-",
        "bench-throughput-state",
    ));
    with_state.state = Some(StateConfig {
        dir: state_dir.path().to_string_lossy().into_owned(),
        // Several checkpoints within the run's fraction of a second.
        interval: Duration::from_millis(100),
        retain: 3,
        rebuild: Default::default(),
        ephemeral: false,
    });
    let (pipeline_state, _) = throughput(&rt, &with_state, n);
    let checkpoints = std::fs::read_dir(state_dir.path().join("checkpoints"))
        .map(|d| d.count())
        .unwrap_or(0);
    let (plain_b, _) = plain("bench-throughput-b");
    // Exactly-once: transactions every 100 ms; state is required, but no checkpoint falls due.
    let eos_state = tempfile::tempdir().expect("tempdir");
    let mut eos = cfg.clone();
    let mut eos_kafka = kafka_for(broker.bootstrap(), "tp-", "bench-throughput-eos");
    eos_kafka.processing_guarantee = riskpipe_pipeline::kafka::Guarantee::ExactlyOnce;
    eos_kafka.transactional_id = Some("bench-eos-0".into());
    eos_kafka.commit_interval = Duration::from_millis(100);
    eos.kafka = Some(eos_kafka);
    eos.state = Some(StateConfig {
        dir: eos_state.path().to_string_lossy().into_owned(),
        interval: Duration::from_secs(3600),
        retain: 3,
        rebuild: Default::default(),
        ephemeral: false,
    });
    let (pipeline_eos, eos_returned, _) = throughput_to(&rt, &eos, n);
    let (plain_c, _) = plain("bench-throughput-c");
    let mut plain_runs = [plain_a, plain_b, plain_c];
    plain_runs.sort();
    let pipeline = plain_runs[1];

    let eps = |d: Duration| n as f64 / d.as_secs_f64();
    let (tp, ca, cb) = (eps(pipeline), eps(consume), eps(scoring));
    let ceiling = ca.min(cb);

    // Latency at half the measured throughput, on fresh topics.
    // RISKPIPE_E2E_LATENCY_RATE offers another load (ev/s) than half the measured throughput.
    let rate = match env_or("RISKPIPE_E2E_LATENCY_RATE", 0.0) {
        r if r > 0.0 => r,
        _ => tp / 2.0,
    };
    // At most what the history holds after the throughput runs' slice (a fast run asks for more).
    let wanted = ((rate * latency_secs) as usize).max(1000);
    let feed_lat: Feed = feed(&history, &cfg, skip + n, wanted).expect("feed");
    let m = feed_lat.transactions;
    cfg.kafka = Some(kafka_for(broker.bootstrap(), "lat-", "bench-latency"));
    let watcher = pipeline_latency(&rt, &cfg, &feed_lat, rate);
    // The same load through the scale-out topology (two stages and the repartition topic, in
    // one process): what the extra hop adds.
    let mut repartitioned = cfg.clone();
    let mut rep_kafka = kafka_for(broker.bootstrap(), "rep-", "bench-rep");
    rep_kafka.repartition = Some(riskpipe_pipeline::kafka::RepartitionConfig {
        by: riskpipe_schemas::tx::TERMINAL_ID.into(),
        topic: None,
        replication_factor: None,
    });
    repartitioned.kafka = Some(rep_kafka);
    let rep_state = tempfile::tempdir().expect("tempdir");
    repartitioned.state = Some(StateConfig {
        dir: rep_state.path().to_string_lossy().into_owned(),
        interval: Duration::from_secs(3600),
        retain: 3,
        rebuild: Default::default(),
        ephemeral: false,
    });
    // At most 20,000 ev/s: one process running both stages scores about 150k ev/s from a
    // backlog, and at half the single-process rate beside the load generator and the watcher
    // it falls behind and the repartition topic outruns the test broker's retention. The
    // single-process pipeline is timed at that load too when it is lower than `rate`.
    let hop_rate = rate.min(20_000.0);
    let feed_hop: Feed = feed(
        &history,
        &cfg,
        skip + n,
        ((hop_rate * latency_secs) as usize).max(1000),
    )
    .expect("feed");
    let single_hop = (hop_rate < rate).then(|| {
        let mut c = cfg.clone();
        c.kafka = Some(kafka_for(broker.bootstrap(), "hop-", "bench-hop"));
        pipeline_latency(&rt, &c, &feed_hop, hop_rate)
    });
    let rep_watcher = pipeline_latency(&rt, &repartitioned, &feed_hop, hop_rate);
    // The floor: the same load through a bare relay, on topics of its own.
    let relay = relay_latency(broker.bootstrap(), &history, &cfg, skip + n, m, rate);

    println!(
        "end-to-end benchmark ({n} handbook transactions via {}, 2 cores shared)",
        broker.name()
    );
    println!(
        "  bare consume loop (ceiling A)      {ca:>10.0} msg/s   {:>7.3} s",
        consume.as_secs_f64()
    );
    println!(
        "  bare ONNX scoring (ceiling B)      {cb:>10.0} rows/s  {:>7.3} s",
        scoring.as_secs_f64()
    );
    println!(
        "  riskpipe live, first run (warm-up) {:>10.0} ev/s    {:>7.3} s",
        eps(first),
        first.as_secs_f64()
    );
    println!(
        "  riskpipe live: tx -> scores acked  {tp:>10.0} ev/s    {:>7.3} s   (median of {:.0}, {:.0}, {:.0})",
        pipeline.as_secs_f64(),
        eps(plain_a),
        eps(plain_b),
        eps(plain_c)
    );
    println!(
        "  riskpipe live, checkpoint / 100 ms {:>9.0} ev/s    {:>7.3} s   (checkpoints kept: {checkpoints} of retain 3; / the median: {:.3})",
        eps(pipeline_state),
        pipeline_state.as_secs_f64(),
        eps(pipeline_state) / tp
    );
    println!(
        "  riskpipe live, exactly-once        {:>10.0} ev/s    {:>7.3} s   (/ the median: {:.3}; {:.3} s to the return: last commit, final checkpoint)",
        eps(pipeline_eos),
        pipeline_eos.as_secs_f64(),
        eps(pipeline_eos) / tp,
        eos_returned.as_secs_f64()
    );
    println!(
        "  mean micro-batch                   {:>10.0} rows",
        n as f64 / tp_batches as f64
    );
    println!(
        "  throughput / lower ceiling         {:>10.3}   (target >= 0.90)",
        tp / ceiling
    );
    println!(
        "  latency at {rate:.0} ev/s offered ({m} tx): p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  (target p99 <= 10 ms)",
        watcher.latency_ms(0.5),
        watcher.latency_ms(0.99),
        watcher.latency_ms(0.999)
    );
    let one_stage = single_hop.as_ref().unwrap_or(&watcher);
    println!(
        "  at {hop_rate:.0} ev/s: one stage p50 {:.2} ms  p99 {:.2} ms; repartitioned (two stages, one process, the hop through bench-rep-by-terminal) p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms",
        one_stage.latency_ms(0.5),
        one_stage.latency_ms(0.99),
        rep_watcher.latency_ms(0.5),
        rep_watcher.latency_ms(0.99),
        rep_watcher.latency_ms(0.999)
    );
    println!(
        "  bare relay, same load (the floor):  p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  (consume -> produce unchanged, riskpipe's fetch wait and linger)",
        relay.latency_ms(0.5),
        relay.latency_ms(0.99),
        relay.latency_ms(0.999)
    );
}
