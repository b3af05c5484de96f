//! Admission of numbers: an event carrying a non-finite number, or one beyond
//! ±[`riskpipe_schemas::VALUE_LIMIT`], is refused before it reaches any state, whatever its
//! schema declares, so no window sum, mean, explanation baseline or model input can become
//! non-finite through it.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float32Type, Float64Type};

/// The rows of a batch of events holding a number out of range, each with its reason (the
/// first such field of the row), in row order.
#[derive(Debug, Default)]
pub struct OutOfRange(Vec<(usize, String)>);

impl OutOfRange {
    /// Every floating-point column of `events` checked (integers cannot overflow a sum of
    /// f64 or an f32 input at the 10¹⁵ limit's scale, and are exact as ids). One pass per
    /// float column, no copy; a batch with none out of range allocates nothing.
    pub fn of(events: &RecordBatch) -> Self {
        let mut found: Vec<(usize, String)> = Vec::new();
        for (field, column) in events.schema().fields().iter().zip(events.columns()) {
            let mut scan = |values: &mut dyn Iterator<Item = f64>| {
                for (row, v) in values.enumerate() {
                    if let Some(problem) = riskpipe_schemas::out_of_range(v)
                        && column.is_valid(row)
                    {
                        found.push((row, format!("field {}: {problem}", field.name())));
                    }
                }
            };
            match field.data_type() {
                DataType::Float64 => {
                    scan(
                        &mut column
                            .as_primitive::<Float64Type>()
                            .values()
                            .iter()
                            .copied(),
                    );
                }
                DataType::Float32 => scan(
                    &mut column
                        .as_primitive::<Float32Type>()
                        .values()
                        .iter()
                        .map(|&v| f64::from(v)),
                ),
                _ => {}
            }
        }
        // The first field of a row names it (columns were scanned in order; the sort is stable).
        found.sort_by_key(|(row, _)| *row);
        found.dedup_by_key(|(row, _)| *row);
        Self(found)
    }

    /// Why `row` is refused, if it is.
    pub fn reason(&self, row: usize) -> Option<&str> {
        self.0
            .binary_search_by_key(&row, |(r, _)| *r)
            .ok()
            .map(|i| self.0[i].1.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float32Array, Float64Array, Int64Array};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    #[test]
    fn numbers_beyond_the_limit_or_not_finite_are_named_by_field_and_row() {
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("ID", DataType::Int64, false),
                Field::new("AMOUNT", DataType::Float64, true),
                Field::new("RATE", DataType::Float32, false),
            ])),
            vec![
                Arc::new(Int64Array::from(vec![i64::MAX; 6])),
                Arc::new(Float64Array::from(vec![
                    Some(1e15),
                    Some(-1e15),
                    Some(1.000_000_000_000_000_2e15),
                    Some(f64::NAN),
                    None,
                    Some(f64::INFINITY),
                ])),
                Arc::new(Float32Array::from(vec![
                    0.5,
                    0.5,
                    0.5,
                    f32::INFINITY,
                    f32::NAN,
                    0.5,
                ])),
            ],
        )
        .expect("batch");
        let refused = OutOfRange::of(&batch);
        assert_eq!(refused.reason(0), None, "exactly the limit is taken");
        assert_eq!(refused.reason(1), None, "so is its negative");
        let beyond =
            "beyond ±1e15, the range in which window sums, means and model inputs stay finite";
        assert_eq!(
            refused.reason(2),
            Some(format!("field AMOUNT: {beyond}").as_str())
        );
        assert_eq!(
            refused.reason(3),
            Some("field AMOUNT: not a finite number"),
            "the first field of the row names it"
        );
        assert_eq!(refused.reason(4), Some("field RATE: not a finite number"));
        assert_eq!(refused.reason(5), Some("field AMOUNT: not a finite number"));
        assert!(OutOfRange::of(&batch.slice(0, 2)).0.is_empty());
    }
}
