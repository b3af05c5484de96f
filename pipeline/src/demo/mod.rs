//! `riskpipe demo`: the live pipeline end to end with no outside service, and the pieces the
//! end-to-end benchmark reuses against a broker process.
//!
//! A [`Feeder`] publishes handbook transactions in event-time order, each fraud's label at its
//! label time (before the transactions of that instant), at a chosen rate, recording when each
//! transaction was sent. A [`Watcher`] reads the scores and alerts topics and measures the
//! latency from a transaction's send to its score's arrival. [`run_demo`] starts librdkafka's
//! in-process mock cluster, wires the three together around [`crate::live::run`] and prints a
//! summary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::mocking::MockCluster;

use crate::driver::{Counters, Summary};
use crate::kafka::KafkaConfig;
use crate::observe::Health;
use crate::sources::history::History;
use crate::{PipelineConfig, PipelineError, Result};

mod feed;
pub mod simulated;
mod wire;

pub use feed::{Feed, WarmUp, feed, feed_after};
pub use wire::{Feeder, Watcher, feed_producer, reader};

/// Options of `riskpipe demo`.
#[derive(Debug)]
pub struct DemoOptions {
    /// Transactions to publish.
    pub transactions: usize,
    /// The first transaction scored; before it, the job's horizon is replayed into the state
    /// silently. `None`: the first with the whole horizon before it.
    pub skip: Option<usize>,
    /// Publishing rate, transactions/s (0 = as fast as possible).
    pub rate: f64,
    /// Partitions of the transactions topic.
    pub partitions: i32,
    /// Show the live status line.
    pub show_progress: bool,
    /// Where to serve metrics and health, if anywhere.
    pub metrics: Option<std::net::TcpListener>,
    /// Payload format of every topic; Avro runs an in-process schema registry beside the
    /// mock cluster.
    pub format: crate::decoders::Format,
    /// The history's file; `None`: simulated with this seed.
    pub input: std::result::Result<std::path::PathBuf, u64>,
}

/// What the demo measured.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    /// The pipeline's own counts.
    pub pipeline: Summary,
    /// Transactions replayed into the state before the first scored one.
    pub warmed: usize,
    /// The history's file, or the seed it was simulated with.
    pub input: std::result::Result<std::path::PathBuf, u64>,
    /// Distinct transactions whose score arrived.
    pub scored: u64,
    /// Alerts seen and how many were frauds.
    pub alerts: (u64, u64),
    /// Wall time from the first publish (after the consumer group formed) to the last score
    /// (within the status line's 250 ms polling).
    pub elapsed: Duration,
    /// Send-to-score-arrival latency at a downstream consumer, p50 / p99 / p99.9 (ms).
    pub latency_ms: [f64; 3],
    /// Produce-to-score-acknowledged latency inside the pipeline, p50 / p99 / p99.9 (ms).
    pub pipeline_latency_ms: [f64; 3],
}

/// Runs the demo on `rt`: mock cluster, feeder, live pipeline, watcher; returns when every
/// published transaction has its score (or on Ctrl-C).
pub fn run_demo(
    rt: &tokio::runtime::Runtime,
    cfg: &mut PipelineConfig,
    history: &History,
    opts: DemoOptions,
) -> Result<DemoSummary> {
    let streams = crate::jobs::fraud::STREAMS;
    let cluster = MockCluster::new(1).map_err(PipelineError::kafka("starting the mock cluster"))?;
    let bootstrap = cluster.bootstrap_servers();
    let mut kafka = cfg
        .kafka
        .clone()
        .unwrap_or_else(|| KafkaConfig::for_bootstrap(&bootstrap));
    kafka
        .properties
        .insert("bootstrap.servers".into(), bootstrap.clone());
    kafka.group_id = "riskpipe-demo".into();
    // The feed is written in one format, for every topic.
    kafka.format = opts.format;
    kafka.formats = crate::kafka::TopicFormats::default();
    let t = &kafka.topics;
    let create = PipelineError::kafka("creating a topic");
    cluster
        .create_topic(kafka.events_topic(streams), opts.partitions.max(1), 1)
        .map_err(create)?;
    // Scores are keyed by customer: 4 partitions keep each under the mock's 5 MiB retention.
    cluster
        .create_topic(&t.scores, 4, 1)
        .map_err(PipelineError::kafka("creating a topic"))?;
    let side = kafka.side_topic(streams).unwrap_or_default();
    for topic in [side, &t.alerts, &t.dead_letter] {
        if !topic.is_empty() {
            cluster
                .create_topic(topic, 1, 1)
                .map_err(PipelineError::kafka("creating a topic"))?;
        }
    }
    if opts.format == crate::decoders::Format::Avro {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(PipelineError::runtime("binding the schema registry"))?;
        let url = format!(
            "http://{}",
            listener
                .local_addr()
                .map_err(PipelineError::runtime("binding the schema registry"))?
        );
        listener
            .set_nonblocking(true)
            .map_err(PipelineError::runtime("the schema registry listener"))?;
        let _guard = rt.enter();
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(PipelineError::runtime("the schema registry listener"))?;
        rt.spawn(crate::schema_registry::memory::MemoryRegistry::new(None).serve(listener));
        kafka.schema_registry = Some(crate::schema_registry::RegistryConfig {
            url,
            username: None,
            password: None,
            ssl_ca_location: None,
            timeout: Duration::from_secs(10),
            subject_strategy: crate::schema_registry::SubjectStrategy::Topic,
        });
    }
    cfg.kafka = Some(kafka.clone());
    // The demo's cluster lives as long as the process: so does its state, which starts as a
    // restarted pipeline's would, from a checkpoint of the history before the first score.
    let state_dir = tempfile::tempdir().map_err(PipelineError::runtime("a state directory"))?;
    cfg.state = None;
    cfg.set_state_dir(state_dir.path().to_string_lossy().into_owned())?;
    let warm = WarmUp::of(history, cfg, opts.skip)?;
    let repartitioned = kafka.repartition.is_some();
    let warmed = if warm.transactions() > 0 && !repartitioned {
        warm.seed(rt, cfg, history, opts.partitions)?;
        warm.transactions()
    } else {
        0
    };
    let feed = match warmed {
        0 => feed(history, cfg, warm.scored_from, opts.transactions)?,
        _ => feed_after(history, cfg, warm.from, warm.scored_from, opts.transactions)?,
    };
    let feed = match kafka.format {
        crate::decoders::Format::Avro => feed.into_avro(&kafka, &cfg.job.kind().inputs())?,
        crate::decoders::Format::Json => feed,
    };
    let total = feed.transactions as u64;
    let epoch = Instant::now();
    let feeder = Feeder::new(&feed, epoch);
    let watcher = Watcher::default();
    let health = Arc::new(Health::default());
    let counters = Arc::new(Counters::default());
    if let Some(listener) = opts.metrics {
        let handle = crate::observe::install()?;
        let _guard = rt.enter();
        listener
            .set_nonblocking(true)
            .map_err(PipelineError::runtime("the metrics listener"))?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(PipelineError::runtime("the metrics listener"))?;
        rt.spawn(crate::observe::serve(listener, handle, health.clone()));
    }
    let done = AtomicBool::new(false);
    let pb = if opts.show_progress {
        let pb = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} live [{bar:30}] {human_pos}/{human_len} scored  {msg}",
        ) {
            pb.set_style(style.progress_chars("=> "));
        }
        pb
    } else {
        ProgressBar::hidden()
    };
    let producer = feed_producer(&kafka)?;
    let reader = reader(&kafka, &[&kafka.topics.scores, &kafka.topics.alerts])?;
    let publish_started = std::sync::OnceLock::new();
    let last_scored = std::sync::OnceLock::new();
    let pipeline = std::thread::scope(|scope| -> Result<Summary> {
        let feeding = scope.spawn(|| {
            // Wait for the consumer group before publishing, so latency counts work, not the join.
            while !health.ready.load(Ordering::Relaxed) && !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = publish_started.set(Instant::now());
            feeder.publish(&producer, &kafka, &feed, opts.rate, &done)
        });
        let watching = scope.spawn(|| watcher.watch(&reader, &kafka, &feed, &feeder, &done));
        let status = scope.spawn(|| {
            let mut last = (Instant::now(), 0u64);
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let n = watcher.distinct.load(Ordering::Relaxed);
                let dt = last.0.elapsed().as_secs_f64();
                let rate = (n - last.1) as f64 / dt.max(1e-9);
                last = (Instant::now(), n);
                pb.set_position(n);
                pb.set_message(format!(
                    "{rate:>8.0} ev/s  p50 {:.1} ms  p99 {:.1} ms  alerts {}",
                    watcher.latency_ms(0.5),
                    watcher.latency_ms(0.99),
                    watcher.alerts.load(Ordering::Relaxed)
                ));
                if n >= total {
                    let _ = last_scored.set(Instant::now());
                    done.store(true, Ordering::Relaxed);
                }
            }
        });
        let finished = async {
            loop {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => { done.store(true, Ordering::Relaxed); break; }
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        };
        let summary = rt.block_on(crate::live::run(
            cfg,
            health.clone(),
            counters.clone(),
            finished,
        ));
        done.store(true, Ordering::Relaxed);
        let fed = feeding
            .join()
            .map_err(|_| PipelineError::Bug("feeder panicked".into()))?;
        let watched = watching
            .join()
            .map_err(|_| PipelineError::Bug("watcher panicked".into()))?;
        status
            .join()
            .map_err(|_| PipelineError::Bug("status thread panicked".into()))?;
        fed?;
        watched?;
        summary
    })?;
    pb.finish_and_clear();
    Ok(DemoSummary {
        pipeline,
        warmed,
        input: opts.input.clone(),
        scored: watcher.distinct.load(Ordering::Relaxed),
        alerts: (
            watcher.alerts.load(Ordering::Relaxed),
            watcher.true_alerts.load(Ordering::Relaxed),
        ),
        elapsed: match (publish_started.get(), last_scored.get()) {
            (Some(a), Some(b)) => b.saturating_duration_since(*a),
            (Some(a), None) => a.elapsed(),
            _ => Duration::ZERO,
        },
        latency_ms: [
            watcher.latency_ms(0.5),
            watcher.latency_ms(0.99),
            watcher.latency_ms(0.999),
        ],
        pipeline_latency_ms: [
            counters.end_to_end_ms(0.5),
            counters.end_to_end_ms(0.99),
            counters.end_to_end_ms(0.999),
        ],
    })
}

impl std::fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let p = &self.pipeline;
        let history = match &self.input {
            Ok(path) => path.display().to_string(),
            Err(seed) => format!("simulated, seed {seed}"),
        };
        writeln!(
            f,
            "riskpipe demo (in-process Kafka mock cluster, live pipeline; history: {history})"
        )?;
        writeln!(
            f,
            "  state warmed with        {:>10}  transactions before the first scored one",
            self.warmed
        )?;
        writeln!(f, "  transactions published   {:>10}", p.events)?;
        writeln!(f, "  fraud labels published   {:>10}", p.side)?;
        writeln!(f, "  scores published         {:>10}", p.scores)?;
        writeln!(f, "  distinct scored          {:>10}", self.scored)?;
        writeln!(f, "  dead letters             {:>10}", p.dead_letters)?;
        writeln!(
            f,
            "  alerts                   {:>10}  ({} on frauds, precision {:.3})",
            self.alerts.0,
            self.alerts.1,
            self.alerts.1 as f64 / self.alerts.0.max(1) as f64
        )?;
        writeln!(f, "  wall time                {secs:>10.2} s")?;
        writeln!(
            f,
            "  throughput               {:>10.0} events/s",
            self.scored as f64 / secs
        )?;
        writeln!(
            f,
            "  latency produce->ack     p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  (transaction produced -> its score acknowledged)",
            self.pipeline_latency_ms[0], self.pipeline_latency_ms[1], self.pipeline_latency_ms[2]
        )?;
        writeln!(
            f,
            "  latency send->consumer   p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  (... -> score read by a downstream consumer)",
            self.latency_ms[0], self.latency_ms[1], self.latency_ms[2]
        )?;
        writeln!(f, "next:")?;
        match &self.input {
            Ok(path) => writeln!(
                f,
                "  riskpipe backtest --input {} --output out/backtest\n                                                                the same model over the whole history: report.json, curves.png, drift.png",
                path.display()
            )?,
            Err(seed) => writeln!(
                f,
                "  riskpipe simulate --seed {seed} --output sim.parquet\n  riskpipe backtest --input sim.parquet --output out/backtest   the same model over the whole history: report.json, curves.png, drift.png"
            )?,
        }
        writeln!(
            f,
            "  riskpipe run --config config/fraud-handbook.toml \\\n      --bootstrap-servers HOST:9092 --state-dir DIR             score your Kafka's transactions topic"
        )?;
        writeln!(
            f,
            "  README.md, docs/                                              topics to create, payloads, your data, state and delivery"
        )
    }
}
