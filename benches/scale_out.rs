//! Scale-out benchmark: the repartitioned topology (`[kafka.repartition]`) in one and in two
//! `riskpipe run` processes against the broker process, in one run, on the same handbook
//! messages (4 + 4 partitions):
//! 1. throughput of one instance: a backlog of transactions published once the instance holds
//!    its partitions, from its first score to its last;
//! 2. the same with two instances (on a 2-core machine they share the cores);
//! 3. with two instances at a paced load, one killed with SIGKILL halfway: the longest gap
//!    between two scores after the kill, i.e. from the kill to its partitions scoring again
//!    on the other instance (the session timeout, a rebalance, the restores).
//!
//! `cargo bench --bench scale_out`; RISKPIPE_SCALE_TRANSACTIONS (default 60000) sizes it,
//! RISKPIPE_SCALE_REPS (default 3) repeats 1 and 2 (alternated; medians compared).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use riskpipe_pipeline::demo::feed;
use riskpipe_pipeline::{PipelineConfig, backtest};
use support::{Broker, Pipeline};

fn config(dir: &std::path::Path, bootstrap: &str) -> std::path::PathBuf {
    support::write_config(
        dir,
        &format!(
            "{}\n[state]\ndir = {:?}\ninterval = \"5s\"\n",
            support::kafka_section(
                bootstrap,
                "bench",
                "[kafka.repartition]\nreplication_factor = 1\n[kafka.consumer_properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n",
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

/// Arrival times of `n` scores (or as many as come within `within`).
fn arrivals(scores: &support::BaseConsumer, n: usize, within: Duration) -> Vec<Instant> {
    let deadline = Instant::now() + within;
    let mut at = Vec::with_capacity(n);
    while at.len() < n && Instant::now() < deadline {
        if let Some(m) = scores.poll(Duration::from_millis(50)) {
            m.expect("consume");
            at.push(Instant::now());
        }
    }
    at
}

/// Scores per second of `instances` processes over a backlog of the feed's transactions.
fn throughput(feed: &riskpipe_pipeline::demo::Feed, instances: usize) -> f64 {
    let broker = Broker::start(&TOPICS);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), &broker.bootstrap);
    support::publish_feed(feed, &broker.bootstrap, true, 0.0);
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
    let scores = support::reader(&broker.bootstrap, "scores");
    support::publish_feed(feed, &broker.bootstrap, false, 0.0);
    let at = arrivals(&scores, feed.transactions, Duration::from_secs(600));
    assert_eq!(at.len(), feed.transactions, "every transaction scored");
    for p in running {
        let (ok, out) = p.terminate();
        assert!(ok, "{out}");
    }
    (at.len() - 1) as f64 / (at[at.len() - 1] - at[0]).as_secs_f64()
}

/// With two instances at `rate` transactions/s, one killed halfway: the longest gap between
/// two scores after the kill.
fn recovery(feed: &riskpipe_pipeline::demo::Feed, rate: f64) -> Duration {
    let broker = Broker::start(&TOPICS);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), &broker.bootstrap);
    support::publish_feed(feed, &broker.bootstrap, true, 0.0);
    let mut first = Pipeline::start(&config);
    let mut second = Pipeline::start(&config);
    first.wait_ready();
    second.wait_ready();
    let scores = support::reader(&broker.bootstrap, "scores");
    let feeding = support::feed_in_background(&broker.bootstrap, feed.only(false), rate);
    let half = feed.transactions / 2;
    arrivals(&scores, half, Duration::from_secs(300));
    first.signal("KILL");
    let killed = Instant::now();
    let _ = first.child.wait();
    let after = arrivals(&scores, feed.transactions - half, Duration::from_secs(300));
    feeding.join().expect("feed");
    let (ok, out) = second.terminate();
    assert!(ok, "{out}");
    std::iter::once(killed)
        .chain(after.iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
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
    println!("scale-out (repartitioned topology, 4 + 4 partitions, {n} handbook transactions):");
    println!("  1 instance : runs {} scores/s", shown(&ones));
    println!("  2 instances: runs {} scores/s", shown(&twos));
    let (one, two) = (median(&mut ones), median(&mut twos));
    println!(
        "  medians: {one:.0} vs {two:.0} scores/s: 2 instances = {:.2} of one",
        two / one
    );
    let rate = 2_000.0;
    let gap = recovery(&feed, rate);
    println!(
        "  2 instances at {rate:.0} tx/s, one killed: scores stopped for {:.1} s at most (session.timeout.ms 6 s)",
        gap.as_secs_f64()
    );
}
