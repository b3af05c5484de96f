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

#[test]
fn serde_payloads_match_their_json_schemas() {
    let time = "2018-04-01T00:02:10Z".to_string();
    check(
        "transaction.schema.json",
        &Transaction {
            transaction_id: 1,
            tx_datetime: time.clone(),
            customer_id: 596,
            terminal_id: 3156,
            tx_amount: 57.16,
        },
    );
    check(
        "fraud_label.schema.json",
        &FraudLabel {
            transaction_id: 1,
            customer_id: 596,
            terminal_id: 3156,
            tx_datetime: time.clone(),
            label_time: "2018-04-08T00:02:10Z".into(),
            tx_fraud: 1,
        },
    );
    check(
        "score.schema.json",
        &Score {
            transaction_id: 1,
            customer_id: 596,
            tx_datetime: time.clone(),
            score: 0.93,
            alert: true,
            model: "fraud_gbm".into(),
        },
    );
    check(
        "alert.schema.json",
        &Alert {
            transaction_id: 1,
            customer_id: 596,
            terminal_id: 3156,
            tx_datetime: time,
            tx_amount: 57.16,
            score: 0.93,
            threshold: 0.5,
            model: "fraud_gbm".into(),
            reasons: vec![Reason {
                feature: "TERMINAL_ID_RISK_7DAY_WINDOW".into(),
                value: 0.4,
                text: None,
                contribution: 0.21,
            }],
        },
    );
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

#[test]
fn market_payloads_match_their_json_schemas() {
    let time = "1999-01-05T00:00:00Z".to_string();
    check(
        "market_tick.schema.json",
        &MarketTick {
            instrument: "^IXIC".into(),
            time: time.clone(),
            price: 2251.27,
            size: Some(948_350_000.0),
        },
    );
    check(
        "position.schema.json",
        &Position {
            portfolio: "growth".into(),
            instrument: "^IXIC".into(),
            time: time.clone(),
            quantity: -10.0,
        },
    );
    check(
        "risk_score.schema.json",
        &RiskScore {
            instrument: Some("^IXIC".into()),
            portfolio: None,
            time: time.clone(),
            var: 0.031,
            confidence: 0.99,
            volatility: 0.013,
            model: "var_quantile.onnx".into(),
        },
    );
    check(
        "limit_breach.schema.json",
        &LimitBreach {
            portfolio: "growth".into(),
            time,
            var: 125_000.0,
            limit: 100_000.0,
            confidence: 0.99,
            model: "var_quantile.onnx".into(),
        },
    );
}

/// Every event's Arrow schema (what decoders produce and encoders read) has exactly the JSON
/// Schema's properties, in the same order as the serde type, required exactly when not nullable.
#[test]
fn arrow_schemas_match_their_json_schemas() {
    use riskpipe_schemas::{
        alert_schema, fraud_label_schema, limit_breach_schema, market_tick_schema, position_schema,
        risk_score_schema, score_schema, transaction_schema,
    };
    for (file, schema) in [
        ("transaction.schema.json", transaction_schema()),
        ("fraud_label.schema.json", fraud_label_schema()),
        ("score.schema.json", score_schema()),
        ("alert.schema.json", alert_schema()),
        ("market_tick.schema.json", market_tick_schema()),
        ("position.schema.json", position_schema()),
        ("risk_score.schema.json", risk_score_schema()),
        ("limit_breach.schema.json", limit_breach_schema()),
    ] {
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
