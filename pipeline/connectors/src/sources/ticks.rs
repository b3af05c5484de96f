//! Price files: Parquet or CSV (plain or gzip) to ticks in the tick schema, ordered by event
//! time. CSV goes through arrow's CSV reader (quoted fields, embedded commas); a
//! [`CsvTicks`] mapping names the time, price and instrument columns of e.g. a Yahoo-style file.
//! Values the job cannot take (a non-positive price) are not this reader's business: the market
//! job rejects them, live and in backtests alike.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float64Array, RecordBatch, StringArray, TimestampNanosecondArray, UInt32Array,
};
use arrow::compute::{cast, concat_batches, take_record_batch};
use arrow::csv::ReaderBuilder;
use arrow::csv::reader::Format;
use arrow::datatypes::{DataType, Field, Schema, TimestampNanosecondType};
use chrono::{DateTime, NaiveDate};
use riskpipe_operators::columns;
use riskpipe_schemas::market;
use serde::Deserialize;

use super::file::read_file;
use super::history::History;
use crate::{PipelineError, Result};

/// How a price CSV maps to ticks, e.g. a Yahoo-style daily file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvTicks {
    /// Column of the date or time.
    pub time_column: String,
    /// chrono format of that column: a date format (`%m/%d/%Y`) or a date-time format.
    pub time_format: String,
    /// Column of the price.
    pub price_column: String,
    /// Column of the instrument id; without it every row is `instrument`.
    #[serde(default)]
    pub instrument_column: Option<String>,
    /// The instrument id when the file has no instrument column.
    #[serde(default)]
    pub instrument: Option<String>,
}

/// Reads a price history as ticks sorted by event time (stable: file order within a time).
/// Parquet already in the tick schema is cast to it; CSV goes through `csv` (without one, the
/// file has the tick schema's columns with RFC 3339 times).
pub fn load(path: &Path, csv: Option<&CsvTicks>) -> Result<History> {
    let name = path.to_string_lossy().to_lowercase();
    let ticks = if name.ends_with(".parquet") || name.ends_with(".pq") {
        conform(read_file(path)?)?
    } else {
        read_csv(path, csv)?
    };
    ordered(ticks, true)
}

/// Ticks (tick schema) as a history, sorted by event time (stable); `keep_rows` records where
/// each came from (a file's rows, for messages naming them).
pub fn ordered(ticks: RecordBatch, keep_rows: bool) -> Result<History> {
    let times = columns::primitive::<TimestampNanosecondType>(&ticks, market::TIME)?;
    let mut order: Vec<u32> = (0..ticks.num_rows() as u32).collect();
    order.sort_by_key(|&i| times.value(i as usize));
    let indices = UInt32Array::from(order.clone());
    Ok(History {
        events: take_record_batch(&ticks, &indices)?,
        event_time: market::TIME.into(),
        side: None,
        side_time: String::new(),
        source_rows: keep_rows.then(|| order.into()),
        partitions: None,
        refused: Vec::new(),
    })
}

/// A file in the tick schema, cast to it (so that e.g. a timestamp without zone is accepted).
fn conform(batch: RecordBatch) -> Result<RecordBatch> {
    let schema = riskpipe_schemas::market_tick_schema();
    let mut columns = Vec::new();
    for f in schema.fields() {
        match batch.column_by_name(f.name()) {
            Some(c) => columns.push(cast(c, f.data_type())?),
            None if f.is_nullable() => columns.push(arrow::array::new_null_array(
                f.data_type(),
                batch.num_rows(),
            )),
            None => {
                return Err(PipelineError::BadInput(format!(
                    "price history has no {} column",
                    f.name()
                )));
            }
        }
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

fn open(path: &Path) -> Result<Box<dyn Read>> {
    let file = File::open(path).map_err(PipelineError::io("opening", path))?;
    Ok(if path.to_string_lossy().to_lowercase().ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(std::io::BufReader::new(file))
    })
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> PipelineError {
    PipelineError::BadInput(format!("{}: {msg}", path.display()))
}

/// Every column of the CSV as text (the mapping decides what each means).
fn read_text_columns(path: &Path) -> Result<RecordBatch> {
    let format = Format::default().with_header(true);
    let (inferred, _) = format
        .infer_schema(open(path)?, Some(1))
        .map_err(|e| bad(path, e))?;
    let schema = Arc::new(Schema::new(
        inferred
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let reader = ReaderBuilder::new(schema.clone())
        .with_format(format)
        .with_batch_size(65_536)
        .build(open(path)?)
        .map_err(|e| bad(path, e))?;
    let batches = reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(path, e))?;
    concat_batches(&schema, &batches).map_err(|e| bad(path, e))
}

fn parse_time(value: &str, format: &str) -> Option<i64> {
    let value = value.trim();
    let ns = match chrono::NaiveDateTime::parse_from_str(value, format) {
        Ok(t) => t.and_utc().timestamp_nanos_opt(),
        Err(_) => NaiveDate::parse_from_str(value, format)
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .and_then(|t| t.and_utc().timestamp_nanos_opt()),
    };
    ns.or_else(|| {
        DateTime::parse_from_rfc3339(value)
            .ok()
            .and_then(|t| t.timestamp_nanos_opt())
    })
}

fn value(a: &StringArray, i: usize) -> &str {
    if a.is_valid(i) { a.value(i) } else { "" }
}

/// Parses a price CSV through `mapping`. Every row without a valid time, a number for a price
/// and an instrument is reported (up to 10), none is dropped silently.
fn read_csv(path: &Path, mapping: Option<&CsvTicks>) -> Result<RecordBatch> {
    let default = CsvTicks {
        time_column: market::TIME.into(),
        time_format: "%Y-%m-%dT%H:%M:%S%.fZ".into(),
        price_column: market::PRICE.into(),
        instrument_column: Some(market::INSTRUMENT.into()),
        instrument: None,
    };
    let m = mapping.unwrap_or(&default);
    let text = read_text_columns(path)?;
    let schema = text.schema();
    let header: Vec<&String> = schema.fields().iter().map(|f| f.name()).collect();
    let column = |name: &str| -> Result<&StringArray> {
        text.column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| {
                bad(
                    path,
                    format!("price CSV has no column {name:?} (has {header:?})"),
                )
            })
    };
    let (time, price) = (column(&m.time_column)?, column(&m.price_column)?);
    let instrument = m.instrument_column.as_deref().map(column).transpose()?;
    let n = text.num_rows();
    let (mut ids, mut times, mut prices) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut problems = Vec::new();
    for i in 0..n {
        let t = parse_time(value(time, i), &m.time_format);
        let p = value(price, i).trim().parse::<f64>().ok();
        let id = match instrument {
            Some(c) => value(c, i).trim(),
            None => m.instrument.as_deref().unwrap_or_default(),
        };
        match (t, p) {
            (Some(t), Some(p)) if !id.is_empty() => {
                ids.push(id.to_string());
                times.push(t);
                prices.push(p);
            }
            _ => problems.push(format!(
                "data row {}: time {:?}, price {:?}, instrument {id:?}",
                i + 1,
                value(time, i),
                value(price, i)
            )),
        }
    }
    if !problems.is_empty() {
        let shown: Vec<_> = problems.iter().take(10).cloned().collect();
        return Err(bad(
            path,
            format!(
                "{} price rows without a valid time, a numeric price and an instrument (format {:?}): {}",
                problems.len(),
                m.time_format,
                shown.join("; ")
            ),
        ));
    }
    let rows = ids.len();
    Ok(RecordBatch::try_new(
        riskpipe_schemas::market_tick_schema(),
        vec![
            Arc::new(StringArray::from(ids)) as ArrayRef,
            Arc::new(TimestampNanosecondArray::from(times).with_timezone("UTC")),
            Arc::new(Float64Array::from(prices)),
            arrow::array::new_null_array(&DataType::Float64, rows),
        ],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nasdaq_mapping() -> CsvTicks {
        CsvTicks {
            time_column: "Date".into(),
            time_format: "%m/%d/%Y".into(),
            price_column: "Adj Close".into(),
            instrument_column: None,
            instrument: Some("^IXIC".into()),
        }
    }

    fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("prices.csv");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn csv_ticks_are_parsed_ordered_and_bad_rows_listed() {
        // Quoted fields with commas inside: a naive split on ',' would shift every column.
        let (_dir, path) =
            write("Date,Name,Adj Close\n1/5/1999,\"Nasdaq, Inc.\",2208.05\n1/4/1999,x,2208.05\n");
        let h = load(&path, Some(&nasdaq_mapping())).expect("parse");
        assert_eq!(h.events.num_rows(), 2);
        let t =
            columns::primitive::<TimestampNanosecondType>(&h.events, market::TIME).expect("times");
        assert_eq!(t.value(0), 10_595 * 86_400_000_000_000); // 1999-01-04, moved first
        assert_eq!(t.value(1), 10_596 * 86_400_000_000_000);
        assert_eq!((h.source_row(0), h.source_row(1)), (1, 0));
        let (_dir, path) = write(
            "Date,Open,Adj Close\n1/5/1999,1,-3\n13/40/1999,1,5\n1/6/1999,1,null\n1/7/1999,1,5\n",
        );
        let e = load(&path, Some(&nasdaq_mapping())).expect_err("bad rows");
        let msg = e.to_string();
        // -3 parses (the job rejects it); the bad date and the non-number are listed.
        assert!(msg.contains("2 price rows"), "{msg}");
        assert!(
            msg.contains("data row 2") && msg.contains("data row 3"),
            "{msg}"
        );
        assert!(matches!(e, PipelineError::BadInput(_)));
        let (_dir, path) = write("Day,Price\n1/4/1999,3\n");
        let e = load(&path, Some(&nasdaq_mapping())).expect_err("no column");
        assert!(e.to_string().contains("no column \"Date\""), "{e}");
    }
}
