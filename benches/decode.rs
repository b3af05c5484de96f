//! Decode speed: the same handbook transactions as JSON and as Avro (schema-registry wire
//! format, the published schema), read by the shipped config's declaration through riskpipe's
//! decoders in the pipeline's batch size, in one run; JSON also by the declaration the published
//! JSON Schema gives (its columns in name order). Prints rows/s of each and their ratios
//! (median of 5 passes each, the decoders' passes interleaved).
//!
//! `cargo bench --bench decode`; RISKPIPE_DECODE_ROWS (default 200000) sizes it.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use riskpipe_pipeline::decoders::{self, AvroDecoder, Decoder};
use riskpipe_pipeline::schema_registry::memory::MemoryRegistry;
use riskpipe_pipeline::schema_registry::{RegistryConfig, SchemaRegistry, SubjectStrategy};
use riskpipe_pipeline::{PipelineConfig, backtest};

fn median(mut d: Vec<Duration>) -> Duration {
    d.sort();
    d[d.len() / 2]
}

/// The median time of each decoder over its payloads, the decoders' passes interleaved so that
/// a slower stretch of the machine falls on all of them.
fn times(runs: &[(&dyn Decoder, &SchemaRef, &[Vec<u8>])], batch: usize) -> Vec<Duration> {
    let mut passes = vec![Vec::new(); runs.len()];
    for _ in 0..5 {
        for (i, (decoder, schema, payloads)) in runs.iter().enumerate() {
            let started = Instant::now();
            for chunk in payloads.chunks(batch) {
                let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
                let d = decoder
                    .decode("transactions", schema, &refs)
                    .expect("decode");
                assert_eq!(d.batch.num_rows(), chunk.len(), "{:?}", d.rejected.first());
            }
            passes[i].push(started.elapsed());
        }
    }
    passes.into_iter().map(median).collect()
}

fn main() {
    let n = std::env::var("RISKPIPE_DECODE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000usize);
    let cfg = PipelineConfig::handbook().expect("config");
    let history = backtest::load(&cfg, &support::handbook_data()).expect("history");
    let feed = riskpipe_pipeline::demo::feed(&history, &cfg, 0, n).expect("feed");
    let json: Vec<Vec<u8>> = feed
        .messages
        .iter()
        .filter(|m| !m.0)
        .map(|m| m.2.clone())
        .collect();

    // The same transactions in Avro, framed with the id the registry gave the published schema.
    let registry = MemoryRegistry::new(None);
    let text = std::fs::read_to_string(support::root().join("schemas/avro/transaction.avsc"))
        .expect("schema");
    let id = registry
        .register("transactions-value", &text)
        .expect("register");
    let schema = apache_avro::Schema::parse_str(&text).expect("schema");
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .expect("writer");
    let avro: Vec<Vec<u8>> = json
        .iter()
        .map(|p| {
            let t: riskpipe_schemas::Transaction = serde_json::from_slice(p).expect("json");
            let micros = chrono::DateTime::parse_from_rfc3339(&t.tx_datetime)
                .expect("time")
                .timestamp_micros();
            let mut out = vec![0u8];
            out.extend_from_slice(&id.to_be_bytes());
            out.extend(
                writer
                    .write_value_to_vec(Value::Record(vec![
                        ("TRANSACTION_ID".into(), Value::Long(t.transaction_id)),
                        ("TX_DATETIME".into(), Value::TimestampMicros(micros)),
                        ("CUSTOMER_ID".into(), Value::Long(t.customer_id)),
                        ("TERMINAL_ID".into(), Value::Long(t.terminal_id)),
                        ("TX_AMOUNT".into(), Value::Double(t.tx_amount)),
                    ]))
                    .expect("datum"),
            );
            out
        })
        .collect();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    listener.set_nonblocking(true).expect("nonblocking");
    let serving = registry.clone();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).expect("listener");
                serving.serve(l).await.expect("serve");
            });
    });
    let client = Arc::new(
        SchemaRegistry::new(&RegistryConfig {
            url,
            username: None,
            password: None,
            ssl_ca_location: None,
            timeout: Duration::from_secs(5),
            subject_strategy: SubjectStrategy::Topic,
        })
        .expect("client"),
    );
    // The shipped config's declared transactions, and the same declared by the published JSON
    // Schema (its columns in the order of their names).
    let (shipped, _) = riskpipe_pipeline::jobs::fraud::FraudConfig::of(&cfg)
        .expect("fraud")
        .declarations()
        .expect("declarations");
    let published: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(support::root().join("schemas/json/transaction.schema.json"))
            .expect("schema"),
    )
    .expect("json");
    let (fields, refuses_unknown) =
        riskpipe_schemas::declared::fields_from_json_schema(&published).expect("in the subset");
    let from_file = riskpipe_schemas::declared::EventsConfig {
        fields,
        schema_file: None,
        schema_file_problems: Vec::new(),
        id: "TRANSACTION_ID".into(),
        time: riskpipe_schemas::declared::TimeConfig {
            field: "TX_DATETIME".into(),
            format: "rfc3339".into(),
        },
        amount: None,
        entity: None,
        label: None,
        sensitive: Default::default(),
        unknown_fields: Some(if refuses_unknown { "refuse" } else { "ignore" }.into()),
    }
    .check()
    .expect("declaration");
    let shipped_schema = shipped.arrow_schema();
    let file_schema = from_file.arrow_schema();
    let json_decoder = decoders::JsonDecoder::new(usize::MAX).declaring(shipped.clone());
    let file_decoder = decoders::DeclaredJsonDecoder::new(from_file, usize::MAX);
    let avro_decoder = AvroDecoder::new(client, usize::MAX)
        .expect("decoder")
        .declaring(shipped);
    let batch = 1024;
    let t = times(
        &[
            (&json_decoder, &shipped_schema, &json),
            (&file_decoder, &file_schema, &json),
            (&avro_decoder, &shipped_schema, &avro),
        ],
        batch,
    );
    let (tj, tf, ta) = (t[0], t[1], t[2]);
    let rate = |d: Duration| json.len() as f64 / d.as_secs_f64();
    let mean = |p: &[Vec<u8>]| p.iter().map(Vec::len).sum::<usize>() as f64 / p.len() as f64;
    println!(
        "decode benchmark ({} handbook transactions, batches of {batch}, median of 5)",
        json.len()
    );
    println!(
        "  JSON                        {:>10.0} rows/s   {:>6.1} bytes/message",
        rate(tj),
        mean(&json)
    );
    println!(
        "  JSON (JSON Schema fields)   {:>10.0} rows/s   (/ JSON: {:.2})",
        rate(tf),
        rate(tf) / rate(tj)
    );
    println!(
        "  Avro                        {:>10.0} rows/s   {:>6.1} bytes/message   (/ JSON: {:.2})",
        rate(ta),
        mean(&avro),
        rate(ta) / rate(tj)
    );
}
