//! The JSON Schema files under `schemas/json/` describe exactly what the serde types write.

use riskpipe_schemas::{
    Alert, FraudLabel, LimitBreach, MarketTick, Position, Reason, RiskScore, Score, Transaction,
};
use serde::Serialize;

fn check<T: Serialize>(file: &str, value: &T) {
    let path = format!("{}/json/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("read schema");
    let schema: serde_json::Value = serde_json::from_str(&text).expect("parse schema");
    let validator = jsonschema::validator_for(&schema).expect("valid JSON Schema");
    let instance = serde_json::to_value(value).expect("serialize");
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{file}: {errors:?}");
    // A payload with an unknown field is rejected by the schema as by serde.
    let mut extra = instance.clone();
    extra["SURPRISE"] = serde_json::json!(1);
    assert!(!validator.is_valid(&extra), "{file} accepts unknown fields");
}

/// One example record per published schema: the reference page shows them, and each must pass
/// its JSON Schema (and nothing with an unknown member may).
fn examples() -> Vec<(&'static str, serde_json::Value, String)> {
    fn ex<T: Serialize>(
        file: &'static str,
        value: &T,
    ) -> (&'static str, serde_json::Value, String) {
        (
            file,
            serde_json::to_value(value).expect("serialize"),
            // As on the wire: members in the record's order.
            serde_json::to_string(value).expect("serialize"),
        )
    }
    let time = "2018-04-01T00:02:10Z".to_string();
    let market_time = "1999-01-05T00:00:00Z".to_string();
    vec![
        ex(
            "transaction.schema.json",
            &Transaction {
                transaction_id: 1,
                tx_datetime: time.clone(),
                customer_id: 596,
                terminal_id: 3156,
                tx_amount: 57.16,
            },
        ),
        ex(
            "fraud_label.schema.json",
            &FraudLabel {
                transaction_id: 1,
                customer_id: 596,
                terminal_id: 3156,
                tx_datetime: time.clone(),
                label_time: "2018-04-08T00:02:10Z".into(),
                tx_fraud: 1,
            },
        ),
        ex(
            "score.schema.json",
            &Score {
                transaction_id: 1,
                customer_id: 596,
                tx_datetime: time.clone(),
                score: 0.93,
                alert: true,
                model: "fraud_blend.onnx@35f34cff85ed".into(),
            },
        ),
        ex(
            "alert.schema.json",
            &Alert {
                transaction_id: 1,
                customer_id: 596,
                terminal_id: 3156,
                tx_datetime: time,
                tx_amount: 57.16,
                score: 0.93,
                threshold: 0.35,
                model: "fraud_blend.onnx@35f34cff85ed".into(),
                reasons: vec![Reason {
                    feature: "TERMINAL_ID_RISK_7DAY_WINDOW".into(),
                    value: 0.4,
                    text: None,
                    contribution: 0.21,
                }],
            },
        ),
        ex(
            "market_tick.schema.json",
            &MarketTick {
                instrument: "^IXIC".into(),
                time: market_time.clone(),
                price: 2251.27,
                size: Some(948_350_000.0),
            },
        ),
        ex(
            "position.schema.json",
            &Position {
                portfolio: "growth".into(),
                instrument: "^IXIC".into(),
                time: market_time.clone(),
                quantity: -10.0,
            },
        ),
        ex(
            "risk_score.schema.json",
            &RiskScore {
                instrument: Some("^IXIC".into()),
                portfolio: None,
                time: market_time.clone(),
                var: 0.031,
                confidence: 0.99,
                volatility: 0.013,
                model: "var_quantile.onnx".into(),
            },
        ),
        ex(
            "limit_breach.schema.json",
            &LimitBreach {
                portfolio: "growth".into(),
                time: market_time,
                var: 125_000.0,
                limit: 100_000.0,
                confidence: 0.99,
                model: "var_quantile.onnx".into(),
            },
        ),
    ]
}

#[test]
fn example_payloads_match_their_json_schemas() {
    for (file, value, _) in examples() {
        check(file, &value);
    }
}

#[test]
fn serde_rejects_malformed_payloads_with_a_reason() {
    let err = serde_json::from_str::<Transaction>(r#"{"TRANSACTION_ID": "x"}"#).expect_err("bad");
    assert!(err.to_string().contains("invalid type"), "{err}");
    let err = serde_json::from_str::<Transaction>(
        r#"{"TRANSACTION_ID": 1, "TX_DATETIME": "t", "CUSTOMER_ID": 1, "TERMINAL_ID": 1}"#,
    )
    .expect_err("missing");
    assert!(
        err.to_string().contains("missing field `TX_AMOUNT`"),
        "{err}"
    );
}

/// The Arrow schema of a published JSON Schema file.
fn arrow_schema(file: &str) -> arrow::datatypes::SchemaRef {
    use riskpipe_schemas::{
        alert_schema, fraud_label_schema, limit_breach_schema, market_tick_schema, position_schema,
        risk_score_schema, score_schema, transaction_schema,
    };
    match file {
        "transaction.schema.json" => transaction_schema(),
        "fraud_label.schema.json" => fraud_label_schema(),
        "score.schema.json" => score_schema(),
        "alert.schema.json" => alert_schema(),
        "market_tick.schema.json" => market_tick_schema(),
        "position.schema.json" => position_schema(),
        "risk_score.schema.json" => risk_score_schema(),
        "limit_breach.schema.json" => limit_breach_schema(),
        other => panic!("{other}: no Arrow schema named"),
    }
}

/// Every event's Arrow schema (what decoders produce and encoders read) has exactly the JSON
/// Schema's properties, in the same order as the serde type, required exactly when not nullable.
#[test]
fn arrow_schemas_match_their_json_schemas() {
    for (file, _, _) in examples() {
        let schema = arrow_schema(file);
        let path = format!("{}/json/{file}", env!("CARGO_MANIFEST_DIR"));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("parse");
        let properties: Vec<&String> = json["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .collect();
        let mut columns: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
        let mut sorted = properties.clone();
        sorted.sort();
        columns.sort();
        assert_eq!(columns, sorted, "{file}: columns vs properties");
        let required: Vec<&str> = json["required"]
            .as_array()
            .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        for f in schema.fields() {
            assert_eq!(
                required.contains(&f.name().as_str()),
                !f.is_nullable(),
                "{file}: {} required vs nullable",
                f.name()
            );
        }
    }
}

/// A JSON Schema property's type as the reference shows it: its type(s), format, allowed values
/// and bounds (the 64-bit integer range left out: every integer has it).
fn type_text(prop: &serde_json::Value) -> String {
    let mut text = match &prop["type"] {
        serde_json::Value::String(t) => t.clone(),
        serde_json::Value::Array(ts) => ts
            .iter()
            .filter_map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".into(),
    };
    if let Some(format) = prop["format"].as_str() {
        text += &format!(" ({format})");
    }
    if let Some(values) = prop["enum"].as_array() {
        let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        text += &format!(", one of {}", values.join(", "));
    }
    let bound = |key: &str| {
        prop[key]
            .as_f64()
            .filter(|b| b.abs() < 9.2e18)
            .map(|b| b.to_string())
    };
    match (
        bound("minimum"),
        bound("exclusiveMinimum"),
        bound("maximum"),
    ) {
        (Some(lo), _, Some(hi)) => text += &format!(", {lo} to {hi}"),
        (None, Some(lo), Some(hi)) => text += &format!(", over {lo} up to {hi}"),
        (Some(lo), _, None) => text += &format!(", at least {lo}"),
        (None, Some(lo), None) => text += &format!(", over {lo}"),
        (None, None, Some(hi)) => text += &format!(", at most {hi}"),
        (None, None, None) => {}
    }
    text
}

/// docs/reference/schemas.md: every published schema with its fields and an example record
/// that passes it (`example_payloads_match_their_json_schemas`). A schema file without an
/// example fails this test; `RISKPIPE_BLESS=1` rewrites a stale page.
#[test]
fn the_schema_reference_is_current() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let examples = examples();
    let mut files: Vec<String> = std::fs::read_dir(dir.join("json"))
        .expect("schemas/json")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    files.sort();
    let mut shown: Vec<String> = examples.iter().map(|(f, _, _)| f.to_string()).collect();
    shown.sort();
    assert_eq!(
        files, shown,
        "every published JSON Schema needs one example"
    );

    let mut page = String::from(
        "# Published schemas\n\n\
         Generated from `schemas/json/` with one example record each (`cargo test -p \
         riskpipe-schemas --test json_schemas`; a test fails when this page is stale or an example \
         does not pass its schema, and `RISKPIPE_BLESS=1` rewrites it).\n\n\
         These are the records of the shipped configs: the handbook's transactions, labels, \
         scores and alerts, and the market-risk job's ticks, positions, risk scores and limit \
         breaches. Each schema is strict: a member it does not list is refused. The Avro schema \
         of each (`schemas/avro/`) has the same fields with the same names and order \
         (`cargo test -p riskpipe-schemas`). A config that declares its own events publishes \
         scores and alerts shaped by its declaration: `riskpipe schemas --config my.toml --out \
         DIR` writes their JSON and Avro schemas ([your data](../getting-started/your-data.md)). \
         A dead letter carries the original bytes; its headers are in \
         [dead letters](dead-letters.md).\n\n",
    );
    for (file, _, example) in &examples {
        let text = std::fs::read_to_string(dir.join("json").join(file)).expect("read schema");
        let schema: serde_json::Value = serde_json::from_str(&text).expect("parse schema");
        let stem = file.trim_end_matches(".schema.json");
        let avro: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("avro").join(format!("{stem}.avsc")))
                .expect("read avsc"),
        )
        .expect("parse avsc");
        page += &format!(
            "## {}\n\n{}\n\nJSON Schema [`schemas/json/{file}`](../../schemas/json/{file}); Avro \
             [`schemas/avro/{stem}.avsc`](../../schemas/avro/{stem}.avsc) (record `{}`).\n\n\
             | field | type | required | meaning |\n| --- | --- | --- | --- |\n",
            schema["title"].as_str().expect("title"),
            schema["description"].as_str().expect("description"),
            avro["name"].as_str().expect("avro name"),
        );
        let required = |s: &serde_json::Value, name: &str| {
            s["required"]
                .as_array()
                .is_some_and(|r| r.iter().any(|v| v.as_str() == Some(name)))
        };
        // In the record's order (the Arrow schema's, which has the same fields: tested above).
        let properties = schema["properties"].as_object().expect("properties");
        for field in arrow_schema(file).fields() {
            let (name, prop) = (field.name(), &properties[field.name()]);
            page += &format!(
                "| `{name}` | {} | {} | {} |\n",
                type_text(prop),
                if required(&schema, name) { "yes" } else { "no" },
                prop["description"].as_str().unwrap_or("")
            );
            if let Some(members) = prop["items"]["properties"].as_object() {
                for (member, p) in members {
                    page += &format!(
                        "| `{name}[].{member}` | {} | {} | {} |\n",
                        type_text(p),
                        if required(&prop["items"], member) {
                            "yes"
                        } else {
                            "no"
                        },
                        p["description"].as_str().unwrap_or("")
                    );
                }
            }
        }
        page += &format!("\nExample:\n\n```json\n{example}\n```\n\n");
    }
    let path = dir.join("../docs/reference/schemas.md");
    if std::env::var_os("RISKPIPE_BLESS").is_some() {
        std::fs::write(&path, &page).expect("write");
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == page,
        "docs/reference/schemas.md is stale: run RISKPIPE_BLESS=1 cargo test -p riskpipe-schemas --test json_schemas"
    );
}
