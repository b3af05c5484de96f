//! Records to Avro in the schema registry's wire format (byte 0, the 4-byte big-endian schema
//! id, the Avro binary datum), written column by column straight from Arrow: no per-record
//! value tree. Each output's schema is `riskpipe_schemas::avro::schema` of its Arrow schema (the
//! files under `schemas/avro/`), registered once per topic under the configured subject
//! strategy the first time the topic is written.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, AsArray, BooleanArray, Float64Array, Int64Array, ListArray, RecordBatch, StringArray,
    StructArray, TimestampNanosecondArray,
};
use arrow::datatypes::{
    DataType, Float64Type, Int64Type, SchemaRef, TimeUnit, TimestampNanosecondType,
};

use super::{Encoder, Payloads};
use crate::schema_registry::{SchemaRegistry, SubjectStrategy};
use crate::{PipelineError, Result};

/// The Avro encoder.
#[derive(Debug)]
pub struct AvroEncoder {
    registry: Arc<SchemaRegistry>,
    subjects: SubjectStrategy,
    /// Schema id per (topic, Arrow schema) written so far.
    ids: HashMap<(String, SchemaRef), u32>,
}

impl AvroEncoder {
    /// An encoder registering its schemas with `registry`.
    pub fn new(registry: Arc<SchemaRegistry>, subjects: SubjectStrategy) -> Self {
        Self {
            registry,
            subjects,
            ids: HashMap::new(),
        }
    }

    fn id(&mut self, topic: &str, schema: &SchemaRef) -> Result<u32> {
        if let Some(id) = self.ids.get(&(topic.to_string(), schema.clone())) {
            return Ok(*id);
        }
        let name = record_name(schema)?;
        let avro = riskpipe_schemas::avro::schema(&name, schema).map_err(PipelineError::Bug)?;
        let subject = self.subjects.subject(
            topic,
            &format!("{}.{name}", riskpipe_schemas::avro::NAMESPACE),
        );
        let id = self.registry.register(&subject, &avro.to_string())?;
        tracing::info!(topic, subject, id, "Avro schema registered");
        self.ids.insert((topic.to_string(), schema.clone()), id);
        Ok(id)
    }
}

/// The Avro record name of an output schema: a published event's, found by its fields, or
/// the name its metadata gives (records whose shape follows a declaration).
fn record_name(schema: &SchemaRef) -> Result<String> {
    riskpipe_schemas::avro::events()
        .into_iter()
        .find(|(_, _, s)| s.fields() == schema.fields())
        .map(|(_, name, _)| name.to_string())
        .or_else(|| {
            schema
                .metadata()
                .get(riskpipe_schemas::avro::RECORD_NAME)
                .cloned()
        })
        .ok_or_else(|| PipelineError::Bug("an output schema with no Avro record name".into()))
}

/// Avro's zig-zag variable-length `long`.
fn long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn string(out: &mut Vec<u8>, s: &str) {
    long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

/// One column, typed once per batch.
enum Column<'a> {
    Long(&'a Int64Array),
    Double(&'a Float64Array),
    Boolean(&'a BooleanArray),
    Str(&'a StringArray),
    /// Nanoseconds, written as timestamp-micros.
    Time(&'a TimestampNanosecondArray),
    /// A list of records.
    Records(&'a ListArray, Vec<Column<'a>>),
}

impl<'a> Column<'a> {
    fn of(array: &'a dyn Array) -> Result<Self> {
        Ok(match array.data_type() {
            DataType::Int64 => Column::Long(array.as_primitive::<Int64Type>()),
            DataType::Float64 => Column::Double(array.as_primitive::<Float64Type>()),
            DataType::Boolean => Column::Boolean(array.as_boolean()),
            DataType::Utf8 => Column::Str(array.as_string::<i32>()),
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                Column::Time(array.as_primitive::<TimestampNanosecondType>())
            }
            DataType::List(_) => {
                let list = array.as_list::<i32>();
                let items: &StructArray = list.values().as_struct();
                let fields = items
                    .columns()
                    .iter()
                    .map(|c| Column::of(c.as_ref()))
                    .collect::<Result<Vec<_>>>()?;
                Column::Records(list, fields)
            }
            other => {
                return Err(PipelineError::Bug(format!(
                    "an output column of type {other} has no Avro form"
                )));
            }
        })
    }

    fn is_null(&self, i: usize) -> bool {
        match self {
            Column::Long(a) => a.is_null(i),
            Column::Double(a) => a.is_null(i),
            Column::Boolean(a) => a.is_null(i),
            Column::Str(a) => a.is_null(i),
            Column::Time(a) => a.is_null(i),
            Column::Records(a, _) => a.is_null(i),
        }
    }

    fn write(&self, out: &mut Vec<u8>, i: usize) {
        match self {
            Column::Long(a) => long(out, a.value(i)),
            Column::Double(a) => out.extend_from_slice(&a.value(i).to_le_bytes()),
            Column::Boolean(a) => out.push(u8::from(a.value(i))),
            Column::Str(a) => string(out, a.value(i)),
            Column::Time(a) => long(out, a.value(i).div_euclid(1_000)),
            Column::Records(list, fields) => {
                let offsets = list.value_offsets();
                let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
                if end > start {
                    long(out, (end - start) as i64);
                    for item in start..end {
                        for f in fields {
                            f.write(out, item);
                        }
                    }
                }
                long(out, 0); // the end of the array's blocks
            }
        }
    }
}

/// Writes row `i` of `columns` (whose fields say which are nullable) as one Avro record.
fn record(out: &mut Vec<u8>, columns: &[(bool, Column<'_>)], i: usize) {
    for (nullable, c) in columns {
        if *nullable {
            // ["null", T]: branch 0 is null.
            if c.is_null(i) {
                long(out, 0);
                continue;
            }
            long(out, 1);
        }
        c.write(out, i);
    }
}

impl Encoder for AvroEncoder {
    fn encode(&mut self, topic: &str, records: &RecordBatch, out: &mut Payloads) -> Result<()> {
        let schema = records.schema();
        let id = self.id(topic, &schema)?;
        let columns = schema
            .fields()
            .iter()
            .zip(records.columns())
            .map(|(f, c)| Ok((f.is_nullable(), Column::of(c.as_ref())?)))
            .collect::<Result<Vec<_>>>()?;
        for i in 0..records.num_rows() {
            out.push_with(|buf| {
                buf.push(0);
                buf.extend_from_slice(&id.to_be_bytes());
                record(buf, &columns, i);
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longs_are_zig_zag_varints() {
        for (v, bytes) in [
            (0i64, vec![0u8]),
            (-1, vec![1]),
            (1, vec![2]),
            (-64, vec![0x7f]),
            (64, vec![0x80, 0x01]),
        ] {
            let mut out = Vec::new();
            long(&mut out, v);
            assert_eq!(out, bytes, "{v}");
        }
    }
}
