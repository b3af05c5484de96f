//! Declared events: a stream's fields, their types and value rules, which field is the event id
//! and which its event time, stated in configuration rather than in Rust. [`EventsConfig`] is
//! what a config file holds (names and words, so that every problem can be listed at once);
//! [`EventsConfig::check`] turns it into an [`EventSchema`], the typed declaration decoders and
//! jobs read, whose [`EventSchema::arrow_schema`] is the Arrow schema of the decoded rows.
//!
//! A field is named by its path: `card.id` is the `id` member of the event's `card` object. The
//! decoded rows have one column per declared field, named by that path, in declaration order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;

/// The types a field may declare.
pub const TYPES: [&str; 5] = ["string", "integer", "float", "boolean", "timestamp"];

/// The forms an event time may take.
pub const TIME_FORMATS: [&str; 4] = ["rfc3339", "epoch_seconds", "epoch_millis", "epoch_micros"];

/// A declared event stream as a config file states it (`[job.events]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// The fields, in the order of the decoded columns.
    #[serde(default)]
    pub fields: Vec<FieldConfig>,
    /// A JSON Schema file declaring the fields instead (the subset [`fields_from_json_schema`]
    /// reads), relative to the config file; read by [`EventsConfig::read_schema_file`].
    #[serde(default)]
    pub schema_file: Option<String>,
    /// What reading `schema_file` found wrong, listed by [`EventsConfig::check`].
    #[serde(skip)]
    pub schema_file_problems: Vec<String>,
    /// The field that identifies an event (a string or an integer, never null).
    pub id: String,
    /// The event time.
    pub time: TimeConfig,
    /// The field holding the amount a backtest report sums (fraud amount caught), if any.
    #[serde(default)]
    pub amount: Option<String>,
    /// The field a backtest report counts by (card precision), if any.
    #[serde(default)]
    pub entity: Option<String>,
    /// What happens to a member the declaration does not name: `refuse` (a dead letter) or
    /// `ignore`. By default refused, unless a schema file allows them (no
    /// `additionalProperties: false`).
    #[serde(default)]
    pub unknown_fields: Option<String>,
}

fn yes() -> bool {
    true
}

/// The event time: which field, in which form.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeConfig {
    /// The field.
    pub field: String,
    /// `rfc3339` (a `timestamp` field: text with any UTC offset), or `epoch_seconds`,
    /// `epoch_millis`, `epoch_micros` (an `integer` field).
    #[serde(default = "rfc3339")]
    pub format: String,
}

fn rfc3339() -> String {
    "rfc3339".into()
}

/// One declared field as a config file states it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldConfig {
    /// Its path: member names joined by `.`.
    pub name: String,
    /// One of [`TYPES`].
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether every event must carry it (default: yes).
    #[serde(default = "yes")]
    pub required: bool,
    /// Whether it may be `null` (default: no).
    #[serde(default)]
    pub nullable: bool,
    /// The smallest value allowed (`integer`, `float`).
    #[serde(default)]
    pub minimum: Option<Number>,
    /// The largest value allowed (`integer`, `float`).
    #[serde(default)]
    pub maximum: Option<Number>,
    /// The only values allowed (`string`, `integer`).
    #[serde(default)]
    pub allowed: Option<Vec<Scalar>>,
    /// The most characters a value may have (`string`).
    #[serde(default)]
    pub max_length: Option<i64>,
}

/// A number in a config file: integers stay exact.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Number {
    /// An integer.
    Integer(i64),
    /// Any other number.
    Float(f64),
}

impl Number {
    fn as_f64(self) -> f64 {
        match self {
            Number::Integer(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Number::Integer(i) => write!(f, "{i}"),
            Number::Float(x) => write!(f, "{x}"),
        }
    }
}

/// An allowed value in a config file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// An integer.
    Integer(i64),
    /// A text.
    Text(String),
    /// Anything else (refused by the checks).
    Other(serde_json::Value),
}

/// A field's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// UTF-8 text.
    String,
    /// A 64-bit integer (a JSON number without fraction; `5.0` is 5).
    Integer,
    /// A 64-bit float (any JSON number), finite and within ±[`crate::VALUE_LIMIT`].
    Float,
    /// `true` or `false`.
    Boolean,
    /// RFC 3339 text with a UTC offset, decoded to nanoseconds since the epoch (UTC).
    Timestamp,
}

impl FieldType {
    /// What a payload must hold, in words.
    pub fn expected(self) -> &'static str {
        match self {
            FieldType::String => "a string",
            FieldType::Integer => "an integer",
            FieldType::Float => "a number",
            FieldType::Boolean => "a boolean",
            FieldType::Timestamp => "an RFC 3339 date-time text",
        }
    }
}

/// How the event time is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeFormat {
    /// RFC 3339 text with a UTC offset (a `timestamp` field).
    Rfc3339,
    /// An integer of seconds since the epoch.
    EpochSeconds,
    /// An integer of milliseconds since the epoch.
    EpochMillis,
    /// An integer of microseconds since the epoch.
    EpochMicros,
}

impl TimeFormat {
    /// Nanoseconds per unit of an epoch format (`None` for RFC 3339 text).
    pub fn nanos_per_unit(self) -> Option<i64> {
        match self {
            TimeFormat::Rfc3339 => None,
            TimeFormat::EpochSeconds => Some(1_000_000_000),
            TimeFormat::EpochMillis => Some(1_000_000),
            TimeFormat::EpochMicros => Some(1_000),
        }
    }
}

/// The values a field allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// Texts (a `string` field).
    Texts(BTreeSet<String>),
    /// Integers (an `integer` field).
    Integers(BTreeSet<i64>),
}

/// A field's value rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    /// The smallest value allowed.
    pub minimum: Option<Number>,
    /// The largest value allowed.
    pub maximum: Option<Number>,
    /// The only values allowed.
    pub allowed: Option<Allowed>,
    /// The most characters a text may have.
    pub max_length: Option<usize>,
}

/// A declared field, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredField {
    /// Its path joined by `.`: the decoded column's name.
    pub name: String,
    /// Its path's member names.
    pub path: Vec<String>,
    /// Its type.
    pub kind: FieldType,
    /// Whether every event must carry it.
    pub required: bool,
    /// Whether it may be `null`.
    pub nullable: bool,
    /// Its value rules.
    pub rules: Rules,
}

/// A declared event stream, checked: what decoders decode against.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSchema {
    /// The fields, in column order.
    pub fields: Vec<DeclaredField>,
    /// The id field's index.
    pub id: usize,
    /// The event time field's index.
    pub time: usize,
    /// How the event time is written.
    pub time_format: TimeFormat,
    /// The amount field's index, if declared.
    pub amount: Option<usize>,
    /// The entity field's index, if declared.
    pub entity: Option<usize>,
    /// Whether members the declaration does not name are ignored (else refused).
    pub ignore_unknown: bool,
}

impl EventsConfig {
    /// Reads `schema_file` (relative to `base_dir`) into `fields`; what it finds wrong is kept
    /// for [`EventsConfig::check`] to list with every other problem.
    pub fn read_schema_file(&mut self, base_dir: &std::path::Path) {
        let Some(file) = &self.schema_file else {
            return;
        };
        let path = base_dir.join(file);
        let at = format!("job.events.schema_file {}", path.display());
        if !self.fields.is_empty() {
            self.schema_file_problems.push(format!(
                "{at}: fields are declared both here and in the file; keep one"
            ));
            return;
        }
        let schema = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| format!("{at}: not JSON: {e}")),
            Err(e) => Err(format!("{at}: {e}")),
        };
        match schema.map(|s| fields_from_json_schema(&s)) {
            Ok(Ok((fields, refuses_unknown))) => {
                self.fields = fields;
                match self.unknown_fields.as_deref() {
                    None => {
                        let policy = if refuses_unknown { "refuse" } else { "ignore" };
                        self.unknown_fields = Some(policy.into());
                    }
                    Some("ignore") if refuses_unknown => self.schema_file_problems.push(
                        "job.events.unknown_fields = \"ignore\", but the schema file refuses \
                         members it does not declare (additionalProperties: false)"
                            .to_string(),
                    ),
                    Some(_) => {}
                }
            }
            Ok(Err(problems)) => self
                .schema_file_problems
                .extend(problems.into_iter().map(|p| format!("{at}: {p}"))),
            Err(problem) => self.schema_file_problems.push(problem),
        }
    }

    /// The checked declaration, or every problem found (each naming the field and the rule).
    pub fn check(&self) -> Result<EventSchema, Vec<String>> {
        let mut problems = self.schema_file_problems.clone();
        if self.fields.is_empty() && problems.is_empty() {
            problems.push("job.events.fields: no field is declared".to_string());
        }
        let mut fields = Vec::with_capacity(self.fields.len());
        let mut index: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &self.fields {
            let at = format!("job.events.fields {:?}", f.name);
            let path: Vec<String> = f.name.split('.').map(str::to_string).collect();
            if path.iter().any(String::is_empty) {
                problems.push(format!(
                    "{at}: a path is member names joined by '.', none of them empty"
                ));
            }
            if index.insert(f.name.as_str(), fields.len()).is_some() {
                problems.push(format!("{at}: declared twice"));
            }
            let kind = match f.kind.as_str() {
                "string" => Some(FieldType::String),
                "integer" => Some(FieldType::Integer),
                "float" => Some(FieldType::Float),
                "boolean" => Some(FieldType::Boolean),
                "timestamp" => Some(FieldType::Timestamp),
                other => {
                    problems.push(format!(
                        "{at}: unknown type {other:?} (one of {})",
                        TYPES.join(", ")
                    ));
                    None
                }
            };
            let rules = kind
                .map(|k| rules(f, k, &at, &mut problems))
                .unwrap_or_default();
            fields.push(DeclaredField {
                name: f.name.clone(),
                path,
                kind: kind.unwrap_or(FieldType::String),
                required: f.required,
                nullable: f.nullable,
                rules,
            });
        }
        // A path is a leaf or an object, not both: `card` and `card.id` cannot both be fields.
        for f in &self.fields {
            let mut prefix = String::new();
            for member in f.name.split('.') {
                if !prefix.is_empty() && index.contains_key(prefix.as_str()) {
                    problems.push(format!(
                        "job.events.fields {:?}: inside {prefix:?}, which is declared a field of its own",
                        f.name
                    ));
                    break;
                }
                if !prefix.is_empty() {
                    prefix.push('.');
                }
                prefix.push_str(member);
            }
        }
        let find = |role: &str, name: &str, problems: &mut Vec<String>| -> Option<usize> {
            let i = index.get(name).copied();
            if i.is_none() {
                problems.push(format!(
                    "job.events.{role}: {name:?} is not a declared field"
                ));
            }
            i
        };
        let id = find("id", &self.id, &mut problems);
        if let Some(f) = id.map(|i| &fields[i]) {
            if !matches!(f.kind, FieldType::String | FieldType::Integer) {
                problems.push(format!(
                    "job.events.id: {:?} must be a string or an integer field",
                    f.name
                ));
            }
            if f.nullable || !f.required {
                problems.push(format!(
                    "job.events.id: {:?} must be required and not nullable: every event has an id",
                    f.name
                ));
            }
        }
        let time = find("time.field", &self.time.field, &mut problems);
        let time_format = match self.time.format.as_str() {
            "rfc3339" => Some(TimeFormat::Rfc3339),
            "epoch_seconds" => Some(TimeFormat::EpochSeconds),
            "epoch_millis" => Some(TimeFormat::EpochMillis),
            "epoch_micros" => Some(TimeFormat::EpochMicros),
            other => {
                problems.push(format!(
                    "job.events.time.format: unknown format {other:?} (one of {})",
                    TIME_FORMATS.join(", ")
                ));
                None
            }
        };
        if let (Some(f), Some(format)) = (time.map(|i| &fields[i]), time_format) {
            let wanted = match format {
                TimeFormat::Rfc3339 => FieldType::Timestamp,
                _ => FieldType::Integer,
            };
            if f.kind != wanted {
                problems.push(format!(
                    "job.events.time: the format {:?} needs a {} field; {:?} is declared otherwise",
                    self.time.format,
                    match wanted {
                        FieldType::Timestamp => "timestamp",
                        _ => "integer",
                    },
                    f.name
                ));
            }
            if f.nullable || !f.required {
                problems.push(format!(
                    "job.events.time: {:?} must be required and not nullable: every event has a time",
                    f.name
                ));
            }
        }
        let amount = self.amount.as_deref().and_then(|name| {
            let i = find("amount", name, &mut problems)?;
            if !matches!(fields[i].kind, FieldType::Integer | FieldType::Float) {
                problems.push(format!(
                    "job.events.amount: {name:?} must be an integer or a float field"
                ));
            }
            Some(i)
        });
        let entity = self.entity.as_deref().and_then(|name| {
            let i = find("entity", name, &mut problems)?;
            if !matches!(fields[i].kind, FieldType::String | FieldType::Integer) {
                problems.push(format!(
                    "job.events.entity: {name:?} must be a string or an integer field"
                ));
            }
            Some(i)
        });
        let ignore_unknown = match self.unknown_fields.as_deref().unwrap_or("refuse") {
            "refuse" => false,
            "ignore" => true,
            other => {
                problems.push(format!(
                    "job.events.unknown_fields: {other:?} is neither \"refuse\" nor \"ignore\""
                ));
                false
            }
        };
        match (id, time, time_format) {
            (Some(id), Some(time), Some(time_format)) if problems.is_empty() => Ok(EventSchema {
                fields,
                id,
                time,
                time_format,
                amount,
                entity,
                ignore_unknown,
            }),
            _ => Err(problems),
        }
    }
}

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

/// A field's rules, checked against its type.
fn rules(f: &FieldConfig, kind: FieldType, at: &str, problems: &mut Vec<String>) -> Rules {
    let numeric = matches!(kind, FieldType::Integer | FieldType::Float);
    let mut bound = |name: &str, b: Option<Number>| -> Option<Number> {
        let b = b?;
        if !numeric {
            problems.push(format!("{at}: {name} applies to integer and float fields"));
            return None;
        }
        match b {
            Number::Float(x) if !x.is_finite() => {
                problems.push(format!("{at}: {name} must be a finite number"));
                None
            }
            Number::Float(x) if kind == FieldType::Integer && x.fract() != 0.0 => {
                problems.push(format!(
                    "{at}: {name} of an integer field must be an integer"
                ));
                None
            }
            // An integer field's bounds compare exactly.
            Number::Float(x) if kind == FieldType::Integer => Some(Number::Integer(x as i64)),
            b => Some(b),
        }
    };
    let minimum = bound("minimum", f.minimum);
    let maximum = bound("maximum", f.maximum);
    if let (Some(lo), Some(hi)) = (minimum, maximum)
        && lo.as_f64() > hi.as_f64()
    {
        problems.push(format!(
            "{at}: minimum {lo} is above maximum {hi}: no value is allowed"
        ));
    }
    let allowed = f.allowed.as_ref().and_then(|values| {
        if values.is_empty() {
            problems.push(format!("{at}: allowed is empty: no value is allowed"));
            return None;
        }
        match kind {
            FieldType::String => {
                let texts: Option<BTreeSet<String>> = values
                    .iter()
                    .map(|v| match v {
                        Scalar::Text(t) => Some(t.clone()),
                        _ => None,
                    })
                    .collect();
                if texts.is_none() {
                    problems.push(format!("{at}: allowed values of a string field are texts"));
                }
                texts.map(Allowed::Texts)
            }
            FieldType::Integer => {
                let ints: Option<BTreeSet<i64>> = values
                    .iter()
                    .map(|v| match v {
                        Scalar::Integer(i) => Some(*i),
                        _ => None,
                    })
                    .collect();
                if ints.is_none() {
                    problems.push(format!(
                        "{at}: allowed values of an integer field are integers"
                    ));
                }
                ints.map(Allowed::Integers)
            }
            _ => {
                problems.push(format!(
                    "{at}: allowed applies to string and integer fields"
                ));
                None
            }
        }
    });
    let max_length = f.max_length.and_then(|n| {
        if kind != FieldType::String {
            problems.push(format!("{at}: max_length applies to string fields"));
            return None;
        }
        match usize::try_from(n) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                problems.push(format!("{at}: max_length must be at least 1"));
                None
            }
        }
    });
    Rules {
        minimum,
        maximum,
        allowed,
        max_length,
    }
}

impl EventSchema {
    /// The Arrow schema of the decoded rows: one column per field, named by its path (nullable
    /// where the field may be absent or null); texts
    /// `Utf8`, integers `Int64`, floats `Float64`, booleans `Boolean`, timestamps and the event
    /// time (whatever its form) `Timestamp(ns, "UTC")`.
    pub fn arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.fields
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let data_type = match f.kind {
                        _ if i == self.time => crate::event_time_type(),
                        FieldType::String => DataType::Utf8,
                        FieldType::Integer => DataType::Int64,
                        FieldType::Float => DataType::Float64,
                        FieldType::Boolean => DataType::Boolean,
                        FieldType::Timestamp => {
                            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
                        }
                    };
                    Field::new(&f.name, data_type, f.nullable || !f.required)
                })
                .collect::<Vec<_>>(),
        ))
    }

    /// The field named `name`, by index.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> EventsConfig {
        toml::from_str(text).expect("a declaration")
    }

    const PAYMENTS: &str = r#"
id = "payment_id"
time = { field = "created_at", format = "epoch_millis" }
amount = "amount.value"
entity = "card.id"
unknown_fields = "ignore"
fields = [
  { name = "payment_id", type = "string", max_length = 64 },
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

    #[test]
    fn a_declaration_of_another_shape_is_checked_into_its_arrow_schema() {
        let schema = parse(PAYMENTS).check().expect("valid");
        assert_eq!(schema.fields[schema.id].name, "payment_id");
        assert_eq!(schema.time_format, TimeFormat::EpochMillis);
        assert_eq!(schema.amount, schema.index_of("amount.value"));
        assert!(schema.ignore_unknown);
        assert_eq!(schema.fields[2].path, vec!["card", "id"]);
        let arrow = schema.arrow_schema();
        let types: Vec<(&str, &DataType, bool)> = arrow
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), f.data_type(), f.is_nullable()))
            .collect();
        assert_eq!(types[1], ("created_at", &crate::event_time_type(), false));
        assert_eq!(types[5], ("country", &DataType::Utf8, true));
        assert_eq!(types[6], ("channel", &DataType::Int64, false));
        assert_eq!(types[7], ("amount.value", &DataType::Float64, false));
        assert_eq!(types[8], ("card_present", &DataType::Boolean, false));
        // An integer field's bounds stay exact.
        assert_eq!(
            schema.fields[7].rules.minimum,
            Some(Number::Integer(-1_000_000))
        );
    }

    #[test]
    fn every_problem_of_a_declaration_is_listed_at_once() {
        let bad = parse(
            r#"
id = "ref"
time = { field = "at", format = "epoch_nanos" }
amount = "label"
entity = "nowhere"
unknown_fields = "drop"
fields = [
  { name = "ref", type = "float", nullable = true },
  { name = "at", type = "date" },
  { name = "label", type = "string", minimum = 1, allowed = [] },
  { name = "n", type = "integer", minimum = 10, maximum = 1, allowed = ["a"], max_length = 3 },
  { name = "n", type = "integer" },
  { name = "x..y", type = "string", max_length = 0 },
  { name = "card", type = "string" },
  { name = "card.id", type = "string" },
  { name = "f", type = "float", minimum = 0.5, allowed = [1] },
  { name = "i", type = "integer", maximum = 2.5 },
]
"#,
        );
        let problems = bad.check().expect_err("invalid");
        let expect = [
            "\"at\": unknown type \"date\"",
            "\"label\": minimum applies to integer and float fields",
            "\"label\": allowed is empty",
            "\"n\": minimum 10 is above maximum 1",
            "\"n\": allowed values of an integer field are integers",
            "\"n\": max_length applies to string fields",
            "\"n\": declared twice",
            "\"x..y\": a path is member names joined by '.'",
            "\"x..y\": max_length must be at least 1",
            "\"card.id\": inside \"card\", which is declared a field of its own",
            "\"f\": allowed applies to string and integer fields",
            "\"i\": maximum of an integer field must be an integer",
            "job.events.id: \"ref\" must be a string or an integer field",
            "job.events.id: \"ref\" must be required and not nullable",
            "job.events.time.format: unknown format \"epoch_nanos\"",
            "job.events.amount: \"label\" must be an integer or a float field",
            "job.events.entity: \"nowhere\" is not a declared field",
            "job.events.unknown_fields: \"drop\" is neither",
        ];
        for e in expect {
            assert!(
                problems.iter().any(|p| p.contains(e)),
                "{e:?} not among {problems:#?}"
            );
        }
        assert_eq!(problems.len(), expect.len(), "{problems:#?}");
        // The time format and the field's type must agree.
        let mismatch = parse(
            r#"
id = "id"
time = { field = "at" }
fields = [{ name = "id", type = "integer" }, { name = "at", type = "integer" }]
"#,
        );
        let problems = mismatch
            .check()
            .expect_err("rfc3339 needs a timestamp field");
        assert!(
            problems[0].contains("the format \"rfc3339\" needs a timestamp field"),
            "{problems:#?}"
        );
    }

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
