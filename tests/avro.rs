//! Avro in the schema registry's wire format, read by the declared events (the handbook's, the
//! payments example's) and the published tick schema: every way a message can fail is a dead
//! letter with its kind and reason; writer schemas that evolved as Avro allows are read; the
//! registry is asked once per schema id; an unreachable registry fails the batch instead of
//! dead-lettering it. Against `riskpipe_pipeline::schema_registry::memory`, over HTTP.

mod support;

use std::sync::Arc;

use apache_avro::types::Value;
use riskpipe_pipeline::decoders::{AvroDecoder, Decoder};
use riskpipe_pipeline::jobs::RejectKind;
use riskpipe_pipeline::schema_registry::memory::MemoryRegistry;
use riskpipe_pipeline::schema_registry::{RegistryConfig, SchemaRegistry, SubjectStrategy};

fn client(url: &str, credentials: Option<(&str, &str)>) -> Arc<SchemaRegistry> {
    Arc::new(
        SchemaRegistry::new(&RegistryConfig {
            url: url.into(),
            username: credentials.map(|c| c.0.to_string()),
            password: credentials.map(|c| c.1.to_string()),
            ssl_ca_location: None,
            timeout: std::time::Duration::from_secs(5),
            subject_strategy: SubjectStrategy::Topic,
        })
        .expect("client"),
    )
}

fn published(stem: &str) -> String {
    std::fs::read_to_string(support::root().join(format!("schemas/avro/{stem}.avsc")))
        .expect("published schema")
}

fn transaction(id: i64, amount: f64) -> Vec<(String, Value)> {
    vec![
        ("TRANSACTION_ID".into(), Value::Long(id)),
        (
            "TX_DATETIME".into(),
            Value::TimestampMicros(1_522_540_831_000_000),
        ),
        ("CUSTOMER_ID".into(), Value::Long(596)),
        ("TERMINAL_ID".into(), Value::Long(3156)),
        ("TX_AMOUNT".into(), Value::Double(amount)),
    ]
}

#[test]
fn every_avro_failure_is_a_dead_letter_and_evolved_writers_are_read() {
    let registry = MemoryRegistry::new(Some(("svc", "s3cret")));
    let url = support::serve_registry(registry.clone());
    let v1_text = published("transaction");
    let v1 = apache_avro::Schema::parse_str(&v1_text).expect("v1");
    let v1_id = registry
        .register("transactions-value", &v1_text)
        .expect("v1");
    // Evolved as Avro allows: a field riskpipe does not know (dropped), TERMINAL_ID an int
    // (promoted to long).
    let evolved_text = v1_text
        .replace(
            r#""name": "TERMINAL_ID",
      "type": "long""#,
            r#""name": "TERMINAL_ID",
      "type": "int""#,
        )
        .replacen(
            r#""fields": ["#,
            r#""fields": [{"name": "CHANNEL", "type": "string", "default": "web"},"#,
            1,
        );
    assert_ne!(evolved_text, v1_text);
    let evolved = apache_avro::Schema::parse_str(&evolved_text).expect("evolved");
    let evolved_id = registry
        .register("transactions-value", &evolved_text)
        .expect("evolved");
    // Not resolvable: the amount is a string.
    let wrong_text = v1_text.replace(
        r#""name": "TX_AMOUNT",
      "type": "double""#,
        r#""name": "TX_AMOUNT",
      "type": "string""#,
    );
    let wrong = apache_avro::Schema::parse_str(&wrong_text).expect("wrong");
    let wrong_id = registry
        .register("transactions-value", &wrong_text)
        .expect("wrong");
    assert!(v1_id != evolved_id && evolved_id != wrong_id);

    let mut evolved_row = transaction(2, 3.5);
    evolved_row[3].1 = Value::Int(3156);
    evolved_row.insert(0, ("CHANNEL".into(), Value::String("pos".into())));
    let mut wrong_row = transaction(3, 0.0);
    wrong_row[4].1 = Value::String("57.16".into());
    let good = support::framed(v1_id, &v1, Value::Record(transaction(1, 57.16)));
    let mut trailing = good.clone();
    trailing.push(7);
    let payloads: Vec<Vec<u8>> = vec![
        good.clone(),
        support::framed(evolved_id, &evolved, Value::Record(evolved_row)),
        support::framed(wrong_id, &wrong, Value::Record(wrong_row)),
        support::framed(999, &v1, Value::Record(transaction(4, 1.0))),
        br#"{"TRANSACTION_ID": 5}"#.to_vec(),
        vec![0, 0, 0],
        vec![0, 0, 0, 0, v1_id as u8, 0xff],
        trailing,
        support::framed(v1_id, &v1, Value::Record(transaction(9, -1.0))),
        Vec::new(),
    ];
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let (events, _) = declared_events("config/fraud-handbook.toml");
    let schema = events.arrow_schema();
    assert_eq!(schema, riskpipe_schemas::transaction_schema());
    let decoder = AvroDecoder::new(client(&url, Some(("svc", "s3cret"))), 1024)
        .expect("decoder")
        .declaring(events.clone());
    let decoded = decoder
        .decode("transactions", &schema, &refs)
        .expect("the registry answers");
    assert_eq!(decoded.accepted, vec![0, 1], "{:#?}", decoded.rejected);
    let ids = decoded.batch.column_by_name("TRANSACTION_ID").expect("ids");
    let ids = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(ids);
    assert_eq!(ids.values().to_vec(), vec![1, 2]);
    let rejected: Vec<(usize, RejectKind, String)> = decoded
        .rejected
        .iter()
        .map(|r| (r.index, r.kind, r.reason.clone()))
        .collect();
    let expect = |index: usize, kind: RejectKind, needle: &str| {
        let r = rejected
            .iter()
            .find(|r| r.0 == index)
            .unwrap_or_else(|| panic!("payload {index} not rejected: {rejected:#?}"));
        assert_eq!(r.1, kind, "payload {index}: {}", r.2);
        assert!(
            r.2.contains(needle),
            "payload {index}: {:?} lacks {needle:?}",
            r.2
        );
    };
    expect(
        2,
        RejectKind::Schema,
        "does not resolve to the declared events",
    );
    expect(3, RejectKind::Schema, "unknown schema id 999");
    expect(4, RejectKind::Malformed, "first byte 0x7b");
    expect(5, RejectKind::Malformed, "truncated");
    expect(6, RejectKind::Malformed, "not a readable Avro datum");
    expect(7, RejectKind::Malformed, "1 bytes after the Avro datum");
    expect(
        8,
        RejectKind::Invalid,
        "field TX_AMOUNT: below the minimum 0",
    );
    expect(9, RejectKind::Empty, "empty payload");
    assert_eq!(rejected.len(), 8);

    // Each id is fetched once; a second batch asks nothing.
    let asked = registry.lookups();
    assert_eq!(asked, 4, "one lookup per schema id");
    decoder
        .decode("transactions", &schema, &refs)
        .expect("again");
    assert_eq!(registry.lookups(), asked, "schemas are cached by id");

    // Wrong credentials, or no registry at all: no message's fault, the batch fails.
    let refused = AvroDecoder::new(client(&url, Some(("svc", "wrong"))), 1024)
        .expect("decoder")
        .declaring(events.clone());
    let e = refused
        .decode("transactions", &schema, &refs[..1])
        .expect_err("401");
    assert!(e.to_string().contains("HTTP 401"), "{e}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let down = AvroDecoder::new(client(&format!("http://{closed}"), None), 1024)
        .expect("decoder")
        .declaring(events);
    let e = down
        .decode("transactions", &schema, &refs[..1])
        .expect_err("unreachable");
    assert!(
        matches!(e, riskpipe_pipeline::PipelineError::SchemaRegistry { .. }),
        "{e}"
    );
    assert_eq!(e.fault(), riskpipe_schemas::Fault::External);
}

#[test]
fn labels_and_ticks_decode_with_their_optional_fields() {
    let registry = MemoryRegistry::new(None);
    let url = support::serve_registry(registry.clone());
    let (_, labels) = declared_events("config/fraud-handbook.toml");
    let decoder = AvroDecoder::new(client(&url, None), 1024)
        .expect("decoder")
        .declaring(labels);
    let tick_text = published("market_tick");
    let tick = apache_avro::Schema::parse_str(&tick_text).expect("tick");
    let tick_id = registry.register("ticks-value", &tick_text).expect("tick");
    let row = |size: Value, price: f64| {
        Value::Record(vec![
            ("INSTRUMENT".into(), Value::String("NDX".into())),
            ("TIME".into(), Value::TimestampMicros(1_000_000)),
            ("PRICE".into(), Value::Double(price)),
            ("SIZE".into(), size),
        ])
    };
    let payloads = [
        support::framed(
            tick_id,
            &tick,
            row(Value::Union(0, Box::new(Value::Null)), 10.0),
        ),
        support::framed(
            tick_id,
            &tick,
            row(Value::Union(1, Box::new(Value::Double(5.0))), 11.0),
        ),
        support::framed(
            tick_id,
            &tick,
            row(Value::Union(0, Box::new(Value::Null)), 0.0),
        ),
    ];
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let d = decoder
        .decode("ticks", &riskpipe_schemas::market_tick_schema(), &refs)
        .expect("decoded");
    assert_eq!(d.accepted, vec![0, 1]);
    assert!(
        d.rejected[0].reason.contains("PRICE: not positive"),
        "{:?}",
        d.rejected
    );
    let size = d.batch.column_by_name("SIZE").expect("size");
    assert!(arrow::array::Array::is_null(size.as_ref(), 0));
    let time = d.batch.column_by_name("TIME").expect("time");
    let time = arrow::array::AsArray::as_primitive::<arrow::datatypes::TimestampNanosecondType>(
        time.as_ref(),
    );
    assert_eq!(time.value(0), 1_000_000_000, "micros to nanoseconds");

    let label_text = published("fraud_label");
    let label = apache_avro::Schema::parse_str(&label_text).expect("label");
    let label_id = registry
        .register("fraud-labels-value", &label_text)
        .expect("label");
    let label_row = |fraud: i64| {
        Value::Record(vec![
            ("TRANSACTION_ID".into(), Value::Long(1)),
            ("CUSTOMER_ID".into(), Value::Long(2)),
            ("TERMINAL_ID".into(), Value::Long(3)),
            ("TX_DATETIME".into(), Value::TimestampMicros(0)),
            ("LABEL_TIME".into(), Value::TimestampMicros(604_800_000_000)),
            ("TX_FRAUD".into(), Value::Long(fraud)),
        ])
    };
    let payloads = [
        support::framed(label_id, &label, label_row(1)),
        support::framed(label_id, &label, label_row(2)),
    ];
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let d = decoder
        .decode(
            "fraud-labels",
            &riskpipe_schemas::fraud_label_schema(),
            &refs,
        )
        .expect("decoded");
    assert_eq!(d.accepted, vec![0]);
    assert_eq!(d.rejected[0].kind, RejectKind::Invalid);
    assert!(
        d.rejected[0].reason.contains("TX_FRAUD"),
        "{:?}",
        d.rejected
    );
}

/// The other evolution cases: a writer with `float` where riskpipe reads `double` (promoted),
/// and a writer without an optional field (its default, null, is taken).
#[test]
fn a_float_writer_is_promoted_and_a_missing_optional_field_takes_its_default() {
    let registry = MemoryRegistry::new(None);
    let url = support::serve_registry(registry.clone());
    let decoder = AvroDecoder::new(client(&url, None), 1024).expect("decoder");
    let writer_text = r#"{
      "type": "record", "name": "MarketTick", "namespace": "riskpipe",
      "fields": [
        {"name": "INSTRUMENT", "type": "string"},
        {"name": "TIME", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "PRICE", "type": "float"}
      ]
    }"#;
    let writer = apache_avro::Schema::parse_str(writer_text).expect("writer");
    let id = registry
        .register("ticks-value", writer_text)
        .expect("writer");
    let payload = support::framed(
        id,
        &writer,
        Value::Record(vec![
            ("INSTRUMENT".into(), Value::String("NDX".into())),
            ("TIME".into(), Value::TimestampMicros(2_000_000)),
            ("PRICE".into(), Value::Float(12.5)),
        ]),
    );
    let d = decoder
        .decode(
            "ticks",
            &riskpipe_schemas::market_tick_schema(),
            &[payload.as_slice()],
        )
        .expect("decoded");
    assert_eq!(d.accepted, vec![0], "{:?}", d.rejected);
    let price = d.batch.column_by_name("PRICE").expect("price");
    let price =
        arrow::array::AsArray::as_primitive::<arrow::datatypes::Float64Type>(price.as_ref());
    assert_eq!(price.value(0), 12.5, "float promoted to double");
    let size = d.batch.column_by_name("SIZE").expect("size");
    assert!(
        arrow::array::Array::is_null(size.as_ref(), 0),
        "default null"
    );
}

#[test]
fn per_topic_formats_decode_and_encode_each_topic_in_its_own_format() {
    use riskpipe_pipeline::decoders::Format;
    let registry = MemoryRegistry::new(None);
    let url = support::serve_registry(registry.clone());
    let mut cfg = riskpipe_pipeline::PipelineConfig::handbook().expect("shipped config");
    let mut kafka = riskpipe_pipeline::kafka::KafkaConfig::for_bootstrap("127.0.0.1:9");
    // Avro everywhere but the labels (input) and the alerts (output).
    kafka.format = Format::Avro;
    kafka.formats.labels = Some(Format::Json);
    kafka.formats.alerts = Some(Format::Json);
    kafka.schema_registry = Some(RegistryConfig {
        url: url.clone(),
        username: None,
        password: None,
        ssl_ca_location: None,
        timeout: std::time::Duration::from_secs(5),
        subject_strategy: SubjectStrategy::Topic,
    });
    cfg.kafka = Some(kafka.clone());
    assert_eq!(cfg.problems(), Vec::<String>::new());

    let decoder = kafka
        .decoder(cfg.streams(), &cfg.job.kind().inputs())
        .expect("decoders");
    let v1_text = published("transaction");
    let v1 = apache_avro::Schema::parse_str(&v1_text).expect("v1");
    let v1_id = registry
        .register("transactions-value", &v1_text)
        .expect("v1");
    let avro = support::framed(v1_id, &v1, Value::Record(transaction(1, 57.16)));
    let json_tx = br#"{"TRANSACTION_ID":1,"TX_DATETIME":"2018-04-01T00:00:31Z","CUSTOMER_ID":596,"TERMINAL_ID":3156,"TX_AMOUNT":57.16}"#;
    let txs = riskpipe_schemas::transaction_schema();
    let d = decoder
        .decode("transactions", &txs, &[&avro, json_tx])
        .expect("transactions");
    assert_eq!(d.accepted, vec![0], "the transactions topic is Avro");
    assert_eq!(
        d.rejected[0].kind,
        RejectKind::Malformed,
        "{:?}",
        d.rejected
    );
    let label = br#"{"TRANSACTION_ID":1,"CUSTOMER_ID":2,"TERMINAL_ID":3,"TX_DATETIME":"2018-04-01T00:00:31Z","LABEL_TIME":"2018-04-08T00:00:31Z","TX_FRAUD":1}"#;
    let d = decoder
        .decode(
            "fraud-labels",
            &riskpipe_schemas::fraud_label_schema(),
            &[label, &avro],
        )
        .expect("labels");
    assert_eq!(d.accepted, vec![0], "the labels topic is JSON");
    assert_eq!(d.rejected.len(), 1);

    let mut encoder = kafka.encoder().expect("encoders");
    let t = riskpipe_schemas::risk_score_schema();
    let risk = arrow::array::RecordBatch::try_new(
        t.clone(),
        vec![
            Arc::new(arrow::array::StringArray::from(vec![Some("^IXIC")])),
            Arc::new(arrow::array::StringArray::from(vec![None::<&str>])),
            Arc::new(
                arrow::array::TimestampNanosecondArray::from(vec![1_000_000_000])
                    .with_timezone("UTC"),
            ),
            Arc::new(arrow::array::Float64Array::from(vec![0.031])),
            Arc::new(arrow::array::Float64Array::from(vec![0.99])),
            Arc::new(arrow::array::Float64Array::from(vec![0.013])),
            Arc::new(arrow::array::StringArray::from(vec!["v"])),
        ],
    )
    .expect("risk");
    let mut out = riskpipe_pipeline::encoders::Payloads::default();
    let scores = kafka.topics.scores.clone();
    let alerts = kafka.topics.alerts.clone();
    encoder.encode(&scores, &risk, &mut out).expect("scores");
    encoder.encode(&alerts, &risk, &mut out).expect("alerts");
    let payloads: Vec<&[u8]> = out.iter().collect();
    assert_eq!(payloads[0][0], 0, "scores in the wire format's frame");
    let json: serde_json::Value = serde_json::from_slice(payloads[1]).expect("alerts as JSON");
    assert_eq!(json["VAR"], 0.031);
    assert_eq!(
        registry.subjects(),
        vec!["scores-value".to_string(), "transactions-value".to_string()],
        "only the Avro output registers a schema"
    );

    // Without a registry, every Avro topic is named.
    let mut no_registry = kafka.clone();
    no_registry.schema_registry = None;
    no_registry.format = Format::Json;
    no_registry.formats.scores = Some(Format::Avro);
    cfg.kafka = Some(no_registry);
    let problems = cfg.problems();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("(topics: scores)") && p.contains("[kafka.schema_registry]")),
        "{problems:?}"
    );
}

/// One record as the Python client printed it.
#[derive(Debug)]
struct Printed {
    key: String,
    value: serde_json::Value,
}

impl Printed {
    fn of(line: &str) -> Printed {
        let mut v: serde_json::Value = serde_json::from_str(line).expect("printed record");
        Printed {
            key: v["key"].as_str().expect("key").to_string(),
            value: v["value"].take(),
        }
    }
}

/// Runs `tests/avro/interop.py` with `args`, `input` on its stdin; its stdout lines.
fn interop(python: &std::path::Path, args: &[&str], input: &str) -> Vec<String> {
    use std::io::Write;
    let mut child = std::process::Command::new(python)
        .arg(support::root().join("tests/avro/interop.py"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("python ran");
    assert!(
        out.status.success(),
        "interop.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Transactions and labels produced by Confluent's Python client with its AvroSerializer
/// (transactions under an evolved writer schema), scored live by `riskpipe run` with
/// `format = "avro"`, and the scores and alerts read back by the same client's
/// AvroDeserializer: every score equals the backtest's bit for bit, and the messages that are
/// not Avro of a known schema are dead letters with their reasons.
#[test]
fn live_avro_from_confluents_python_client_scores_like_the_backtest() {
    use riskpipe_pipeline::{PipelineConfig, backtest};
    let python = riskpipe_testkit::python_env(
        "avro-interop",
        &support::root().join("tests/avro/requirements.txt"),
    );
    let cfg = PipelineConfig::handbook().expect("shipped config");
    let history = backtest::load(&cfg, &support::handbook_data()).expect("history");
    // 100,000 transactions (11 days): labels arrive from day 7 on, so the labels topic is used.
    let n = 100_000;
    let feed = riskpipe_pipeline::demo::feed(&history, &cfg, 0, n).expect("feed");
    let registry = MemoryRegistry::new(Some(("svc", "s3cret")));
    let url = support::serve_registry(registry.clone());
    let broker = support::Broker::start(&support::TOPICS);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = support::write_config(
        dir.path(),
        &support::kafka_section(
            &broker.bootstrap,
            "avro-live",
            &format!(
                "format = \"avro\"\n[kafka.schema_registry]\nurl = {url:?}\nusername = \"svc\"\npassword = \"${{env:RP_REGISTRY_PASSWORD}}\"\n"
            ),
        ),
    );
    let lines = |labels: bool| -> String {
        feed.messages
            .iter()
            .filter(|m| m.0 == labels)
            .map(|(is_label, key, payload, _)| {
                let value: serde_json::Value = serde_json::from_slice(payload).expect("json");
                let topic = if *is_label {
                    "fraud-labels"
                } else {
                    "transactions"
                };
                format!(
                    "{}\n",
                    serde_json::json!({"topic": topic, "key": key, "value": value})
                )
            })
            .collect()
    };
    let schemas = support::root().join("schemas/avro");
    let schemas = schemas.to_str().expect("utf-8 path");
    let produce = |input: &str| {
        interop(
            &python,
            &[
                "produce",
                &broker.bootstrap,
                &url,
                "svc:s3cret",
                schemas,
                "transactions",
            ],
            input,
        )
    };
    let labels = feed.messages.iter().filter(|m| m.0).count();
    assert!(labels > 10, "the slice carries labels: {labels}");
    produce(&lines(true));

    let mut pipeline =
        support::Pipeline::start_with_env(&config, &[("RP_REGISTRY_PASSWORD", "s3cret")]);
    pipeline.wait_ready();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while pipeline.metric("riskpipe_events_in_total", "topic=\"fraud-labels\"") < labels as f64 {
        assert!(std::time::Instant::now() < deadline, "labels not consumed");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Two messages that are no Avro of a known schema, ahead of the transactions.
    let raw = support::producer(&broker.bootstrap);
    for payload in [
        br#"{"TRANSACTION_ID": 1}"#.to_vec(),
        vec![0, 0, 0, 3, 231, 2],
    ] {
        raw.send(rdkafka::producer::BaseRecord::<[u8], [u8]>::to("transactions").payload(&payload))
            .map_err(|(e, _)| e)
            .expect("send");
    }
    rdkafka::producer::Producer::flush(&raw, std::time::Duration::from_secs(10)).expect("flush");
    produce(&lines(false));

    let n_str = n.to_string();
    let scores: Vec<Printed> = interop(
        &python,
        &[
            "consume",
            &broker.bootstrap,
            &url,
            "svc:s3cret",
            "scores",
            &n_str,
            "180",
        ],
        "",
    )
    .iter()
    .map(|l| Printed::of(l))
    .collect();
    let (ok, _) = pipeline.terminate();
    assert!(ok, "SIGTERM exits 0");

    let replayed = backtest::replay(
        &cfg,
        Arc::new(history.head(n)),
        &indicatif::ProgressBar::hidden(),
    )
    .expect("backtest");
    let expected = support::scores_by_id(replayed.scored());
    let mut differ = 0;
    let mut alerted = 0;
    for s in &scores {
        let id = s.value["TRANSACTION_ID"].as_i64().expect("id");
        let score = s.value["SCORE"].as_f64().expect("score");
        assert_eq!(
            s.key,
            s.value["CUSTOMER_ID"].to_string(),
            "keyed by customer"
        );
        let model = s.value["MODEL"].as_str().unwrap_or_default();
        assert!(model.starts_with("fraud_blend.onnx@"), "{model}");
        if expected.get(&id) != Some(&(score as f32)) {
            differ += 1;
        }
        if s.value["ALERT"] == true {
            alerted += 1;
        }
    }
    let distinct: std::collections::BTreeSet<i64> = scores
        .iter()
        .map(|s| s.value["TRANSACTION_ID"].as_i64().expect("id"))
        .collect();
    assert_eq!(distinct.len(), n, "every transaction scored once");
    assert_eq!(
        differ, 0,
        "{differ} of {n} scores differ from the backtest's"
    );
    assert!(alerted > 0, "the slice raises alerts");
    let alerts: Vec<Printed> = interop(
        &python,
        &[
            "consume",
            &broker.bootstrap,
            &url,
            "svc:s3cret",
            "alerts",
            &alerted.to_string(),
            "60",
        ],
        "",
    )
    .iter()
    .map(|l| Printed::of(l))
    .collect();
    assert_eq!(alerts.len(), alerted);
    assert!(
        alerts.iter().all(|a| a.value["REASONS"]
            .as_array()
            .is_some_and(|r| !r.is_empty() && r.len() <= 3)),
        "{:?}",
        alerts.first()
    );
    assert_eq!(
        registry.subjects(),
        vec![
            "alerts-value".to_string(),
            "fraud-labels-value".into(),
            "scores-value".into(),
            "transactions-value".into()
        ]
    );

    let dead = support::reader(&broker.bootstrap, "riskpipe-dead-letter");
    let dead = support::collect(&dead, std::time::Duration::from_secs(30), |g| g.len() >= 2);
    let kinds: Vec<(&str, &str)> = dead
        .iter()
        .map(|d| {
            (
                d.headers["riskpipe.error.kind"].as_str(),
                d.headers["riskpipe.error"].as_str(),
            )
        })
        .collect();
    assert!(
        kinds[0].0 == "malformed" && kinds[0].1.contains("first byte 0x7b"),
        "{kinds:?}"
    );
    assert!(
        kinds[1].0 == "schema" && kinds[1].1.contains("unknown schema id 999"),
        "{kinds:?}"
    );
    eprintln!(
        "{n} transactions produced by confluent-kafka's AvroSerializer (evolved writer schema), {} scores and {} alerts read back by its AvroDeserializer, all equal to the backtest",
        scores.len(),
        alerts.len()
    );
}

/// The declared events of `config` (a path under the repository), as the fraud job reads them.
fn declared_events(
    config: &str,
) -> (
    riskpipe_schemas::declared::EventSchema,
    riskpipe_schemas::declared::EventSchema,
) {
    let cfg =
        riskpipe_pipeline::PipelineConfig::load(&support::root().join(config)).expect("config");
    riskpipe_pipeline::jobs::fraud::FraudConfig::of(&cfg)
        .expect("fraud")
        .declarations()
        .expect("declarations")
}

/// A payments writer with nested records named its own way (`Pay`, `CardInfo`), one evolved
/// with a member riskpipe does not declare and the optional merchant country left out, and one
/// that cannot resolve: the declared payments read from Avro are the rows JSON gives for the
/// same events, and a broken rule is the same dead letter with the same reason.
#[test]
fn declared_payments_read_from_avro_as_from_json() {
    let registry = MemoryRegistry::new(None);
    let url = support::serve_registry(registry.clone());
    let writer_text = r#"{"type": "record", "name": "Pay", "namespace": "acme", "fields": [
        {"name": "payment_id", "type": "string"},
        {"name": "created_at", "type": "long"},
        {"name": "card", "type": {"type": "record", "name": "CardInfo", "fields": [
            {"name": "id", "type": "string"}, {"name": "country", "type": "string"}]}},
        {"name": "merchant", "type": {"type": "record", "name": "Shop", "fields": [
            {"name": "id", "type": "string"}, {"name": "category", "type": "string"},
            {"name": "country", "type": ["null", "string"], "default": null}]}},
        {"name": "channel", "type": "string"},
        {"name": "amount", "type": {"type": "record", "name": "Money", "fields": [
            {"name": "value", "type": "double"}, {"name": "currency", "type": "string"}]}}
    ]}"#;
    let writer = apache_avro::Schema::parse_str(writer_text).expect("writer");
    let id = registry
        .register("payments-value", writer_text)
        .expect("register");
    let evolved_text = writer_text
        .replace(
            r#"{"name": "country", "type": ["null", "string"], "default": null}"#,
            r#"{"name": "rating", "type": "int", "default": 3}"#,
        )
        .replacen(
            r#""fields": ["#,
            r#""fields": [{"name": "device", "type": "string", "default": "?"},"#,
            1,
        );
    let evolved = apache_avro::Schema::parse_str(&evolved_text).expect("evolved");
    let evolved_id = registry
        .register("payments-value", &evolved_text)
        .expect("evolved");
    let unresolvable_text = writer_text.replace(
        r#"{"name": "channel", "type": "string"}"#,
        r#"{"name": "channel", "type": "long"}"#,
    );
    let unresolvable = apache_avro::Schema::parse_str(&unresolvable_text).expect("unresolvable");
    let unresolvable_id = registry
        .register("payments-value", &unresolvable_text)
        .expect("unresolvable");
    let record = |pay: &str, amount: f64, currency: &str, merchant: Vec<(String, Value)>| {
        Value::Record(vec![
            ("payment_id".into(), Value::String(pay.into())),
            ("created_at".into(), Value::Long(1_719_792_000_123)),
            (
                "card".into(),
                Value::Record(vec![
                    ("id".into(), Value::String("card-0007".into())),
                    ("country".into(), Value::String("FR".into())),
                ]),
            ),
            ("merchant".into(), Value::Record(merchant)),
            ("channel".into(), Value::String("online".into())),
            (
                "amount".into(),
                Value::Record(vec![
                    ("value".into(), Value::Double(amount)),
                    ("currency".into(), Value::String(currency.into())),
                ]),
            ),
        ])
    };
    let shop = |country: Value| {
        vec![
            ("id".into(), Value::String("m-001".into())),
            ("category".into(), Value::String("travel".into())),
            (
                "country".into(),
                Value::Union(u32::from(country != Value::Null), Box::new(country)),
            ),
        ]
    };
    let mut evolved_record = record(
        "p-2",
        -12.5,
        "EUR",
        vec![
            ("id".into(), Value::String("m-002".into())),
            ("category".into(), Value::String("grocery".into())),
            ("rating".into(), Value::Int(5)),
        ],
    );
    if let Value::Record(fields) = &mut evolved_record {
        fields.insert(0, ("device".into(), Value::String("phone".into())));
    }
    let mut unresolvable_record = record("p-4", 1.0, "EUR", shop(Value::Null));
    if let Value::Record(fields) = &mut unresolvable_record {
        fields[4].1 = Value::Long(7);
    }
    let payloads = [
        support::framed(
            id,
            &writer,
            record("p-1", 99.5, "EUR", shop(Value::String("FR".into()))),
        ),
        support::framed(evolved_id, &evolved, evolved_record),
        support::framed(id, &writer, record("p-3", 10.0, "BTC", shop(Value::Null))),
        support::framed(unresolvable_id, &unresolvable, unresolvable_record),
    ];
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let (events, _) = declared_events("examples/payments/payments.toml");
    let schema = events.arrow_schema();
    let avro = AvroDecoder::new(client(&url, None), 1024)
        .expect("decoder")
        .declaring(events.clone())
        .decode("payments", &schema, &refs)
        .expect("avro");
    assert_eq!(avro.accepted, vec![0, 1], "{:#?}", avro.rejected);
    let json_payloads = [
        r#"{"payment_id": "p-1", "created_at": 1719792000123, "card": {"id": "card-0007", "country": "FR"}, "merchant": {"id": "m-001", "category": "travel", "country": "FR"}, "channel": "online", "amount": {"value": 99.5, "currency": "EUR"}}"#,
        r#"{"payment_id": "p-2", "created_at": 1719792000123, "card": {"id": "card-0007", "country": "FR"}, "merchant": {"id": "m-002", "category": "grocery"}, "channel": "online", "amount": {"value": -12.5, "currency": "EUR"}}"#,
        r#"{"payment_id": "p-3", "created_at": 1719792000123, "card": {"id": "card-0007", "country": "FR"}, "merchant": {"id": "m-001", "category": "travel", "country": null}, "channel": "online", "amount": {"value": 10.0, "currency": "BTC"}}"#,
    ];
    let json_refs: Vec<&[u8]> = json_payloads.iter().map(|p| p.as_bytes()).collect();
    let json = riskpipe_pipeline::decoders::JsonDecoder::new(1024)
        .declaring(events)
        .decode("payments", &schema, &json_refs)
        .expect("json");
    assert_eq!(json.accepted, vec![0, 1]);
    assert_eq!(
        avro.batch, json.batch,
        "the same rows from Avro as from JSON"
    );
    assert_eq!(
        (
            avro.rejected[0].index,
            avro.rejected[0].kind,
            &avro.rejected[0].reason
        ),
        (2, json.rejected[0].kind, &json.rejected[0].reason),
    );
    assert_eq!(
        avro.rejected[0].reason,
        "field amount.currency: not one of the allowed values"
    );
    assert_eq!(avro.rejected[1].index, 3);
    assert_eq!(avro.rejected[1].kind, RejectKind::Schema);
    assert!(
        avro.rejected[1]
            .reason
            .contains("does not resolve to the declared events"),
        "{}",
        avro.rejected[1].reason
    );
}

/// A writer holding the channel and the currency as Avro enums and the amount as a decimal
/// (bytes, precision 12, scale 2): the declared strings read the enums' symbols and the
/// declared float the decimal's nearest double, the same rows JSON gives for the same values
/// (12345.67 and -12.50 to the bit); a symbol or an amount the declared rules refuse is the
/// same dead letter with the same reason as in JSON.
#[test]
fn avro_enums_and_decimals_read_as_the_declared_strings_and_floats() {
    let registry = MemoryRegistry::new(None);
    let url = support::serve_registry(registry.clone());
    let writer_text = r#"{"type": "record", "name": "Pay", "namespace": "acme", "fields": [
        {"name": "payment_id", "type": "string"},
        {"name": "created_at", "type": "long"},
        {"name": "card", "type": {"type": "record", "name": "CardInfo", "fields": [
            {"name": "id", "type": "string"}, {"name": "country", "type": "string"}]}},
        {"name": "merchant", "type": {"type": "record", "name": "Shop", "fields": [
            {"name": "id", "type": "string"}, {"name": "category", "type": "string"}]}},
        {"name": "channel", "type": {"type": "enum", "name": "Channel", "symbols": ["pos", "online", "atm", "fax"]}},
        {"name": "amount", "type": {"type": "record", "name": "Money", "fields": [
            {"name": "value", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}},
            {"name": "currency", "type": ["null", {"type": "enum", "name": "Currency", "symbols": ["EUR", "USD", "GBP", "BTC"]}], "default": null}]}}
    ]}"#;
    let writer = apache_avro::Schema::parse_str(writer_text).expect("writer");
    let id = registry
        .register("payments-value", writer_text)
        .expect("register");
    let channels = ["pos", "online", "atm", "fax"];
    let currencies = ["EUR", "USD", "GBP", "BTC"];
    let record = |pay: &str, channel: usize, cents: i64, currency: usize| {
        Value::Record(vec![
            ("payment_id".into(), Value::String(pay.into())),
            ("created_at".into(), Value::Long(1_719_792_000_123)),
            (
                "card".into(),
                Value::Record(vec![
                    ("id".into(), Value::String("card-0007".into())),
                    ("country".into(), Value::String("FR".into())),
                ]),
            ),
            (
                "merchant".into(),
                Value::Record(vec![
                    ("id".into(), Value::String("m-001".into())),
                    ("category".into(), Value::String("travel".into())),
                ]),
            ),
            (
                "channel".into(),
                Value::Enum(channel as u32, channels[channel].into()),
            ),
            (
                "amount".into(),
                Value::Record(vec![
                    (
                        "value".into(),
                        Value::Decimal(apache_avro::Decimal::from(cents.to_be_bytes().to_vec())),
                    ),
                    (
                        "currency".into(),
                        Value::Union(
                            1,
                            Box::new(Value::Enum(currency as u32, currencies[currency].into())),
                        ),
                    ),
                ]),
            ),
        ])
    };
    let payloads = [
        support::framed(id, &writer, record("p-1", 1, 1_234_567, 0)),
        support::framed(id, &writer, record("p-2", 0, -1_250, 2)),
        support::framed(id, &writer, record("p-3", 3, 100, 0)),
        support::framed(id, &writer, record("p-4", 2, 100, 3)),
        support::framed(id, &writer, record("p-5", 2, 25_000_000, 1)),
    ];
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let (events, _) = declared_events("examples/payments/payments.toml");
    let schema = events.arrow_schema();
    let avro = AvroDecoder::new(client(&url, None), 1024)
        .expect("decoder")
        .declaring(events.clone())
        .decode("payments", &schema, &refs)
        .expect("avro");
    let json_payloads: Vec<String> = [
        ("p-1", "online", "12345.67", "EUR"),
        ("p-2", "pos", "-12.50", "GBP"),
        ("p-3", "fax", "1.00", "EUR"),
        ("p-4", "atm", "1.00", "BTC"),
        ("p-5", "atm", "250000.00", "USD"),
    ]
    .iter()
    .map(|(pay, channel, value, currency)| {
        format!(
            r#"{{"payment_id": "{pay}", "created_at": 1719792000123, "card": {{"id": "card-0007", "country": "FR"}}, "merchant": {{"id": "m-001", "category": "travel"}}, "channel": "{channel}", "amount": {{"value": {value}, "currency": "{currency}"}}}}"#
        )
    })
    .collect();
    let json_refs: Vec<&[u8]> = json_payloads.iter().map(|p| p.as_bytes()).collect();
    let json = riskpipe_pipeline::decoders::JsonDecoder::new(1024)
        .declaring(events)
        .decode("payments", &schema, &json_refs)
        .expect("json");
    assert_eq!(avro.accepted, vec![0, 1], "{:#?}", avro.rejected);
    assert_eq!(json.accepted, vec![0, 1], "{:#?}", json.rejected);
    assert_eq!(
        avro.batch, json.batch,
        "the same rows from Avro as from JSON"
    );
    let reasons =
        |d: &riskpipe_pipeline::decoders::DecodedPayloads| -> Vec<(usize, RejectKind, String)> {
            d.rejected
                .iter()
                .map(|r| (r.index, r.kind, r.reason.clone()))
                .collect()
        };
    assert_eq!(reasons(&avro), reasons(&json));
    assert_eq!(
        reasons(&avro)
            .iter()
            .map(|r| r.2.as_str())
            .collect::<Vec<_>>(),
        [
            "field channel: not one of the allowed values",
            "field amount.currency: not one of the allowed values",
            "field amount.value: above the maximum 100000",
        ]
    );
}
