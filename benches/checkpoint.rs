//! Checkpoints of the fraud job's full handbook state: the shipped job's feature stage fed the
//! handbook history up to day 150 (with the labels known by then), then its state copied
//! (snapshot), written to a local checkpoint directory, read back and restored into a new
//! stage; and how fast the silent replay that follows a restore runs.
//!
//! `cargo bench --bench checkpoint` (release). Prints one line per measurement.

use std::path::PathBuf;
use std::time::Instant;

use arrow::array::{AsArray, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::TimestampNanosecondType;
use riskpipe_pipeline::jobs::{JobInput, fraud, warm_up};
use riskpipe_pipeline::state::{CheckpointStore, Positions, StateConfig};
use riskpipe_pipeline::{PipelineConfig, backtest};

const DAY: i64 = 86_400_000_000_000;

fn main() {
    let cfg = PipelineConfig::handbook().expect("config");
    let fraud_cfg = riskpipe_pipeline::jobs::fraud::FraudConfig::of(&cfg).expect("fraud job");
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/handbook/transactions.parquet");
    let history = backtest::load(&cfg, &data).expect("history");
    let times = history
        .events
        .column_by_name(&history.event_time)
        .expect("event time")
        .as_primitive::<TimestampNanosecondType>()
        .values()
        .clone();
    let kill_at = times[0] + 150 * DAY;
    let rows = times.partition_point(|&t| t < kill_at);
    let side = history.side.as_ref().map(|side| {
        let known = side
            .column_by_name(&history.side_time)
            .expect("label time")
            .as_primitive::<TimestampNanosecondType>();
        let keep: BooleanArray = known.iter().map(|t| t.map(|t| t < kill_at)).collect();
        filter_record_batch(side, &keep).expect("labels")
    });
    let labels = side.as_ref().map_or(0, |s| s.num_rows());

    let mut stage = fraud::feature_stage(fraud_cfg).expect("stage");
    let started = Instant::now();
    let input = JobInput {
        side,
        events: history.events.slice(0, rows),
        partitions: None,
    };
    warm_up(stage.as_mut(), None, input, fraud_cfg.replay.batch_rows).expect("replay");
    let replay_s = started.elapsed().as_secs_f64();
    println!(
        "silent replay (features only) of 150 days: {rows} transactions + {labels} labels in {replay_s:.2} s = {:.0} transactions/s",
        rows as f64 / replay_s
    );

    // The pause, taken three times (the first also pays the allocator's first touch of the
    // memory); the last snapshot is the one written below.
    let mut pauses = Vec::new();
    let mut snapshot = None;
    for _ in 0..3 {
        drop(snapshot.take());
        let started = Instant::now();
        snapshot = Some(stage.snapshot().expect("snapshot"));
        pauses.push(started.elapsed().as_secs_f64());
    }
    let snapshot = snapshot.expect("a snapshot");
    let (first_s, snapshot_s) = (pauses[0], pauses[pauses.len() - 1]);
    println!(
        "snapshot pauses: {}",
        pauses
            .iter()
            .map(|p| format!("{:.1} ms", p * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let state_rows: usize = snapshot.tables.iter().map(|(_, t)| t.num_rows()).sum();
    let batch_rows = fraud_cfg.replay.batch_rows;
    let batch_s = replay_s / rows.div_ceil(batch_rows) as f64;
    println!(
        "snapshot (feature thread pause): {:.1} ms (the first {:.1} ms), {} keys, {state_rows} rows in {} tables; one micro-batch of {batch_rows} through the features takes {:.1} ms in the replay above: the pause is {:.2} batches (the first {:.2})",
        snapshot_s * 1e3,
        first_s * 1e3,
        stage.state_keys().unwrap_or(0),
        snapshot.tables.len(),
        batch_s * 1e3,
        snapshot_s / batch_s,
        first_s / batch_s
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open(&StateConfig {
        dir: dir.path().to_string_lossy().into_owned(),
        interval: std::time::Duration::from_secs(60),
        retain: 3,
        rebuild: Default::default(),
        ephemeral: false,
    })
    .expect("store");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let manifest = rt
        .block_on(store.write(1, "fraud", Positions::new(), snapshot))
        .expect("write");
    let write_s = started.elapsed().as_secs_f64();
    println!(
        "checkpoint write (IPC encode + files + manifest, off the feature thread): {:.1} ms, {:.1} MiB",
        write_s * 1e3,
        manifest.bytes() as f64 / 1_048_576.0
    );
    for t in &manifest.tables {
        println!("  {:<40} {:>9} rows {:>11} bytes", t.name, t.rows, t.bytes);
    }

    let started = Instant::now();
    let back = rt.block_on(store.read(&manifest)).expect("read");
    let read_s = started.elapsed().as_secs_f64();
    let mut restored = fraud::feature_stage(fraud_cfg).expect("stage");
    restored.restore(back).expect("restore");
    let restore_s = started.elapsed().as_secs_f64();
    assert_eq!(restored.state_keys(), stage.state_keys());
    println!(
        "restore: read {:.1} ms, read + restore {:.1} ms",
        read_s * 1e3,
        restore_s * 1e3
    );

    // The gap a restart replays is at most one checkpoint interval of traffic plus the
    // uncommitted tail: at the replay rate above, a 60 s interval at 10k transactions/s.
    let gap = 60.0 * 10_000.0;
    println!(
        "restart after a kill at day 150, 60 s interval at 10k tx/s: restore {:.2} s + silent replay of up to {gap:.0} transactions {:.2} s (plus reading them from Kafka)",
        restore_s,
        gap / (rows as f64 / replay_s)
    );
}
