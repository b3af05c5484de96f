//! Declared events another reader already holds in Arrow columns (a history file's rows): each
//! row checked as a decoded payload is, by the same conversions, rules and reasons, so that a
//! backtest of a file refuses exactly the events live refuses.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, Float64Type, Int64Type, TimeUnit, TimestampNanosecondType, UInt64Type,
};
use riskpipe_schemas::declared::{DeclaredField, FieldType, Rules};

use super::Rejection;
use super::declared::{DeclaredJsonDecoder, Found, Value};

/// A column as the cells a payload's reader would find: one Arrow type per kind of JSON value.
enum Cells {
    Int(ArrayRef),
    UInt(ArrayRef),
    Float(ArrayRef),
    Bool(ArrayRef),
    Text(ArrayRef),
    Time(ArrayRef),
    /// A type no JSON value has (lists, structs, binary): every cell is of the wrong type.
    Other,
}

impl Cells {
    fn of(column: &ArrayRef) -> Cells {
        let to = |t: DataType| cast(column, &t).ok();
        let cells = match column.data_type() {
            d if d.is_signed_integer() => to(DataType::Int64).map(Cells::Int),
            d if d.is_unsigned_integer() => to(DataType::UInt64).map(Cells::UInt),
            d if d.is_floating() => to(DataType::Float64).map(Cells::Float),
            DataType::Boolean => Some(Cells::Bool(column.clone())),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                to(DataType::Utf8).map(Cells::Text)
            }
            DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => {
                to(DataType::Timestamp(TimeUnit::Nanosecond, None)).map(Cells::Time)
            }
            _ => None,
        };
        cells.unwrap_or(Cells::Other)
    }

    /// Whether every cell is what `f` declares, in its natural Arrow type: such a column
    /// without nulls and rules cannot be refused, and is not looked at row by row.
    fn natural(&self, f: &DeclaredField) -> bool {
        matches!(
            (self, f.kind),
            (Cells::Int(_), FieldType::Integer)
                | (Cells::Bool(_), FieldType::Boolean)
                | (Cells::Text(_), FieldType::String)
                | (Cells::Time(_), FieldType::Timestamp)
        )
    }

    /// What a payload's reader would find in row `row`. A file has no absent member: a null
    /// is absent where the field is optional, else a null. A text cell of a field declared
    /// otherwise is read as the JSON value it spells (CSV has no types); an integer cell of a
    /// string field as its digits (CSV's type inference makes such a column of ids integers).
    fn found(&self, row: usize, f: &DeclaredField, epoch_unit: Option<i64>) -> Found {
        let null = |a: &ArrayRef| a.is_null(row);
        match self {
            Cells::Int(a)
            | Cells::UInt(a)
            | Cells::Float(a)
            | Cells::Bool(a)
            | Cells::Text(a)
            | Cells::Time(a)
                if null(a) =>
            {
                if f.required {
                    Found::Null
                } else {
                    Found::Absent
                }
            }
            Cells::Int(a) => {
                let v = a.as_primitive::<Int64Type>().value(row);
                match f.kind {
                    FieldType::String => Found::Text(v.to_string()),
                    _ => Found::Int(v),
                }
            }
            Cells::UInt(a) => {
                let v = a.as_primitive::<UInt64Type>().value(row);
                match f.kind {
                    FieldType::String => Found::Text(v.to_string()),
                    _ => Found::UInt(v),
                }
            }
            Cells::Float(a) => Found::Float(a.as_primitive::<Float64Type>().value(row)),
            Cells::Bool(a) => Found::Bool(a.as_boolean().value(row)),
            Cells::Time(a) => {
                let ns = a.as_primitive::<TimestampNanosecondType>().value(row);
                match (f.kind, epoch_unit) {
                    // An epoch event time a file holds typed: its rules read it in its unit.
                    (FieldType::Integer, Some(unit)) => Found::Int(ns.div_euclid(unit)),
                    _ => Found::Time(ns),
                }
            }
            Cells::Text(a) => {
                let text = a.as_string::<i32>().value(row);
                match f.kind {
                    FieldType::String | FieldType::Timestamp => Found::Text(text.to_string()),
                    _ => spelled(text),
                }
            }
            Cells::Other => Found::Compound,
        }
    }
}

/// The JSON value a text cell spells, for a field declared a number or a boolean.
fn spelled(text: &str) -> Found {
    match serde_json::from_str::<serde_json::Value>(text.trim()) {
        Ok(serde_json::Value::Bool(b)) => Found::Bool(b),
        Ok(serde_json::Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Found::Int(i)
            } else if let Some(u) = n.as_u64() {
                Found::UInt(u)
            } else {
                n.as_f64().map_or(Found::Compound, Found::Float)
            }
        }
        Ok(serde_json::Value::Null) => Found::Null,
        Ok(serde_json::Value::String(s)) => Found::Text(s),
        _ => Found::Text(text.to_string()),
    }
}

impl DeclaredJsonDecoder {
    /// The rows of `batch` (columns named by the declared fields' paths; other columns are
    /// not looked at) that a decoded payload with the same values would be refused for, in row
    /// order, with the decoder's kinds and reasons: the shape of every field first, then the
    /// rules. A declared column the batch lacks is not looked at (whether a file may lack it is
    /// its reader's question); an undeclared column is not refused (a history carries its
    /// truth column beside the events).
    pub fn refusals(&self, batch: &RecordBatch) -> Vec<Rejection> {
        let declared = self.declared();
        // Only the columns whose cells could be refused are read row by row.
        let looked_at: Vec<(usize, &DeclaredField, Cells)> = declared
            .fields
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                let column = batch.column_by_name(&f.name)?;
                let cells = Cells::of(column);
                let typed_time = i == declared.time && matches!(cells, Cells::Time(_));
                let sure = (cells.natural(f) || typed_time)
                    && column.null_count() == 0
                    && f.rules == Rules::default()
                    && !(i == declared.time && f.kind == FieldType::Integer && !typed_time);
                (!sure).then_some((i, f, cells))
            })
            .collect();
        let mut refused = Vec::new();
        if looked_at.is_empty() {
            return refused;
        }
        let mut values: Vec<Option<Value>> = Vec::with_capacity(looked_at.len());
        'rows: for row in 0..batch.num_rows() {
            values.clear();
            for (i, f, cells) in &looked_at {
                let unit = (*i == declared.time)
                    .then(|| declared.time_format.nanos_per_unit())
                    .flatten();
                match Self::convert(f, cells.found(row, f, unit)) {
                    Ok(v) => values.push(v),
                    Err((kind, reason)) => {
                        refused.push(Rejection {
                            index: row,
                            reason,
                            kind,
                        });
                        continue 'rows;
                    }
                }
            }
            for ((i, f, _), value) in looked_at.iter().zip(values.drain(..)) {
                if let Some(value) = value
                    && let Err((kind, reason)) = self.check(*i, f, value)
                {
                    refused.push(Rejection {
                        index: row,
                        reason,
                        kind,
                    });
                    continue 'rows;
                }
            }
        }
        refused
    }
}

#[cfg(test)]
mod tests {
    use riskpipe_core::RejectKind;
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use riskpipe_schemas::declared::EventsConfig;

    use super::*;
    use crate::decoders::Decoder;

    fn payments() -> DeclaredJsonDecoder {
        let config: EventsConfig = toml::from_str(
            r#"
id = "id"
time = { field = "at", format = "epoch_millis" }
fields = [
  { name = "id", type = "string", max_length = 4 },
  { name = "at", type = "integer" },
  { name = "card.id", type = "string" },
  { name = "channel", type = "string", allowed = ["web", "pos"] },
  { name = "amount", type = "float", minimum = -100, maximum = 100 },
  { name = "note", type = "string", required = false },
]
"#,
        )
        .expect("toml");
        DeclaredJsonDecoder::new(config.check().expect("declaration"), 1 << 20)
    }

    /// A payment's id, time, card, channel and amount (`None`: null).
    type Payment<'a> = (
        Option<&'a str>,
        Option<i64>,
        Option<&'a str>,
        Option<&'a str>,
        Option<f64>,
    );

    /// Each row of a batch refused exactly when the same values as a JSON payload are, with
    /// the same kind and reason.
    #[test]
    fn rows_are_refused_as_their_payloads_are() {
        let decoder = payments();
        let rows: [Payment<'_>; 8] = [
            (Some("a1"), Some(1_000), Some("c1"), Some("web"), Some(5.0)),
            (
                Some("toolong"),
                Some(1_000),
                Some("c1"),
                Some("web"),
                Some(5.0),
            ),
            (Some("a3"), None, Some("c1"), Some("web"), Some(5.0)),
            (Some("a4"), Some(1_000), Some("c1"), Some("fax"), Some(5.0)),
            (
                Some("a5"),
                Some(1_000),
                Some("c1"),
                Some("web"),
                Some(-500.0),
            ),
            (Some("a6"), Some(1_000), None, Some("fax"), Some(5.0)),
            (
                Some("a7"),
                Some(i64::MAX),
                Some("c1"),
                Some("pos"),
                Some(f64::NAN),
            ),
            (
                Some("a8"),
                Some(2_000),
                Some("c2"),
                Some("pos"),
                Some(-100.0),
            ),
        ];
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Utf8, true),
                Field::new("at", DataType::Int64, true),
                Field::new("card.id", DataType::Utf8, true),
                Field::new("channel", DataType::Utf8, true),
                Field::new("amount", DataType::Float64, true),
                Field::new("TRUTH", DataType::Int64, true),
            ])),
            vec![
                Arc::new(rows.iter().map(|r| r.0).collect::<StringArray>()),
                Arc::new(rows.iter().map(|r| r.1).collect::<Int64Array>()),
                Arc::new(rows.iter().map(|r| r.2).collect::<StringArray>()),
                Arc::new(rows.iter().map(|r| r.3).collect::<StringArray>()),
                Arc::new(rows.iter().map(|r| r.4).collect::<Float64Array>()),
                Arc::new(Int64Array::from(vec![0; rows.len()])),
            ],
        )
        .expect("batch");
        let from_rows = decoder.refusals(&batch);
        let payloads: Vec<Vec<u8>> = rows
            .iter()
            .map(|r| {
                let mut o = serde_json::Map::new();
                let mut put = |k: &str, v: serde_json::Value| {
                    o.insert(k.to_string(), v);
                };
                put("id", r.0.into());
                put("at", r.1.into());
                put("card", serde_json::json!({ "id": r.2 }));
                put("channel", r.3.into());
                // JSON has no NaN: 1e999 is the payload's closest (no finite number).
                match r.4 {
                    Some(v) if v.is_nan() => {}
                    v => put("amount", v.into()),
                }
                let mut text = serde_json::to_vec(&o).expect("json");
                if r.4.is_some_and(f64::is_nan) {
                    text.pop();
                    text.extend_from_slice(br#","amount":1e999}"#);
                }
                text
            })
            .collect();
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let decoded = decoder
            .decode("payments", &decoder.schema().clone(), &refs)
            .expect("decode");
        let reasons = |r: &[Rejection]| -> Vec<(usize, RejectKind, String)> {
            r.iter()
                .map(|r| (r.index, r.kind, r.reason.clone()))
                .collect()
        };
        let want = vec![
            (
                1,
                RejectKind::Invalid,
                "field id: longer than 4 characters".to_string(),
            ),
            (
                2,
                RejectKind::Schema,
                "field at: null where a value is required".to_string(),
            ),
            (
                3,
                RejectKind::Invalid,
                "field channel: not one of the allowed values".to_string(),
            ),
            (
                4,
                RejectKind::Invalid,
                "field amount: below the minimum -100".to_string(),
            ),
            // The shape before the rules, whatever the order of the fields.
            (
                5,
                RejectKind::Schema,
                "field card.id: null where a value is required".to_string(),
            ),
            // The time's overflow comes before the amount's field in declaration order.
            (
                6,
                RejectKind::Invalid,
                "field at: outside the time range riskpipe represents (years 1677 to 2262)"
                    .to_string(),
            ),
        ];
        assert_eq!(reasons(&from_rows), want);
        // The payloads: the same, but for the NaN row's amount, which JSON cannot carry (its
        // 1e999 is refused as a schema problem at parse time) and row 6's time, checked first.
        let from_json = reasons(&decoded.rejected);
        assert_eq!(from_json[..5], want[..5]);
        assert_eq!(from_json.len(), 6);
    }

    #[test]
    fn a_non_finite_float_is_refused_as_out_of_range_and_text_cells_are_read_as_json_values() {
        let decoder = payments();
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Utf8, false),
                Field::new("at", DataType::Utf8, false),
                Field::new("card.id", DataType::Int64, false),
                Field::new("channel", DataType::Utf8, false),
                Field::new("amount", DataType::Float64, false),
            ])),
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
                Arc::new(StringArray::from(vec!["1000", "eleven", "2000"])),
                Arc::new(Int64Array::from(vec![7, 8, 9])),
                Arc::new(StringArray::from(vec!["web", "web", "web"])),
                Arc::new(Float64Array::from(vec![1.0, 1.0, f64::INFINITY])),
            ],
        )
        .expect("batch");
        let refused = decoder.refusals(&batch);
        let got: Vec<(usize, RejectKind, &str)> = refused
            .iter()
            .map(|r| (r.index, r.kind, r.reason.as_str()))
            .collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            got[0],
            (
                1,
                RejectKind::Schema,
                "field at: wrong type, expected an integer"
            )
        );
        assert_eq!((got[1].0, got[1].1), (2, RejectKind::Invalid));
        assert!(got[1].2.starts_with("field amount: "), "{}", got[1].2);
    }
}
