//! A declaration's fields read from a JSON Schema file the user has already: the subset of
//! JSON Schema riskpipe understands, every other keyword refused by name.

use super::{FieldConfig, Number, Scalar};

/// The JSON Schema keywords [`fields_from_json_schema`] reads; any other is refused by name.
pub const JSON_SCHEMA_KEYWORDS: [&str; 13] = [
    "$schema",
    "$id",
    "title",
    "description",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "enum",
    "minimum",
    "maximum",
    "maxLength",
    "format",
];

/// The fields a JSON Schema of an event declares, for a declaration that points at a schema file
/// the user has already. The subset read: `type` (`string`, `integer`, `number`, `boolean`,
/// `object`, or one of them with `"null"`), `required`, `properties` of nested objects, `enum`
/// (texts or integers), `minimum`, `maximum`, `maxLength`, `format: "date-time"` (a
/// `timestamp` field) and `additionalProperties: false` (returned: whether members not declared
/// are refused). Anything else, a `$ref`, a `pattern`, an `exclusiveMinimum`, another format, is
/// refused by name: every such problem is listed, none ignored. The fields come in the order
/// of their paths (the decoded columns' order).
pub fn fields_from_json_schema(
    schema: &serde_json::Value,
) -> Result<(Vec<FieldConfig>, bool), Vec<String>> {
    let mut fields = Vec::new();
    let mut problems = Vec::new();
    let refuses_unknown =
        schema.get("additionalProperties") == Some(&serde_json::Value::Bool(false));
    object_fields(schema, "", &mut fields, &mut problems, true);
    // Columns in the order of their paths, whatever order the JSON reader keeps members in.
    fields.sort_by(|a, b| a.name.cmp(&b.name));
    match problems.is_empty() {
        true => Ok((fields, refuses_unknown)),
        false => Err(problems),
    }
}

/// The fields of an object schema at `prefix` (its members' paths start with it).
fn object_fields(
    schema: &serde_json::Value,
    prefix: &str,
    fields: &mut Vec<FieldConfig>,
    problems: &mut Vec<String>,
    top: bool,
) {
    use serde_json::Value;
    let at = match prefix {
        "" => "the schema".to_string(),
        p => format!("property {p:?}"),
    };
    let Some(object) = schema.as_object() else {
        problems.push(format!("{at}: not a JSON object"));
        return;
    };
    // A member object's keywords are checked where it is met as a property.
    if top {
        unsupported(object, &at, problems);
    }
    if !top && object.contains_key("additionalProperties") {
        // Only the event's own members may be refused or ignored, for the whole event.
        problems.push(format!(
            "{at}: additionalProperties is read at the top level only (it applies to the whole event)"
        ));
    }
    let required: Vec<&str> = object
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = object.get("properties").and_then(Value::as_object) else {
        problems.push(format!("{at}: an object schema needs properties"));
        return;
    };
    for (name, property) in properties {
        let path = match prefix {
            "" => name.clone(),
            p => format!("{p}.{name}"),
        };
        let at = format!("property {path:?}");
        let Some(p) = property.as_object() else {
            problems.push(format!("{at}: not a JSON object"));
            continue;
        };
        unsupported(p, &at, problems);
        let (kind, nullable) = match p.get("type") {
            Some(Value::String(t)) => (t.as_str(), false),
            Some(Value::Array(ts)) => {
                let named: Vec<&str> = ts.iter().filter_map(Value::as_str).collect();
                match named.as_slice() {
                    [t, "null"] | ["null", t] if *t != "null" => (*t, true),
                    _ => {
                        problems.push(format!(
                            "{at}: a type list is one type and \"null\", nothing else"
                        ));
                        continue;
                    }
                }
            }
            _ => {
                problems.push(format!("{at}: no type"));
                continue;
            }
        };
        let format = p.get("format").and_then(Value::as_str);
        let kind = match (kind, format) {
            ("object", None) => {
                if nullable {
                    problems.push(format!(
                        "{at}: a nullable object is not supported (declare its members nullable)"
                    ));
                }
                object_fields(property, &path, fields, problems, false);
                continue;
            }
            ("string", Some("date-time")) => "timestamp",
            (_, Some(other)) => {
                problems.push(format!(
                    "{at}: format {other:?} is not supported (only \"date-time\" on a string)"
                ));
                continue;
            }
            ("string", None) => "string",
            ("integer", None) => "integer",
            ("number", None) => "float",
            ("boolean", None) => "boolean",
            (other, None) => {
                problems.push(format!("{at}: type {other:?} is not supported"));
                continue;
            }
        };

        let number = |key: &str, problems: &mut Vec<String>| -> Option<Number> {
            let v = p.get(key)?;
            match (v.as_i64(), v.as_f64()) {
                (Some(i), _) => Some(Number::Integer(i)),
                (None, Some(f)) => Some(Number::Float(f)),
                _ => {
                    problems.push(format!("{at}: {key} is not a number"));
                    None
                }
            }
        };
        let minimum = number("minimum", problems);
        let maximum = number("maximum", problems);
        let allowed = p.get("enum").map(|values| {
            values
                .as_array()
                .map(|vs| {
                    vs.iter()
                        .map(|v| match v {
                            Value::String(t) => Scalar::Text(t.clone()),
                            v => match v.as_i64() {
                                Some(i) => Scalar::Integer(i),
                                None => Scalar::Other(v.clone()),
                            },
                        })
                        .collect()
                })
                .unwrap_or_default()
        });
        let max_length = p.get("maxLength").and_then(|v| {
            let n = v.as_i64();
            if n.is_none() {
                problems.push(format!("{at}: maxLength is not an integer"));
            }
            n
        });
        fields.push(FieldConfig {
            name: path,
            kind: kind.to_string(),
            required: required.contains(&name.as_str()),
            nullable,
            minimum,
            maximum,
            allowed,
            max_length,
        });
    }
}

/// Every keyword of `object` outside [`JSON_SCHEMA_KEYWORDS`], as problems.
fn unsupported(
    object: &serde_json::Map<String, serde_json::Value>,
    at: &str,
    problems: &mut Vec<String>,
) {
    for key in object.keys() {
        if !JSON_SCHEMA_KEYWORDS.contains(&key.as_str()) {
            problems.push(format!(
                "{at}: the keyword {key:?} is not supported (riskpipe reads {})",
                JSON_SCHEMA_KEYWORDS.join(", ")
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{Field, SchemaRef};

    use super::*;
    use crate::declared::{EventsConfig, TimeConfig};

    /// The published handbook transaction schema read as a declaration: the types, the required
    /// fields and the rules it states; and a schema using keywords outside the subset refused
    /// with every one of them named.
    #[test]
    fn a_json_schema_file_declares_fields_and_what_it_cannot_say_is_refused() {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("json/transaction.schema.json"),
        )
        .expect("the published schema");
        let schema: serde_json::Value = serde_json::from_str(&text).expect("json");
        let (fields, refuses_unknown) = fields_from_json_schema(&schema).expect("in the subset");
        assert!(refuses_unknown);
        let config = EventsConfig {
            fields,
            schema_file: None,
            schema_file_problems: Vec::new(),
            id: "TRANSACTION_ID".into(),
            time: TimeConfig {
                field: "TX_DATETIME".into(),
                format: "rfc3339".into(),
            },
            amount: Some("TX_AMOUNT".into()),
            entity: Some("CUSTOMER_ID".into()),
            label: None,
            sensitive: Default::default(),
            unknown_fields: None,
        };
        let declared = config.check().expect("valid");
        let sorted = |s: SchemaRef| {
            let mut f: Vec<Field> = s.fields().iter().map(|f| f.as_ref().clone()).collect();
            f.sort_by(|a, b| a.name().cmp(b.name()));
            f
        };
        assert_eq!(
            sorted(declared.arrow_schema()),
            sorted(crate::transaction_schema())
        );
        let amount = &declared.fields[declared.amount.expect("amount")];
        assert_eq!(amount.rules.minimum, Some(Number::Integer(0)));
        assert!(amount.required && !amount.nullable);

        let nested: serde_json::Value = serde_json::json!({
            "type": "object",
            "additionalProperties": true,
            "required": ["id"],
            "properties": {
                "id": {"type": "string", "pattern": "^p-"},
                "card": {"type": "object", "required": ["id"], "properties": {
                    "id": {"type": ["string", "null"], "maxLength": 19},
                    "kind": {"type": "string", "enum": ["debit", "credit"]},
                    "bin": {"$ref": "#/defs/bin"}
                }},
                "amount": {"type": "number", "exclusiveMinimum": 0},
                "at": {"type": "string", "format": "date"},
                "tags": {"type": "array"}
            }
        });
        let problems = fields_from_json_schema(&nested).expect_err("outside the subset");
        for p in [
            "property \"id\": the keyword \"pattern\" is not supported",
            "property \"card.bin\": no type",
            "property \"card.bin\": the keyword \"$ref\" is not supported",
            "property \"amount\": the keyword \"exclusiveMinimum\" is not supported",
            "property \"at\": format \"date\" is not supported",
            "property \"tags\": type \"array\" is not supported",
        ] {
            assert!(
                problems.iter().any(|q| q.contains(p)),
                "{p:?} not in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), 6, "{problems:#?}");
        // Without the unsupported parts, nested members become paths.
        let mut supported = nested.clone();
        for (path, key) in [("id", "pattern"), ("amount", "exclusiveMinimum")] {
            supported["properties"][path]
                .as_object_mut()
                .expect("object")
                .remove(key);
        }
        let props = supported["properties"].as_object_mut().expect("object");
        props.remove("at");
        props.remove("tags");
        props["card"]["properties"]
            .as_object_mut()
            .expect("object")
            .remove("bin");
        let (fields, refuses_unknown) = fields_from_json_schema(&supported).expect("supported");
        assert!(!refuses_unknown);
        let card_id = fields
            .iter()
            .find(|f| f.name == "card.id")
            .expect("card.id");
        assert!(card_id.required && card_id.nullable && card_id.max_length == Some(19));
        let kind = fields
            .iter()
            .find(|f| f.name == "card.kind")
            .expect("card.kind");
        assert!(!kind.required);
        assert_eq!(
            kind.allowed,
            Some(vec![
                Scalar::Text("debit".into()),
                Scalar::Text("credit".into())
            ])
        );
    }
}
