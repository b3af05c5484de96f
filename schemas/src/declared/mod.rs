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

mod avro_schema;
mod json_schema;

pub use avro_schema::fields_from_avro_schema;
pub use json_schema::{JSON_SCHEMA_KEYWORDS, fields_from_json_schema};

/// The types a field may declare.
pub const TYPES: [&str; 5] = ["string", "integer", "float", "boolean", "timestamp"];

/// The forms an event time may take.
pub const TIME_FORMATS: [&str; 5] = [
    "rfc3339",
    "epoch_seconds",
    "epoch_millis",
    "epoch_micros",
    "kafka_timestamp",
];

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
    /// Labels only (`[job.labels]`): the field saying fraud or not (integer 1 / 0, or boolean).
    #[serde(default)]
    pub label: Option<String>,
    /// Fields never published as they are, by path: `"drop"` (left out of alerts and dead
    /// letters) or `"pseudonymize"` (published as its keyed pseudonym).
    #[serde(default)]
    pub sensitive: BTreeMap<String, String>,
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
    /// `epoch_millis`, `epoch_micros` (an `integer` field), or `kafka_timestamp` (the Kafka
    /// record's timestamp; `field` names the column riskpipe fills with it, not a declared
    /// field).
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
    /// The bound as a float.
    pub fn as_f64(self) -> f64 {
        match self {
            Number::Integer(i) => i as f64,
            Number::Float(f) => f,
        }
    }

    /// How integer `v` compares with the bound (exactly, for an integer bound).
    pub fn compare(self, v: i64) -> std::cmp::Ordering {
        match self {
            Number::Integer(b) => v.cmp(&b),
            Number::Float(b) => (v as f64).total_cmp(&b),
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
    /// The type a config names (one of [`TYPES`]).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "string" => FieldType::String,
            "integer" => FieldType::Integer,
            "float" => FieldType::Float,
            "boolean" => FieldType::Boolean,
            "timestamp" => FieldType::Timestamp,
            _ => return None,
        })
    }

    /// The Arrow type of a column of this field (an event time is always a UTC timestamp,
    /// whatever its declared form: [`crate::event_time_type`]).
    pub fn data_type(self) -> DataType {
        match self {
            FieldType::String => DataType::Utf8,
            FieldType::Integer => DataType::Int64,
            FieldType::Float => DataType::Float64,
            FieldType::Boolean => DataType::Boolean,
            FieldType::Timestamp => DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        }
    }

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
    /// The Kafka record's timestamp (milliseconds since the epoch), no member of the payload; a
    /// history file holds it in epoch milliseconds.
    KafkaTimestamp,
}

impl TimeFormat {
    /// Nanoseconds per unit of an epoch format (`None` for RFC 3339 text).
    pub fn nanos_per_unit(self) -> Option<i64> {
        match self {
            TimeFormat::Rfc3339 => None,
            TimeFormat::EpochSeconds => Some(1_000_000_000),
            TimeFormat::EpochMillis => Some(1_000_000),
            TimeFormat::EpochMicros => Some(1_000),
            TimeFormat::KafkaTimestamp => Some(1_000_000),
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
    /// Whether, and how, it is kept from what riskpipe publishes.
    pub sensitive: Option<Sensitive>,
}

/// How a sensitive field is kept from what riskpipe publishes (alerts, dead letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sensitive {
    /// Left out.
    Drop,
    /// Replaced by its keyed pseudonym (`[kafka.pseudonyms]`'s secret).
    Pseudonymize,
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
    /// The label field's index (labels only).
    pub label: Option<usize>,
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
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{at}: {e}"));
        // An Avro schema (`.avsc`): its record's leaves; members it lacks are refused.
        if file.to_lowercase().ends_with(".avsc") {
            match text.map(|t| fields_from_avro_schema(&t)) {
                Ok(Ok(fields)) => {
                    self.fields = fields;
                    if self.unknown_fields.is_none() {
                        self.unknown_fields = Some("refuse".into());
                    }
                }
                Ok(Err(problems)) => self
                    .schema_file_problems
                    .extend(problems.into_iter().map(|p| format!("{at}: {p}"))),
                Err(problem) => self.schema_file_problems.push(problem),
            }
            return;
        }
        let schema = text.and_then(|text| {
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| format!("{at}: not JSON: {e}"))
        });
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

    /// [`EventsConfig::check`] of a declaration under the config section `section` (e.g.
    /// `job.labels`), which its problems name.
    pub fn check_as(&self, section: &str) -> Result<EventSchema, Vec<String>> {
        self.check().map_err(|problems| {
            problems
                .into_iter()
                .map(|p| p.replacen("job.events", section, 1))
                .collect()
        })
    }

    /// The Arrow schema of the declaration as far as it can be read: [`EventSchema::arrow_schema`]
    /// when it checks, else a column for each field of a known type (so that what reads the
    /// columns can list its own problems beside the declaration's).
    pub fn best_effort_schema(&self) -> SchemaRef {
        if let Ok(declared) = self.check() {
            return declared.arrow_schema();
        }
        Arc::new(Schema::new(
            self.fields
                .iter()
                .filter_map(|f| {
                    let kind = FieldType::parse(&f.kind)?;
                    let data_type = match f.name == self.time.field {
                        true => crate::event_time_type(),
                        false => kind.data_type(),
                    };
                    Some(Field::new(&f.name, data_type, f.nullable || !f.required))
                })
                .chain(
                    (self.time.format == "kafka_timestamp")
                        .then(|| Field::new(&self.time.field, crate::event_time_type(), false)),
                )
                .collect::<Vec<_>>(),
        ))
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
            let kind = FieldType::parse(&f.kind);
            if kind.is_none() {
                problems.push(format!(
                    "{at}: unknown type {:?} (one of {})",
                    f.kind,
                    TYPES.join(", ")
                ));
            }
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
                sensitive: None,
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
        // The record's timestamp fills a column of its own, after the declared fields.
        if self.time.format == "kafka_timestamp" {
            if index.contains_key(self.time.field.as_str()) {
                problems.push(format!(
                    "job.events.time.field: {:?} is a declared field; with the format \"kafka_timestamp\" it names the column riskpipe fills with the record's timestamp, no member of the payload",
                    self.time.field
                ));
            } else {
                index.insert(self.time.field.as_str(), fields.len());
                fields.push(DeclaredField {
                    name: self.time.field.clone(),
                    path: vec![self.time.field.clone()],
                    kind: FieldType::Integer,
                    required: true,
                    nullable: false,
                    rules: Rules::default(),
                    sensitive: None,
                });
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
            "kafka_timestamp" => Some(TimeFormat::KafkaTimestamp),
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
        for (name, how) in &self.sensitive {
            let at = format!("job.events.sensitive {name:?}");
            let Some(&i) = index.get(name.as_str()) else {
                problems.push(format!("{at}: not a declared field"));
                continue;
            };
            let how = match how.as_str() {
                "drop" => Sensitive::Drop,
                "pseudonymize" => Sensitive::Pseudonymize,
                other => {
                    problems.push(format!(
                        "{at}: {other:?} is neither \"drop\" nor \"pseudonymize\""
                    ));
                    continue;
                }
            };
            if Some(i) == time {
                problems.push(format!(
                    "{at}: the event time is in every record riskpipe publishes and has no pseudonym"
                ));
            } else if how == Sensitive::Drop && (Some(i) == id || Some(i) == entity) {
                problems.push(format!(
                    "{at}: the id and the entity are in every record riskpipe publishes: declare it \"pseudonymize\""
                ));
            } else if how == Sensitive::Pseudonymize
                && !matches!(fields[i].kind, FieldType::String | FieldType::Integer)
            {
                problems.push(format!(
                    "{at}: only a string or an integer field has a pseudonym; declare it \"drop\""
                ));
            }
            fields[i].sensitive = Some(how);
        }
        let label = self.label.as_deref().and_then(|name| {
            let i = find("label", name, &mut problems)?;
            let f = &fields[i];
            if !matches!(f.kind, FieldType::Integer | FieldType::Boolean) {
                problems.push(format!(
                    "job.events.label: {name:?} must be an integer (1 fraud, 0 genuine) or a boolean field"
                ));
            }
            if f.nullable || !f.required {
                problems.push(format!(
                    "job.events.label: {name:?} must be required and not nullable: every label says fraud or not"
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
                label,
                ignore_unknown,
            }),
            _ => Err(problems),
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
                    let data_type = match i == self.time {
                        true => crate::event_time_type(),
                        false => f.kind.data_type(),
                    };
                    Field::new(&f.name, data_type, f.nullable || !f.required)
                })
                .collect::<Vec<_>>(),
        ))
    }

    /// Whether field `i` is a member of the payload (the event time filled from the Kafka
    /// record's timestamp is not).
    pub fn in_payload(&self, i: usize) -> bool {
        !(i == self.time && self.time_format == TimeFormat::KafkaTimestamp)
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
    fn sensitive_fields_are_checked_and_kept_on_their_fields() {
        let text = r#"
id = "ref"
time = { field = "at", format = "epoch_millis" }
entity = "card"
sensitive = { SENSITIVE }
fields = [
  { name = "ref", type = "string" },
  { name = "at", type = "integer" },
  { name = "card", type = "string" },
  { name = "pan", type = "string" },
  { name = "amount", type = "float" },
]
"#;
        let good = parse(&text.replace("SENSITIVE", r#"pan = "drop", card = "pseudonymize""#))
            .check()
            .expect("valid");
        let how = |name: &str| good.fields[good.index_of(name).expect(name)].sensitive;
        assert_eq!(how("pan"), Some(Sensitive::Drop));
        assert_eq!(how("card"), Some(Sensitive::Pseudonymize));
        assert_eq!(how("amount"), None);
        let problems = parse(&text.replace(
            "SENSITIVE",
            r#"nowhere = "drop", pan = "hide", at = "pseudonymize", ref = "drop", amount = "pseudonymize""#,
        ))
        .check()
        .expect_err("invalid");
        for expected in [
            "\"nowhere\": not a declared field",
            "\"pan\": \"hide\" is neither \"drop\" nor \"pseudonymize\"",
            "\"at\": the event time is in every record",
            "\"ref\": the id and the entity are in every record",
            "\"amount\": only a string or an integer field has a pseudonym",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{expected} not in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), 5, "{problems:#?}");
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
}
