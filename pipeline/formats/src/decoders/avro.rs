//! Avro payloads in the Confluent wire format (byte 0, a 4-byte big-endian schema id, one Avro
//! binary datum) to Arrow batches. The writer schema comes from the schema registry by id; it is
//! resolved by Avro's rules to the reader made from a job's declaration
//! ([`super::avro_declared`]), or for market ticks to the published schema (`schemas/avro/`), so
//! fields the writer adds are dropped, fields it lacks take the reader's defaults, and
//! `int`→`long`, `float`→`double` are promoted. The resolved record then meets the same value
//! rules as JSON.
//!
//! What becomes a dead letter, and of which kind: no frame, a magic byte other than 0, a datum
//! that does not read or leaves bytes behind (`malformed`); a schema id the registry does not
//! know, a schema that is not Avro, a writer schema that does not resolve to the reader
//! (`schema`); a value the rules refuse or a time beyond the year 2262 (`invalid`). A registry
//! that cannot be reached is no message's fault: the batch fails and the pipeline stops
//! without committing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use apache_avro::types::Value;
use arrow::datatypes::SchemaRef;
use riskpipe_schemas::MarketTick;

use super::events::StrictEvent;
use super::{DecodedPayloads, Decoder, Rejection};
use crate::schema_registry::{SchemaRegistry, WriterSchema};
use crate::{PipelineError, Result};
use riskpipe_core::RejectKind;

/// A rejection's kind and reason.
type Refused = (RejectKind, String);

/// An event read from a resolved Avro record: the serde type with its date-times as
/// nanoseconds (its text date-time fields stay empty: only JSON carries them as text).
pub(crate) trait FromAvro: StrictEvent {
    /// The event of a record resolved to the published schema.
    fn from_avro(record: &Record<'_>) -> Result<(Self, Self::Times), Refused>;
}

/// A resolved record's fields by name.
pub(crate) struct Record<'a>(&'a [(String, Value)]);

impl Record<'_> {
    fn get(&self, name: &'static str) -> Result<&Value, Refused> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| (RejectKind::Schema, format!("missing field {name}")))
    }

    fn double(&self, name: &'static str) -> Result<f64, Refused> {
        match self.get(name)? {
            Value::Double(v) => Ok(*v),
            Value::Float(v) => Ok(f64::from(*v)),
            _ => Err(wrong(name)),
        }
    }

    fn optional_double(&self, name: &'static str) -> Result<Option<f64>, Refused> {
        match self.get(name)? {
            Value::Null => Ok(None),
            Value::Union(_, v) => match v.as_ref() {
                Value::Null => Ok(None),
                Value::Double(v) => Ok(Some(*v)),
                Value::Float(v) => Ok(Some(f64::from(*v))),
                _ => Err(wrong(name)),
            },
            _ => Err(wrong(name)),
        }
    }

    fn string(&self, name: &'static str) -> Result<String, Refused> {
        match self.get(name)? {
            Value::String(v) => Ok(v.clone()),
            _ => Err(wrong(name)),
        }
    }

    /// A time as nanoseconds since the epoch (timestamp-micros in the published schema; a
    /// millisecond or nanosecond writer is taken at its unit).
    fn time(&self, name: &'static str) -> Result<i64, Refused> {
        let ns = match self.get(name)? {
            Value::TimestampMicros(v) | Value::Long(v) => v.checked_mul(1_000),
            Value::TimestampMillis(v) => v.checked_mul(1_000_000),
            Value::TimestampNanos(v) => Some(*v),
            _ => return Err(wrong(name)),
        };
        ns.ok_or_else(|| {
            (
                RejectKind::Invalid,
                format!("field {name}: out of range (after the year 2262)"),
            )
        })
    }
}

fn wrong(name: &str) -> Refused {
    (RejectKind::Schema, format!("field {name}: wrong type"))
}

impl FromAvro for MarketTick {
    fn from_avro(r: &Record<'_>) -> Result<(Self, i64), Refused> {
        let time = r.time("TIME")?;
        Ok((
            MarketTick {
                instrument: r.string("INSTRUMENT")?,
                time: String::new(),
                price: r.double("PRICE")?,
                size: r.optional_double("SIZE")?,
            },
            time,
        ))
    }
}

/// The input events riskpipe reads in Avro.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Event {
    Tick,
}

/// One readable event: its Arrow schema, its published Avro schema and that record's name.
#[derive(Debug)]
struct Readable {
    arrow: SchemaRef,
    event: Event,
    reader: apache_avro::Schema,
    name: String,
}

/// The Avro decoder.
#[derive(Debug)]
pub struct AvroDecoder {
    max_bytes: usize,
    registry: Arc<SchemaRegistry>,
    events: Vec<Readable>,
    /// Declared events, each read by its declaration (before the published schemas).
    declared: Vec<super::avro_declared::DeclaredAvro>,
    /// Whether a writer schema id resolves to an event's published schema (why not, if not).
    resolves: Mutex<HashMap<(u32, Event), std::result::Result<(), String>>>,
}

impl AvroDecoder {
    /// A decoder fetching writer schemas from `registry`, refusing payloads over `max_bytes`.
    pub fn new(registry: Arc<SchemaRegistry>, max_bytes: usize) -> Result<Self> {
        // The published tick schema (declared events bring their own readers).
        let (name, arrow) = ("MarketTick", riskpipe_schemas::market_tick_schema());
        let json = riskpipe_schemas::avro::schema(name, &arrow).map_err(PipelineError::Bug)?;
        let reader = apache_avro::Schema::parse(&json)
            .map_err(|e| PipelineError::Bug(format!("the published {name} schema: {e}")))?;
        let events = vec![Readable {
            arrow,
            event: Event::Tick,
            reader,
            name: format!("{}.{name}", riskpipe_schemas::avro::NAMESPACE),
        }];
        Ok(Self {
            max_bytes,
            registry,
            events,
            declared: Vec::new(),
            resolves: Mutex::new(HashMap::new()),
        })
    }

    /// This decoder reading the events of `declared` by their declaration (as well as those
    /// declared before).
    pub fn declaring(mut self, declared: riskpipe_schemas::declared::EventSchema) -> Self {
        self.declared.push(super::avro_declared::DeclaredAvro::new(
            declared,
            self.max_bytes,
        ));
        self
    }

    /// Each payload's frame (index, schema id, datum) and the writer schemas of the ids met;
    /// what has no frame is refused into `rejected`.
    #[allow(clippy::type_complexity)]
    fn frames<'p>(
        &self,
        payloads: &[&'p [u8]],
        rejected: &mut Vec<Rejection>,
    ) -> Result<(Vec<(usize, u32, &'p [u8])>, HashMap<u32, Arc<WriterSchema>>)> {
        let mut framed = Vec::with_capacity(payloads.len());
        let mut writers: HashMap<u32, Arc<WriterSchema>> = HashMap::new();
        for (index, p) in payloads.iter().enumerate() {
            match frame(p, self.max_bytes) {
                Ok((id, datum)) => {
                    if let std::collections::hash_map::Entry::Vacant(e) = writers.entry(id) {
                        e.insert(self.registry.schema_by_id(id)?);
                    }
                    framed.push((index, id, datum));
                }
                Err((kind, reason)) => rejected.push(Rejection {
                    index,
                    reason,
                    kind,
                }),
            }
        }
        Ok((framed, writers))
    }

    /// Declared events: each writer resolved to the reader made from the declaration, each
    /// record checked as the declaration says.
    fn decode_declared(
        &self,
        d: &super::avro_declared::DeclaredAvro,
        payloads: &[&[u8]],
        stamps: &[Option<i64>],
    ) -> Result<DecodedPayloads> {
        let mut rejected = Vec::new();
        let (framed, writers) = self.frames(payloads, &mut rejected)?;
        // The reader made for each writer met, then one datum reader per writer.
        let mut readers: HashMap<u32, std::result::Result<Arc<apache_avro::Schema>, Refused>> =
            HashMap::new();
        for &(_, id, _) in &framed {
            readers.entry(id).or_insert_with(|| {
                writer_of(&writers, id).and_then(|writer| {
                    d.reader(id, writer)
                        .map_err(|why| (RejectKind::Schema, why))
                })
            });
        }
        let mut datum_readers = HashMap::new();
        for (&id, reader) in &readers {
            let built = match (writer_of(&writers, id), reader) {
                (Ok(writer), Ok(reader)) => {
                    apache_avro::reader::datum::GenericDatumReader::builder(writer)
                        .reader_schema(reader.as_ref())
                        .build()
                        .map_err(|err| {
                            let mut why = format!("schema id {id}: {err}");
                            why.truncate(240);
                            (RejectKind::Schema, why)
                        })
                }
                (Err(why), _) => Err(why),
                (_, Err(why)) => Err(why.clone()),
            };
            datum_readers.insert(id, built);
        }
        let mut rows = Vec::with_capacity(framed.len());
        let mut accepted = Vec::with_capacity(framed.len());
        for (index, id, datum) in framed {
            let read = match datum_readers.get(&id) {
                Some(Ok(reader)) => read_datum(reader, id, datum).and_then(|value| {
                    let stamp = stamps.get(index).copied().flatten();
                    let schema = match readers.get(&id) {
                        Some(Ok(schema)) => schema,
                        _ => {
                            return Err((RejectKind::Schema, format!("schema id {id}: no reader")));
                        }
                    };
                    d.decoder.checked(d.found(&value, schema)?, stamp)
                }),
                Some(Err(why)) => Err(why.clone()),
                None => Err((RejectKind::Schema, format!("schema id {id}: no reader"))),
            };
            match read {
                Ok(row) => {
                    rows.push(row);
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
            batch: d.decoder.batch(rows)?,
            accepted,
            rejected,
        })
    }

    /// Whether `writer` (id `id`) resolves to `r`'s published schema, cached per id.
    fn resolves(
        &self,
        id: u32,
        writer: &apache_avro::Schema,
        r: &Readable,
    ) -> std::result::Result<(), String> {
        if let Some(known) = self
            .resolves
            .lock()
            .ok()
            .and_then(|m| m.get(&(id, r.event)).cloned())
        {
            return known;
        }
        let verdict =
            apache_avro::schema_compatibility::SchemaCompatibility::can_read(writer, &r.reader)
                .map(|_| ())
                .map_err(|e| {
                    let mut why = format!("writer schema {id} does not resolve to {}: {e}", r.name);
                    why.truncate(240);
                    why
                });
        if let Ok(mut m) = self.resolves.lock() {
            m.insert((id, r.event), verdict.clone());
        }
        verdict
    }

    fn decode_as<T: FromAvro>(&self, r: &Readable, payloads: &[&[u8]]) -> Result<DecodedPayloads> {
        let mut rejected = Vec::new();
        let refuse = |rejected: &mut Vec<Rejection>, index, (kind, reason): Refused| {
            rejected.push(Rejection {
                index,
                reason,
                kind,
            });
        };
        let (framed, writers) = self.frames(payloads, &mut rejected)?;
        let mut datum_readers = HashMap::new();
        let mut rows = Vec::with_capacity(framed.len());
        let mut accepted = Vec::with_capacity(framed.len());
        for (index, id, datum) in framed {
            let writer = match writer_of(&writers, id) {
                Ok(w) => w,
                Err(why) => {
                    refuse(&mut rejected, index, why);
                    continue;
                }
            };
            if let Err(why) = self.resolves(id, writer, r) {
                refuse(&mut rejected, index, (RejectKind::Schema, why));
                continue;
            }
            let reader = match datum_readers.entry(id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    match apache_avro::reader::datum::GenericDatumReader::builder(writer)
                        .reader_schema(&r.reader)
                        .build()
                    {
                        Ok(reader) => e.insert(reader),
                        Err(err) => {
                            let mut why = format!("schema id {id}: {err}");
                            why.truncate(240);
                            refuse(&mut rejected, index, (RejectKind::Schema, why));
                            continue;
                        }
                    }
                }
            };
            match read_one::<T>(reader, id, datum) {
                Ok(row) => {
                    rows.push(row);
                    accepted.push(index);
                }
                Err(why) => refuse(&mut rejected, index, why),
            }
        }
        rejected.sort_by_key(|r| r.index);
        let batch = T::batch(&rows, &r.arrow).map_err(|e| {
            PipelineError::Bug(format!("checked Avro rows do not build a batch: {e}"))
        })?;
        Ok(DecodedPayloads {
            batch,
            accepted,
            rejected,
        })
    }
}

/// The schema id and datum of a Confluent-framed payload.
fn frame(p: &[u8], max_bytes: usize) -> std::result::Result<(u32, &[u8]), Refused> {
    if p.is_empty() {
        return Err((RejectKind::Empty, "empty payload".into()));
    }
    if p.len() > max_bytes {
        return Err((
            RejectKind::Oversized,
            format!(
                "payload of {} bytes exceeds max_message_bytes {max_bytes}",
                p.len()
            ),
        ));
    }
    if p[0] != 0 {
        return Err((
            RejectKind::Malformed,
            format!(
                "not the schema-registry wire format (first byte 0x{:02x}, not 0)",
                p[0]
            ),
        ));
    }
    match p.get(1..5) {
        Some(id) if p.len() > 5 => Ok((u32::from_be_bytes([id[0], id[1], id[2], id[3]]), &p[5..])),
        _ => Err((
            RejectKind::Malformed,
            format!(
                "truncated: {} bytes, no Avro datum after the frame",
                p.len()
            ),
        )),
    }
}

/// The writer schema of id `id`, or why a payload written with it is refused.
fn writer_of(
    writers: &HashMap<u32, Arc<WriterSchema>>,
    id: u32,
) -> std::result::Result<&apache_avro::Schema, Refused> {
    match writers.get(&id).map(Arc::as_ref) {
        Some(WriterSchema::Avro(w)) => Ok(w),
        Some(WriterSchema::Unreadable(why)) => {
            Err((RejectKind::Schema, format!("schema id {id}: {why}")))
        }
        Some(WriterSchema::Unknown) | None => Err((
            RejectKind::Schema,
            format!("unknown schema id {id} (not in the schema registry)"),
        )),
    }
}

/// One datum of writer schema `id`, read by `reader` (resolved): a record, with no bytes left
/// over.
fn read_datum(
    reader: &apache_avro::reader::datum::GenericDatumReader<'_>,
    id: u32,
    datum: &[u8],
) -> std::result::Result<Value, Refused> {
    let mut rest = datum;
    let value = reader.read_value(&mut rest).map_err(|_| {
        (
            RejectKind::Malformed,
            format!("not a readable Avro datum of schema id {id}"),
        )
    })?;
    if !rest.is_empty() {
        return Err((
            RejectKind::Malformed,
            format!("{} bytes after the Avro datum", rest.len()),
        ));
    }
    match value {
        Value::Record(_) => Ok(value),
        _ => Err((RejectKind::Schema, "not an Avro record".into())),
    }
}

/// Reads one datum of schema `id`, resolved, into an event that meets the value rules.
fn read_one<T: FromAvro>(
    reader: &apache_avro::reader::datum::GenericDatumReader<'_>,
    id: u32,
    datum: &[u8],
) -> std::result::Result<(T, T::Times), Refused> {
    let Value::Record(fields) = read_datum(reader, id, datum)? else {
        return Err((RejectKind::Schema, "not an Avro record".into()));
    };
    let (event, times) = T::from_avro(&Record(&fields))?;
    event
        .rules()
        .map_err(|(field, problem)| (RejectKind::Invalid, format!("field {field}: {problem}")))?;
    Ok((event, times))
}

impl Decoder for AvroDecoder {
    fn decode(
        &self,
        topic: &str,
        schema: &SchemaRef,
        payloads: &[&[u8]],
    ) -> Result<DecodedPayloads> {
        self.decode_records(topic, schema, payloads, &[])
    }

    fn decode_records(
        &self,
        _topic: &str,
        schema: &SchemaRef,
        payloads: &[&[u8]],
        stamps: &[Option<i64>],
    ) -> Result<DecodedPayloads> {
        if let Some(d) = self.declared.iter().find(|d| d.decoder.schema() == schema) {
            return self.decode_declared(d, payloads, stamps);
        }
        let Some(r) = self.events.iter().find(|r| &r.arrow == schema) else {
            return Err(PipelineError::Bug(
                "the Avro decoder reads declared events and ticks only".into(),
            ));
        };
        match r.event {
            Event::Tick => self.decode_as::<MarketTick>(r, payloads),
        }
    }
}
