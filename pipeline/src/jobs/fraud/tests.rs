//! The fraud job's unit tests: features, scoring and their state across checkpoints.

use super::scoring::baseline_of;
use super::*;
use crate::jobs::{Job, JobInput};
use riskpipe_schemas::score;

/// 1,200 transactions over 12 days, 30 customers, 7 terminals, a fraud now and then.
fn history(dir: &Path) -> History {
    history_over(dir, 1200, 100)
}

/// `rows` transactions from 2018-04-01 on, `per_day` a day (at most 100).
fn history_over(dir: &Path, rows: u32, per_day: u32) -> History {
    let mut csv =
        String::from("TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD\n");
    let first = chrono::NaiveDate::from_ymd_opt(2018, 4, 1).expect("date");
    for i in 0..rows {
        let (day, minute) = (i / per_day, (i % per_day) * 14);
        csv.push_str(&format!(
            "{i},{}T{:02}:{:02}:00Z,{},{},{}.25,{}\n",
            first + chrono::Days::new(u64::from(day)),
            minute / 60,
            minute % 60,
            i % 30,
            i % 7,
            5 + (i * 37) % 200,
            i64::from(i % 23 == 4)
        ));
    }
    let path = dir.join("history.csv");
    std::fs::write(&path, csv).expect("write");
    let cfg = PipelineConfig::handbook().expect("shipped config");
    {
        let fraud = FraudConfig::of(&cfg).expect("fraud");
        fraud.load(&path).expect("history")
    }
}

/// The history's events in batches of `rows`, each with the labels due by its end.
fn batches(h: &History, rows: usize) -> Vec<JobInput> {
    let mut source =
        crate::sources::history::HistorySource::new(std::sync::Arc::new(h.clone()), rows)
            .expect("source");
    std::iter::from_fn(|| match source.next_batch()?.payload {
        crate::sources::Payload::Rows { input, .. } => Some(input),
        crate::sources::Payload::Messages { .. } => None,
    })
    .collect()
}

fn job(cfg: &PipelineConfig) -> Job {
    build(FraudConfig::of(cfg).expect("fraud"), cfg).expect("job")
}

/// Every one of `rows` events read from partition 0 of 1 (the repartitioned stages'
/// input).
fn in_partition_zero(rows: usize) -> Option<Partitions> {
    Some(Partitions {
        of_events: vec![0; rows],
        of_side: Vec::new(),
        held: std::sync::Arc::from([0]),
    })
}

/// Every alert's reasons, as JSON text.
fn reasons(job: &mut Job, inputs: &[JobInput]) -> Vec<String> {
    let mut out = Vec::new();
    for input in inputs {
        let featured = job.features.process(input.clone()).expect("features");
        if featured.batch.num_rows() == 0 {
            continue;
        }
        let o = job.scoring.process(featured).expect("score");
        let alerts = o.alerts.expect("alerts").batch;
        let mut payloads = crate::encoders::Payloads::default();
        crate::encoders::Encoder::encode(
            &mut crate::encoders::JsonEncoder,
            "alerts",
            &alerts,
            &mut payloads,
        )
        .expect("encode");
        out.extend(
            payloads
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        );
    }
    out
}

/// Transactions with the given amounts, an hour apart, customer and terminal `i % 3`.
fn amounts(dir: &Path, amounts: &[&str]) -> History {
    let mut csv =
        String::from("TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_FRAUD\n");
    for (i, a) in amounts.iter().enumerate() {
        csv.push_str(&format!(
            "{i},2018-04-01T{i:02}:00:00Z,{},{},{a},0\n",
            i % 3,
            i % 3
        ));
    }
    let path = dir.join("amounts.csv");
    std::fs::write(&path, csv).expect("write");
    let cfg = PipelineConfig::handbook().expect("shipped config");
    {
        let fraud = FraudConfig::of(&cfg).expect("fraud");
        fraud.load(&path).expect("history")
    }
}

/// Through the driver, as a backtest runs: a number out of range is refused as `invalid`
/// before any state, and an admitted event the model answers with no probability (the
/// identity "model" scores its amount) is a `model` dead letter, never a score or alert;
/// every other event is scored, each score in [0, 1].
#[test]
fn a_model_answer_that_is_no_probability_is_a_model_dead_letter_never_a_score() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = amounts(
        dir.path(),
        &["0.25", "0.5", "3.0", "0.75", "NaN", "1e16", "0.9", "1e15"],
    );
    let mut cfg = PipelineConfig::handbook().expect("shipped config");
    *cfg.model.primary_mut() = riskpipe_models::ModelConfig::new(riskpipe_models::shipped_model(
        "tests/data/identity.onnx",
    ));
    cfg.drift = None;
    cfg.alerts.threshold = Some(0.6);
    let replayed = crate::backtest::replay(
        &cfg,
        std::sync::Arc::new(h),
        &indicatif::ProgressBar::hidden(),
    )
    .expect("replay");
    let mut refused: Vec<(&str, String)> = replayed
        .rejected()
        .iter()
        .map(|d| (d.kind.as_str(), d.reason.clone()))
        .collect();
    refused.sort();
    let beyond = "field TX_AMOUNT: beyond ±1e15, the range in which window sums, means and model inputs stay finite";
    assert_eq!(
        refused,
        vec![
            ("invalid", beyond.to_string()),
            (
                "invalid",
                "field TX_AMOUNT: not a finite number".to_string()
            ),
            (
                "model",
                "the model's score 1000000000000000 is no probability in [0, 1]".to_string()
            ),
            (
                "model",
                "the model's score 3 is no probability in [0, 1]".to_string()
            ),
        ]
    );
    let (scores, alerts) = replayed.records().expect("records");
    let scored: Vec<(i64, f64)> = scores
        .iter()
        .map(|s| {
            (
                s["TRANSACTION_ID"].as_i64().expect("id"),
                s["SCORE"].as_f64().expect("score"),
            )
        })
        .collect();
    assert_eq!(
        scored,
        vec![(0, 0.25), (1, 0.5), (3, 0.75), (6, 0.8999999761581421)]
    );
    let alerted: Vec<i64> = alerts
        .iter()
        .map(|a| a["TRANSACTION_ID"].as_i64().expect("id"))
        .collect();
    assert_eq!(alerted, vec![3, 6]);
}

/// An extreme amount that is admitted moves the explanation baseline no further than the
/// drift reference's largest amount would: the alerts after it carry the reasons they
/// carry without it (the baseline is clamped to the reference's ranges).
#[test]
fn an_extreme_admitted_amount_leaves_later_alerts_their_reasons() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = history(dir.path());
    let mut cfg = PipelineConfig::handbook().expect("shipped config");
    assert!(
        cfg.drift.is_some(),
        "the shipped config has a drift reference"
    );
    // More alerts to compare than at the shipped threshold.
    cfg.alerts.threshold = Some(0.02);
    let clean = batches(&h, 100);
    // A customer and terminal of their own: no other event's features change.
    let mut extreme = clean.clone();
    let last = extreme[2].events.num_rows() - 1;
    let row = extreme[2].events.slice(last, 1);
    let mut columns = row.columns().to_vec();
    let schema = row.schema();
    for (i, f) in schema.fields().iter().enumerate() {
        columns[i] = match f.name().as_str() {
            "TRANSACTION_ID" => {
                std::sync::Arc::new(arrow::array::Int64Array::from(vec![9_999_999]))
            }
            "CUSTOMER_ID" | "TERMINAL_ID" => {
                std::sync::Arc::new(arrow::array::Int64Array::from(vec![8_888_888]))
            }
            "TX_AMOUNT" => std::sync::Arc::new(arrow::array::Float64Array::from(vec![1e15])),
            _ => columns[i].clone(),
        };
    }
    let row = RecordBatch::try_new(schema.clone(), columns).expect("row");
    extreme[2].events =
        arrow::compute::concat_batches(&schema, [&extreme[2].events, &row]).expect("concat");
    if let Some(p) = &mut extreme[2].partitions {
        p.of_events.push(0);
    }
    // The alerts after the extreme event (their ids and reason names), and the baseline's
    // means at the end.
    let reasons_after = |inputs: &[JobInput]| {
        let mut job = job(&cfg);
        let all = reasons(&mut job, inputs);
        let snapshot = job.scoring.snapshot().expect("snapshot");
        let means = baseline_of(&snapshot.tables[0].1, None)
            .expect("baseline")
            .means()
            .expect("means");
        let later: Vec<String> = all
            .into_iter()
            .filter(|a| {
                let v: serde_json::Value = serde_json::from_str(a).expect("alert");
                v["TRANSACTION_ID"]
                    .as_i64()
                    .is_some_and(|id| (300..9_999_999).contains(&id))
            })
            .map(|a| {
                let v: serde_json::Value = serde_json::from_str(&a).expect("alert");
                // Which features, not their order: two of nearly equal contribution
                // may trade places as the baseline moves by a reference value.
                let mut names: Vec<String> = v["REASONS"]
                    .as_array()
                    .expect("reasons")
                    .iter()
                    .map(|r| r["feature"].as_str().expect("feature").to_string())
                    .collect();
                names.sort();
                format!("{}: {}", v["TRANSACTION_ID"], names.join(","))
            })
            .collect();
        (later, means)
    };
    let (expected, clean_means) = reasons_after(&clean);
    assert!(
        expected
            .iter()
            .filter(|r| r.matches(',').count() == 2)
            .count()
            >= 5,
        "alerts after the extreme one with three reasons: {expected:?}"
    );
    let (got, means) = reasons_after(&extreme);
    assert_eq!(got, expected);
    // Each mean moved by at most what one event at the reference's largest value moves it
    // (1,200 rows: TX_AMOUNT's reference maximum is 789.15, so under 0.66 + the mean).
    let reference =
        crate::jobs::drift::Reference::read(&cfg.drift.as_ref().expect("drift").reference)
            .expect("reference");
    let model = cfg.load_model().expect("model");
    for (j, name) in model.features().iter().enumerate() {
        let [_, high] = reference
            .columns
            .iter()
            .find(|(c, _)| c == name)
            .and_then(|(_, b)| b.range)
            .expect("range");
        let moved = (means[j] - clean_means[j]).abs();
        assert!(
            moved <= (high + clean_means[j].abs()) / 1_200.0 + 1e-3,
            "{name}: the baseline mean moved by {moved}"
        );
    }
}

/// A transaction published twice, again in the same batch or three days later, is refused
/// as a duplicate before it touches any state (a late copy is a duplicate, not late):
/// every other row's features equal those of the clean input.
#[test]
fn a_transaction_published_twice_is_refused_and_changes_no_feature() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = history(dir.path());
    let cfg = PipelineConfig::handbook().expect("shipped config");
    let run = |inputs: &[JobInput]| {
        let mut stage = job(&cfg).features;
        let (mut out, mut refused) = (Vec::new(), Vec::new());
        for input in inputs {
            let f = stage.process(input.clone()).expect("features");
            refused.extend(f.rejects.iter().map(|r| (r.kind, r.reason.clone())));
            out.push(f.batch);
        }
        let out = arrow::compute::concat_batches(&out[0].schema(), &out).expect("concat");
        (out, refused)
    };
    let clean = batches(&h, 100);
    let (expected, none) = run(&clean);
    assert_eq!(none, Vec::new());

    let mut twice = clean.clone();
    let copy = twice[3].events.slice(5, 1);
    let schema = copy.schema();
    twice[3].events =
        arrow::compute::concat_batches(&schema, [&twice[3].events, &copy]).expect("concat");
    twice[6].events =
        arrow::compute::concat_batches(&schema, [&copy, &twice[6].events]).expect("concat");
    let (got, refused) = run(&twice);
    let reason = "TRANSACTION_ID taken in already: a transaction published twice counts once";
    assert_eq!(
        refused,
        vec![
            (super::super::RejectKind::Duplicate, reason.to_string()),
            (super::super::RejectKind::Duplicate, reason.to_string())
        ]
    );
    assert_eq!(got, expected);
}

/// The first stage of the repartitioned topology (customer windows only) refuses a
/// transaction published twice as one process does: its windows remember ids, so the copy
/// neither counts twice in its customer's windows nor is forwarded.
#[test]
fn the_first_stage_refuses_a_transaction_published_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = history(dir.path());
    let cfg = PipelineConfig::handbook().expect("shipped config");
    let fraud = FraudConfig::of(&cfg).expect("fraud");
    let first = partition_maker(fraud, "TERMINAL_ID", false, 1).expect("first");
    let run = |inputs: &[JobInput]| {
        let mut stage = first().expect("stage");
        let (mut out, mut refused) = (Vec::new(), Vec::new());
        for input in inputs {
            let mut input = input.clone();
            input.side = None;
            input.partitions = in_partition_zero(input.events.num_rows());
            let f = stage.process(input).expect("first stage");
            refused.extend(f.rejects.iter().map(|r| r.kind));
            out.push(f.batch);
        }
        let out = arrow::compute::concat_batches(&out[0].schema(), &out).expect("concat");
        (out, refused)
    };
    let clean = batches(&h, 100);
    let (expected, none) = run(&clean);
    assert_eq!(none, Vec::new());
    let mut twice = clean.clone();
    let copy = twice[3].events.slice(5, 1);
    twice[6].events =
        arrow::compute::concat_batches(&copy.schema(), [&copy, &twice[6].events]).expect("concat");
    let (got, refused) = run(&twice);
    assert_eq!(refused, vec![super::super::RejectKind::Duplicate]);
    assert_eq!(got, expected);
}

/// The explanation baseline and the drift counts survive a checkpoint: a score stage
/// restored from one, or brought up to it by the silent replay, explains and measures
/// drift exactly as the stage that never stopped.
#[test]
fn a_restored_or_warmed_score_stage_explains_and_monitors_as_the_original() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 60 days: drift counts only rows whose 37-day reach the state has seen.
    let h = history_over(dir.path(), 2400, 40);
    let mut cfg = PipelineConfig::handbook().expect("shipped config");
    // Every score alerts, so every row is explained.
    cfg.alerts.threshold = Some(0.0);
    let inputs = batches(&h, 97);
    let half = inputs.len() / 2;

    // A drift reference of the first days' scored rows.
    let mut plain = job(&cfg);
    let mut scored = Vec::new();
    for input in &inputs[..half] {
        let f = plain.features.process(input.clone()).expect("features");
        scored.extend(plain.scoring.process(f).expect("score").scored);
    }
    let mut monitored = vec![riskpipe_schemas::tx::TX_AMOUNT.to_string()];
    monitored.push(score::SCORE.to_string());
    let reference = crate::jobs::drift::Reference::of(
        &scored,
        "TX_DATETIME",
        &monitored,
        i64::MIN..i64::MAX,
        "the first half".into(),
    )
    .expect("reference");
    let reference_path = dir.path().join("reference.json");
    reference.write(&reference_path).expect("write");
    cfg.drift = Some(crate::jobs::drift::DriftConfig {
        reference: reference_path,
        threshold: 0.2,
        window_days: 3,
        min_rows: 1,
        warm_up: None,
    });

    let mut original = job(&cfg);
    let first = reasons(&mut original, &inputs[..half]);
    assert!(!first.is_empty());
    let features = original.features.snapshot().expect("features");
    let state = original.scoring.snapshot().expect("score state");
    assert_eq!(
        state
            .tables
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["explain_baseline", "drift", "drift_since"]
    );
    let expected = reasons(&mut original, &inputs[half..]);
    assert!(expected.len() > 100);

    // Restored from the snapshot.
    let mut restored = job(&cfg);
    restored
        .features
        .restore(features.clone())
        .expect("features");
    restored.scoring.restore(state).expect("score state");
    assert_eq!(reasons(&mut restored, &inputs[half..]), expected);

    // Rebuilt by the silent replay of the first half.
    let mut warmed = job(&cfg);
    for input in &inputs[..half] {
        let f = warmed.features.process(input.clone()).expect("features");
        warmed.scoring.warm(f).expect("warm");
    }
    assert_eq!(reasons(&mut warmed, &inputs[half..]), expected);

    // Without the state, the reasons differ (the baseline starts again).
    let mut fresh = job(&cfg);
    fresh.features.restore(features).expect("features");
    assert_ne!(reasons(&mut fresh, &inputs[half..]), expected);

    // The drift windows agree too, and count rows.
    let psi = |j: &Job| format!("{:?}", j.scoring.snapshot().expect("snapshot").tables);
    let counted = original.scoring.snapshot().expect("snapshot").tables[1]
        .1
        .num_rows();
    assert!(counted > 0, "no drift counts");
    assert_eq!(psi(&restored), psi(&original));
    assert_eq!(psi(&warmed), psi(&original));
}

/// The second stage of the repartitioned topology takes a re-forwarded row (the first
/// stage's uncommitted tail, read again after a crash or a rebalance) once: the copy is
/// refused as a duplicate, and every later row's features are those of a run without it
/// (the terminal's history did not count the transaction twice).
#[test]
fn a_re_forwarded_row_counts_once_after_the_repartition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = history(dir.path());
    let cfg = PipelineConfig::handbook().expect("shipped config");
    let fraud = FraudConfig::of(&cfg).expect("fraud");
    let first = partition_maker(fraud, "TERMINAL_ID", false, 1).expect("first");
    let mut stage_one = first().expect("stage");
    // The first stage's rows, as forwarded (every transaction in partition 0 of 1).
    let mut forwarded = Vec::new();
    let mut labels = Vec::new();
    for mut input in batches(&h, 50) {
        labels.extend(input.side.take());
        input.partitions = in_partition_zero(input.events.num_rows());
        forwarded.push(stage_one.process(input).expect("first stage").batch);
    }
    let labels = arrow::compute::concat_batches(&labels[0].schema(), &labels).expect("labels");
    let second = partition_maker(fraud, "TERMINAL_ID", true, 1).expect("second");
    let run = |batches: &[RecordBatch]| -> (Vec<RecordBatch>, usize) {
        let mut stage = second().expect("stage");
        let mut out = Vec::new();
        let mut duplicates = 0;
        for (i, b) in batches.iter().enumerate() {
            let f = stage
                .process(JobInput {
                    // Every label up front: each counts from its label time only.
                    side: (i == 0).then(|| labels.clone()),
                    events: b.clone(),
                    partitions: in_partition_zero(b.num_rows()),
                })
                .expect("second stage");
            duplicates += f
                .rejects
                .iter()
                .filter(|r| r.kind == super::super::RejectKind::Redelivered)
                .count();
            out.push(f.batch);
        }
        (out, duplicates)
    };
    let (once, none) = run(&forwarded);
    assert_eq!(none, 0);
    // Batches 5 and 6 forwarded again after batch 7 (day 3; the terminal risk looks 7 days
    // back, so the 12 days see the difference a double count would make).
    let mut again = forwarded.clone();
    again.insert(8, forwarded[5].clone());
    again.insert(9, forwarded[6].clone());
    let (twice, duplicates) = run(&again);
    assert_eq!(
        duplicates,
        forwarded[5].num_rows() + forwarded[6].num_rows()
    );
    let rows = |bs: &[RecordBatch]| {
        let bs: Vec<&RecordBatch> = bs.iter().filter(|b| b.num_rows() > 0).collect();
        arrow::compute::concat_batches(&bs[0].schema(), bs).expect("concat")
    };
    assert_eq!(
        rows(&twice),
        rows(&once),
        "every row's features as without the copies"
    );
}

/// The transactions' declaration drives the live decoder: the shipped one refuses an undeclared
/// member and takes a handbook payload; a config that ignores undeclared members, or narrows a
/// rule, is read so by the product's decoder (`KafkaConfig::decoder` with the job's inputs).
/// Another shape (a text customer id) is taken; features that disagree with the declaration
/// on the event time or the id are refused by `validate`, naming both.
#[test]
fn the_declared_transactions_drive_the_json_decoder() {
    let payload = r#"{"TRANSACTION_ID": 1, "TX_DATETIME": "2018-04-01T00:00:31Z", "CUSTOMER_ID": 5, "TERMINAL_ID": 7, "TX_AMOUNT": 150.5}"#;
    let extra = payload.replace('}', r#", "CHANNEL": "web"}"#);
    let decode = |toml: &str, payloads: &[&str]| {
        let cfg =
            PipelineConfig::from_toml(toml, &crate::config::handbook_config_dir()).expect("config");
        assert!(cfg.problems().is_empty(), "{:#?}", cfg.problems());
        let kafka = crate::kafka::KafkaConfig::for_bootstrap("localhost:9092");
        let inputs = cfg.job.kind().inputs();
        assert_eq!(
            inputs.declared.len(),
            2,
            "the fraud job declares its events and labels"
        );
        let bytes: Vec<&[u8]> = payloads.iter().map(|p| p.as_bytes()).collect();
        kafka
            .decoder(cfg.streams(), &inputs)
            .expect("decoder")
            .decode("transactions", &inputs.events, &bytes)
            .expect("decoded")
    };
    let shipped = crate::config::HANDBOOK_CONFIG;
    let out = decode(shipped, &[payload, &extra]);
    assert_eq!(out.accepted, vec![0]);
    assert_eq!(out.rejected[0].reason, "unknown field CHANNEL");
    let ignoring = shipped.replace("unknown_fields = \"refuse\"", "unknown_fields = \"ignore\"");
    assert_eq!(decode(&ignoring, &[payload, &extra]).accepted, vec![0, 1]);
    let narrowed = shipped.replace(
        "{ name = \"TX_AMOUNT\", type = \"float\", minimum = 0 }",
        "{ name = \"TX_AMOUNT\", type = \"float\", minimum = 0, maximum = 100 }",
    );
    let out = decode(&narrowed, &[payload]);
    assert_eq!(
        (out.rejected[0].kind, out.rejected[0].reason.as_str()),
        (
            crate::jobs::RejectKind::Invalid,
            "field TX_AMOUNT: above the maximum 100"
        )
    );
    // Another shape: text customer ids key the windows as integers did.
    let text_ids = shipped.replacen(
        "{ name = \"CUSTOMER_ID\", type = \"integer\" }",
        "{ name = \"CUSTOMER_ID\", type = \"string\" }",
        1,
    );
    let out = decode(
        &text_ids,
        &[&payload.replace("\"CUSTOMER_ID\": 5", "\"CUSTOMER_ID\": \"card-5\"")],
    );
    assert_eq!(out.accepted, vec![0]);
    assert_eq!(
        out.batch
            .column_by_name("CUSTOMER_ID")
            .map(|c| c.data_type().clone()),
        Some(arrow::datatypes::DataType::Utf8)
    );
    let disagreeing = shipped
        .replace(
            "order_by = \"TRANSACTION_ID\"",
            "order_by = \"TERMINAL_ID\"",
        )
        .replace(
            "event_time = \"TX_DATETIME\"",
            "event_time = \"LABEL_TIME\"",
        );
    let cfg = PipelineConfig::from_toml(&disagreeing, &crate::config::handbook_config_dir())
        .expect("config");
    let problems = cfg.problems();
    for want in [
        "job.features.order_by \"TERMINAL_ID\" is not the declared event id (job.events.id) \"TRANSACTION_ID\"",
        "job.features.event_time \"LABEL_TIME\" is not the declared event time (job.events.time.field) \"TX_DATETIME\"",
    ] {
        assert!(problems.iter().any(|p| p == want), "{want}: {problems:#?}");
    }
}

/// A declaration may point at a JSON Schema file the user has (relative to the config file):
/// the published transaction schema declares the same columns as the shipped fields (in the
/// order of their names) and refuses undeclared members as it says; a missing file and keywords
/// outside the subset are listed by `validate` with every other problem.
#[test]
fn the_declared_fields_may_come_from_a_json_schema_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/json/transaction.schema.json"),
        dir.path().join("tx.schema.json"),
    )
    .expect("copy");
    let shipped = crate::config::HANDBOOK_CONFIG;
    let start = shipped.find("fields = [").expect("fields");
    let end = start + shipped[start..].find("]\n").expect("end") + 2;
    let with_file = |file: &str| {
        let text = format!(
            "{}schema_file = {file:?}\n{}",
            &shipped[..start],
            &shipped[end..]
        )
        .replace("unknown_fields = \"refuse\"\n", "");
        let mut cfg = PipelineConfig::from_toml(&text, dir.path()).expect("config");
        // The model and drift reference paths are the shipped config's.
        let shipped = PipelineConfig::handbook().expect("shipped");
        cfg.model = shipped.model;
        cfg.drift = shipped.drift;
        cfg
    };
    let cfg = with_file("tx.schema.json");
    let declared = FraudConfig::of(&cfg)
        .expect("fraud")
        .declared()
        .expect("a valid declaration");
    let names: Vec<&str> = declared.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "CUSTOMER_ID",
            "TERMINAL_ID",
            "TRANSACTION_ID",
            "TX_AMOUNT",
            "TX_DATETIME"
        ]
    );
    assert!(!declared.ignore_unknown, "additionalProperties: false");
    // The job reads columns by name: the schema file's order serves as well.
    assert!(cfg.problems().is_empty(), "{:#?}", cfg.problems());
    let missing = with_file("nowhere.json");
    assert!(
        missing
            .problems()
            .iter()
            .any(|p| p.starts_with("job.events.schema_file") && p.contains("nowhere.json")),
        "{:#?}",
        missing.problems()
    );
    std::fs::write(
        dir.path().join("odd.json"),
        r#"{"type": "object", "properties": {"TRANSACTION_ID": {"type": "integer", "multipleOf": 2}}}"#,
    )
    .expect("write");
    let odd = with_file("odd.json");
    assert!(
        odd.problems()
            .iter()
            .any(|p| p.contains("the keyword \"multipleOf\" is not supported")),
        "{:#?}",
        odd.problems()
    );
}

/// Checkpoints are restored only into stages of the same feature definitions' fingerprint: the
/// shipped features' fingerprint is pinned, so a change that means the same (declaring the
/// events, moving code between crates) keeps a running pipeline's state, and one that changes
/// it is seen here first (and then needs its release note: state is rebuilt once).
#[test]
fn the_shipped_features_keep_their_checkpoint_fingerprint() {
    let cfg = PipelineConfig::handbook().expect("shipped config");
    let features = &FraudConfig::of(&cfg).expect("fraud").features;
    assert_eq!(
        crate::jobs::fingerprint(features),
        "7c5b947c900cab00b67a88e2"
    );
}

/// The rules of the decisions tests: a block rule on the amount, a review rule on velocity and
/// score, a shadow rule.
fn rules() -> DecisionsSection {
    toml::from_str(
        r#"
        outcomes = ["allow", "review", "block"]
        [[rules]]
        name = "large"
        when = "TX_AMOUNT > 180"
        outcome = "block"
        [[rules]]
        name = "busy_and_risky"
        when = "CUSTOMER_ID_NB_TX_1DAY_WINDOW >= 3 AND SCORE >= 0.05"
        outcome = "review"
        [[rules]]
        name = "trial"
        when = "TX_AMOUNT > 100"
        outcome = "block"
        shadow = true
        "#,
    )
    .expect("rules")
}

fn replayed(cfg: &PipelineConfig, h: &History) -> crate::backtest::Replayed {
    crate::backtest::replay(
        cfg,
        std::sync::Arc::new(h.clone()),
        &indicatif::ProgressBar::hidden(),
    )
    .expect("replay")
}

/// Without `[decisions]` the shipped rule (`ALERT` → review, an alert) leaves the alerts as
/// the threshold made them; declared, every scored event gets one decision record whose
/// outcome and rules follow the rules row by row (counted here from the scored columns), the
/// score records' `ALERT` is "the decision is an alert", and the alerts are exactly the
/// review and block decisions.
#[test]
fn decisions_follow_the_rules_and_without_them_the_threshold_decides_the_alerts() {
    use arrow::array::AsArray;
    let dir = tempfile::tempdir().expect("tempdir");
    let h = history(dir.path());
    let mut cfg = PipelineConfig::handbook().expect("shipped config");
    cfg.alerts.threshold = Some(0.05);
    let plain = replayed(&cfg, &h);
    let (plain_scores, plain_alerts) = plain.records().expect("records");
    assert!(!plain_alerts.is_empty(), "some alerts at 0.05");
    assert!(
        plain
            .collected
            .outputs
            .iter()
            .all(|o| o.decisions.is_none())
    );

    // The shipped rule, declared: the same alerts, byte for byte.
    cfg.decisions = Some(
        toml::from_str(
            r#"
            outcomes = ["allow", "review"]
            [[rules]]
            name = "threshold"
            when = "ALERT"
            outcome = "review"
            "#,
        )
        .expect("rules"),
    );
    let shipped = replayed(&cfg, &h);
    let bytes = |r: &crate::backtest::Replayed, alerts: bool| -> Vec<Vec<u8>> {
        r.payloads(alerts)
            .expect("payloads")
            .iter()
            .map(<[u8]>::to_vec)
            .collect()
    };
    assert_eq!(bytes(&shipped, true), bytes(&plain, true));
    assert_eq!(bytes(&shipped, false), bytes(&plain, false));

    cfg.decisions = Some(rules());
    let decided = replayed(&cfg, &h);
    let (scores, alerts) = decided.records().expect("records");
    assert_eq!(scores.len(), plain_scores.len());
    let (mut want, mut rows) = (Vec::new(), 0);
    for b in decided.scored() {
        let amount = b.column_by_name("TX_AMOUNT").expect("amount");
        let amount =
            arrow::compute::cast(amount, &arrow::datatypes::DataType::Float64).expect("cast");
        let amount = amount.as_primitive::<arrow::datatypes::Float64Type>();
        let busy = arrow::compute::cast(
            b.column_by_name("CUSTOMER_ID_NB_TX_1DAY_WINDOW")
                .expect("count"),
            &arrow::datatypes::DataType::Float64,
        )
        .expect("cast");
        let busy = busy.as_primitive::<arrow::datatypes::Float64Type>();
        let s = b.column_by_name(score::SCORE).expect("score");
        let s = s.as_primitive::<arrow::datatypes::Float32Type>();
        let decision = b
            .column_by_name(score::DECISION)
            .expect("decision")
            .as_string::<i32>()
            .clone();
        for i in 0..b.num_rows() {
            let (large, risky, trial) = (
                amount.value(i) > 180.0,
                busy.value(i) >= 3.0 && s.value(i) >= 0.05,
                amount.value(i) > 100.0,
            );
            let outcome = match (large, risky) {
                (true, _) => "block",
                (false, true) => "review",
                _ => "allow",
            };
            let mut matched = Vec::new();
            for (hit, name) in [
                (large, "large"),
                (risky, "busy_and_risky"),
                (trial, "trial"),
            ] {
                if hit {
                    matched.push(name);
                }
            }
            assert_eq!(decision.value(i), outcome, "row {rows}");
            want.push((outcome, matched));
            rows += 1;
        }
    }
    let records: Vec<serde_json::Value> = decided
        .collected
        .outputs
        .iter()
        .filter_map(|o| o.decisions.as_ref())
        .flat_map(|r| {
            let mut p = crate::encoders::Payloads::default();
            crate::encoders::Encoder::encode(
                &mut crate::encoders::JsonEncoder,
                "d",
                &r.batch,
                &mut p,
            )
            .expect("encode");
            p.iter()
                .map(|x| serde_json::from_slice(x).expect("json"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(records.len(), rows, "one decision per scored event");
    let version = records[0][score::RULES_VERSION]
        .as_str()
        .expect("version")
        .to_string();
    assert_eq!(
        version,
        rules().rules(Path::new(".")).expect("rules").version()
    );
    for (r, (outcome, matched)) in records.iter().zip(&want) {
        assert_eq!(r[score::DECISION], *outcome);
        let names: Vec<&str> = r[score::RULES]
            .as_array()
            .expect("rules")
            .iter()
            .map(|m| m["rule"].as_str().expect("name"))
            .collect();
        assert_eq!(&names, matched);
        assert_eq!(
            r[score::REASONS].as_array().expect("reasons").is_empty(),
            *outcome == "allow"
        );
    }
    let decided_alerts = want.iter().filter(|(o, _)| *o != "allow").count();
    assert_eq!(
        alerts.len(),
        decided_alerts,
        "alerts are the review and block decisions"
    );
    assert!(
        want.iter().any(|(o, _)| *o == "block") && want.iter().any(|(o, _)| *o == "review"),
        "both outcomes occur"
    );
    assert!(
        want.iter()
            .any(|(o, m)| *o == "allow" && m.contains(&"trial")),
        "a shadow rule's match does not decide"
    );
    let flagged = scores.iter().filter(|s| s[score::ALERT] == true).count();
    assert_eq!(flagged, decided_alerts);
}

/// A rules file with every kind of mistake is refused listing each; a file and inline rules
/// together are refused.
#[test]
fn a_bad_rules_file_is_refused_with_every_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("rules.toml"),
        r#"
        outcomes = ["allow", "block"]
        [[rules]]
        name = "a"
        when = "NO_SUCH_FIELD > 1"
        outcome = "block"
        [[rules]]
        name = "a"
        when = "TX_AMOUNT"
        outcome = "deny"
        "#,
    )
    .expect("write");
    let mut cfg = PipelineConfig::handbook().expect("shipped config");
    cfg.base_dir = dir.path().to_path_buf();
    cfg.decisions = Some(DecisionsSection {
        file: Some("rules.toml".into()),
        alert: Some(vec!["review".into()]),
        ..DecisionsSection::default()
    });
    let problems = cfg.job.kind().problems(&cfg);
    let text = problems.join("\n");
    for expected in [
        "named twice",
        "deny",
        "NO_SUCH_FIELD",
        "decisions.alert names \"review\"",
    ] {
        assert!(text.contains(expected), "{expected:?} in {problems:#?}");
    }
    cfg.decisions = Some(DecisionsSection {
        file: Some("rules.toml".into()),
        ..rules()
    });
    let problems = cfg.job.kind().problems(&cfg).join("\n");
    assert!(problems.contains("not both"), "{problems}");
}
