//! Declared events decoded from JSON: one object per message, read against an [`EventSchema`]
//! (the fields, types and value rules a config declares) straight into Arrow columns, without
//! an intermediate document. A member the declaration does not name is refused or skipped, as it
//! says; a missing or null required field, a wrong type, a duplicated member and trailing data
//! are `schema` dead letters; a value its rules refuse is `invalid`. Reasons name the field and
//! the rule, never the value (a field may be sensitive).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampNanosecondBuilder,
};
use arrow::datatypes::SchemaRef;
use riskpipe_core::RejectKind;
use riskpipe_schemas::declared::{Allowed, DeclaredField, EventSchema, FieldType};
use riskpipe_schemas::json::integral;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{DecodedPayloads, Decoder, Rejection, events::date_time, json::precheck};

mod reader;

use reader::*;

/// The decoder of one declared event stream.
#[derive(Debug)]
pub struct DeclaredJsonDecoder {
    declared: EventSchema,
    schema: SchemaRef,
    root: Node,
    /// Each object's path, by its number (the event's own: empty).
    object_paths: Vec<String>,
    max_bytes: usize,
}

/// The members of one object of the declaration.
#[derive(Debug, Default)]
struct Node {
    /// The object's path (empty for the event itself), for reasons.
    path: String,
    /// The object's number, to find a member object given twice.
    id: usize,
    members: HashMap<String, Member>,
    /// The declared fields below it, for a `null` in its place.
    leaves: Vec<usize>,
}

impl Node {
    /// Field `i` at `path` below this object (member objects made as needed; a checked
    /// declaration never makes a field a parent).
    fn insert(&mut self, path: &[String], i: usize, objects: &mut Vec<String>) {
        self.leaves.push(i);
        match path {
            [last] => {
                self.members.entry(last.clone()).or_insert(Member::Leaf(i));
            }
            [first, rest @ ..] => {
                let path = match self.path.as_str() {
                    "" => first.clone(),
                    p => format!("{p}.{first}"),
                };
                let entry = self.members.entry(first.clone()).or_insert_with(|| {
                    objects.push(path.clone());
                    Member::Object(Node {
                        path,
                        id: objects.len() - 1,
                        ..Node::default()
                    })
                });
                if let Member::Object(child) = entry {
                    child.insert(rest, i, objects);
                }
            }
            [] => {}
        }
    }
}

#[derive(Debug)]
enum Member {
    Leaf(usize),
    Object(Node),
}

impl DeclaredJsonDecoder {
    /// The decoder of `declared`, refusing payloads over `max_bytes`.
    pub fn new(declared: EventSchema, max_bytes: usize) -> Self {
        let mut root = Node::default();
        let mut object_paths = vec![String::new()];
        for (i, f) in declared.fields.iter().enumerate() {
            if declared.in_payload(i) {
                root.insert(&f.path, i, &mut object_paths);
            }
        }
        Self {
            schema: declared.arrow_schema(),
            declared,
            root,
            object_paths,
            max_bytes,
        }
    }

    /// The Arrow schema of the decoded rows.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The declaration it reads by.
    pub fn declared(&self) -> &EventSchema {
        &self.declared
    }

    /// The checked values of one event whose fields another format's reader found (Avro), in
    /// declaration order: the same shape-then-rules checks, and reasons, as JSON's.
    pub(crate) fn checked(
        &self,
        mut found: Vec<Found>,
        stamp: Option<i64>,
    ) -> Result<Vec<Option<Value>>, (RejectKind, String)> {
        self.stamp(&mut found, stamp)?;
        let mut values = Vec::with_capacity(found.len());
        for (f, found) in self.declared.fields.iter().zip(found) {
            values.push(Self::convert(f, found)?);
        }
        for (i, f) in self.declared.fields.iter().enumerate() {
            if let Some(value) = values[i].take() {
                values[i] = Some(self.check(i, f, value)?);
            }
        }
        Ok(values)
    }

    /// The batch of checked rows.
    pub(crate) fn batch(&self, rows: Vec<Vec<Option<Value>>>) -> crate::Result<RecordBatch> {
        let mut columns = Columns::new(&self.declared, rows.len());
        for mut row in rows {
            columns.push(&mut row);
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns.finish())?)
    }

    /// The event time taken from the Kafka record's timestamp (`stamp`, ms since the epoch),
    /// where the declaration says so; a record without one is refused.
    fn stamp(&self, found: &mut [Found], stamp: Option<i64>) -> Result<(), (RejectKind, String)> {
        let time = self.declared.time;
        if self.declared.in_payload(time) {
            return Ok(());
        }
        match (stamp, found.get_mut(time)) {
            (Some(ms), Some(slot)) => {
                *slot = Found::Int(ms);
                Ok(())
            }
            _ => Err((
                RejectKind::Schema,
                format!(
                    "field {}: the record has no Kafka timestamp, which the declared event time is",
                    self.declared.fields[time].name
                ),
            )),
        }
    }

    /// One payload's values, or why it is refused.
    fn row(
        &self,
        payload: &[u8],
        row: &mut Row,
        stamp: Option<i64>,
    ) -> Result<(), (RejectKind, String)> {
        super::opens_an_object(payload)?;
        row.reset(self.declared.fields.len(), self.object_paths.len());
        let mut de = serde_json::Deserializer::from_slice(payload);
        let parsed = ObjectSeed {
            node: &self.root,
            decoder: self,
            row: &mut *row,
        }
        .deserialize(&mut de);
        if let Err(e) = parsed.and_then(|()| de.end()) {
            return Err(match e.classify() {
                serde_json::error::Category::Eof => {
                    (RejectKind::Malformed, "truncated JSON".into())
                }
                _ if e.to_string().contains("trailing") => (
                    RejectKind::Malformed,
                    "more than one JSON value".to_string(),
                ),
                // 1e999: valid JSON, but no finite number.
                _ if e.to_string().contains("out of range") => (
                    RejectKind::Schema,
                    match &row.at {
                        At::Event => "number out of range".into(),
                        At::Field(i) => {
                            format!(
                                "field {}: number out of range",
                                self.declared.fields[*i].name
                            )
                        }
                        At::Object(ROOT) => "number out of range".into(),
                        At::Object(id) => {
                            format!("field {}: number out of range", self.object_paths[*id])
                        }
                    },
                ),
                _ => (RejectKind::Malformed, "malformed JSON".into()),
            });
        }
        if let Some(first) = row.first.take() {
            return Err(first);
        }
        self.stamp(&mut row.found, stamp)?;
        // The payload's shape first (every field present and of its type), then the values'
        // rules, so a payload wrong in both ways is a schema dead letter whatever the field order.
        for (i, f) in self.declared.fields.iter().enumerate() {
            let found = std::mem::take(&mut row.found[i]);
            row.values[i] = Self::convert(f, found)?;
        }
        for (i, f) in self.declared.fields.iter().enumerate() {
            if let Some(value) = row.values[i].take() {
                row.values[i] = Some(self.check(i, f, value)?);
            }
        }
        Ok(())
    }

    /// A field's value in its declared type, or why it has none (a `schema` problem: the
    /// payload's shape). A timestamp stays text here: its form is a value rule.
    pub(super) fn convert(
        f: &DeclaredField,
        found: Found,
    ) -> Result<Option<Value>, (RejectKind, String)> {
        let name = &f.name;
        let schema_error = |what: &str| Err((RejectKind::Schema, format!("field {name}: {what}")));
        Ok(Some(match (f.kind, found) {
            (_, Found::Absent) if !f.required => return Ok(None),
            (_, Found::Null) if f.nullable => return Ok(None),
            (_, Found::Absent) => {
                return Err((RejectKind::Schema, format!("missing field {name}")));
            }
            (_, Found::Null) => return schema_error("null where a value is required"),
            (FieldType::String | FieldType::Timestamp, Found::Text(s)) => Value::Text(s),
            (FieldType::Timestamp, Found::Time(ns)) => Value::Time(ns),
            (FieldType::Boolean, Found::Bool(b)) => Value::Bool(b),
            (FieldType::Integer, Found::Int(v)) => Value::Int(v),
            (FieldType::Integer, Found::UInt(v)) => match i64::try_from(v) {
                Ok(v) => Value::Int(v),
                Err(_) => return schema_error("integer out of range"),
            },
            // JSON Schema's integer: a number with no fraction (5.0 is 5).
            (FieldType::Integer, Found::Float(v)) if let Some(i) = integral(v) => Value::Int(i),
            (FieldType::Float, Found::Int(v)) => Value::Float(v as f64),
            (FieldType::Float, Found::UInt(v)) => Value::Float(v as f64),
            (FieldType::Float, Found::Float(v)) => Value::Float(v),
            _ => {
                return schema_error(&format!("wrong type, expected {}", f.kind.expected()));
            }
        }))
    }

    /// Field `i`'s value checked against its rules (an `invalid` problem), in the form its
    /// column holds (timestamps and the event time as nanoseconds).
    pub(super) fn check(
        &self,
        i: usize,
        f: &DeclaredField,
        value: Value,
    ) -> Result<Value, (RejectKind, String)> {
        let name = &f.name;
        let invalid = |what: &str| Err((RejectKind::Invalid, format!("field {name}: {what}")));
        let rules = &f.rules;
        match &value {
            Value::Float(v) => {
                if let Some(problem) = riskpipe_schemas::out_of_range(*v) {
                    return invalid(problem);
                }
                if let Some(lo) = rules.minimum.filter(|lo| *v < lo.as_f64()) {
                    return invalid(&format!("below the minimum {lo}"));
                }
                if let Some(hi) = rules.maximum.filter(|hi| *v > hi.as_f64()) {
                    return invalid(&format!("above the maximum {hi}"));
                }
            }
            Value::Int(v) => {
                if let Some(lo) = rules.minimum.filter(|lo| lo.compare(*v).is_lt()) {
                    return invalid(&format!("below the minimum {lo}"));
                }
                if let Some(hi) = rules.maximum.filter(|hi| hi.compare(*v).is_gt()) {
                    return invalid(&format!("above the maximum {hi}"));
                }
                if let Some(Allowed::Integers(allowed)) = &rules.allowed
                    && !allowed.contains(v)
                {
                    return invalid("not one of the allowed values");
                }
            }
            Value::Text(s) if f.kind == FieldType::Timestamp => {
                return match date_time(s) {
                    Some(ns) => Ok(Value::Time(ns)),
                    None => invalid("not an RFC 3339 date-time with an offset"),
                };
            }
            Value::Text(s) => {
                if let Some(n) = rules.max_length.filter(|n| s.chars().count() > *n) {
                    return invalid(&format!("longer than {n} characters"));
                }
                if let Some(Allowed::Texts(allowed)) = &rules.allowed
                    && !allowed.contains(s)
                {
                    return invalid("not one of the allowed values");
                }
            }
            Value::Bool(_) | Value::Time(_) => {}
        }
        // The event time in epoch units becomes nanoseconds.
        if i == self.declared.time
            && let (Value::Int(v), Some(unit)) =
                (&value, self.declared.time_format.nanos_per_unit())
        {
            return match v.checked_mul(unit) {
                Some(ns) => Ok(Value::Time(ns)),
                None => invalid("outside the time range riskpipe represents (years 1677 to 2262)"),
            };
        }
        Ok(value)
    }
}

impl Decoder for DeclaredJsonDecoder {
    fn decode(
        &self,
        topic: &str,
        schema: &SchemaRef,
        payloads: &[&[u8]],
    ) -> crate::Result<DecodedPayloads> {
        self.decode_records(topic, schema, payloads, &[])
    }

    fn decode_records(
        &self,
        topic: &str,
        schema: &SchemaRef,
        payloads: &[&[u8]],
        stamps: &[Option<i64>],
    ) -> crate::Result<DecodedPayloads> {
        if schema != &self.schema {
            return Err(crate::PipelineError::Bug(format!(
                "the declared decoder of {topic:?} was asked for another schema"
            )));
        }
        let (candidates, mut rejected) = precheck(payloads, self.max_bytes);
        let mut columns = Columns::new(&self.declared, candidates.len());
        let mut accepted = Vec::with_capacity(candidates.len());
        let mut row = Row::default();
        for index in candidates {
            let stamp = stamps.get(index).copied().flatten();
            match self.row(payloads[index], &mut row, stamp) {
                Ok(()) => {
                    columns.push(&mut row.values);
                    accepted.push(index);
                }
                Err((kind, reason)) => rejected.push(Rejection {
                    index,
                    reason,
                    kind,
                }),
            }
        }
        rejected.sort_by_key(|r| r.index);
        Ok(DecodedPayloads {
            batch: RecordBatch::try_new(self.schema.clone(), columns.finish())?,
            accepted,
            rejected,
        })
    }
}

/// What a payload holds in a field's place.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) enum Found {
    #[default]
    Absent,
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(String),
    /// A time another format carries typed (Avro's timestamps), as nanoseconds.
    Time(i64),
    /// An array or object where a value was declared.
    Compound,
}

/// A checked value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Time(i64),
}

/// The decoded columns, one builder per declared field.
enum Column {
    Text(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Time(TimestampNanosecondBuilder),
}

struct Columns(Vec<Column>);

impl Columns {
    fn new(declared: &EventSchema, rows: usize) -> Self {
        Self(
            declared
                .fields
                .iter()
                .enumerate()
                .map(|(i, f)| match f.kind {
                    _ if i == declared.time => Column::Time(
                        TimestampNanosecondBuilder::with_capacity(rows).with_timezone("UTC"),
                    ),
                    FieldType::String => {
                        Column::Text(StringBuilder::with_capacity(rows, rows * 16))
                    }
                    FieldType::Integer => Column::Int(Int64Builder::with_capacity(rows)),
                    FieldType::Float => Column::Float(Float64Builder::with_capacity(rows)),
                    FieldType::Boolean => Column::Bool(BooleanBuilder::with_capacity(rows)),
                    FieldType::Timestamp => Column::Time(
                        TimestampNanosecondBuilder::with_capacity(rows).with_timezone("UTC"),
                    ),
                })
                .collect(),
        )
    }

    /// Appends one checked row (its values taken).
    fn push(&mut self, values: &mut [Option<Value>]) {
        for (column, value) in self.0.iter_mut().zip(values.iter_mut()) {
            match (column, value.take()) {
                (Column::Text(b), Some(Value::Text(s))) => b.append_value(s),
                (Column::Int(b), Some(Value::Int(v))) => b.append_value(v),
                (Column::Float(b), Some(Value::Float(v))) => b.append_value(v),
                (Column::Bool(b), Some(Value::Bool(v))) => b.append_value(v),
                (Column::Time(b), Some(Value::Time(v))) => b.append_value(v),
                // Absent or null (`value` gives each column its own type).
                (Column::Text(b), _) => b.append_null(),
                (Column::Int(b), _) => b.append_null(),
                (Column::Float(b), _) => b.append_null(),
                (Column::Bool(b), _) => b.append_null(),
                (Column::Time(b), _) => b.append_null(),
            }
        }
    }

    fn finish(self) -> Vec<ArrayRef> {
        self.0
            .into_iter()
            .map(|c| -> ArrayRef {
                match c {
                    Column::Text(mut b) => Arc::new(b.finish()),
                    Column::Int(mut b) => Arc::new(b.finish()),
                    Column::Float(mut b) => Arc::new(b.finish()),
                    Column::Bool(mut b) => Arc::new(b.finish()),
                    Column::Time(mut b) => Arc::new(b.finish()),
                }
            })
            .collect()
    }
}
