//! The `riskpipe` binary as users run it: backtests of small files, malformed input, configs
//! with several problems, and a missing ONNX Runtime.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn riskpipe(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_riskpipe"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run riskpipe")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A small CSV history: two customers, two terminals, one fraud, spread over three weeks.
fn small_csv(dir: &Path) -> PathBuf {
    let mut csv =
        String::from("TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD\n");
    for i in 0..300 {
        let day = i / 14;
        let hour = (i * 7) % 24;
        let fraud = i64::from(i % 37 == 5);
        csv.push_str(&format!(
            "{i},2018-04-{:02}T{hour:02}:00:00Z,{},{},{}.5,{fraud}\n",
            day + 1,
            i % 2,
            i % 3,
            10 + (i * 13) % 90
        ));
    }
    let path = dir.join("small.csv");
    std::fs::write(&path, csv).expect("write csv");
    path
}

/// `riskpipe backtest` of `input` into `out` (with `config`, else the shipped one, and `extra`
/// arguments), expected to succeed: what it printed, and its report.json.
fn backtest(
    config: Option<&Path>,
    input: &Path,
    out: &Path,
    extra: &[&str],
) -> (String, serde_json::Value) {
    let mut args = vec!["backtest", "--quiet"];
    if let Some(c) = config {
        args.extend(["--config", c.to_str().expect("utf8")]);
    }
    args.extend([
        "--input",
        input.to_str().expect("utf8"),
        "--output",
        out.to_str().expect("utf8"),
    ]);
    args.extend_from_slice(extra);
    let o = riskpipe(&args, &repo());
    assert!(o.status.success(), "{}", text(&o));
    let report =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("json"))
            .expect("parse");
    (text(&o), report)
}

#[test]
fn backtest_of_a_small_csv_writes_scores_report_and_plot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = small_csv(dir.path());
    let out = dir.path().join("out");
    let o = riskpipe(
        &[
            "backtest",
            "--quiet",
            "--input",
            input.to_str().expect("utf8"),
            "--output",
            out.to_str().expect("utf8"),
        ],
        &repo(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("replayed 300 transactions"), "{t}");
    assert!(t.contains("Card Precision@100"), "{t}");
    for f in ["scores.parquet", "report.json", "curves.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("json"))
            .expect("parse");
    // The shipped split's dates are not in this file: its test days hold nothing.
    assert_eq!(report["transactions"].as_u64(), Some(0));
}

/// The small file evaluated whole (a config without a split): every transaction is scored and
/// evaluated, and the metrics are those of the scores written to scores.parquet.
#[test]
fn backtest_without_a_split_evaluates_every_transaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = small_csv(dir.path());
    // The shipped config without its split (nor Kafka, which a backtest does not need).
    let config_path = support::write_config(dir.path(), "");
    let out = dir.path().join("out");
    let (_, report) = backtest(Some(&config_path), &input, &out, &[]);
    // i % 37 == 5 for i in 0..300: 5, 42, 79, 116, 153, 190, 227, 264.
    assert_eq!(report["transactions"].as_u64(), Some(300));
    assert_eq!(report["frauds"].as_u64(), Some(8));
    assert_eq!(report["evaluated_on"].as_str(), Some("the whole history"));
    // The alert count the report implies matches the scores written.
    let scores = std::fs::File::open(out.join("scores.parquet")).expect("scores");
    let batches: Vec<arrow::array::RecordBatch> =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(scores)
            .expect("parquet")
            .build()
            .expect("reader")
            .map(|b| b.expect("batch"))
            .collect();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 300);
    let alerts: usize = batches
        .iter()
        .map(|b| {
            let a = b
                .column_by_name("ALERT")
                .expect("ALERT")
                .as_any()
                .downcast_ref::<arrow::array::BooleanArray>()
                .expect("boolean");
            a.true_count()
        })
        .sum();
    let days = report["alerts_per_day"].as_f64().expect("alerts per day");
    // 300 transactions over 22 days (14 per day).
    assert!(
        (days * 22.0 - alerts as f64).abs() < 1e-9,
        "{days} vs {alerts}"
    );
    let auc = report["auc_roc"].as_f64().expect("both classes: an AUC");
    assert!((0.0..=1.0).contains(&auc), "{auc}");
}

/// The `SCORE…` column `column` of a backtest's scores.parquet, in row order.
fn score_column(path: &Path, column: &str) -> Vec<f32> {
    let file = std::fs::File::open(path).expect("scores");
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .build()
        .expect("reader")
        .flat_map(|b| {
            let b = b.expect("batch");
            let c = b.column_by_name(column).expect(column);
            arrow::array::AsArray::as_primitive::<arrow::datatypes::Float32Type>(c.as_ref())
                .values()
                .to_vec()
        })
        .collect()
}

/// A challenger in the backtest: its metrics beside the champion's in the report and the
/// table, its scores beside theirs in scores.parquet, and both equal to those of a backtest
/// with the challenger as the model.
#[test]
fn a_challenger_is_evaluated_beside_the_champion_as_if_it_were_the_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = small_csv(dir.path());
    let gbm = repo().join("models/fraud_gbm.onnx");
    let both = support::write_config(
        dir.path(),
        &format!("\n[challenger]\npath = {:?}\n", gbm.display().to_string()),
    );
    let both_text = std::fs::read_to_string(&both).expect("config");
    let alone = dir.path().join("gbm.toml");
    let blend = repo().join("models/fraud_blend.onnx");
    // The same config with the challenger as the model and no challenger (appended last).
    let alone_text = both_text[..both_text.find("\n[challenger]").expect("challenger")].replace(
        &format!("path = {:?}\n", blend.display().to_string()),
        &format!("path = {:?}\n", gbm.display().to_string()),
    );
    std::fs::write(&alone, alone_text).expect("config");
    let run = |config: &Path, out: &Path| backtest(Some(config), &input, out, &[]);
    let (table, with) = run(&both, &dir.path().join("both"));
    let (_, gbm_alone) = run(&alone, &dir.path().join("alone"));
    assert_eq!(with["model"].as_str(), Some("fraud_blend.onnx"));
    let challenger = &with["challenger"];
    assert_eq!(challenger["model"].as_str(), Some("fraud_gbm.onnx"));
    assert_eq!(gbm_alone["model"].as_str(), Some("fraud_gbm.onnx"));
    for metric in [
        "transactions",
        "frauds",
        "auc_roc",
        "average_precision",
        "card_precision_at_100",
        "precision",
        "recall",
        "alerts_per_day",
    ] {
        assert_eq!(challenger[metric], gbm_alone[metric], "{metric}");
    }
    assert!(
        table.contains("fraud_blend.onnx") && table.contains("fraud_gbm.onnx"),
        "{table}"
    );
    let theirs = score_column(&dir.path().join("both/scores.parquet"), "CHALLENGER_SCORE");
    let alone_scores = score_column(&dir.path().join("alone/scores.parquet"), "SCORE");
    let ours = score_column(&dir.path().join("both/scores.parquet"), "SCORE");
    assert_eq!(theirs.len(), 300);
    assert_eq!(
        theirs, alone_scores,
        "the challenger scores as it would alone"
    );
    assert_ne!(theirs, ours, "two models, two sets of scores");
}

/// The test config (no split) with its `[model]` table replaced by `models` (TOML).
fn with_models(dir: &Path, name: &str, models: &str) -> PathBuf {
    let base = std::fs::read_to_string(support::write_config(dir, "")).expect("config");
    let start = base.find("\n[model]\n").expect("[model]") + 1;
    let end = start
        + 1
        + base[start + 1..]
            .find("\n[")
            .expect("a section after [model]")
        + 1;
    let path = dir.join(name);
    std::fs::write(&path, format!("{}{models}{}", &base[..start], &base[end..])).expect("write");
    path
}

/// The rank of `s` among `q` (quantiles), computed the plain way: how many quantiles lie below
/// it, a tie counted at the middle of its run, linear in between.
fn rank_by_hand(q: &[f64], s: f64) -> f64 {
    let k = (q.len() - 1) as f64;
    let below = q.iter().filter(|&&v| v < s).count();
    let equal = q.iter().filter(|&&v| v == s).count();
    if equal > 0 {
        return (below as f64 + (equal as f64 - 1.0) / 2.0) / k;
    }
    match below {
        0 => 0.0,
        b if b == q.len() => 1.0,
        b => ((b - 1) as f64 + (s - q[b - 1]) / (q[b] - q[b - 1])) / k,
    }
}

/// Ensembles from `[[model]]` entries: each member's scores are those of its backtest alone, the
/// ensemble's score is the hand-computed mean, weighted mean and rank average of them, and the
/// report holds every member beside the ensemble.
#[test]
fn an_ensemble_scores_the_hand_computed_combination_of_its_members() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = small_csv(dir.path());
    let model = |file: &str, extra: &str| {
        format!(
            "[[model]]\npath = {:?}\n{extra}",
            repo().join("models").join(file).display().to_string()
        )
    };
    let run = |name: &str, models: String| {
        let models = models.as_str();
        let config = with_models(dir.path(), &format!("{name}.toml"), models);
        if name == "weighted" {
            // Every transaction alerts, so the alerts show the model label.
            let text = std::fs::read_to_string(&config).expect("config");
            std::fs::write(&config, text.replace("threshold = 0.35", "threshold = 0.0"))
                .expect("config");
        }
        let out = dir.path().join(name);
        let (table, report) = backtest(Some(&config), &input, &out, &[]);
        (out, table, report)
    };
    let (gbm_out, _, gbm_alone) = run("gbm", model("fraud_gbm.onnx", ""));
    let (mlp_out, _, mlp_alone) = run("mlp", model("fraud_mlp.onnx", ""));
    let gbm = score_column(&gbm_out.join("scores.parquet"), "SCORE");
    let mlp = score_column(&mlp_out.join("scores.parquet"), "SCORE");
    assert_eq!(gbm.len(), 300);
    assert_ne!(gbm, mlp, "two models, two sets of scores");

    let (mean_out, table, mean) = run(
        "mean",
        model("fraud_gbm.onnx", "") + &model("fraud_mlp.onnx", ""),
    );
    assert_eq!(
        mean["model"].as_str(),
        Some("mean(fraud_gbm.onnx, fraud_mlp.onnx)")
    );
    let scores = |out: &Path, column: &str| score_column(&out.join("scores.parquet"), column);
    assert_eq!(
        scores(&mean_out, "SCORE_1"),
        gbm,
        "member 1 scores as alone"
    );
    assert_eq!(
        scores(&mean_out, "SCORE_2"),
        mlp,
        "member 2 scores as alone"
    );
    let by_hand: Vec<f32> = gbm
        .iter()
        .zip(&mlp)
        .map(|(&g, &m)| ((f64::from(g) + f64::from(m)) / 2.0) as f32)
        .collect();
    assert_eq!(scores(&mean_out, "SCORE"), by_hand);
    // The shipped hand-built blend is this mean, as one ONNX graph: the same scores.
    let blend_out = dir.path().join("blend");
    backtest(
        Some(&support::write_config(dir.path(), "")),
        &input,
        &blend_out,
        &[],
    );
    assert_eq!(scores(&blend_out, "SCORE"), by_hand);
    let members = mean["members"].as_array().expect("members in report.json");
    assert_eq!(members.len(), 2);
    for (member, alone, file) in [
        (&members[0], &gbm_alone, "fraud_gbm.onnx@"),
        (&members[1], &mlp_alone, "fraud_mlp.onnx@"),
    ] {
        assert!(
            member["model"]
                .as_str()
                .is_some_and(|m| m.starts_with(file)),
            "{member}"
        );
        for metric in [
            "transactions",
            "frauds",
            "auc_roc",
            "average_precision",
            "recall",
        ] {
            assert_eq!(member[metric], alone[metric], "{file} {metric}");
        }
    }
    assert!(
        table.contains("mean(fraud_gbm.onnx, fraud_mlp.onnx)")
            && table.contains("fraud_gbm.onnx@")
            && table.contains("fraud_mlp.onnx@"),
        "{table}"
    );
    let (weighted_out, _, weighted) = run(
        "weighted",
        "[ensemble]\ncombine = \"weighted_mean\"\n\n".to_string()
            + &model("fraud_gbm.onnx", "weight = 3\n")
            + &model("fraud_mlp.onnx", "weight = 1\n"),
    );
    assert_eq!(
        weighted["model"].as_str(),
        Some("weighted_mean(fraud_gbm.onnx, fraud_mlp.onnx)")
    );
    let by_hand: Vec<f32> = gbm
        .iter()
        .zip(&mlp)
        .map(|(&g, &m)| ((3.0 * f64::from(g) + f64::from(m)) / 4.0) as f32)
        .collect();
    assert_eq!(scores(&weighted_out, "SCORE"), by_hand);
    // Every alert names the ensemble: its combination, members, versions and weights.
    let alerts = std::fs::read_to_string(weighted_out.join("alerts.jsonl")).expect("alerts");
    assert_eq!(alerts.lines().count(), 300);
    let first: serde_json::Value =
        serde_json::from_str(alerts.lines().next().expect("an alert")).expect("json");
    let label = first["MODEL"].as_str().expect("MODEL");
    assert!(
        label.starts_with("weighted_mean(fraud_gbm.onnx@")
            && label.contains("*3,fraud_mlp.onnx@")
            && label.ends_with(')'),
        "{label}"
    );

    // Rank average against the reference the mean run wrote (this whole file).
    let reference_path = mean_out.join("ensemble_reference.json");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&reference_path).expect("reference"))
            .expect("json");
    let quantiles = |i: usize| -> Vec<f64> {
        reference["members"][i]["quantiles"]
            .as_array()
            .expect("quantiles")
            .iter()
            // Written as f32 (shortest form): read back as the same f32.
            .map(|v| f64::from(v.as_f64().expect("number") as f32))
            .collect()
    };
    let (qg, qm) = (quantiles(0), quantiles(1));
    assert_eq!(qg.len(), 1001);
    let (rank_out, _, _) = run(
        "rank",
        format!(
            "[ensemble]\ncombine = \"rank_average\"\nreference = {:?}\n\n",
            reference_path.display().to_string()
        ) + &model("fraud_gbm.onnx", "")
            + &model("fraud_mlp.onnx", ""),
    );
    let by_hand: Vec<f32> = gbm
        .iter()
        .zip(&mlp)
        .map(|(&g, &m)| {
            ((rank_by_hand(&qg, f64::from(g)) + rank_by_hand(&qm, f64::from(m))) / 2.0) as f32
        })
        .collect();
    let got = scores(&rank_out, "SCORE");
    assert_eq!(got, by_hand);
    assert!(
        got.iter().all(|s| (0.0..=1.0).contains(s)) && got.iter().any(|&s| s > 0.9),
        "ranks spread over 0..=1"
    );

    // Problems are listed at once: weights missing, a rank average without its reference.
    let bad = with_models(
        dir.path(),
        "bad.toml",
        &("[ensemble]\ncombine = \"weighted_mean\"\n\n".to_string()
            + &model("fraud_gbm.onnx", "")
            + &model("fraud_mlp.onnx", "weight = -2\n")),
    );
    let o = riskpipe(
        &["validate", "--config", bad.to_str().expect("utf8")],
        dir.path(),
    );
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("model 1 (") && t.contains("needs a weight") && t.contains("positive number"),
        "{t}"
    );
}

/// Drift on the handbook: the PSI of the 7 days up to each day against the split's training
/// week is 0 on its last day and low around it; on a copy with every amount × 3, compared with
/// the original's reference, the amount and its averages have drifted, the counts have not.
#[test]
fn drift_is_low_around_the_training_week_and_flags_amounts_times_three() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = support::handbook_data();
    let psi = |report: &serde_json::Value, column: &str, from: &str, to: &str| -> f64 {
        let d = &report["drift"];
        let days: Vec<&str> = d["days"]
            .as_array()
            .expect("days")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        let c = d["columns"]
            .as_array()
            .expect("columns")
            .iter()
            .position(|v| v == column)
            .unwrap_or_else(|| panic!("no {column}"));
        days.iter()
            .enumerate()
            .filter(|(_, day)| **day >= from && **day <= to)
            .map(|(i, _)| d["psi"][c][i].as_f64().expect("psi"))
            .fold(f64::NAN, f64::max)
    };
    let base = dir.path().join("base");
    let (_, report) = backtest(None, &data, &base, &[]);
    for f in ["drift.png", "drift_reference.json"] {
        assert!(base.join(f).is_file(), "{f}");
    }
    // The live monitor's shipped reference is this one: regenerate it when the model or the
    // features change (cp drift_reference.json models/fraud_blend.drift.json).
    let json = |p: PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&p).expect("reference")).expect("json")
    };
    assert_eq!(
        json(base.join("drift_reference.json")),
        json(repo().join("models/fraud_blend.drift.json")),
        "models/fraud_blend.drift.json is not the shipped backtest's reference"
    );
    let columns: Vec<String> = report["drift"]["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    assert_eq!(
        columns.len(),
        16,
        "the amount, 14 features, the score: {columns:?}"
    );
    for c in &columns {
        // The window ending on the training week's last day is the reference itself.
        assert!(psi(&report, c, "2018-07-31", "2018-07-31") < 1e-9, "{c}");
        assert!(psi(&report, c, "2018-07-20", "2018-08-05") < 0.1, "{c}");
    }
    let test_week = |r: &serde_json::Value, c: &str| psi(r, c, "2018-08-08", "2018-08-14");
    assert!(test_week(&report, "TX_AMOUNT") < 0.05);

    // Every amount × 3, against the original's reference.
    let tripled = dir.path().join("tripled.parquet");
    let file = std::fs::File::open(&data).expect("data");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .build()
        .expect("reader");
    let mut writer: Option<parquet::arrow::ArrowWriter<std::fs::File>> = None;
    for b in reader {
        let b = b.expect("batch");
        let at = b.schema().index_of("TX_AMOUNT").expect("amount");
        let amount =
            arrow::compute::cast(b.column(at), &arrow::datatypes::DataType::Float64).expect("f64");
        let amount =
            arrow::array::AsArray::as_primitive::<arrow::datatypes::Float64Type>(amount.as_ref())
                .unary::<_, arrow::datatypes::Float64Type>(|v| v * 3.0);
        let amount = arrow::compute::cast(&amount, b.column(at).data_type()).expect("back");
        let mut columns = b.columns().to_vec();
        columns[at] = amount;
        let b = arrow::array::RecordBatch::try_new(b.schema(), columns).expect("batch");
        writer
            .get_or_insert_with(|| {
                parquet::arrow::ArrowWriter::try_new(
                    std::fs::File::create(&tripled).expect("create"),
                    b.schema(),
                    None,
                )
                .expect("writer")
            })
            .write(&b)
            .expect("write");
    }
    writer.expect("rows").close().expect("close");
    let reference = base.join("drift_reference.json");
    let (table, shifted) = backtest(
        None,
        &tripled,
        &dir.path().join("tripled"),
        &["--drift-reference", reference.to_str().expect("utf8")],
    );
    assert!(
        table.contains("drift (PSI > 0.2)") && table.contains("TX_AMOUNT"),
        "{table}"
    );
    for c in ["TX_AMOUNT", "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW"] {
        assert!(
            test_week(&shifted, c) > 0.2,
            "{c}: {}",
            test_week(&shifted, c)
        );
    }
    for c in ["CUSTOMER_ID_NB_TX_7DAY_WINDOW", "TX_DURING_NIGHT"] {
        assert!(
            test_week(&shifted, c) < 0.1,
            "{c}: {}",
            test_week(&shifted, c)
        );
    }
    eprintln!("drift, test week, original vs amounts × 3:");
    for c in &columns {
        eprintln!(
            "  {c:<40} {:.4}  {:.4}",
            test_week(&report, c),
            test_week(&shifted, c)
        );
    }
}

/// Backtests a CSV with the given content, expects failure, returns what was printed.
fn failed_backtest_output(csv: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("bad.csv");
    std::fs::write(&input, csv).expect("write");
    let o = riskpipe(
        &[
            "backtest",
            "--quiet",
            "--input",
            input.to_str().expect("utf8"),
        ],
        dir.path(),
    );
    assert!(!o.status.success());
    text(&o)
}

/// A file's rows are refused as live refuses their messages (the decoder's checks, its kinds
/// and reasons), each named by its row; the rest are replayed. A broken column the declaration
/// does not name (the truth) is the file's error, naming the row.
#[test]
fn malformed_rows_are_refused_as_live_refuses_them_naming_the_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = small_csv(dir.path());
    let csv = std::fs::read_to_string(&input).expect("csv");
    let mut lines: Vec<String> = csv.lines().map(str::to_string).collect();
    let mut break_row = |row: usize, column: usize, value: &str| {
        let mut cells: Vec<String> = lines[row].split(',').map(str::to_string).collect();
        cells[column] = value.to_string();
        lines[row] = cells.join(",");
    };
    break_row(2, 2, "");
    break_row(3, 4, "eleven");
    break_row(5, 4, "-3.5");
    break_row(7, 1, "2018-04-01 00:00:00");
    std::fs::write(&input, lines.join("\n") + "\n").expect("write");
    let (t, _) = backtest(None, &input, &dir.path().join("out"), &[]);
    assert!(t.contains("replayed 296 transactions"), "{t}");
    assert!(t.contains("rejected 4 transactions (not scored):"), "{t}");
    for line in [
        "  data row 2: field CUSTOMER_ID: null where a value is required",
        "  data row 3: field TX_AMOUNT: wrong type, expected a number",
        "  data row 5: field TX_AMOUNT: below the minimum 0",
        "  data row 7: field TX_DATETIME: not an RFC 3339 date-time with an offset",
    ] {
        assert!(t.contains(line), "missing {line:?} in {t}");
    }

    let t = failed_backtest_output(
        "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD\n\
         1,2018-04-01T00:00:00Z,1,1,10.0,0\n\
         2,2018-04-01T00:01:00Z,1,1,11.0,\n",
    );
    assert!(
        t.contains("\"TX_FRAUD\" is empty or malformed in row 2"),
        "{t}"
    );
}

#[test]
fn validate_lists_every_problem_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        r#"
[job]
kind = "fraud"
[job.events]
id = "TRANSACTION_ID"
time = { field = "TX_DATETIME", format = "epoch_nanos" }
fields = [
  { name = "TRANSACTION_ID", type = "integer" },
  { name = "TX_DATETIME", type = "date" },
]
[job.features]
event_time = "TX_DATETIME"
[[job.features.windows]]
key = "NO_SUCH_KEY"
value = "TX_AMOUNT"
spans = ["1d"]
count = "N"
[job.replay]
batch_rows = 0
[model]
path = "missing.onnx"
[alerts]
threshold = 1.5
"#,
    )
    .expect("write");
    let o = riskpipe(
        &["validate", "--config", config.to_str().expect("utf8")],
        dir.path(),
    );
    assert!(!o.status.success());
    let t = text(&o);
    for expected in [
        "NO_SUCH_KEY",
        "unknown type \"date\"",
        "unknown format \"epoch_nanos\"",
        "[job.labels] is missing",
        "missing.onnx does not exist",
        "alerts.threshold",
        "batch_rows",
    ] {
        assert!(t.contains(expected), "missing {expected:?} in {t}");
    }
}

#[test]
fn validate_accepts_the_shipped_config_and_checks_the_model_inputs() {
    let o = riskpipe(
        &["validate", "--config", "config/fraud-handbook.toml"],
        &repo(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("ok"), "{t}");
    assert!(
        t.contains("execution provider Cpu"),
        "one log line names the provider: {t}"
    );
}

#[test]
fn a_missing_onnx_runtime_is_a_clear_error_not_a_panic() {
    let o = Command::new(env!("CARGO_BIN_EXE_riskpipe"))
        .args(["validate", "--config", "config/fraud-handbook.toml"])
        .current_dir(repo())
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .expect("run");
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains(
            "ONNX Runtime unavailable: ORT_DYLIB_PATH=/nonexistent/libonnxruntime.so is not a file"
        ),
        "{t}"
    );
    assert!(!t.contains("panicked"), "{t}");
}

/// Log lines carry colour codes only for a terminal: none when stderr is a pipe or a file, none
/// at a terminal under `NO_COLOR`, and some at a terminal without it (a pseudo-terminal made by
/// util-linux `script`, so the test shows it can fail).
#[test]
fn logs_are_coloured_only_at_a_terminal_without_no_color() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = small_csv(dir.path());
    let out = dir.path().join("out");
    let args = [
        "backtest",
        "--quiet",
        "--input",
        input.to_str().expect("utf8"),
        "--output",
        out.to_str().expect("utf8"),
    ];
    let piped = riskpipe(&args, &repo());
    assert!(piped.status.success(), "{}", text(&piped));
    let log = String::from_utf8_lossy(&piped.stderr).into_owned();
    assert!(log.contains("INFO"), "a log line to look at: {log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a pipe: {log:?}");
    let at_terminal = |no_color: Option<&str>| -> String {
        let command = std::iter::once(env!("CARGO_BIN_EXE_riskpipe"))
            .chain(args)
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" ");
        let mut script = Command::new("script");
        script
            .args(["-qec", &command, "/dev/null"])
            .current_dir(repo())
            .env_remove("NO_COLOR");
        if let Some(v) = no_color {
            script.env("NO_COLOR", v);
        }
        let o = script
            .output()
            .expect("util-linux script (a pseudo-terminal)");
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let coloured = at_terminal(None);
    assert!(coloured.contains("INFO"), "{coloured}");
    assert!(
        coloured.contains('\u{1b}'),
        "no colour at a terminal: {coloured:?}"
    );
    let plain = at_terminal(Some("1"));
    assert!(plain.contains("INFO"), "{plain}");
    assert!(
        !plain.contains('\u{1b}'),
        "colour despite NO_COLOR: {plain:?}"
    );
}

/// The shipped config as users get it (no `[state]`): `riskpipe run` refuses to start the
/// stateful fraud job rather than begin with empty windows (every restart used to forget 30
/// days of history silently), naming both fixes, before it reaches for Kafka; `validate` says
/// so, and says what a start with checkpoints or with the explicit opt-out does instead.
#[test]
fn a_stateful_job_without_state_refuses_to_start_naming_the_fix() {
    let o = riskpipe(
        &[
            "run",
            "--config",
            "config/fraud-handbook.toml",
            "--metrics-addr",
            "127.0.0.1:0",
            "--bootstrap-servers",
            "127.0.0.1:9",
        ],
        &repo(),
    );
    assert!(!o.status.success(), "started: {}", text(&o));
    let t = text(&o);
    for fix in [
        "without [state] every restart would begin with it empty",
        "reaching 44 days 1 h",
        "[state] dir =",
        "--state-dir DIR",
        "[state] ephemeral = true",
    ] {
        assert!(t.contains(fix), "{fix:?} not in: {t}");
    }
    let validate = |config: &Path| {
        let o = riskpipe(
            &["validate", "--config", config.to_str().expect("utf8")],
            &repo(),
        );
        assert!(o.status.success(), "{}", text(&o));
        text(&o)
    };
    let t = validate(Path::new("config/fraud-handbook.toml"));
    assert!(t.contains("state at start: `riskpipe run` refuses"), "{t}");
    let dir = tempfile::tempdir().expect("tempdir");
    let base = std::fs::read_to_string(repo().join("config/fraud-handbook.toml")).expect("config");
    let with = |name: &str, state: &str| {
        let path = dir.path().join(name);
        let text = base.replace("\"../models/", &format!("\"{}/models/", repo().display()));
        std::fs::write(&path, format!("{text}\n[state]\n{state}\n")).expect("config");
        path
    };
    let t = validate(&with("durable.toml", "dir = \"/var/lib/riskpipe/state\""));
    assert!(
        t.contains("state at start: restores the newest checkpoint in /var/lib/riskpipe/state")
            && t.contains("rebuilt from the features' reach back in the topic (reach 44 days"),
        "{t}"
    );
    let t = validate(&with("ephemeral.toml", "ephemeral = true"));
    assert!(
        t.contains("state at start: starts with empty state every time"),
        "{t}"
    );
    // Both at once is a contradiction, listed with the config's other problems.
    let both = with("both.toml", "ephemeral = true\ndir = \"state\"");
    let o = riskpipe(
        &["validate", "--config", both.to_str().expect("utf8")],
        &repo(),
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("state.ephemeral = true keeps no checkpoints, but state.dir is set"),
        "{}",
        text(&o)
    );
}

/// The command-line reference page (`docs/reference/cli.md`) is the binary's own help, command
/// by command (bless with `RISKPIPE_BLESS=1 cargo test --test cli`): it cannot go stale.
#[test]
fn the_cli_reference_page_is_the_binarys_help() {
    let help = |args: &[&str]| -> String {
        let o = Command::new(env!("CARGO_BIN_EXE_riskpipe"))
            .args(args)
            .env("COLUMNS", "100")
            .current_dir(repo())
            .output()
            .expect("run riskpipe");
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim_end().to_string()
    };
    let top = help(&["--help"]);
    let commands: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() >= 5, "{top}");
    let mut page = String::from(
        "# Command-line reference\n\nThe binary's own help, command by command (`riskpipe <command> --help`). \
         Generated: `tests/cli.rs` fails when this page and the binary differ \
         (`RISKPIPE_BLESS=1 cargo test --test cli` rewrites it).\n\n## riskpipe\n\n```text\n",
    );
    page.push_str(&top);
    page.push_str("\n```\n");
    for c in &commands {
        page.push_str(&format!("\n## riskpipe {c}\n\n```text\n"));
        page.push_str(&help(&[c.as_str(), "--help"]));
        page.push_str("\n```\n");
    }
    let path = repo().join("docs/reference/cli.md");
    if std::env::var_os("RISKPIPE_BLESS").is_some() {
        std::fs::write(&path, &page).expect("write");
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == page,
        "docs/reference/cli.md is stale: run RISKPIPE_BLESS=1 cargo test --test cli"
    );
}

/// `validate` on the payments example with an exported model whose bindings do not fit: the
/// graph's problems (a binding naming no input, an input bound to nothing, a column count the
/// input's shape refuses) and the bound columns' (text bound to a number input, a number to a
/// string input, a column that does not exist), every one listed at once.
#[test]
fn validate_lists_every_model_binding_that_does_not_fit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let example = repo().join("examples/payments");
    let example_text = std::fs::read_to_string(example.join("payments.toml")).expect("example");
    let from = example_text.find("\n[model]\n").expect("[model]");
    let to = example_text.find("\n[alerts]\n").expect("[alerts]");
    let config = format!(
        r#"{}
[model]
path = {:?}

[model.inputs]
merchant_category = "amount.value"
channel = ["channel", "merchant.category"]
amount = "channel"
card_mean_amount_7days = "no_such_column"
night = "night"
card_merchant_count_7days = "card_merchant_count_7days"
typo = "night"
{}"#,
        &example_text[..from],
        example.join("sklearn_pipeline.onnx").display().to_string(),
        &example_text[to..]
    )
    .replace(
        "schema_file = \"payment.schema.json\"",
        &format!(
            "schema_file = {:?}",
            example.join("payment.schema.json").display().to_string()
        ),
    );
    let path = dir.path().join("payments.toml");
    std::fs::write(&path, config).expect("config");
    let o = riskpipe(
        &["validate", "--config", path.to_str().expect("utf8")],
        dir.path(),
    );
    assert!(!o.status.success());
    let t = text(&o);
    for expected in [
        "binds \"typo\", which the model has no input of",
        "input card_count_1h (int64 [N,1]) is bound to no column",
        "input channel (string [N,1]) takes 1 columns, but 2 are bound: channel, merchant.category",
        "reads \"amount.value\" as string, but it is a number",
        "reads \"channel\" as float, but it is declared as text",
        "reads \"no_such_column\", which is neither a declared field nor a configured feature",
    ] {
        assert!(t.contains(expected), "missing {expected:?} in {t}");
    }
}

/// `riskpipe schemas` on the handbook's config writes the published records' schemas: its Avro
/// schemas are the files under schemas/avro, and its JSON Schemas have the members, types and
/// required members of the files under schemas/json.
#[test]
fn schemas_of_the_handbook_are_the_published_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("schemas");
    let o = riskpipe(
        &[
            "schemas",
            "--config",
            "config/fraud-handbook.toml",
            "--out",
            out.to_str().expect("utf8"),
        ],
        &repo(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let read = |path: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json")
    };
    for record in ["score", "alert"] {
        assert_eq!(
            read(&out.join(format!("{record}.avsc"))),
            read(&repo().join(format!("schemas/avro/{record}.avsc"))),
            "{record}.avsc"
        );
        let generated = read(&out.join(format!("{record}.schema.json")));
        let published = read(&repo().join(format!("schemas/json/{record}.schema.json")));
        assert_eq!(generated["required"], published["required"], "{record}");
        assert_eq!(generated["additionalProperties"], false);
        let types = |s: &serde_json::Value| -> Vec<(String, serde_json::Value)> {
            s["properties"]
                .as_object()
                .expect("properties")
                .iter()
                .map(|(k, v)| (k.clone(), v["type"].clone()))
                .collect()
        };
        assert_eq!(types(&generated), types(&published), "{record}");
    }
}

/// The first `n` handbook transactions as a Parquet file in `dir`.
fn handbook_slice(dir: &Path, n: usize) -> PathBuf {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = std::fs::File::open(support::handbook_data()).expect("handbook");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .with_batch_size(n)
        .build()
        .expect("reader");
    let first = reader.into_iter().next().expect("a batch").expect("batch");
    let path = dir.join("slice.parquet");
    let out = std::fs::File::create(&path).expect("create");
    let mut w = parquet::arrow::ArrowWriter::try_new(out, first.schema(), None).expect("writer");
    w.write(&first.slice(0, n.min(first.num_rows())))
        .expect("write");
    w.close().expect("close");
    path
}

/// A column of `batches` as f64 values.
fn f64s(batches: &[arrow::array::RecordBatch], name: &str) -> Vec<f64> {
    use arrow::array::AsArray;
    batches
        .iter()
        .flat_map(|b| {
            let c = arrow::compute::cast(
                b.column_by_name(name).expect(name),
                &arrow::datatypes::DataType::Float64,
            )
            .expect("cast");
            c.as_primitive::<arrow::datatypes::Float64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

fn parquet_batches(path: &Path) -> Vec<arrow::array::RecordBatch> {
    let file = std::fs::File::open(path).expect("open");
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("parquet")
        .build()
        .expect("reader")
        .map(|b| b.expect("batch"))
        .collect()
}

/// Rules over 40,000 handbook transactions (a block rule on the amount, a review rule on
/// velocity and score, a shadow rule, a block list of customers in a file): `riskpipe
/// backtest` writes rules.json and rules.csv
/// whose per-rule hits, precision, recall and fraud amount equal a count made here from
/// scores.parquet and the input; a candidate rules file (the amount rule at 300) changes
/// exactly the decisions counted here.
#[test]
fn a_rules_backtest_equals_a_hand_count_and_a_candidate_changes_what_it_should() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = handbook_slice(dir.path(), 40_000);
    let given = parquet_batches(&input);
    let ids = f64s(&given, "TRANSACTION_ID");
    let (amounts, frauds) = (f64s(&given, "TX_AMOUNT"), f64s(&given, "TX_FRAUD"));
    let customers = f64s(&given, "CUSTOMER_ID");
    // The block list: the customers of the first ten frauds, and one that never pays.
    let mut blocked: Vec<i64> = (0..ids.len())
        .filter(|&i| frauds[i] != 0.0)
        .map(|i| customers[i] as i64)
        .take(10)
        .collect();
    blocked.push(999_999_999);
    let list: String = blocked.iter().map(|c| format!("{c}\n")).collect();
    std::fs::write(
        dir.path().join("blocked.txt"),
        format!("# blocked customers\n{list}"),
    )
    .expect("list");
    let config = support::write_config(
        dir.path(),
        r#"
[decisions]
outcomes = ["allow", "review", "block"]
[[decisions.rules]]
name = "large"
when = "TX_AMOUNT > 200"
outcome = "block"
[[decisions.rules]]
name = "busy_and_risky"
when = "CUSTOMER_ID_NB_TX_1DAY_WINDOW >= 4 AND SCORE >= 0.2"
outcome = "review"
[[decisions.rules]]
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
"#,
    );
    let candidate = dir.path().join("candidate.toml");
    std::fs::write(
        &candidate,
        r#"
outcomes = ["allow", "review", "block"]
[[rules]]
name = "large"
when = "TX_AMOUNT > 300"
outcome = "block"
[[rules]]
name = "busy_and_risky"
when = "CUSTOMER_ID_NB_TX_1DAY_WINDOW >= 4 AND SCORE >= 0.2"
outcome = "review"
[[rules]]
name = "blocked"
when = "in_list('blocked_customers', CUSTOMER_ID)"
outcome = "block"
[[lists]]
name = "blocked_customers"
file = "blocked.txt"
"#,
    )
    .expect("candidate");
    let out = dir.path().join("out");
    backtest(
        Some(&config),
        &input,
        &out,
        &["--rules-candidate", candidate.to_str().expect("utf8")],
    );
    let rules: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("rules.json")).expect("json"))
            .expect("parse");
    assert!(out.join("rules.csv").is_file());
    assert!(out.join("rules.png").is_file());

    // By hand: scores.parquet (id, features, score) joined with the input by id.
    let scored = parquet_batches(&out.join("scores.parquet"));
    let row: std::collections::HashMap<i64, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| (id as i64, i))
        .collect();
    let (sid, busy, score) = (
        f64s(&scored, "TRANSACTION_ID"),
        f64s(&scored, "CUSTOMER_ID_NB_TX_1DAY_WINDOW"),
        f64s(&scored, "SCORE"),
    );
    assert_eq!(sid.len(), 40_000, "every transaction scored");
    let rule = |i: usize, r: usize, cut: f64| -> bool {
        let at = row[&(sid[i] as i64)];
        match r {
            0 => amounts[at] > cut,
            1 => busy[i] >= 4.0 && score[i] as f32 >= 0.2,
            2 => score[i] as f32 >= 0.5,
            _ => blocked.contains(&(customers[at] as i64)),
        }
    };
    let all_frauds = frauds.iter().filter(|&&f| f != 0.0).count() as f64;
    for (r, name) in ["large", "busy_and_risky", "watch", "blocked"]
        .into_iter()
        .enumerate()
    {
        let hits: Vec<usize> = (0..sid.len()).filter(|&i| rule(i, r, 200.0)).collect();
        let fraud_hits: Vec<usize> = hits
            .iter()
            .copied()
            .filter(|&i| frauds[row[&(sid[i] as i64)]] != 0.0)
            .collect();
        let amount: f64 = fraud_hits
            .iter()
            .map(|&i| amounts[row[&(sid[i] as i64)]])
            .sum();
        let got = &rules["rules"][r];
        assert_eq!(got["name"], name);
        assert_eq!(got["hits"].as_u64(), Some(hits.len() as u64), "{name}");
        assert!(!hits.is_empty(), "{name} matches some events");
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
        let precision = fraud_hits.len() as f64 / hits.len() as f64;
        assert!(
            close(got["precision"].as_f64().expect("p"), precision),
            "{name}: {got}"
        );
        let recall = fraud_hits.len() as f64 / all_frauds;
        assert!(
            close(got["recall"].as_f64().expect("r"), recall),
            "{name}: {got}"
        );
        assert!(
            close(got["fraud_amount"].as_f64().expect("a"), amount),
            "{name}: {got}"
        );
    }
    assert_eq!(rules["rules"][2]["shadow"], true);
    // The candidate: blocks only above 300; below, the velocity rule may still review.
    let (mut to_review, mut to_allow) = (0u64, 0u64);
    for i in 0..sid.len() {
        if rule(i, 0, 200.0) && !rule(i, 0, 300.0) && !rule(i, 3, 0.0) {
            if rule(i, 1, 0.0) {
                to_review += 1;
            } else {
                to_allow += 1;
            }
        }
    }
    let changed = &rules["candidate"]["changed"];
    assert_eq!(changed["block -> allow"].as_u64().unwrap_or(0), to_allow);
    assert_eq!(changed["block -> review"].as_u64().unwrap_or(0), to_review);
    assert!(to_allow > 0, "the candidate changes some decisions");
    assert_eq!(
        changed.as_object().expect("changed").len(),
        usize::from(to_allow > 0) + usize::from(to_review > 0),
        "nothing else changes: {changed}"
    );
}

/// With `[decisions]`, `riskpipe schemas` writes the decision record's schemas too: its
/// outcome, matching rules and the rules' version, required.
#[test]
fn schemas_with_decisions_include_the_decision_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = support::write_config(
        dir.path(),
        "[decisions]\noutcomes = [\"allow\", \"block\"]\n[[decisions.rules]]\nname = \"large\"\nwhen = \"TX_AMOUNT > 200\"\noutcome = \"block\"\n",
    );
    let out = dir.path().join("schemas");
    let o = riskpipe(
        &[
            "schemas",
            "--config",
            config.to_str().expect("utf8"),
            "--out",
            out.to_str().expect("utf8"),
        ],
        &repo(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("decision.schema.json")).expect("json schema"),
    )
    .expect("json");
    let required: Vec<&str> = json["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for field in ["DECISION", "RULES", "RULES_VERSION", "SCORE", "REASONS"] {
        assert!(required.contains(&field), "{field} in {required:?}");
    }
    let avro: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("decision.avsc")).expect("avsc"))
            .expect("avro");
    assert_eq!(avro["name"], "Decision", "{avro}");
}

/// `riskpipe bench --rules` replays a history with and without a rules file, interleaved, and
/// says how many events each explained; a rules file with a problem is refused.
#[test]
fn bench_with_rules_compares_the_replay_with_and_without_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = small_csv(dir.path());
    let config = support::write_config(dir.path(), "");
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "outcomes = [\"allow\", \"review\"]\n[[rules]]\nname = \"any\"\nwhen = \"TX_AMOUNT >= 0\"\noutcome = \"review\"\n",
    )
    .expect("rules");
    let bench = |rules: &Path| {
        riskpipe(
            &[
                "bench",
                "--config",
                config.to_str().expect("utf8"),
                "--input",
                input.to_str().expect("utf8"),
                "--rules",
                rules.to_str().expect("utf8"),
                "--runs",
                "2",
            ],
            &repo(),
        )
    };
    let o = bench(&rules);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("300 events, median of 2 interleaved runs"),
        "{t}"
    );
    // Every event is reviewed, so every one is explained with the rules.
    assert!(
        t.contains(" with the rules") && t.contains(", 300 with the rules"),
        "{t}"
    );
    assert!(t.contains("throughput with / without:"), "{t}");
    std::fs::write(&rules, "outcomes = []\n").expect("rules");
    let o = bench(&rules);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("decisions.outcomes is empty"),
        "{}",
        text(&o)
    );
}
