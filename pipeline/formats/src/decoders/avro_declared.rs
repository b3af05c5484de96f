//! Declared events read from Avro: the reader schema is made from the declaration (a record per
//! object path; `long`, `double`, `string`, `boolean`, `timestamp-micros`, or the writer's enum
//! for a declared string and its decimal for a declared float; optional and nullable fields as
//! unions with `null`, default `null`), named as each writer names its records, so a
//! writer resolves to it by Avro's rules whatever its record names. The resolved record's fields
//! then meet the declaration's checks exactly as JSON's do ([`DeclaredJsonDecoder::checked`]):
//! the same dead letters with the same reasons.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use apache_avro::Schema as AvroSchema;
use apache_avro::types::Value as AvroValue;
use riskpipe_core::RejectKind;
use riskpipe_schemas::declared::{DeclaredField, EventSchema, FieldType};
use serde_json::{Value as Json, json};

use super::declared::{DeclaredJsonDecoder, Found};

/// A rejection's kind and reason.
pub(crate) type Refused = (RejectKind, String);

/// One declared event stream the Avro decoder reads.
#[derive(Debug)]
pub(crate) struct DeclaredAvro {
    pub(crate) decoder: DeclaredJsonDecoder,
    /// The reader schema made for each writer schema id, or why the writer does not resolve.
    readers: Mutex<HashMap<u32, Result<Arc<AvroSchema>, String>>>,
}

impl DeclaredAvro {
    pub(crate) fn new(declared: EventSchema, max_bytes: usize) -> Self {
        Self {
            decoder: DeclaredJsonDecoder::new(declared, max_bytes),
            readers: Mutex::new(HashMap::new()),
        }
    }

    /// The reader schema for writer `id`, named as `writer` names its records, once it is known
    /// to resolve (cached per id).
    pub(crate) fn reader(&self, id: u32, writer: &AvroSchema) -> Result<Arc<AvroSchema>, String> {
        if let Some(known) = self.readers.lock().ok().and_then(|m| m.get(&id).cloned()) {
            return known;
        }
        let made = reader_schema(self.decoder.declared(), writer).and_then(|reader| {
            apache_avro::schema_compatibility::SchemaCompatibility::can_read(writer, &reader)
                .map(|_| Arc::new(reader))
                .map_err(|e| {
                    let mut why =
                        format!("writer schema {id} does not resolve to the declared events: {e}");
                    why.truncate(240);
                    why
                })
        });
        if let Ok(mut m) = self.readers.lock() {
            m.insert(id, made.clone());
        }
        made
    }

    /// The declared fields of a resolved record (read by `reader`), in declaration order.
    pub(crate) fn found(
        &self,
        record: &AvroValue,
        reader: &AvroSchema,
    ) -> Result<Vec<Found>, Refused> {
        let declared = self.decoder.declared();
        let mut out = Vec::with_capacity(declared.fields.len());
        for (i, f) in declared.fields.iter().enumerate() {
            if !declared.in_payload(i) {
                out.push(Found::Absent);
                continue;
            }
            let mut at = Some(record);
            for member in &f.path {
                at = at.and_then(|v| member_of(v, member));
            }
            out.push(match at {
                None => Found::Absent,
                Some(AvroValue::Decimal(d)) => decimal(f, d, reader)?,
                Some(AvroValue::Union(_, inner)) if matches!(**inner, AvroValue::Decimal(_)) => {
                    match &**inner {
                        AvroValue::Decimal(d) => decimal(f, d, reader)?,
                        _ => Found::Compound,
                    }
                }
                Some(v) => leaf(f, v)?,
            });
        }
        Ok(out)
    }
}

/// A writer's decimal (a declared `float`) as the double nearest its exact value: its
/// unscaled digits over ten to its scale, which the reader schema at the field's path states.
fn decimal(
    f: &DeclaredField,
    d: &apache_avro::Decimal,
    reader: &AvroSchema,
) -> Result<Found, Refused> {
    let mut at = Some(reader);
    for member in &f.path {
        at = at.and_then(|s| field_schema(s, member));
    }
    let scale = match at.map(through_null) {
        Some(AvroSchema::Decimal(d)) => d.scale,
        _ => return Ok(Found::Compound),
    };
    let bytes = <Vec<u8>>::try_from(d).map_err(|_| {
        (
            RejectKind::Schema,
            format!("field {}: an unreadable decimal", f.name),
        )
    })?;
    // Two's complement, big-endian: at most 16 bytes (precision 38) fit an i128.
    if bytes.len() > 16 {
        return Err((
            RejectKind::Invalid,
            format!("field {}: a decimal of more than 38 digits", f.name),
        ));
    }
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut wide = [if negative { 0xFF } else { 0 }; 16];
    wide[16 - bytes.len()..].copy_from_slice(&bytes);
    let unscaled = i128::from_be_bytes(wide);
    // The decimal text parsed once: correctly rounded, as JSON's number text is.
    format!("{unscaled}e-{scale}")
        .parse::<f64>()
        .map(Found::Float)
        .map_err(|_| {
            (
                RejectKind::Schema,
                format!("field {}: an unreadable decimal", f.name),
            )
        })
}

/// A schema without its `null` branch (an optional field's union).
fn through_null(schema: &AvroSchema) -> &AvroSchema {
    match schema {
        AvroSchema::Union(u) => u
            .variants()
            .iter()
            .find(|v| !matches!(v, AvroSchema::Null))
            .unwrap_or(schema),
        other => other,
    }
}

/// The member `name` of a record (through a union), if the record is there.
fn member_of<'a>(v: &'a AvroValue, name: &str) -> Option<&'a AvroValue> {
    match v {
        AvroValue::Record(fields) => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
        AvroValue::Union(_, inner) => member_of(inner, name),
        _ => None,
    }
}

/// A field's resolved value as found: a `null` of a field that may be absent is its absence.
fn leaf(f: &DeclaredField, v: &AvroValue) -> Result<Found, Refused> {
    let out_of_range = || {
        (
            RejectKind::Invalid,
            format!("field {}: out of range (after the year 2262)", f.name),
        )
    };
    Ok(match v {
        AvroValue::Union(_, inner) => return leaf(f, inner),
        AvroValue::Null if !f.required && !f.nullable => Found::Absent,
        AvroValue::Null => Found::Null,
        AvroValue::Boolean(b) => Found::Bool(*b),
        AvroValue::Int(i) => Found::Int(i64::from(*i)),
        AvroValue::Long(i) => Found::Int(*i),
        AvroValue::Float(x) => Found::Float(f64::from(*x)),
        AvroValue::Double(x) => Found::Float(*x),
        AvroValue::String(s) | AvroValue::Enum(_, s) => Found::Text(s.clone()),
        AvroValue::TimestampMicros(t) | AvroValue::LocalTimestampMicros(t) => {
            Found::Time(t.checked_mul(1_000).ok_or_else(out_of_range)?)
        }
        AvroValue::TimestampMillis(t) | AvroValue::LocalTimestampMillis(t) => {
            Found::Time(t.checked_mul(1_000_000).ok_or_else(out_of_range)?)
        }
        AvroValue::TimestampNanos(t) | AvroValue::LocalTimestampNanos(t) => Found::Time(*t),
        _ => Found::Compound,
    })
}

/// The reader schema of `declared`, its records named as `writer` names the records at the
/// same paths (a path the writer lacks: `<parent>_<member>`).
pub(crate) fn reader_schema(
    declared: &EventSchema,
    writer: &AvroSchema,
) -> Result<AvroSchema, String> {
    let fields: Vec<(&[String], &DeclaredField)> = declared
        .fields
        .iter()
        .enumerate()
        .filter(|&(i, _)| declared.in_payload(i))
        .map(|(_, f)| (f.path.as_slice(), f))
        .collect();
    let name = record_name(Some(writer)).unwrap_or_else(|| "Event".to_string());
    let json = record(&name, &fields, Some(writer))?;
    AvroSchema::parse(&json).map_err(|e| format!("the declared events have no Avro form: {e}"))
}

/// A record of the fields whose paths are `fields` (relative to it).
fn record(
    name: &str,
    fields: &[(&[String], &DeclaredField)],
    writer: Option<&AvroSchema>,
) -> Result<Json, String> {
    let mut members: Vec<Json> = Vec::new();
    let mut done: Vec<&str> = Vec::new();
    for (path, f) in fields {
        let Some((first, rest)) = path.split_first() else {
            continue;
        };
        if done.contains(&first.as_str()) {
            continue;
        }
        done.push(first);
        if rest.is_empty() {
            let t = leaf_type(f, writer.and_then(|w| field_schema(w, first)));
            members.push(if f.nullable || !f.required {
                json!({"name": first, "type": ["null", t], "default": null})
            } else {
                json!({"name": first, "type": t})
            });
            continue;
        }
        let below: Vec<(&[String], &DeclaredField)> = fields
            .iter()
            .filter(|(p, _)| p.len() > 1 && p[0] == *first)
            .map(|(p, f)| (&p[1..], *f))
            .collect();
        let inner_writer = writer.and_then(|w| field_schema(w, first));
        let inner_name = record_name(inner_writer).unwrap_or_else(|| format!("{name}_{first}"));
        let inner = record(&inner_name, &below, inner_writer)?;
        let required = below.iter().any(|(_, f)| f.required);
        members.push(if required {
            json!({"name": first, "type": inner})
        } else {
            json!({"name": first, "type": ["null", inner], "default": null})
        });
    }
    Ok(json!({"type": "record", "name": name, "fields": members}))
}

/// The Avro type of a declared field (the event time in an epoch form is a `long`). Where the
/// writer holds a declared `string` as an enum, or a declared `float` as a decimal, the reader
/// takes the writer's own type (Avro resolves neither to a string or a double); its values
/// then meet the declared rules as text and as the nearest double.
fn leaf_type(f: &DeclaredField, writer: Option<&AvroSchema>) -> Json {
    match (f.kind, writer.map(through_null)) {
        (FieldType::String, Some(w @ AvroSchema::Enum(_)))
        | (FieldType::Float, Some(w @ AvroSchema::Decimal(_))) => {
            if let Ok(own) = serde_json::to_value(w) {
                return own;
            }
        }
        _ => {}
    }
    match f.kind {
        FieldType::String => json!("string"),
        FieldType::Integer => json!("long"),
        FieldType::Float => json!("double"),
        FieldType::Boolean => json!("boolean"),
        FieldType::Timestamp => json!({"type": "long", "logicalType": "timestamp-micros"}),
    }
}

/// The unqualified name of a record schema (through a union).
fn record_name(schema: Option<&AvroSchema>) -> Option<String> {
    match schema? {
        AvroSchema::Record(r) => Some(r.name.name().to_string()),
        AvroSchema::Union(u) => u.variants().iter().find_map(|v| record_name(Some(v))),
        _ => None,
    }
}

/// The schema of member `name` of a record schema (through a union).
fn field_schema<'a>(schema: &'a AvroSchema, name: &str) -> Option<&'a AvroSchema> {
    match schema {
        AvroSchema::Record(r) => r.fields.iter().find(|f| f.name == name).map(|f| &f.schema),
        AvroSchema::Union(u) => u.variants().iter().find_map(|v| field_schema(v, name)),
        _ => None,
    }
}
