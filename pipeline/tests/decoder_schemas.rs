//! The JSON decoder and the published JSON Schemas agree: payloads generated from each input
//! event's schema (`schemas/json/*.schema.json`), valid and invalid field by field, are
//! accepted by the decoder exactly when a JSON Schema validator (formats asserted) accepts them:
//! transactions and fraud labels as the shipped config declares them, ticks by their published
//! schema.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use riskpipe_pipeline::decoders::{Decoder, JsonDecoder};
use serde_json::Value;

fn schema(file: &str) -> Value {
    let path = format!("{}/../schemas/json/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("schema file")).expect("JSON")
}

/// RFC 3339 date-times, valid and not, as JSON text.
fn date_time() -> BoxedStrategy<String> {
    let valid = (
        1970u32..2100,
        1u32..13,
        1u32..29,
        0u32..24,
        0u32..60,
        0u32..60,
        prop_oneof![Just(String::new()), "\\.[0-9]{1,12}"],
        prop_oneof![
            Just("Z".to_string()),
            Just("z".to_string()),
            (0u32..24, 0u32..60, any::<bool>())
                .prop_map(|(h, m, plus)| format!("{}{h:02}:{m:02}", if plus { '+' } else { '-' })),
        ],
        prop_oneof![Just('T'), Just('t')],
    )
        .prop_map(|(y, mo, d, h, mi, s, frac, off, sep)| {
            format!("\"{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}{frac}{off}\"")
        });
    prop_oneof![
        40 => valid,
        1 => Just("\"2018-04-01T00:00:31\"".to_string()),
        1 => Just("\"2018-04-01 00:00:31Z\"".to_string()),
        1 => Just("\"2018-04-01\"".to_string()),
        1 => Just("\"2018-02-30T00:00:00Z\"".to_string()),
        1 => Just("\"2018-04-01T24:00:00Z\"".to_string()),
        1 => Just("\"2018-04-01T00:00:00+25:00\"".to_string()),
        1 => Just("1522540831".to_string()),
        1 => Just("null".to_string()),
        1 => Just("\"yesterday\"".to_string()),
    ]
    .boxed()
}

/// Values for one property of a JSON Schema, valid and invalid, as JSON text.
fn value(property: &Value) -> BoxedStrategy<String> {
    if let Some(allowed) = property["enum"].as_array() {
        let valid: Vec<String> = allowed.iter().map(Value::to_string).collect();
        let invalid: Vec<String> = ["2", "-1", "\"1\"", "0.5", "null"]
            .map(String::from)
            .to_vec();
        return prop_oneof![
            8 => proptest::sample::select(valid),
            1 => proptest::sample::select(invalid),
        ]
        .boxed();
    }
    match (property["type"].as_str(), property["format"].as_str()) {
        (Some("string"), Some("date-time")) => date_time(),
        (Some("string"), _) => prop_oneof![
            16 => "[A-Za-z0-9^._ -]{0,12}".prop_map(|s| format!("{s:?}")),
            1 => Just("12".to_string()),
            1 => Just("null".to_string()),
        ]
        .boxed(),
        (Some("integer"), _) => prop_oneof![
            20 => any::<i64>().prop_map(|v| v.to_string()),
            20 => (-1_000_000i64..1_000_000).prop_map(|v| v.to_string()),
            4 => (-1_000_000i64..1_000_000).prop_map(|v| format!("{v}.0")),
            1 => Just("1.5".to_string()),
            1 => Just("\"12\"".to_string()),
            1 => Just("null".to_string()),
            1 => Just("1e300".to_string()),
            1 => Just("9223372036854775808".to_string()),
            1 => Just("true".to_string()),
        ]
        .boxed(),
        (Some("number"), _) => prop_oneof![
            30 => (0.0f64..1e9).prop_map(|v| format!("{v:?}")),
            1 => (-1e9f64..0.0).prop_map(|v| format!("{v:?}")),
            1 => (-100.0f64..-0.001).prop_map(|v| format!("{v:?}")),
            1 => Just("-1".to_string()),
            4 => (0u32..100).prop_map(|v| v.to_string()),
            2 => Just("0".to_string()),
            1 => Just("-0.0".to_string()),
            1 => Just("1e999".to_string()),
            // Around riskpipe_schemas::VALUE_LIMIT, the schemas' stated maximum.
            1 => Just("1e15".to_string()),
            1 => Just("1000000000000000.2".to_string()),
            1 => Just("1e300".to_string()),
            1 => Just("-1e16".to_string()),
            1 => Just("\"57.16\"".to_string()),
            1 => Just("null".to_string()),
        ]
        .boxed(),
        other => panic!("no generator for {other:?}"),
    }
}

/// Whole payloads for a schema: each property valid or not, sometimes one missing, sometimes an
/// unknown one added.
fn payload(schema: &Value) -> BoxedStrategy<String> {
    let properties: Vec<(String, Value)> = schema["properties"]
        .as_object()
        .expect("properties")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let fields: Vec<BoxedStrategy<Option<String>>> = properties
        .iter()
        .map(|(name, p)| {
            let name = name.clone();
            prop_oneof![
                40 => value(p).prop_map(move |v| Some(format!("{name:?}:{v}"))),
                1 => Just(None),
            ]
            .boxed()
        })
        .collect();
    (fields, prop_oneof![20 => Just(false), 1 => Just(true)])
        .prop_map(|(fields, extra)| {
            let mut parts: Vec<String> = fields.into_iter().flatten().collect();
            if extra {
                parts.push("\"SURPRISE\":1".into());
            }
            format!("{{{}}}", parts.join(","))
        })
        .boxed()
}

fn agree(file: &str, arrow: arrow::datatypes::SchemaRef) {
    let json_schema = schema(file);
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&json_schema)
        .expect("a valid JSON Schema");
    // The shipped fraud job's declarations (ticks: the published schema).
    let cfg = riskpipe_pipeline::PipelineConfig::handbook().expect("shipped config");
    let (events, labels) = riskpipe_pipeline::jobs::fraud::FraudConfig::of(&cfg)
        .expect("fraud")
        .declarations()
        .expect("declarations");
    assert_eq!(
        events.arrow_schema(),
        riskpipe_schemas::transaction_schema()
    );
    assert_eq!(
        labels.arrow_schema(),
        riskpipe_schemas::fraud_label_schema()
    );
    let decoder = JsonDecoder::new(1 << 16)
        .declaring(events)
        .declaring(labels);
    let (accepted, refused) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    let mut runner = TestRunner::new(Config {
        cases: 3000,
        ..Config::default()
    });
    runner
        .run(&payload(&json_schema), |text| {
            // A number JSON allows but no f64 holds (1e999) is no valid event either.
            let valid = serde_json::from_str::<Value>(&text)
                .map(|v| validator.is_valid(&v))
                .unwrap_or(false);
            let d = decoder
                .decode("topic", &arrow, &[text.as_bytes()])
                .expect("JSON decoding never fails as a whole");
            let decoded = d.batch.num_rows() == 1;
            prop_assert_eq!(
                decoded,
                valid,
                "{}: decoder {:?}, schema says {}",
                text,
                d.rejected.first().map(|r| &r.reason),
                if valid { "valid" } else { "invalid" }
            );
            let counter = if decoded { &accepted } else { &refused };
            counter.set(counter.get() + 1);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    // Both verdicts were exercised.
    let (accepted, refused) = (accepted.get(), refused.get());
    eprintln!("{file}: {accepted} accepted, {refused} refused, verdicts equal");
    assert!(
        accepted > 100 && refused > 100,
        "{file}: {accepted} accepted, {refused} refused"
    );
}

#[test]
fn transactions_are_decoded_exactly_when_the_schema_accepts_them() {
    agree(
        "transaction.schema.json",
        riskpipe_schemas::transaction_schema(),
    );
}

#[test]
fn fraud_labels_are_decoded_exactly_when_the_schema_accepts_them() {
    agree(
        "fraud_label.schema.json",
        riskpipe_schemas::fraud_label_schema(),
    );
}

#[test]
fn ticks_are_decoded_exactly_when_the_schema_accepts_them() {
    agree(
        "market_tick.schema.json",
        riskpipe_schemas::market_tick_schema(),
    );
}
