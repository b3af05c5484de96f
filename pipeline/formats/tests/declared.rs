//! The declared-events JSON decoder: a payments stream of another shape than the handbook's
//! (string ids, nested members, an epoch-millisecond time, categories, signed amounts), each of
//! its rules broken once; the handbook declared, keeping each accepted payload's values; and
//! generated declarations with generated payloads (the fuzzing invariants).

use arrow::array::{
    Array, AsArray, BooleanArray, Float64Array, Int64Array, TimestampNanosecondArray,
};
use arrow::datatypes::SchemaRef;
use proptest::prelude::*;
use riskpipe_core::RejectKind;
use riskpipe_formats::decoders::{DeclaredJsonDecoder, DecodedPayloads, Decoder};
use riskpipe_schemas::declared::{EventSchema, EventsConfig};

const PAYMENTS: &str = r#"
id = "payment_id"
time = { field = "created_at", format = "epoch_millis" }
amount = "amount.value"
entity = "card.id"
fields = [
  { name = "payment_id", type = "string", max_length = 12 },
  { name = "created_at", type = "integer" },
  { name = "card.id", type = "string" },
  { name = "merchant.id", type = "string" },
  { name = "merchant.category", type = "string", allowed = ["grocery", "travel", "gaming"] },
  { name = "country", type = "string", required = false, nullable = true, max_length = 2 },
  { name = "channel", type = "integer", allowed = [1, 2, 3] },
  { name = "amount.value", type = "float", minimum = -1000000, maximum = 1000000 },
  { name = "card_present", type = "boolean" },
  { name = "settled_at", type = "timestamp", required = false },
]
"#;

fn declared(text: &str) -> EventSchema {
    toml::from_str::<EventsConfig>(text)
        .expect("a declaration")
        .check()
        .expect("a valid declaration")
}

fn decode(decoder: &DeclaredJsonDecoder, payloads: &[&str]) -> DecodedPayloads {
    let payloads: Vec<&[u8]> = payloads.iter().map(|p| p.as_bytes()).collect();
    decoder
        .decode("payments", &decoder.schema().clone(), &payloads)
        .expect("decoded")
}

const GOOD: &str = r#"{"payment_id": "p-1", "created_at": 1733400000123, "card": {"id": "c-9"}, "merchant": {"id": "m-1", "category": "travel"}, "country": "FR", "channel": 2, "amount": {"value": -12.5}, "card_present": false, "settled_at": "2024-12-05T13:00:00+01:00"}"#;

#[test]
fn a_payments_stream_of_another_shape_decodes_by_its_declaration() {
    let decoder = DeclaredJsonDecoder::new(declared(PAYMENTS), 4096);
    let minimal = r#"{"payment_id": "p-2", "created_at": 5.0, "card": {"id": "c-9"}, "merchant": {"category": "grocery", "id": "m-2"}, "channel": 1, "amount": {"value": 30}, "card_present": true, "country": null}"#;
    let out = decode(&decoder, &[GOOD, minimal]);
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    assert_eq!(out.accepted, vec![0, 1]);
    let b = &out.batch;
    let text = |name: &str| {
        b.column_by_name(name)
            .expect(name)
            .as_string::<i32>()
            .clone()
    };
    assert_eq!(text("payment_id").value(0), "p-1");
    assert_eq!(text("card.id").value(1), "c-9");
    assert_eq!(text("merchant.category").value(1), "grocery");
    assert_eq!(text("country").value(0), "FR");
    assert!(text("country").is_null(1), "null where nullable");
    let time = b
        .column_by_name("created_at")
        .expect("time")
        .as_any()
        .downcast_ref::<TimestampNanosecondArray>()
        .expect("a timestamp column")
        .clone();
    assert_eq!(time.value(0), 1_733_400_000_123_000_000, "epoch ms to ns");
    assert_eq!(time.value(1), 5_000_000, "5.0 is the integer 5");
    let amounts = b
        .column_by_name("amount.value")
        .expect("amount")
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("floats")
        .clone();
    assert_eq!(amounts.values().to_vec(), vec![-12.5, 30.0]);
    let present = b
        .column_by_name("card_present")
        .expect("bool")
        .as_any()
        .downcast_ref::<BooleanArray>()
        .expect("booleans")
        .clone();
    assert!(!present.value(0) && present.value(1));
    let settled = b
        .column_by_name("settled_at")
        .expect("settled")
        .as_any()
        .downcast_ref::<TimestampNanosecondArray>()
        .expect("timestamps")
        .clone();
    assert_eq!(settled.value(0), 1_733_400_000_000_000_000, "+01:00 to UTC");
    assert!(settled.is_null(1), "absent where nullable");
    let channel = b
        .column_by_name("channel")
        .expect("channel")
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("ints")
        .clone();
    assert_eq!(channel.values().to_vec(), vec![2, 1]);
}

/// The event time taken from the Kafka record's timestamp: the declared time field is the
/// column riskpipe fills with it (no member of the payload: one of that name is an unknown
/// field); a record without a timestamp is refused, naming the field; a JSON record decoded
/// without timestamps (`decode`) is refused alike.
#[test]
fn the_event_time_may_be_the_kafka_record_timestamp() {
    let text = r#"
id = "payment_id"
time = { field = "kafka_time", format = "kafka_timestamp" }
fields = [
  { name = "payment_id", type = "string" },
  { name = "amount", type = "float" },
]
"#;
    let schema = declared(text);
    assert_eq!(
        schema.fields.len(),
        3,
        "the time column after the declared fields"
    );
    assert_eq!(schema.fields[schema.time].name, "kafka_time");
    assert!(!schema.in_payload(schema.time));
    let decoder = DeclaredJsonDecoder::new(schema, 4096);
    let payloads: Vec<&[u8]> = vec![
        br#"{"payment_id": "a", "amount": 1.5}"#,
        br#"{"payment_id": "b", "amount": 2.5}"#,
        br#"{"payment_id": "c", "amount": 3.5, "kafka_time": 5}"#,
        br#"{"payment_id": "d", "amount": 4.5}"#,
    ];
    let stamps = [Some(1_733_400_000_123), None, Some(7), Some(-1_000)];
    let out = decoder
        .decode_records("payments", &decoder.schema().clone(), &payloads, &stamps)
        .expect("decoded");
    assert_eq!(out.accepted, vec![0, 3]);
    let times = out
        .batch
        .column_by_name("kafka_time")
        .expect("time")
        .as_primitive::<arrow::datatypes::TimestampNanosecondType>()
        .clone();
    assert_eq!(
        times.values().to_vec(),
        vec![1_733_400_000_123_000_000, -1_000_000_000]
    );
    let reasons: Vec<(usize, RejectKind, &str)> = out
        .rejected
        .iter()
        .map(|r| (r.index, r.kind, r.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (
                1,
                RejectKind::Schema,
                "field kafka_time: the record has no Kafka timestamp, which the declared event time is"
            ),
            (2, RejectKind::Schema, "unknown field kafka_time"),
        ]
    );
    let without = decoder
        .decode("payments", &decoder.schema().clone(), &payloads[..1])
        .expect("decoded");
    assert_eq!(without.rejected.len(), 1);

    // Declared as a field too: a problem, named.
    let problems = toml::from_str::<EventsConfig>(&text.replace(
        r#"{ name = "amount", type = "float" },"#,
        r#"{ name = "amount", type = "float" }, { name = "kafka_time", type = "integer" },"#,
    ))
    .expect("toml")
    .check()
    .expect_err("a declared field cannot be the record's timestamp");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("kafka_timestamp") && p.contains("kafka_time")),
        "{problems:?}"
    );
}

/// `GOOD` with `from` replaced by `to` (once, checked).
fn with(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from}");
    GOOD.replacen(from, to, 1)
}

#[test]
fn each_rule_broken_once_is_a_dead_letter_naming_the_field_and_the_rule() {
    let decoder = DeclaredJsonDecoder::new(declared(PAYMENTS), 4096);
    let cases: Vec<(String, RejectKind, &str)> = vec![
        (
            with(r#""p-1""#, r#""p-1234567890123""#),
            RejectKind::Invalid,
            "field payment_id: longer than 12 characters",
        ),
        (
            with(r#""travel""#, r#""casino""#),
            RejectKind::Invalid,
            "field merchant.category: not one of the allowed values",
        ),
        (
            with(r#""FR""#, r#""FRA""#),
            RejectKind::Invalid,
            "field country: longer than 2 characters",
        ),
        (
            with(r#""channel": 2"#, r#""channel": 7"#),
            RejectKind::Invalid,
            "field channel: not one of the allowed values",
        ),
        (
            with("-12.5", "-1000000.5"),
            RejectKind::Invalid,
            "field amount.value: below the minimum -1000000",
        ),
        (
            with("-12.5", "2e6"),
            RejectKind::Invalid,
            "field amount.value: above the maximum 1000000",
        ),
        (
            with("2024-12-05T13:00:00+01:00", "2024-12-05 13:00:00"),
            RejectKind::Invalid,
            "field settled_at: not an RFC 3339 date-time with an offset",
        ),
        (
            with("1733400000123", "9223372036854775"),
            RejectKind::Invalid,
            "field created_at: outside the time range",
        ),
        (
            with(r#""payment_id": "p-1""#, r#""payment_id": 1"#),
            RejectKind::Schema,
            "field payment_id: wrong type, expected a string",
        ),
        (
            with("1733400000123", "1733400000123.5"),
            RejectKind::Schema,
            "field created_at: wrong type, expected an integer",
        ),
        (
            with("1733400000123", "18446744073709551615"),
            RejectKind::Schema,
            "field created_at: integer out of range",
        ),
        (
            with("-12.5", r#""-12.5""#),
            RejectKind::Schema,
            "field amount.value: wrong type, expected a number",
        ),
        (
            with("false", "0"),
            RejectKind::Schema,
            "field card_present: wrong type, expected a boolean",
        ),
        (
            with(r#""card": {"id": "c-9"}"#, r#""card": {"id": null}"#),
            RejectKind::Schema,
            "field card.id: null where a value is required",
        ),
        (
            with(r#""card": {"id": "c-9"}"#, r#""card": "c-9""#),
            RejectKind::Schema,
            "field card: wrong type, expected an object",
        ),
        (
            with(r#""card": {"id": "c-9"}"#, r#""card": null"#),
            RejectKind::Schema,
            "field card.id: null where a value is required",
        ),
        (
            with(r#""card": {"id": "c-9"}, "#, ""),
            RejectKind::Schema,
            "missing field card.id",
        ),
        (
            with(r#""2024-12-05T13:00:00+01:00""#, "null"),
            RejectKind::Schema,
            "field settled_at: null where a value is required",
        ),
        (
            with(r#""channel": 2"#, r#""channel": 2, "channel": 3"#),
            RejectKind::Schema,
            "duplicate field channel",
        ),
        (
            with(
                r#""card": {"id": "c-9"}"#,
                r#""card": {"id": "c-9"}, "card": {"id": "c-8"}"#,
            ),
            RejectKind::Schema,
            "duplicate field card",
        ),
        (
            with(
                r#""card": {"id": "c-9"}"#,
                r#""card": {"id": "c-9", "pin": 1234}"#,
            ),
            RejectKind::Schema,
            "unknown field card.pin",
        ),
        (
            with(r#""channel": 2"#, r#""channel": 2, "cvv": "123""#),
            RejectKind::Schema,
            "unknown field cvv",
        ),
        (
            with("-12.5", "1e999"),
            RejectKind::Schema,
            "field amount.value: number out of range",
        ),
        (
            format!("{GOOD} {{}}"),
            RejectKind::Malformed,
            "more than one JSON value",
        ),
        (
            GOOD[..40].to_string(),
            RejectKind::Malformed,
            "truncated JSON",
        ),
        (
            with(r#""channel": 2,"#, r#""channel": 2"#),
            RejectKind::Malformed,
            "malformed JSON",
        ),
        (
            "[1, 2]".to_string(),
            RejectKind::Schema,
            "not a JSON object",
        ),
        ("   ".to_string(), RejectKind::Empty, "empty payload"),
    ];
    // Each bad payload between two good ones: the good ones are kept.
    let mut payloads: Vec<String> = vec![GOOD.to_string()];
    for (bad, _, _) in &cases {
        payloads.push(bad.clone());
        payloads.push(GOOD.to_string());
    }
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    let out = decode(&decoder, &refs);
    assert_eq!(
        out.accepted,
        (0..=cases.len()).map(|i| 2 * i).collect::<Vec<_>>()
    );
    assert_eq!(out.batch.num_rows(), cases.len() + 1);
    assert_eq!(out.rejected.len(), cases.len());
    for (r, (bad, kind, reason)) in out.rejected.iter().zip(&cases) {
        assert_eq!(r.index % 2, 1);
        assert!(
            r.kind == *kind && r.reason.starts_with(reason),
            "{bad}\n  got {:?} {:?}\n  want {kind:?} {reason:?}",
            r.kind,
            r.reason
        );
        // Reasons name fields and rules, never a value.
        for value in ["1234", "c-8", "casino", "FRA", "123\""] {
            assert!(!r.reason.contains(value), "{}", r.reason);
        }
    }
}

#[test]
fn undeclared_members_are_refused_or_ignored_as_declared() {
    let ignoring = DeclaredJsonDecoder::new(
        declared(&PAYMENTS.replace(
            "entity = \"card.id\"",
            "entity = \"card.id\"\nunknown_fields = \"ignore\"",
        )),
        4096,
    );
    let extra = with(
        r#""card": {"id": "c-9"}"#,
        r#""card": {"id": "c-9", "pin": [1, {"a": 2}]}, "device": {"os": "x"}"#,
    );
    let out = decode(&ignoring, &[&extra]);
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    let refusing = DeclaredJsonDecoder::new(declared(PAYMENTS), 4096);
    let out = decode(&refusing, &[&extra]);
    assert_eq!(out.rejected[0].reason, "unknown field card.pin");
    // Too large a payload is refused before it is read.
    let small = DeclaredJsonDecoder::new(declared(PAYMENTS), 64);
    let out = decode(&small, &[GOOD]);
    assert_eq!(out.rejected[0].kind, RejectKind::Oversized);
}

/// The handbook's transactions as a declaration: the published JSON Schema's types and rules.
const HANDBOOK: &str = r#"
id = "TRANSACTION_ID"
time = { field = "TX_DATETIME" }
amount = "TX_AMOUNT"
entity = "CUSTOMER_ID"
fields = [
  { name = "TRANSACTION_ID", type = "integer" },
  { name = "TX_DATETIME", type = "timestamp" },
  { name = "CUSTOMER_ID", type = "integer" },
  { name = "TERMINAL_ID", type = "integer" },
  { name = "TX_AMOUNT", type = "float", minimum = 0 },
]
"#;

/// A handbook-shaped payload with some of its parts replaced by other JSON.
fn handbook_payload() -> impl Strategy<Value = String> {
    let int = prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        (0i64..1_000_000).prop_map(|v| format!("{v}.0")),
        Just("1.5".to_string()),
        Just("\"57\"".to_string()),
        Just("null".to_string()),
        Just("18446744073709551615".to_string()),
    ];
    let amount = prop_oneof![
        (0.0f64..1e6).prop_map(|v| format!("{v}")),
        (-1e6f64..0.0).prop_map(|v| format!("{v}")),
        any::<u32>().prop_map(|v| v.to_string()),
        Just("2e15".to_string()),
        Just("1e999".to_string()),
        Just("\"12\"".to_string()),
        Just("true".to_string()),
    ];
    let time = prop_oneof![
        (0i64..4_000_000_000).prop_map(|s| {
            format!(
                "\"{}\"",
                chrono::DateTime::from_timestamp(s, 0)
                    .expect("time")
                    .format("%Y-%m-%dT%H:%M:%SZ")
            )
        }),
        Just("\"2018-04-01T00:00:31+02:00\"".to_string()),
        Just("\"2018-04-01 00:00:31\"".to_string()),
        Just("1522540831".to_string()),
    ];
    (int.clone(), time, int.clone(), int, amount, 0u8..8).prop_map(
        |(id, time, customer, terminal, amount, shape)| {
            let mut members = vec![
                format!("\"TRANSACTION_ID\": {id}"),
                format!("\"TX_DATETIME\": {time}"),
                format!("\"CUSTOMER_ID\": {customer}"),
                format!("\"TERMINAL_ID\": {terminal}"),
                format!("\"TX_AMOUNT\": {amount}"),
            ];
            match shape {
                0 => {
                    members.remove(2);
                }
                1 => members.push("\"EXTRA\": 1".into()),
                2 => members.push("\"TX_AMOUNT\": 1".into()),
                3 => members.reverse(),
                _ => {}
            }
            format!("{{{}}}", members.join(", "))
        },
    )
}

/// A JSON number as the declaration's integer: an integer, or a float with no fraction.
fn json_integer(v: &serde_json::Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The handbook declared: every payload is accepted or refused, once, and each accepted
    /// payload's values are in its row bit for bit (ids and amounts as serde_json reads them,
    /// the time as chrono parses it); which payloads are accepted is held to the published JSON
    /// Schema by `pipeline/tests/decoder_schemas.rs`.
    #[test]
    fn the_handbook_declared_keeps_each_accepted_payloads_values(
        payloads in proptest::collection::vec(handbook_payload(), 1..12)
    ) {
        let schema: SchemaRef = riskpipe_schemas::transaction_schema();
        let declared = DeclaredJsonDecoder::new(declared(HANDBOOK), 4096);
        prop_assert_eq!(declared.schema(), &schema);
        let bytes: Vec<&[u8]> = payloads.iter().map(|p| p.as_bytes()).collect();
        let ours = declared.decode("transactions", &schema, &bytes).expect("declared");
        let mut seen: Vec<usize> = ours
            .accepted
            .iter()
            .copied()
            .chain(ours.rejected.iter().map(|r| r.index))
            .collect();
        seen.sort_unstable();
        prop_assert_eq!(seen, (0..payloads.len()).collect::<Vec<_>>());
        let int = |name: &str| ours.batch.column_by_name(name).expect("column").as_primitive::<arrow::datatypes::Int64Type>().clone();
        let (ids, customers) = (int("TRANSACTION_ID"), int("CUSTOMER_ID"));
        let amounts = ours.batch.column_by_name("TX_AMOUNT").expect("amount").as_primitive::<arrow::datatypes::Float64Type>().clone();
        let times = ours.batch.column_by_name("TX_DATETIME").expect("time").as_primitive::<arrow::datatypes::TimestampNanosecondType>().clone();
        for (row, &index) in ours.accepted.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(&payloads[index]).expect("accepted is JSON");
            prop_assert_eq!(Some(ids.value(row)), json_integer(&v["TRANSACTION_ID"]));
            prop_assert_eq!(Some(customers.value(row)), json_integer(&v["CUSTOMER_ID"]));
            prop_assert_eq!(Some(amounts.value(row).to_bits()), v["TX_AMOUNT"].as_f64().map(f64::to_bits));
            let time = chrono::DateTime::parse_from_rfc3339(v["TX_DATETIME"].as_str().expect("text"))
                .expect("RFC 3339")
                .timestamp_nanos_opt();
            prop_assert_eq!(Some(times.value(row)), time);
        }
    }
}

/// A generated field: its type, nesting, rules, and how to write a value it takes or refuses.
#[derive(Debug, Clone)]
struct GenField {
    kind: &'static str,
    /// Neither required nor refusing null.
    nullable: bool,
    nested: bool,
    bounded: bool,
    allowed: bool,
}

fn gen_field() -> impl Strategy<Value = GenField> {
    (
        prop_oneof![
            Just("string"),
            Just("integer"),
            Just("float"),
            Just("boolean"),
            Just("timestamp")
        ],
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(kind, nullable, nested, bounded, allowed)| GenField {
            kind,
            nullable,
            nested,
            bounded,
            allowed,
        })
}

impl GenField {
    fn name(&self, i: usize) -> String {
        match self.nested {
            true => format!("g{}.f{i}", i % 2),
            false => format!("f{i}"),
        }
    }

    fn declaration(&self, i: usize) -> String {
        let mut d = format!(
            "{{ name = \"{}\", type = \"{}\", required = {}, nullable = {}",
            self.name(i),
            self.kind,
            !self.nullable,
            self.nullable
        );
        match self.kind {
            "integer" | "float" if self.bounded => d.push_str(", minimum = -100, maximum = 100"),
            "string" if self.bounded => d.push_str(", max_length = 3"),
            _ => {}
        }
        match self.kind {
            "integer" if self.allowed => d.push_str(", allowed = [-5, 0, 7]"),
            "string" if self.allowed => d.push_str(", allowed = [\"a\", \"bc\"]"),
            _ => {}
        }
        d.push_str(" }");
        d
    }

    /// A value the field takes, from `seed`.
    fn good(&self, seed: u32) -> String {
        let pick = |options: &[&str]| options[seed as usize % options.len()].to_string();
        match self.kind {
            "string" if self.allowed => pick(&["\"a\"", "\"bc\""]),
            "string" if self.bounded => pick(&["\"x\"", "\"\\u00e9t\"", "\"\""]),
            "string" => pick(&["\"hello\"", "\"\\\"q\\\"\"", "\"x\""]),
            "integer" if self.allowed => pick(&["-5", "0", "7"]),
            "integer" if self.bounded => pick(&["-100", "0", "100", "42.0"]),
            "integer" => pick(&["-9223372036854775808", "9223372036854775807", "3"]),
            "float" if self.bounded => pick(&["-100", "99.5", "0.25"]),
            "float" => pick(&["-1e15", "1e15", "0.1", "12"]),
            "boolean" => pick(&["true", "false"]),
            _ => pick(&[
                "\"2024-01-01T00:00:00Z\"",
                "\"1999-12-31T23:59:59.5-05:00\"",
            ]),
        }
    }

    /// A value the field refuses, with the kind of dead letter it makes.
    fn bad(&self, seed: u32) -> (String, RejectKind) {
        let schema = RejectKind::Schema;
        let invalid = RejectKind::Invalid;
        let options: Vec<(&str, RejectKind)> = match self.kind {
            "string" if self.allowed => vec![("\"zz\"", invalid), ("1", schema)],
            "string" if self.bounded => vec![("\"long\"", invalid), ("[]", schema)],
            "string" => vec![("1", schema), ("{}", schema)],
            "integer" if self.allowed => vec![("8", invalid), ("\"7\"", schema)],
            "integer" if self.bounded => vec![("101", invalid), ("1.5", schema)],
            "integer" => vec![("1.5", schema), ("18446744073709551615", schema)],
            "float" if self.bounded => vec![("-100.5", invalid), ("\"1\"", schema)],
            "float" => vec![("2e15", invalid), ("true", schema)],
            "boolean" => vec![("1", schema), ("\"true\"", schema)],
            _ => vec![("\"2024-01-01\"", invalid), ("0", schema)],
        };
        let (v, k) = options[seed as usize % options.len()];
        (v.to_string(), k)
    }
}

/// A payload of `fields` with `values` (nested fields inside their objects; `None` leaves one out).
fn payload(fields: &[GenField], values: &[Option<String>]) -> String {
    let mut top: Vec<String> = Vec::new();
    let mut groups: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for (i, (f, v)) in fields.iter().zip(values).enumerate() {
        let Some(v) = v else { continue };
        let member = format!("\"f{i}\": {v}");
        match f.nested {
            true => groups[i % 2].push(member),
            false => top.push(member),
        }
    }
    for (g, members) in groups.iter().enumerate() {
        if fields
            .iter()
            .enumerate()
            .any(|(i, f)| f.nested && i % 2 == g)
        {
            top.push(format!("\"g{g}\": {{{}}}", members.join(", ")));
        }
    }
    format!("{{{}}}", top.join(", "))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Generated declarations: a payload of values each field takes is decoded with every value
    /// where it belongs; one value made bad, left out or joined by an undeclared member is a dead
    /// letter naming that field; the other payloads of the batch are kept.
    #[test]
    fn generated_declarations_keep_the_decoders_invariants(
        fields in proptest::collection::vec(gen_field(), 1..7),
        seeds in proptest::collection::vec(any::<u32>(), 7),
        broken in 0usize..7,
        how in 0u8..3,
    ) {
        let broken = broken % fields.len();
        let mut decl = String::from("id = \"id\"\ntime = { field = \"at\", format = \"epoch_seconds\" }\nfields = [\n");
        decl.push_str("{ name = \"id\", type = \"string\" },\n{ name = \"at\", type = \"integer\" },\n");
        for (i, f) in fields.iter().enumerate() {
            decl.push_str(&f.declaration(i));
            decl.push_str(",\n");
        }
        decl.push(']');
        let decoder = DeclaredJsonDecoder::new(declared(&decl), 1 << 16);
        let good: Vec<Option<String>> = fields.iter().zip(&seeds).map(|(f, s)| Some(f.good(*s))).collect();
        let with_keys = |body: String| match body.as_str() {
            "{}" => "{\"id\": \"e\", \"at\": 1700000000}".to_string(),
            _ => format!("{{\"id\": \"e\", \"at\": 1700000000, {}", &body[1..]),
        };
        let valid = with_keys(payload(&fields, &good));
        let mut bad_values = good.clone();
        let (bad, want_kind, want_reason) = match how {
            0 => {
                let (v, k) = fields[broken].bad(seeds[broken]);
                bad_values[broken] = Some(v);
                (with_keys(payload(&fields, &bad_values)), Some(k), format!("field {}:", fields[broken].name(broken)))
            }
            1 => {
                bad_values[broken] = None;
                let refused = (!fields[broken].nullable).then_some(RejectKind::Schema);
                (with_keys(payload(&fields, &bad_values)), refused, format!("missing field {}", fields[broken].name(broken)))
            }
            _ => {
                let body = payload(&fields, &good);
                let body = match body.as_str() {
                    "{}" => "}".to_string(),
                    b => format!(", {}", &b[1..]),
                };
                (format!("{{\"id\": \"e\", \"at\": 1700000000, \"zz\": [1]{body}"), Some(RejectKind::Schema), "unknown field zz".to_string())
            }
        };
        let out = decode(&decoder, &[&valid, &bad, &valid]);
        match want_kind {
            Some(kind) => {
                prop_assert_eq!(&out.accepted, &vec![0, 2], "{}\n{:?}", bad, out.rejected);
                prop_assert_eq!(out.rejected[0].kind, kind, "{}", bad);
                prop_assert!(out.rejected[0].reason.starts_with(&want_reason), "{} / {}", out.rejected[0].reason, want_reason);
            }
            None => prop_assert_eq!(&out.accepted, &vec![0, 1, 2], "{:?}", out.rejected),
        }
        // Every value of the valid payload is decoded where it belongs.
        let b = &out.batch;
        for (i, f) in fields.iter().enumerate() {
            let column = b.column_by_name(&f.name(i)).expect("a column per field");
            prop_assert!(column.is_valid(0), "field {} decoded", f.name(i));
            let expected = good[i].as_deref().unwrap_or("null");
            let got = match f.kind {
                "string" => serde_json::to_string(column.as_string::<i32>().value(0)).expect("json"),
                "integer" => column.as_any().downcast_ref::<Int64Array>().expect("ints").value(0).to_string(),
                "float" => column.as_any().downcast_ref::<Float64Array>().expect("floats").value(0).to_string(),
                "boolean" => column.as_any().downcast_ref::<BooleanArray>().expect("bools").value(0).to_string(),
                _ => column.as_any().downcast_ref::<TimestampNanosecondArray>().expect("times").value(0).to_string(),
            };
            let want = match f.kind {
                "string" => serde_json::to_string(&serde_json::from_str::<String>(expected).expect("text")).expect("json"),
                "integer" => (serde_json::from_str::<f64>(expected).expect("number") as i64).to_string(),
                "float" => serde_json::from_str::<f64>(expected).expect("number").to_string(),
                "boolean" => expected.to_string(),
                _ => chrono::DateTime::parse_from_rfc3339(&serde_json::from_str::<String>(expected).expect("text")).expect("time").timestamp_nanos_opt().expect("ns").to_string(),
            };
            if f.kind == "integer" && expected.len() > 15 {
                // Beyond f64's exact integers: compare the text.
                prop_assert_eq!(got, expected.to_string());
            } else {
                prop_assert_eq!(got, want, "field {}", f.name(i));
            }
        }
    }
}
