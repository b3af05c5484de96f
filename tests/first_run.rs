//! A first run as a new user makes it: the demo from the clone alone (a simulated history, no
//! `../shared`), with state warmed as a running pipeline's and no warning it caused itself; and
//! the drift warning it does give when the data really moved.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, RecordBatch};
use arrow::datatypes::Float64Type;

fn riskpipe(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_riskpipe"))
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run riskpipe")
}

fn field(stdout: &str, name: &str) -> u64 {
    stdout
        .lines()
        .find(|l| l.trim_start().starts_with(name))
        .and_then(|l| l.split_whitespace().find_map(|w| w.parse().ok()))
        .unwrap_or_else(|| panic!("no {name:?} in:\n{stdout}"))
}

/// From a folder with nothing beside it, the demo simulates its history, warms the state with
/// the job's horizon (44 days 1 h: 37 days of features, 7 of drift window, the lateness) and
/// scores every published transaction; the shipped model's drift on the simulated history stays
/// under the shipped threshold, so no WARN line is printed.
#[test]
fn the_demo_scores_a_simulated_history_without_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = riskpipe(&["demo", "--quiet", "--transactions", "20000"], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert_eq!(field(&stdout, "transactions published"), 20_000);
    assert_eq!(field(&stdout, "distinct scored"), 20_000);
    assert_eq!(field(&stdout, "dead letters"), 0);
    // About 9,600 simulated payments a day: 44 days of them.
    let warmed = field(&stdout, "state warmed with");
    assert!((380_000..470_000).contains(&warmed), "warmed {warmed}");
    assert!(
        stderr.contains("state restored from") && stderr.contains("checkpoint=1"),
        "the live pipeline starts from the warm-up's checkpoint:\n{stderr}"
    );
    assert!(
        !stderr.contains("WARN"),
        "a warning on a first run:\n{stderr}"
    );
    // What to try next works from the clone too: a backtest of the simulated history.
    assert!(
        stdout.contains("riskpipe simulate --seed 0 --output sim.parquet")
            && stdout.contains("riskpipe backtest --input sim.parquet"),
        "{stdout}"
    );
    // The frauds are found: the simulation is the model's kind of data.
    let alerts = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("alerts"))
        .expect("alerts line");
    let precision: f64 = alerts
        .rsplit("precision ")
        .next()
        .and_then(|p| p.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no precision in {alerts:?}"));
    assert!(precision > 0.5, "{alerts}");
}

/// The same simulated history with every amount tripled: the demo warns that the amounts
/// (and the features built on them) drifted from the training week; and a demo that starts with
/// empty state (`--skip 0`) judges no drift before its state covers the features' reach.
#[test]
fn tripled_amounts_warn_of_drift_and_empty_state_is_not_judged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let simulated = dir.path().join("simulated.parquet");
    let out = riskpipe(
        &[
            "simulate",
            "--days",
            "60",
            "--output",
            simulated.to_str().expect("path"),
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{out:?}");
    let file = std::fs::File::open(&simulated).expect("open");
    let batches: Vec<RecordBatch> =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("parquet")
            .build()
            .expect("reader")
            .map(|b| b.expect("batch"))
            .collect();
    let tripled: Vec<RecordBatch> = batches
        .iter()
        .map(|b| {
            let i = b.schema().index_of("TX_AMOUNT").expect("amount");
            let amount = b.column(i).as_primitive::<Float64Type>();
            let mut columns = b.columns().to_vec();
            columns[i] = Arc::new(Float64Array::from_iter_values(
                amount.values().iter().map(|a| a * 3.0),
            ));
            assert_eq!(amount.null_count(), 0);
            RecordBatch::try_new(b.schema(), columns).expect("batch")
        })
        .collect();
    let path = dir.path().join("tripled.parquet");
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).expect("create"),
        tripled[0].schema(),
        None,
    )
    .expect("writer");
    for b in &tripled {
        w.write(b).expect("write");
    }
    w.close().expect("close");
    let input = path.to_str().expect("path");

    let warm = riskpipe(
        &[
            "demo",
            "--quiet",
            "--transactions",
            "20000",
            "--input",
            input,
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&warm.stderr);
    assert!(warm.status.success(), "{stderr}");
    assert!(
        stderr.contains("WARN") && stderr.contains("drift: TX_AMOUNT PSI"),
        "tripled amounts must warn:\n{stderr}"
    );

    let cold = riskpipe(
        &[
            "demo",
            "--quiet",
            "--transactions",
            "20000",
            "--skip",
            "0",
            "--input",
            input,
        ],
        dir.path(),
    );
    let stdout = String::from_utf8_lossy(&cold.stdout);
    let stderr = String::from_utf8_lossy(&cold.stderr);
    assert!(cold.status.success(), "{stderr}");
    assert_eq!(field(&stdout, "state warmed with"), 0);
    assert_eq!(field(&stdout, "distinct scored"), 20_000);
    assert!(
        !stderr.contains("drift:"),
        "drift judged on rows featured by empty windows:\n{stderr}"
    );
}
