//! A declaration's fields read from an Avro schema file (`.avsc`) the user has already: each
//! leaf of the event's record (nested records become paths such as `card.id`) as a declared
//! field, every type without a declared counterpart refused by name.

use apache_avro::Schema;
use apache_avro::schema::{Name, ResolvedSchema};

use super::{FieldConfig, Scalar};

/// The fields an Avro record schema declares, in the order of their paths. Types read: `string`
/// and `uuid` (string), `int` and `long` (integer), `float` and `double` (float), `boolean`,
/// an `enum` (a string whose allowed values are its symbols), `timestamp-millis`/`-micros`/
/// `-nanos` (timestamp), `decimal` (float: its nearest double), a nested `record`, and each of
/// them in a union with `null` (an optional, nullable field; below a record so held, every
/// field is). Anything else (arrays, maps, bytes, fixed, dates, times of day, unions of
/// several types) is refused by name, every problem listed.
pub fn fields_from_avro_schema(text: &str) -> Result<Vec<FieldConfig>, Vec<String>> {
    let schema = Schema::parse_str(text).map_err(|e| vec![format!("not an Avro schema: {e}")])?;
    let resolved = ResolvedSchema::try_from(&schema)
        .map_err(|e| vec![format!("the Avro schema does not resolve: {e}")])?;
    let names = resolved.get_names();
    let lookup = |name: &Name| names.get(name).copied();
    let mut fields = Vec::new();
    let mut problems = Vec::new();
    match &schema {
        Schema::Record(_) => record_fields(&schema, "", false, &lookup, &mut fields, &mut problems),
        _ => problems.push("the Avro schema of an event must be a record".into()),
    }
    fields.sort_by(|a, b| a.name.cmp(&b.name));
    match problems.is_empty() {
        true => Ok(fields),
        false => Err(problems),
    }
}

/// The leaves of record `schema` at `prefix`; `optional`: the record itself may be absent.
fn record_fields<'s>(
    schema: &'s Schema,
    prefix: &str,
    optional: bool,
    lookup: &dyn Fn(&Name) -> Option<&'s Schema>,
    fields: &mut Vec<FieldConfig>,
    problems: &mut Vec<String>,
) {
    let Schema::Record(record) = schema else {
        return;
    };
    for f in &record.fields {
        let path = match prefix {
            "" => f.name.clone(),
            p => format!("{p}.{}", f.name),
        };
        let (inner, nullable) = match without_null(&f.schema) {
            Ok(split) => split,
            Err(why) => {
                problems.push(format!("field {path:?}: {why}"));
                continue;
            }
        };
        let inner = match inner {
            Schema::Ref { name } => match lookup(name) {
                Some(s) => s,
                None => {
                    problems.push(format!("field {path:?}: unknown type {name}"));
                    continue;
                }
            },
            other => other,
        };
        let optional = optional || nullable;
        let (kind, allowed) = match inner {
            Schema::Record(_) => {
                record_fields(inner, &path, optional, lookup, fields, problems);
                continue;
            }
            Schema::String | Schema::Uuid(_) => ("string", None),
            Schema::Int | Schema::Long => ("integer", None),
            Schema::Float | Schema::Double | Schema::Decimal(_) => ("float", None),
            Schema::Boolean => ("boolean", None),
            Schema::Enum(e) => (
                "string",
                Some(e.symbols.iter().cloned().map(Scalar::Text).collect()),
            ),
            Schema::TimestampMillis | Schema::TimestampMicros | Schema::TimestampNanos => {
                ("timestamp", None)
            }
            other => {
                problems.push(format!(
                    "field {path:?}: the Avro type {} has no declared type",
                    type_name(other)
                ));
                continue;
            }
        };
        fields.push(FieldConfig {
            name: path,
            kind: kind.to_string(),
            required: !optional,
            nullable: optional,
            minimum: None,
            maximum: None,
            allowed,
            max_length: None,
        });
    }
}

/// A field's type without the `null` of a union with it, and whether it had one.
fn without_null(schema: &Schema) -> Result<(&Schema, bool), String> {
    let Schema::Union(union) = schema else {
        return Ok((schema, false));
    };
    let others: Vec<&Schema> = union
        .variants()
        .iter()
        .filter(|v| !matches!(v, Schema::Null))
        .collect();
    match others.as_slice() {
        [one] => Ok((one, others.len() < union.variants().len())),
        _ => Err("a union of several types has no declared type".into()),
    }
}

/// An Avro type's name, for a problem.
fn type_name(schema: &Schema) -> String {
    match schema {
        Schema::Array(_) => "array".into(),
        Schema::Map(_) => "map".into(),
        Schema::Bytes => "bytes".into(),
        Schema::Fixed(f) => format!("fixed {}", f.name),
        Schema::Date => "date".into(),
        Schema::TimeMillis | Schema::TimeMicros => "time of day".into(),
        Schema::Duration(_) => "duration".into(),
        Schema::BigDecimal => "big-decimal".into(),
        Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => "local timestamp (no zone)".into(),
        Schema::Null => "null".into(),
        other => format!("{other:?}").chars().take(40).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::declared::{EventsConfig, FieldType, TimeConfig};

    const PAYMENT: &str = r#"{"type": "record", "name": "Payment", "namespace": "acme", "fields": [
        {"name": "payment_id", "type": "string"},
        {"name": "created_at", "type": "long"},
        {"name": "card", "type": {"type": "record", "name": "Card", "fields": [
            {"name": "id", "type": "string"}, {"name": "country", "type": ["null", "string"], "default": null}]}},
        {"name": "issuer", "type": ["null", "Card"], "default": null},
        {"name": "channel", "type": {"type": "enum", "name": "Channel", "symbols": ["pos", "online"]}},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}},
        {"name": "settled_at", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}], "default": null},
        {"name": "present", "type": "boolean"}
    ]}"#;

    #[test]
    fn an_avro_record_declares_its_leaves_by_path() {
        let fields = fields_from_avro_schema(PAYMENT).expect("in the subset");
        let got: Vec<(&str, &str, bool, bool)> = fields
            .iter()
            .map(|f| (f.name.as_str(), f.kind.as_str(), f.required, f.nullable))
            .collect();
        assert_eq!(
            got,
            vec![
                ("amount", "float", true, false),
                ("card.country", "string", false, true),
                ("card.id", "string", true, false),
                ("channel", "string", true, false),
                ("created_at", "integer", true, false),
                // A record named again, optional: all its fields are.
                ("issuer.country", "string", false, true),
                ("issuer.id", "string", false, true),
                ("payment_id", "string", true, false),
                ("present", "boolean", true, false),
                ("settled_at", "timestamp", false, true),
            ]
        );
        let channel = fields
            .iter()
            .find(|f| f.name == "channel")
            .expect("channel");
        assert_eq!(
            channel.allowed,
            Some(vec![
                Scalar::Text("pos".into()),
                Scalar::Text("online".into())
            ])
        );
        // The fields check as a declaration.
        let declared = EventsConfig {
            fields,
            schema_file: None,
            schema_file_problems: Vec::new(),
            id: "payment_id".into(),
            time: TimeConfig {
                field: "created_at".into(),
                format: "epoch_millis".into(),
            },
            amount: Some("amount".into()),
            entity: Some("card.id".into()),
            label: None,
            unknown_fields: None,
            sensitive: Default::default(),
        }
        .check()
        .expect("a declaration");
        assert_eq!(
            declared.fields[declared.index_of("settled_at").expect("settled")].kind,
            FieldType::Timestamp
        );
    }

    /// `schema_file` naming an `.avsc` reads it (members it lacks refused), and its problems
    /// are the declaration's, named with the file.
    #[test]
    fn a_declaration_may_point_at_an_avsc_file() {
        let dir = std::env::temp_dir().join(format!("riskpipe-avsc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("payment.avsc"), PAYMENT).expect("write");
        std::fs::write(dir.join("bad.avsc"), r#"{"type": "record", "name": "E", "fields": [{"name": "m", "type": {"type": "map", "values": "long"}}]}"#).expect("write");
        let config = |file: &str| -> EventsConfig {
            let mut c: EventsConfig = toml::from_str(&format!(
                "schema_file = {file:?}\nid = \"payment_id\"\ntime = {{ field = \"created_at\", format = \"epoch_millis\" }}\n"
            ))
            .expect("toml");
            c.read_schema_file(&dir);
            c
        };
        let good = config("payment.avsc");
        let declared = good.check().expect("a declaration");
        assert_eq!(declared.fields.len(), 10);
        assert!(
            !declared.ignore_unknown,
            "members the schema lacks are refused"
        );
        let problems = config("bad.avsc").check().expect_err("a map");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("bad.avsc") && p.contains("\"m\": the Avro type map")),
            "{problems:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn types_without_a_declared_type_are_each_named() {
        let text = r#"{"type": "record", "name": "E", "fields": [
            {"name": "id", "type": "string"},
            {"name": "tags", "type": {"type": "array", "items": "string"}},
            {"name": "raw", "type": "bytes"},
            {"name": "either", "type": ["null", "string", "long"]},
            {"name": "day", "type": {"type": "int", "logicalType": "date"}}
        ]}"#;
        let problems = fields_from_avro_schema(text).expect_err("outside the subset");
        for expected in [
            "\"tags\": the Avro type array",
            "\"raw\": the Avro type bytes",
            "\"either\": a union of several types",
            "\"day\": the Avro type date",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{expected} not in {problems:?}"
            );
        }
        assert_eq!(problems.len(), 4);
        assert!(fields_from_avro_schema("{").is_err());
        assert!(fields_from_avro_schema(r#""string""#).is_err());
    }
}
