//! JSON Schemas of output records generated from their Arrow schemas: what the JSON encoder
//! writes for each column (times as RFC 3339 strings, absent optional fields omitted), so a
//! declared output's schema is published beside its Avro schema ([`crate::avro::schema`]).

use arrow::datatypes::{DataType, Field, Schema};
use serde_json::{Map, Value, json};

/// The JSON Schema (draft 2020-12) of records shaped as `arrow`: an object with exactly these
/// members, the non-nullable ones required. `Err` names a column of a type no record carries.
pub fn json_schema(title: &str, description: &str, arrow: &Schema) -> Result<Value, String> {
    let mut schema = object(arrow.fields().iter().map(|f| f.as_ref()))?;
    let map = schema.as_object_mut().ok_or("a record is an object")?;
    let mut head = Map::new();
    head.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    head.insert("title".into(), json!(title));
    head.insert("description".into(), json!(description));
    head.extend(std::mem::take(map));
    Ok(Value::Object(head))
}

fn object<'a>(fields: impl Iterator<Item = &'a Field>) -> Result<Value, String> {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for f in fields {
        let mut t = member(f.data_type()).map_err(|e| format!("{}: {e}", f.name()))?;
        if f.is_nullable() {
            // Absent when null; a reader may also meet an explicit null.
            let kind = t["type"].clone();
            t["type"] = json!([kind, "null"]);
        } else {
            required.push(json!(f.name()));
        }
        properties.insert(f.name().clone(), t);
    }
    Ok(json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    }))
}

fn member(t: &DataType) -> Result<Value, String> {
    Ok(match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => json!({"type": "string"}),
        DataType::Boolean => json!({"type": "boolean"}),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => json!({
            "type": "integer",
            "minimum": i64::MIN,
            "maximum": i64::MAX,
        }),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => json!({
            "type": "integer",
            "minimum": 0,
            "maximum": u64::MAX,
        }),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => json!({"type": "number"}),
        DataType::Timestamp(_, _) => json!({"type": "string", "format": "date-time"}),
        DataType::List(item) | DataType::LargeList(item) => json!({
            "type": "array",
            "items": member(item.data_type())?,
        }),
        DataType::Struct(fields) => object(fields.iter().map(|f| f.as_ref()))?,
        other => return Err(format!("no JSON Schema for {other}")),
    })
}
