//! Scale-out benchmark: the repartitioned topology (`[kafka.repartition]`) in one and in two
//! `riskpipe run` processes against the broker process, in one run, on the same handbook
//! messages (4 + 4 partitions):
//! 1. throughput of one instance: a backlog of transactions published once the instance holds
//!    its partitions, from its first score to its last (the scores' create timestamps);
//! 2. the same with two instances (on a 2-core machine they share the cores);
//! 3. with two instances at a paced load, one killed with SIGKILL halfway: the longest gap
//!    between two scores after the kill, i.e. from the kill to its partitions scoring again
//!    on the other instance (the session timeout, a rebalance, the restores); and the lag
//!    (transactions published and not yet scored, from the pacing and the first arrival of each
//!    transaction's score) before the kill, at its peak after it, and how long after the kill
//!    the survivor is back to the lag it had before.
//!
//! `cargo bench --bench scale_out` (`RISKPIPE_BENCH_BROKER=apache`: against Apache Kafka rather
//! than the mock cluster); RISKPIPE_SCALE_TRANSACTIONS (default 60000) sizes it,
//! RISKPIPE_SCALE_REPS (default 3) repeats 1 and 2 (alternated; medians compared).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use riskpipe_pipeline::demo::feed;
use riskpipe_pipeline::{PipelineConfig, backtest};
use support::Pipeline;

fn config(dir: &std::path::Path, bootstrap: &str) -> std::path::PathBuf {
    support::write_config(
        dir,
        &format!(
            "{}\n[state]\ndir = {:?}\ninterval = \"5s\"\n",
            support::kafka_section(
                bootstrap,
                "bench",
                "[kafka.repartition]\nby = \"TERMINAL_ID\"\nreplication_factor = 1\n[kafka.consumer_properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n",
            ),
            dir.join("state").display().to_string()
        ),
    )
}

const TOPICS: [(&str, i32); 6] = [
    ("transactions", 4),
    ("bench-by-terminal", 4),
    ("fraud-labels", 4),
    ("scores", 4),
    ("alerts", 1),
    ("riskpipe-dead-letter", 1),
];

/// The produce times (ms, the records' create timestamps, which riskpipe's producer stamps when
/// it hands a score over) of `n` scores, or as many as come within `within`. Not the reader's
/// arrival times: a reader that starts late and then catches up would make a burst of them.
fn produced_at(scores: &support::BaseConsumer, n: usize, within: Duration) -> Vec<i64> {
    use rdkafka::Message as _;
    let deadline = Instant::now() + within;
    let mut at = Vec::with_capacity(n);
    while at.len() < n && Instant::now() < deadline {
        if let Some(m) = scores.poll(Duration::from_millis(50)) {
            let m = m.expect("consume");
            at.push(m.timestamp().to_millis().expect("a create time"));
        }
    }
    at
}

/// Arrival times of the first score of each of `n` distinct transactions (or as many as come
/// within `within`): re-published copies after a kill are not counted twice.
fn distinct_arrivals(
    scores: &support::BaseConsumer,
    seen: &mut std::collections::HashSet<i64>,
    n: usize,
    within: Duration,
) -> Vec<Instant> {
    use rdkafka::Message as _;
    let deadline = Instant::now() + within;
    let mut at = Vec::with_capacity(n);
    while at.len() < n && Instant::now() < deadline {
        if let Some(m) = scores.poll(Duration::from_millis(50)) {
            let m = m.expect("consume");
            let score: serde_json::Value =
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("a score");
            let id = score["TRANSACTION_ID"].as_i64().expect("a transaction id");
            if seen.insert(id) {
                at.push(Instant::now());
            }
        }
    }
    at
}

/// What a kill did to the flow of scores.
struct Recovery {
    /// The longest gap between two first scores after the kill.
    gap: Duration,
    /// The median lag before the kill, in transactions.
    lag_before: f64,
    /// The largest lag after the kill, in transactions.
    lag_peak: f64,
    /// From the kill until the lag is back within 100 ms of input of `lag_before`.
    caught_up: Duration,
    /// The lag at each whole second after the kill (the last first score before it).
    lag_by_second: Vec<f64>,
}

/// Scores per second of `instances` processes over a backlog of the feed's transactions.
fn throughput(feed: &riskpipe_pipeline::demo::Feed, instances: usize) -> f64 {
    let broker = support::BenchBroker::from_env(&TOPICS);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), broker.bootstrap());
    support::publish_feed(feed, broker.bootstrap(), true, 0.0);
    let mut running: Vec<Pipeline> = (0..instances).map(|_| Pipeline::start(&config)).collect();
    for p in &mut running {
        p.wait_ready();
    }
    // The group settles: every instance has followed its assignment (restored its partitions).
    let deadline = Instant::now() + Duration::from_secs(60);
    while running
        .iter()
        .any(|p| p.metric("riskpipe_restore_seconds", "") == 0.0)
    {
        assert!(Instant::now() < deadline, "the group never settled");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let scores = support::reader(broker.bootstrap(), "scores");
    support::publish_feed(feed, broker.bootstrap(), false, 0.0);
    let at = produced_at(&scores, feed.transactions, Duration::from_secs(600));
    assert_eq!(at.len(), feed.transactions, "every transaction scored");
    for p in running {
        let (ok, out) = p.terminate();
        assert!(ok, "{out}");
    }
    let (first, last) = (at.iter().min(), at.iter().max());
    let span_ms = last.zip(first).map_or(0, |(l, f)| l - f).max(1);
    (at.len() - 1) as f64 / (span_ms as f64 / 1e3)
}

/// With two instances at `rate` transactions/s, one killed halfway: the gap in scores and the
/// lag around the kill.
fn recovery(feed: &riskpipe_pipeline::demo::Feed, rate: f64) -> Recovery {
    let broker = support::BenchBroker::from_env(&TOPICS);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), broker.bootstrap());
    support::publish_feed(feed, broker.bootstrap(), true, 0.0);
    let mut first = Pipeline::start(&config);
    let mut second = Pipeline::start(&config);
    first.wait_ready();
    second.wait_ready();
    let scores = support::reader(broker.bootstrap(), "scores");
    let mut seen = std::collections::HashSet::new();
    let feeding_since = Instant::now();
    let feeding = support::feed_in_background(broker.bootstrap(), feed.only(false), rate);
    let half = feed.transactions / 2;
    let before = distinct_arrivals(&scores, &mut seen, half, Duration::from_secs(300));
    first.signal("KILL");
    let killed = Instant::now();
    let _ = first.child.wait();
    let after = distinct_arrivals(
        &scores,
        &mut seen,
        feed.transactions - half,
        Duration::from_secs(300),
    );
    assert_eq!(
        before.len() + after.len(),
        feed.transactions,
        "every transaction scored"
    );
    feeding.join().expect("feed");
    let (ok, out) = second.terminate();
    assert!(ok, "{out}");
    // When the k-th first score (counting from 1) arrives, rate * elapsed transactions have
    // been sent, or all of them once the feed is through.
    let sent =
        |at: Instant| ((at - feeding_since).as_secs_f64() * rate).min(feed.transactions as f64);
    let lag = |k: usize, at: Instant| sent(at) - k as f64;
    let mut lags_before: Vec<f64> = before
        .iter()
        .enumerate()
        .map(|(i, &at)| lag(i + 1, at))
        .collect();
    lags_before.sort_by(f64::total_cmp);
    let lag_before = lags_before[lags_before.len() / 2];
    let lags_after: Vec<(f64, Instant)> = after
        .iter()
        .enumerate()
        .map(|(i, &at)| (lag(half + i + 1, at), at))
        .collect();
    let (peak_at, lag_peak) = lags_after
        .iter()
        .enumerate()
        .map(|(i, (l, _))| (i, *l))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, 0.0));
    let caught_up = lags_after[peak_at..]
        .iter()
        .find(|(l, _)| *l <= lag_before + rate * 0.1)
        .map_or(Duration::MAX, |(_, at)| *at - killed);
    let lag_by_second = (0..)
        .map(|sec| killed + Duration::from_secs(sec))
        .take_while(|t| after.last().is_some_and(|last| t <= last))
        .map(|t| {
            let scored = after.partition_point(|&at| at <= t);
            sent(t) - (half + scored) as f64
        })
        .collect();
    let gap = std::iter::once(killed)
        .chain(after.iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    Recovery {
        gap,
        lag_before,
        lag_peak,
        caught_up,
        lag_by_second,
    }
}

fn main() {
    let n = std::env::var("RISKPIPE_SCALE_TRANSACTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60_000);
    let cfg = PipelineConfig::handbook().expect("shipped config");
    let history = backtest::load(&cfg, &support::handbook_data()).expect("history");
    let feed = feed(&history, &cfg, 0, n).expect("feed");
    let reps = std::env::var("RISKPIPE_SCALE_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3usize);
    // Alternated, so that the machine's drift falls on both alike; each backlog is short, so
    // single runs are noisy: the medians are compared.
    let (mut ones, mut twos) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        ones.push(throughput(&feed, 1));
        twos.push(throughput(&feed, 2));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let shown = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "scale-out (repartitioned topology, 4 + 4 partitions, {n} handbook transactions, broker: {}):",
        std::env::var("RISKPIPE_BENCH_BROKER").unwrap_or_else(|_| "mock".into())
    );
    println!("  1 instance : runs {} scores/s", shown(&ones));
    println!("  2 instances: runs {} scores/s", shown(&twos));
    let (one, two) = (median(&mut ones), median(&mut twos));
    println!(
        "  medians: {one:.0} vs {two:.0} scores/s: 2 instances = {:.2} of one",
        two / one
    );
    let rate = 2_000.0;
    let r = recovery(&feed, rate);
    println!(
        "  2 instances at {rate:.0} tx/s, one killed: scores stopped for {:.1} s at most (session.timeout.ms 6 s)",
        r.gap.as_secs_f64()
    );
    println!(
        "  lag: {:.0} transactions before the kill (median), {:.0} at the peak after it ({:.1} s of input); back to within 100 ms of input of the lag before {:.1} s after the kill",
        r.lag_before,
        r.lag_peak,
        r.lag_peak / rate,
        r.caught_up.as_secs_f64()
    );
    println!(
        "  lag at each second after the kill: {}",
        r.lag_by_second
            .iter()
            .map(|l| format!("{l:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
