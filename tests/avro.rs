//! Avro in the schema registry's wire format: every way a message can fail is a dead letter
//! with its kind and reason; writer schemas that evolved as Avro allows are read; the registry
//! is asked once per schema id; an unreachable registry fails the batch instead of
//! dead-lettering it. Against `riskpipe_pipeline::schema_registry::memory`, over HTTP.

mod support;

use std::sync::Arc;

use apache_avro::types::Value;
use riskpipe_pipeline::decoders::{AvroDecoder, Decoder};
use riskpipe_pipeline::jobs::RejectKind;
use riskpipe_pipeline::schema_registry::memory::MemoryRegistry;
use riskpipe_pipeline::schema_registry::{RegistryConfig, SchemaRegistry, SubjectStrategy};

/// Serves `registry` on a free port of its own runtime thread; its URL.
fn serve(registry: Arc<MemoryRegistry>) -> String {
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

/// The Confluent frame of `value` written with `schema` (id `id`).
fn framed(id: u32, schema: &apache_avro::Schema, value: Value) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&id.to_be_bytes());
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()
        .expect("writer");
    out.extend(writer.write_value_to_vec(value).expect("datum"));
    out
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
    let url = serve(registry.clone());
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
    let good = framed(v1_id, &v1, Value::Record(transaction(1, 57.16)));
    let mut trailing = good.clone();
    trailing.push(7);
    let payloads: Vec<Vec<u8>> = vec![
        good.clone(),
        framed(evolved_id, &evolved, Value::Record(evolved_row)),
        framed(wrong_id, &wrong, Value::Record(wrong_row)),
        framed(999, &v1, Value::Record(transaction(4, 1.0))),
        br#"{"TRANSACTION_ID": 5}"#.to_vec(),
        vec![0, 0, 0],
        vec![0, 0, 0, 0, v1_id as u8, 0xff],
        trailing,
        framed(v1_id, &v1, Value::Record(transaction(9, -1.0))),
        Vec::new(),
    ];
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let schema = riskpipe_schemas::transaction_schema();
    let decoder = AvroDecoder::new(client(&url, Some(("svc", "s3cret"))), 1024).expect("decoder");
    let decoded = decoder
        .decode(&schema, &refs)
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
        "does not resolve to riskpipe.Transaction",
    );
    expect(3, RejectKind::Schema, "unknown schema id 999");
    expect(4, RejectKind::Malformed, "first byte 0x7b");
    expect(5, RejectKind::Malformed, "truncated");
    expect(6, RejectKind::Malformed, "not a readable Avro datum");
    expect(7, RejectKind::Malformed, "1 bytes after the Avro datum");
    expect(8, RejectKind::Invalid, "field TX_AMOUNT: negative");
    expect(9, RejectKind::Empty, "empty payload");
    assert_eq!(rejected.len(), 8);

    // Each id is fetched once; a second batch asks nothing.
    let asked = registry.lookups();
    assert_eq!(asked, 4, "one lookup per schema id");
    decoder.decode(&schema, &refs).expect("again");
    assert_eq!(registry.lookups(), asked, "schemas are cached by id");

    // Wrong credentials, or no registry at all: no message's fault, the batch fails.
    let refused = AvroDecoder::new(client(&url, Some(("svc", "wrong"))), 1024).expect("decoder");
    let e = refused.decode(&schema, &refs[..1]).expect_err("401");
    assert!(e.to_string().contains("HTTP 401"), "{e}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let down = AvroDecoder::new(client(&format!("http://{closed}"), None), 1024).expect("decoder");
    let e = down.decode(&schema, &refs[..1]).expect_err("unreachable");
    assert!(
        matches!(e, riskpipe_pipeline::PipelineError::SchemaRegistry { .. }),
        "{e}"
    );
    assert_eq!(e.fault(), riskpipe_schemas::Fault::External);
}

#[test]
fn labels_and_ticks_decode_with_their_optional_fields() {
    let registry = MemoryRegistry::new(None);
    let url = serve(registry.clone());
    let decoder = AvroDecoder::new(client(&url, None), 1024).expect("decoder");
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
        framed(
            tick_id,
            &tick,
            row(Value::Union(0, Box::new(Value::Null)), 10.0),
        ),
        framed(
            tick_id,
            &tick,
            row(Value::Union(1, Box::new(Value::Double(5.0))), 11.0),
        ),
        framed(
            tick_id,
            &tick,
            row(Value::Union(0, Box::new(Value::Null)), 0.0),
        ),
    ];
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let d = decoder
        .decode(&riskpipe_schemas::market_tick_schema(), &refs)
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
        framed(label_id, &label, label_row(1)),
        framed(label_id, &label, label_row(2)),
    ];
    let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    let d = decoder
        .decode(&riskpipe_schemas::fraud_label_schema(), &refs)
        .expect("decoded");
    assert_eq!(d.accepted, vec![0]);
    assert_eq!(d.rejected[0].kind, RejectKind::Invalid);
    assert!(
        d.rejected[0].reason.contains("TX_FRAUD"),
        "{:?}",
        d.rejected
    );
}
