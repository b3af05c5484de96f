//! A history file's rows made what live would have decoded: the declared fields cast to their
//! types (epoch times to timestamps), and the rows live would refuse taken out with the
//! decoder's own reasons.

use super::*;

/// The rows live would refuse, by the decoder's own checks of the declared events
/// ([`DeclaredJsonDecoder::refusals`]: the same kinds and reasons), taken out of the history.
pub(super) fn refuse_rows(
    batch: RecordBatch,
    shape: Shape<'_>,
    partitions: Option<Partitions>,
) -> Result<Kept> {
    let refusals = DeclaredJsonDecoder::new(shape.events.clone(), usize::MAX).refusals(&batch);
    if refusals.is_empty() {
        return Ok((batch, partitions, None, Vec::new()));
    }
    let mut keep = vec![true; batch.num_rows()];
    let refused = refusals
        .into_iter()
        .map(|r| {
            keep[r.index] = false;
            Refused {
                source_row: r.index,
                kind: r.kind,
                reason: r.reason,
            }
        })
        .collect();
    let kept: Vec<u32> = (0..batch.num_rows() as u32)
        .filter(|&r| keep[r as usize])
        .collect();
    let partitions = partitions.map(|p| Partitions {
        of_events: kept
            .iter()
            .filter_map(|&r| p.of_events.get(r as usize).copied())
            .collect(),
        ..p
    });
    let batch = take_record_batch(&batch, &UInt32Array::from(kept.clone()))?;
    Ok((batch, partitions, Some(kept), refused))
}

/// The declared fields first, cast to their types (an `Int32` id becomes `Int64`; an epoch
/// event time becomes a UTC timestamp in its declared unit), a field the declaration lets be
/// absent filled with nulls; then every other column of the file. An RFC 3339 event time is
/// left to the caller.
pub(super) fn conform(
    path: &Path,
    batch: RecordBatch,
    events: &EventSchema,
) -> Result<RecordBatch> {
    let schema = events.arrow_schema();
    let mut fields: Vec<Field> = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    let mut problems = Vec::new();
    for (index, f) in schema.fields().iter().enumerate() {
        let Some(c) = batch.column_by_name(f.name()) else {
            if f.is_nullable() {
                fields.push(f.as_ref().clone());
                columns.push(arrow::array::new_null_array(
                    f.data_type(),
                    batch.num_rows(),
                ));
            } else {
                problems.push(format!("missing column {:?}", f.name()));
            }
            continue;
        };
        let unit = events.time_format.nanos_per_unit();
        if index == events.time {
            match unit {
                Some(unit) if c.data_type().is_integer() => match epoch_times(c, unit) {
                    Ok(a) => {
                        fields.push(f.as_ref().clone());
                        columns.push(a);
                    }
                    Err(row) => problems.push(format!(
                        "column {:?} is not an epoch time in row {}",
                        f.name(),
                        row + 1
                    )),
                },
                None if c.data_type().is_integer() => problems.push(format!(
                    "column {:?} holds numbers; the declared time format is RFC 3339 text",
                    f.name()
                )),
                _ => {
                    fields.push(Field::new(f.name(), c.data_type().clone(), false));
                    columns.push(c.clone());
                }
            }
            continue;
        }
        match cast(c, f.data_type()) {
            Ok(a) if f.is_nullable() || a.null_count() == 0 => {
                fields.push(f.as_ref().clone());
                columns.push(a);
            }
            Ok(a) => {
                let row = (0..a.len()).find(|&i| a.is_null(i)).unwrap_or(0);
                problems.push(format!(
                    "column {:?} is not {} in row {}",
                    f.name(),
                    f.data_type(),
                    row + 1
                ));
            }
            Err(e) => problems.push(format!("column {:?}: {e}", f.name())),
        }
    }
    if !problems.is_empty() {
        return Err(bad(path, problems.join("; ")));
    }
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if schema.column_with_name(f.name()).is_none() {
            fields.push(f.as_ref().clone());
            columns.push(c.clone());
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Integer epoch times of `unit` nanoseconds each as UTC nanoseconds, or the first row that is
/// null or out of range.
fn epoch_times(column: &ArrayRef, unit: i64) -> std::result::Result<ArrayRef, usize> {
    let ints = cast(column, &DataType::Int64).map_err(|_| 0usize)?;
    let ints = ints.as_primitive::<Int64Type>();
    let mut ns = Vec::with_capacity(ints.len());
    for row in 0..ints.len() {
        match ints
            .is_valid(row)
            .then(|| ints.value(row).checked_mul(unit))
            .flatten()
        {
            Some(t) => ns.push(t),
            None => return Err(row),
        }
    }
    Ok(Arc::new(
        TimestampNanosecondArray::from(ns).with_timezone("UTC"),
    ))
}
