//! Event schemas of riskpipe: one Arrow schema and one serde type per topic payload.
//!
//! Sources decode payloads (Kafka JSON, Parquet, CSV) into Arrow `RecordBatch`es with the
//! schemas defined here; operators append feature columns; the scoring stage appends the score;
//! sinks turn score rows back into [`Score`] and [`Alert`] payloads. The JSON Schema files under
//! `schemas/json/` document the same payloads for users and are checked against these types in
//! tests. Column names follow the Fraud Detection Handbook so that its feature names carry over.
//!
//! The Avro schemas under `schemas/avro/` are [`avro::schema`] of the Arrow schemas, written out
//! and checked equal in tests (times are Avro `timestamp-micros`, optional fields a union with
//! `null` defaulting to `null`).
//!
//! [`Fault`] is the shared vocabulary each crate's error type uses to say whose fault an error is,
//! which in turn decides dead-letter (bad input), retry (outside system) or stop (bug).

pub mod declared;
pub mod record_schema;

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

/// Whose fault an error is; decides what the pipeline does with the input that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The input is malformed: dead-letter it with the reason and keep going.
    BadInput,
    /// An outside system (broker, file system, runtime library) failed after its client's own
    /// retries (librdkafka retries produce and fetch until `delivery.timeout.ms`): stop without
    /// committing the input, so a restart resumes from the last committed offsets.
    External,
    /// riskpipe itself is wrong (or misconfigured): stop rather than emit wrong scores.
    Bug,
}

/// The largest magnitude an event's number may have: 10¹⁵. Within it every window sum, mean and
/// variance riskpipe computes stays finite in f64, and every model input stays finite in f32
/// (a sum of up to 3·10²³ such values fits), whatever a schema declares; a larger or non-finite
/// value is refused before it reaches any state ([`out_of_range`]). Exact as a JSON number, so
/// a JSON Schema `maximum` of it and the decoders agree on every payload.
pub const VALUE_LIMIT: f64 = 1e15;

/// Why a number an event carries cannot be taken (`None`: it can): non-finite, or beyond
/// ±[`VALUE_LIMIT`]. The same words for every way in (decoders, files, replays).
pub fn out_of_range(v: f64) -> Option<&'static str> {
    if v.is_nan() || v.is_infinite() {
        Some("not a finite number")
    } else if v.abs() > VALUE_LIMIT {
        Some("beyond ±1e15, the range in which window sums, means and model inputs stay finite")
    } else {
        None
    }
}

/// The published Avro schemas, made from the Arrow schemas.
pub mod avro {
    use arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
    use serde_json::{Value, json};

    /// Namespace of every riskpipe Avro record.
    pub const NAMESPACE: &str = "riskpipe";

    /// Arrow schema metadata naming the Avro record of an output whose shape is declared
    /// (a published event's schema is found by its fields instead).
    pub const RECORD_NAME: &str = "riskpipe.avro.record";

    /// Every published event: (file stem, Avro record name, Arrow schema).
    pub fn events() -> Vec<(&'static str, &'static str, SchemaRef)> {
        vec![
            ("transaction", "Transaction", super::transaction_schema()),
            ("fraud_label", "FraudLabel", super::fraud_label_schema()),
            ("score", "Score", super::score_schema()),
            ("alert", "Alert", super::alert_schema()),
            ("market_tick", "MarketTick", super::market_tick_schema()),
            ("position", "Position", super::position_schema()),
            ("risk_score", "RiskScore", super::risk_score_schema()),
            ("limit_breach", "LimitBreach", super::limit_breach_schema()),
        ]
    }

    /// The Avro record schema named `name` of an Arrow schema, or the Arrow type it cannot
    /// express.
    pub fn schema(name: &str, arrow: &SchemaRef) -> Result<Value, String> {
        record(name, arrow.fields().iter().map(|f| f.as_ref()))
    }

    fn record<'a>(name: &str, fields: impl Iterator<Item = &'a Field>) -> Result<Value, String> {
        let fields = fields
            .map(|f| {
                let t = of_type(f)?;
                Ok(if f.is_nullable() {
                    json!({"name": f.name(), "type": ["null", t], "default": null})
                } else {
                    json!({"name": f.name(), "type": t})
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(json!({"type": "record", "name": name, "namespace": NAMESPACE, "fields": fields}))
    }

    /// A record name for a nested field (`REASONS` items become `Reason`).
    fn item_name(field: &str) -> String {
        let singular = field.strip_suffix('S').unwrap_or(field).to_lowercase();
        let mut name = String::new();
        let mut upper = true;
        for c in singular.chars() {
            if c == '_' {
                upper = true;
            } else if upper {
                name.extend(c.to_uppercase());
                upper = false;
            } else {
                name.push(c);
            }
        }
        name
    }

    fn of_type(f: &Field) -> Result<Value, String> {
        Ok(match f.data_type() {
            DataType::Int64 => json!("long"),
            DataType::Float64 => json!("double"),
            DataType::Boolean => json!("boolean"),
            DataType::Utf8 => json!("string"),
            // Avro's portable time type; whole microseconds (handbook times are whole seconds).
            DataType::Timestamp(TimeUnit::Nanosecond, Some(tz)) if tz.as_ref() == "UTC" => {
                json!({"type": "long", "logicalType": "timestamp-micros"})
            }
            DataType::List(item) => match item.data_type() {
                DataType::Struct(fields) => json!({
                    "type": "array",
                    "items": record(&item_name(f.name()), fields.iter().map(|f| f.as_ref()))?,
                }),
                other => return Err(format!("{}: list of {other} has no Avro form", f.name())),
            },
            other => return Err(format!("{}: {other} has no Avro form", f.name())),
        })
    }
}

/// Strict JSON readers for payload fields, matching the JSON Schemas' types exactly.
pub mod json {
    use serde::de::{Deserializer, Error, Visitor};

    /// A JSON Schema `integer`: an integer, or a number with no fraction (`5.0` is the integer 5,
    /// as JSON Schema says); never a string, never `1.5`.
    pub fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        struct Integer;
        impl Visitor<'_> for Integer {
            type Value = i64;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: Error>(self, v: i64) -> Result<i64, E> {
                Ok(v)
            }
            fn visit_u64<E: Error>(self, v: u64) -> Result<i64, E> {
                i64::try_from(v).map_err(|_| E::custom("integer out of range"))
            }
            fn visit_f64<E: Error>(self, v: f64) -> Result<i64, E> {
                integral(v).ok_or_else(|| E::custom("not an integer"))
            }
        }
        d.deserialize_any(Integer)
    }

    /// A JSON number as a JSON Schema `integer`: one with no fraction, within i64.
    pub fn integral(v: f64) -> Option<i64> {
        // 2^63 is the first f64 above i64::MAX.
        (v.fract() == 0.0
            && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&v))
        .then_some(v as i64)
    }

    /// An optional JSON Schema `number`: absent is `None`, `null` is refused (the schema says
    /// number, not null).
    pub fn present_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        <f64 as serde::Deserialize>::deserialize(d).map(Some)
    }
}

/// Transaction columns.
pub mod tx {
    /// Unique transaction id, increasing with time; breaks ties between equal event times.
    pub const TRANSACTION_ID: &str = "TRANSACTION_ID";
    /// Event time (UTC).
    pub const TX_DATETIME: &str = "TX_DATETIME";
    /// Card / customer id.
    pub const CUSTOMER_ID: &str = "CUSTOMER_ID";
    /// Merchant terminal id.
    pub const TERMINAL_ID: &str = "TERMINAL_ID";
    /// Amount.
    pub const TX_AMOUNT: &str = "TX_AMOUNT";
}

/// Fraud-label columns beyond the transaction's own.
pub mod label {
    /// When the label became known to the pipeline (UTC).
    pub const LABEL_TIME: &str = "LABEL_TIME";
    /// 1 for fraud, 0 for genuine.
    pub const TX_FRAUD: &str = "TX_FRAUD";
}

/// Columns of riskpipe's own repartition topics (scale-out), never published outside.
pub mod repartition {
    /// The input partition a forwarded row was read from by the stage before the repartition:
    /// the stage after it keeps its watermark per such partition.
    pub const ORIGIN_PARTITION: &str = "RISKPIPE_ORIGIN_PARTITION";
}

/// Score columns appended by the pipeline, and the other columns of the output events.
pub mod score {
    /// Model score in [0, 1].
    pub const SCORE: &str = "SCORE";
    /// Whether the score reached the alert threshold.
    pub const ALERT: &str = "ALERT";
    /// The challenger model's score of the same row (scored batches, with `[challenger]`).
    pub const CHALLENGER_SCORE: &str = "CHALLENGER_SCORE";
    /// An ensemble member's score of the row (scored batches of an ensemble): `SCORE_1` for the
    /// first `[[model]]`, and so on.
    pub fn member(index: usize) -> String {
        format!("SCORE_{}", index + 1)
    }
    /// Which model produced a score.
    pub const MODEL: &str = "MODEL";
    /// The threshold an alert's score reached.
    pub const THRESHOLD: &str = "THRESHOLD";
    /// An alert's top contributing features.
    pub const REASONS: &str = "REASONS";
    /// A reason's feature name.
    pub const REASON_FEATURE: &str = "feature";
    /// A reason's feature value.
    pub const REASON_VALUE: &str = "value";
    /// A reason's text value (a text input's).
    pub const REASON_TEXT: &str = "text";
    /// A reason's contribution to the score.
    pub const REASON_CONTRIBUTION: &str = "contribution";
    /// A decision's outcome (`[decisions]`: one of the declared outcomes).
    pub const DECISION: &str = "DECISION";
    /// A decision's matching rules, shadow rules too: `{rule, outcome, shadow}` each.
    pub const RULES: &str = "RULES";
    /// The version of the rules that decided (a content hash).
    pub const RULES_VERSION: &str = "RULES_VERSION";
    /// A matching rule's name.
    pub const RULE_NAME: &str = "rule";
    /// A matching rule's outcome.
    pub const RULE_OUTCOME: &str = "outcome";
    /// Whether a matching rule is a shadow rule (reported, never deciding).
    pub const RULE_SHADOW: &str = "shadow";
    /// The training-set export's label: 1 fraud, 0 genuine.
    pub const LABEL: &str = "LABEL";
    /// The training-set export's time the label is known from (a chargeback's arrival).
    pub const LABEL_KNOWN_AT: &str = "LABEL_KNOWN_AT";
}

fn utc_ns() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

/// Arrow type of every event-time column.
pub fn event_time_type() -> DataType {
    utc_ns()
}

/// The transaction event as Arrow columns.
pub fn transaction_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(tx::TRANSACTION_ID, DataType::Int64, false),
        Field::new(tx::TX_DATETIME, utc_ns(), false),
        Field::new(tx::CUSTOMER_ID, DataType::Int64, false),
        Field::new(tx::TERMINAL_ID, DataType::Int64, false),
        Field::new(tx::TX_AMOUNT, DataType::Float64, false),
    ]))
}

/// The fraud-label event as Arrow columns: the labelled transaction's keys and time, when the
/// label became known, and the label.
pub fn fraud_label_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(tx::TRANSACTION_ID, DataType::Int64, false),
        Field::new(tx::CUSTOMER_ID, DataType::Int64, false),
        Field::new(tx::TERMINAL_ID, DataType::Int64, false),
        Field::new(tx::TX_DATETIME, utc_ns(), false),
        Field::new(label::LABEL_TIME, utc_ns(), false),
        Field::new(label::TX_FRAUD, DataType::Int64, false),
    ]))
}

/// The score event (one per transaction) as Arrow columns, in [`Score`]'s field order.
pub fn score_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(tx::TRANSACTION_ID, DataType::Int64, false),
        Field::new(tx::CUSTOMER_ID, DataType::Int64, false),
        Field::new(tx::TX_DATETIME, utc_ns(), false),
        Field::new(score::SCORE, DataType::Float64, false),
        Field::new(score::ALERT, DataType::Boolean, false),
        Field::new(score::MODEL, DataType::Utf8, false),
    ]))
}

/// One alert reason as an Arrow struct (see [`Reason`]).
pub fn reason_fields() -> arrow::datatypes::Fields {
    arrow::datatypes::Fields::from(vec![
        Field::new(score::REASON_FEATURE, DataType::Utf8, false),
        Field::new(score::REASON_VALUE, DataType::Float64, false),
        Field::new(score::REASON_CONTRIBUTION, DataType::Float64, false),
    ])
}

/// The fields of one matching rule of a decision.
pub fn rule_fields() -> arrow::datatypes::Fields {
    arrow::datatypes::Fields::from(vec![
        Field::new(score::RULE_NAME, DataType::Utf8, false),
        Field::new(score::RULE_OUTCOME, DataType::Utf8, false),
        Field::new(score::RULE_SHADOW, DataType::Boolean, false),
    ])
}

/// The reason fields of a model that reads text: `value` is null for a text input, whose
/// value is in `text` (null for a number).
pub fn reason_fields_with_text() -> arrow::datatypes::Fields {
    arrow::datatypes::Fields::from(vec![
        Field::new(score::REASON_FEATURE, DataType::Utf8, false),
        Field::new(score::REASON_VALUE, DataType::Float64, true),
        Field::new(score::REASON_TEXT, DataType::Utf8, true),
        Field::new(score::REASON_CONTRIBUTION, DataType::Float64, false),
    ])
}

/// The alert event as Arrow columns, in [`Alert`]'s field order.
pub fn alert_schema() -> SchemaRef {
    let reason = Field::new_struct("item", reason_fields(), false);
    Arc::new(Schema::new(vec![
        Field::new(tx::TRANSACTION_ID, DataType::Int64, false),
        Field::new(tx::CUSTOMER_ID, DataType::Int64, false),
        Field::new(tx::TERMINAL_ID, DataType::Int64, false),
        Field::new(tx::TX_DATETIME, utc_ns(), false),
        Field::new(tx::TX_AMOUNT, DataType::Float64, false),
        Field::new(score::SCORE, DataType::Float64, false),
        Field::new(score::THRESHOLD, DataType::Float64, false),
        Field::new(score::MODEL, DataType::Utf8, false),
        Field::new_list(score::REASONS, reason, false),
    ]))
}

/// A card transaction (topic payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transaction {
    /// Unique id, increasing with time.
    #[serde(rename = "TRANSACTION_ID", deserialize_with = "json::integer")]
    pub transaction_id: i64,
    /// Event time, RFC 3339 in UTC.
    #[serde(rename = "TX_DATETIME")]
    pub tx_datetime: String,
    /// Card / customer id.
    #[serde(rename = "CUSTOMER_ID", deserialize_with = "json::integer")]
    pub customer_id: i64,
    /// Merchant terminal id.
    #[serde(rename = "TERMINAL_ID", deserialize_with = "json::integer")]
    pub terminal_id: i64,
    /// Amount.
    #[serde(rename = "TX_AMOUNT")]
    pub tx_amount: f64,
}

/// A fraud label that became known after the transaction (topic payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FraudLabel {
    /// The labelled transaction.
    #[serde(rename = "TRANSACTION_ID", deserialize_with = "json::integer")]
    pub transaction_id: i64,
    /// Its customer.
    #[serde(rename = "CUSTOMER_ID", deserialize_with = "json::integer")]
    pub customer_id: i64,
    /// Its terminal.
    #[serde(rename = "TERMINAL_ID", deserialize_with = "json::integer")]
    pub terminal_id: i64,
    /// Its event time, RFC 3339 in UTC.
    #[serde(rename = "TX_DATETIME")]
    pub tx_datetime: String,
    /// When the label became known, RFC 3339 in UTC.
    #[serde(rename = "LABEL_TIME")]
    pub label_time: String,
    /// 1 for fraud, 0 for genuine.
    #[serde(rename = "TX_FRAUD", deserialize_with = "json::integer")]
    pub tx_fraud: i64,
}

/// One score per transaction (topic payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Score {
    /// The scored transaction.
    #[serde(rename = "TRANSACTION_ID", deserialize_with = "json::integer")]
    pub transaction_id: i64,
    /// Its customer (the message key).
    #[serde(rename = "CUSTOMER_ID", deserialize_with = "json::integer")]
    pub customer_id: i64,
    /// Its event time, RFC 3339 in UTC.
    #[serde(rename = "TX_DATETIME")]
    pub tx_datetime: String,
    /// Fraud probability in [0, 1].
    #[serde(rename = "SCORE")]
    pub score: f64,
    /// Whether the score reached the alert threshold.
    #[serde(rename = "ALERT")]
    pub alert: bool,
    /// Which model produced it.
    #[serde(rename = "MODEL")]
    pub model: String,
}

/// A feature that pushed a score up, reported with an alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    /// Feature column name.
    pub feature: String,
    /// Its value for this transaction (not a number, and absent from the record, for a text
    /// input).
    #[serde(default = "not_a_number")]
    pub value: f64,
    /// A text input's value (a category), absent for a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// How much the score drops when this feature alone is set to its running mean (a text
    /// input: its most frequent value); occlusion attribution, positive = the feature pushed
    /// the score up.
    pub contribution: f64,
}

fn not_a_number() -> f64 {
    f64::NAN
}

/// A real-time fraud alert: a transaction whose score reached the threshold (topic payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    /// The alerted transaction.
    #[serde(rename = "TRANSACTION_ID", deserialize_with = "json::integer")]
    pub transaction_id: i64,
    /// Its customer.
    #[serde(rename = "CUSTOMER_ID", deserialize_with = "json::integer")]
    pub customer_id: i64,
    /// Its terminal.
    #[serde(rename = "TERMINAL_ID", deserialize_with = "json::integer")]
    pub terminal_id: i64,
    /// Its event time, RFC 3339 in UTC.
    #[serde(rename = "TX_DATETIME")]
    pub tx_datetime: String,
    /// Its amount.
    #[serde(rename = "TX_AMOUNT")]
    pub tx_amount: f64,
    /// The score.
    #[serde(rename = "SCORE")]
    pub score: f64,
    /// The threshold it reached.
    #[serde(rename = "THRESHOLD")]
    pub threshold: f64,
    /// Which model produced it.
    #[serde(rename = "MODEL")]
    pub model: String,
    /// Top contributing features.
    #[serde(rename = "REASONS")]
    pub reasons: Vec<Reason>,
}

/// Market columns (ticks / daily bars and positions).
pub mod market {
    /// Instrument id (ticker).
    pub const INSTRUMENT: &str = "INSTRUMENT";
    /// Event time (UTC).
    pub const TIME: &str = "TIME";
    /// Price (for daily bars: the adjusted close).
    pub const PRICE: &str = "PRICE";
    /// Traded size, when known.
    pub const SIZE: &str = "SIZE";
    /// Portfolio id.
    pub const PORTFOLIO: &str = "PORTFOLIO";
    /// Position quantity (units of the instrument; negative = short).
    pub const QUANTITY: &str = "QUANTITY";
    /// Predicted VaR.
    pub const VAR: &str = "VAR";
    /// Confidence level of a VaR.
    pub const CONFIDENCE: &str = "CONFIDENCE";
    /// Volatility estimate (daily return standard deviation).
    pub const VOLATILITY: &str = "VOLATILITY";
    /// A portfolio's VaR limit.
    pub const LIMIT: &str = "LIMIT";
}

/// The market-risk score event as Arrow columns, in [`RiskScore`]'s field order (exactly one of
/// instrument and portfolio is set).
pub fn risk_score_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(market::INSTRUMENT, DataType::Utf8, true),
        Field::new(market::PORTFOLIO, DataType::Utf8, true),
        Field::new(market::TIME, utc_ns(), false),
        Field::new(market::VAR, DataType::Float64, false),
        Field::new(market::CONFIDENCE, DataType::Float64, false),
        Field::new(market::VOLATILITY, DataType::Float64, false),
        Field::new(score::MODEL, DataType::Utf8, false),
    ]))
}

/// The limit-breach event as Arrow columns, in [`LimitBreach`]'s field order.
pub fn limit_breach_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(market::PORTFOLIO, DataType::Utf8, false),
        Field::new(market::TIME, utc_ns(), false),
        Field::new(market::VAR, DataType::Float64, false),
        Field::new(market::LIMIT, DataType::Float64, false),
        Field::new(market::CONFIDENCE, DataType::Float64, false),
        Field::new(score::MODEL, DataType::Utf8, false),
    ]))
}

/// A market tick or bar as Arrow columns.
pub fn market_tick_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(market::INSTRUMENT, DataType::Utf8, false),
        Field::new(market::TIME, utc_ns(), false),
        Field::new(market::PRICE, DataType::Float64, false),
        Field::new(market::SIZE, DataType::Float64, true),
    ]))
}

/// A position as Arrow columns.
pub fn position_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(market::PORTFOLIO, DataType::Utf8, false),
        Field::new(market::INSTRUMENT, DataType::Utf8, false),
        Field::new(market::TIME, utc_ns(), false),
        Field::new(market::QUANTITY, DataType::Float64, false),
    ]))
}

/// A price observation of one instrument (topic payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketTick {
    /// Instrument id.
    #[serde(rename = "INSTRUMENT")]
    pub instrument: String,
    /// Event time, RFC 3339 in UTC.
    #[serde(rename = "TIME")]
    pub time: String,
    /// Price (positive).
    #[serde(rename = "PRICE")]
    pub price: f64,
    /// Traded size, when known.
    #[serde(
        rename = "SIZE",
        default,
        deserialize_with = "json::present_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub size: Option<f64>,
}

/// A portfolio's holding of one instrument from `time` on (topic payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    /// Portfolio id.
    #[serde(rename = "PORTFOLIO")]
    pub portfolio: String,
    /// Instrument id.
    #[serde(rename = "INSTRUMENT")]
    pub instrument: String,
    /// Effective from, RFC 3339 in UTC.
    #[serde(rename = "TIME")]
    pub time: String,
    /// Units held (negative = short).
    #[serde(rename = "QUANTITY")]
    pub quantity: f64,
}

/// A market-risk score: predicted 1-day VaR of an instrument or portfolio (topic payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskScore {
    /// Instrument id, for an instrument's score.
    #[serde(
        rename = "INSTRUMENT",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub instrument: Option<String>,
    /// Portfolio id, for a portfolio's score.
    #[serde(rename = "PORTFOLIO", default, skip_serializing_if = "Option::is_none")]
    pub portfolio: Option<String>,
    /// Time of the last price used, RFC 3339 in UTC.
    #[serde(rename = "TIME")]
    pub time: String,
    /// Predicted next-day VaR as a positive loss fraction (0.03 = 3% of value), or in currency
    /// for a portfolio.
    #[serde(rename = "VAR")]
    pub var: f64,
    /// Its confidence level (e.g. 0.99).
    #[serde(rename = "CONFIDENCE")]
    pub confidence: f64,
    /// Volatility estimate (daily, as a return standard deviation).
    #[serde(rename = "VOLATILITY")]
    pub volatility: f64,
    /// Which model produced it.
    #[serde(rename = "MODEL")]
    pub model: String,
}

/// A portfolio whose VaR exceeds its configured limit (topic payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitBreach {
    /// Portfolio id.
    #[serde(rename = "PORTFOLIO")]
    pub portfolio: String,
    /// Time of the score, RFC 3339 in UTC.
    #[serde(rename = "TIME")]
    pub time: String,
    /// The portfolio's VaR.
    #[serde(rename = "VAR")]
    pub var: f64,
    /// Its limit.
    #[serde(rename = "LIMIT")]
    pub limit: f64,
    /// Confidence of the VaR.
    #[serde(rename = "CONFIDENCE")]
    pub confidence: f64,
    /// Which model produced it.
    #[serde(rename = "MODEL")]
    pub model: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_have_unique_columns() {
        for schema in [
            transaction_schema(),
            fraud_label_schema(),
            market_tick_schema(),
            position_schema(),
            score_schema(),
            alert_schema(),
            risk_score_schema(),
            limit_breach_schema(),
        ] {
            let mut names: Vec<_> = schema.fields().iter().map(|f| f.name().clone()).collect();
            let n = names.len();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), n);
        }
    }
}
