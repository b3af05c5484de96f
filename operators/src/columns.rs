//! Typed access to input columns, with errors that name the column and the problem: the only
//! way riskpipe reads a column of data that came from outside (no unchecked downcasts).

use arrow::array::{
    Array, ArrowPrimitiveType, AsArray, BooleanArray, Float64Array, Int64Array, PrimitiveArray,
    RecordBatch, StringArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampNanosecondType};

use crate::{OperatorError, Result};

fn bad(msg: String) -> OperatorError {
    OperatorError::BadInput(msg)
}

fn non_null(array: &dyn Array, name: &str) -> Result<()> {
    if array.null_count() > 0 {
        let row = (0..array.len()).find(|&i| array.is_null(i)).unwrap_or(0);
        return Err(bad(format!("column {name:?} is null at row {row}")));
    }
    Ok(())
}

/// The column `name`, or a bad-input error naming it.
pub fn get<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a arrow::array::ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| bad(format!("missing column {name:?}")))
}

/// The column `name` as a `T` array, without copying; a bad-input error naming the column and
/// its type when it is missing or of another type.
pub fn primitive<'a, T: ArrowPrimitiveType>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a PrimitiveArray<T>> {
    let col = get(batch, name)?;
    col.as_primitive_opt::<T>().ok_or_else(|| {
        bad(format!(
            "column {name:?} is {}, expected {}",
            col.data_type(),
            T::DATA_TYPE
        ))
    })
}

/// The column `name` as a `Utf8` array, without copying.
pub fn string<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray> {
    let col = get(batch, name)?;
    col.as_string_opt::<i32>().ok_or_else(|| {
        bad(format!(
            "column {name:?} is {}, expected Utf8",
            col.data_type()
        ))
    })
}

/// The column `name` as a boolean array, without copying.
pub fn boolean<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a BooleanArray> {
    let col = get(batch, name)?;
    col.as_boolean_opt().ok_or_else(|| {
        bad(format!(
            "column {name:?} is {}, expected Boolean",
            col.data_type()
        ))
    })
}

/// Event times as nanoseconds since the epoch (UTC). Accepts any timestamp unit.
pub fn event_times(batch: &RecordBatch, name: &str) -> Result<Vec<i64>> {
    let col = get(batch, name)?;
    non_null(col.as_ref(), name)?;
    match col.data_type() {
        DataType::Timestamp(TimeUnit::Nanosecond, _) => Ok(col
            .as_primitive::<TimestampNanosecondType>()
            .values()
            .to_vec()),
        DataType::Timestamp(_, tz) => {
            let ns = cast(col, &DataType::Timestamp(TimeUnit::Nanosecond, tz.clone()))
                .map_err(|e| bad(format!("column {name:?}: {e}")))?;
            Ok(ns
                .as_primitive::<TimestampNanosecondType>()
                .values()
                .to_vec())
        }
        other => Err(bad(format!(
            "column {name:?} must be a timestamp, found {other}"
        ))),
    }
}

/// A numeric column as f64 values.
pub fn f64_values(batch: &RecordBatch, name: &str) -> Result<Float64Array> {
    let col = get(batch, name)?;
    non_null(col.as_ref(), name)?;
    if !col.data_type().is_numeric() {
        return Err(bad(format!(
            "column {name:?} must be numeric, found {}",
            col.data_type()
        )));
    }
    let cast = cast(col, &DataType::Float64).map_err(|e| bad(format!("column {name:?}: {e}")))?;
    Ok(cast.as_primitive::<Float64Type>().clone())
}

/// Any column's values as text (Arrow's cast to Utf8: integers exactly, floats as the shortest
/// text that reads back the same number); a null stays null.
pub fn texts(batch: &RecordBatch, name: &str) -> Result<arrow::array::StringArray> {
    let col = get(batch, name)?;
    let cast = cast(col, &DataType::Utf8).map_err(|e| bad(format!("column {name:?}: {e}")))?;
    Ok(cast.as_string::<i32>().clone())
}

/// An integer column as i64 values.
pub fn i64_values(batch: &RecordBatch, name: &str) -> Result<Int64Array> {
    let col = get(batch, name)?;
    non_null(col.as_ref(), name)?;
    if !col.data_type().is_integer() {
        return Err(bad(format!(
            "column {name:?} must be an integer, found {}",
            col.data_type()
        )));
    }
    let cast = cast(col, &DataType::Int64).map_err(|e| bad(format!("column {name:?}: {e}")))?;
    Ok(cast.as_primitive::<Int64Type>().clone())
}

/// A key or id column: integers or strings.
#[derive(Debug)]
pub enum Keys {
    /// Integer keys (any integer type, as i64).
    Int(Int64Array),
    /// Text keys.
    Str(StringArray),
}

impl Keys {
    /// Row `row`'s value as an event id.
    pub fn id(&self, row: usize) -> EventId {
        match self {
            Keys::Int(a) => EventId::Int(a.value(row)),
            Keys::Str(a) => EventId::Str(a.value(row).into()),
        }
    }
}

/// An event's id, integer or text as declared: what labels name and what tells a re-delivered
/// event from a new one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventId {
    /// An integer id.
    Int(i64),
    /// A text id.
    Str(Box<str>),
}

/// The value alone (a stream's ids are all of one kind): an integer id hashes as fast as the
/// integer, which the per-event id sets (duplicates, label risk) do on every event.
impl std::hash::Hash for EventId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            EventId::Int(i) => i.hash(state),
            EventId::Str(s) => s.hash(state),
        }
    }
}

/// The key (or id) column `name`: integers (any integer type) or strings, never null. A key
/// combining several columns ([`crate::config::key_parts`]) is text: each part's text prefixed
/// by its length and a colon, so that distinct combinations never give the same key.
pub fn keys(batch: &RecordBatch, name: &str) -> Result<Keys> {
    if batch.column_by_name(name).is_none() && name.contains(crate::config::KEY_SEPARATOR) {
        let parts = crate::config::key_parts(name)
            .into_iter()
            .map(|part| keys(batch, part))
            .collect::<Result<Vec<_>>>()?;
        use std::fmt::Write;
        // Reused per row: the key, and an integer part's text.
        let (mut key, mut int) = (String::new(), String::new());
        let mut out = arrow::array::StringBuilder::with_capacity(batch.num_rows(), 0);
        for row in 0..batch.num_rows() {
            key.clear();
            for part in &parts {
                let text = match part {
                    Keys::Int(a) => {
                        int.clear();
                        let _ = write!(int, "{}", a.value(row));
                        int.as_str()
                    }
                    Keys::Str(a) => a.value(row),
                };
                let _ = write!(key, "{}:{text}", text.len());
            }
            out.append_value(&key);
        }
        return Ok(Keys::Str(out.finish()));
    }
    single_key(batch, name)
}

fn single_key(batch: &RecordBatch, name: &str) -> Result<Keys> {
    let col = get(batch, name)?;
    non_null(col.as_ref(), name)?;
    let dt = col.data_type();
    if dt.is_integer() {
        return i64_values(batch, name).map(Keys::Int);
    }
    if matches!(
        dt,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        let s = cast(col, &DataType::Utf8).map_err(|e| bad(format!("column {name:?}: {e}")))?;
        return Ok(Keys::Str(s.as_string::<i32>().clone()));
    }
    Err(bad(format!(
        "key column {name:?} must be an integer or a string, found {dt}"
    )))
}
