//! Fraud history files: read a Parquet or CSV history, check it, conform it to the transaction
//! schema, order it by event time and derive the fraud-label events a live deployment would have
//! received.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, TimestampNanosecondArray, UInt32Array,
};
use arrow::compute::{
    SortColumn, cast, concat_batches, filter_record_batch, lexsort_to_indices, sort_to_indices,
    take_record_batch,
};
use arrow::csv::ReaderBuilder;
use arrow::csv::reader::Format;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use riskpipe_operators::{FeatureConfig, columns};
use riskpipe_schemas::{label, tx};
use serde::Deserialize;

use super::history::History;
use crate::{PipelineError, Result};
use riskpipe_core::Partitions;

fn bad(path: &Path, msg: impl std::fmt::Display) -> PipelineError {
    PipelineError::BadInput(format!("{}: {msg}", path.display()))
}

fn default_batch_rows() -> usize {
    8192
}
fn default_label_delay() -> Duration {
    Duration::from_secs(7 * 86_400)
}
fn default_label() -> String {
    riskpipe_schemas::label::TX_FRAUD.into()
}

/// How a history file is replayed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    /// Rows per micro-batch.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// A fraud's label event is emitted this long after its transaction.
    #[serde(default = "default_label_delay", with = "humantime_serde")]
    pub label_delay: Duration,
    /// Label column of the history (1 = fraud).
    #[serde(default = "default_label")]
    pub label: String,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            batch_rows: default_batch_rows(),
            label_delay: default_label_delay(),
            label: default_label(),
        }
    }
}

/// Reads, checks and orders a fraud history file for replay.
pub fn load(features: &FeatureConfig, replay: &ReplayConfig, input: &Path) -> Result<History> {
    let raw = read_file(input)?;
    prepare(input, raw, features, replay, None)
}

/// Reads every row of a Parquet or CSV file (by extension; `.csv` and `.csv.gz`-less CSV only).
pub fn read_file(path: &Path) -> Result<RecordBatch> {
    let name = path.to_string_lossy().to_lowercase();
    let file = File::open(path).map_err(PipelineError::io("opening", path))?;
    let (schema, batches): (SchemaRef, Vec<RecordBatch>) = if name.ends_with(".csv") {
        let format = Format::default().with_header(true);
        let (schema, _) = format
            .infer_schema(
                File::open(path).map_err(PipelineError::io("opening", path))?,
                Some(10_000),
            )
            .map_err(|e| bad(path, e))?;
        let schema = Arc::new(schema);
        let reader = ReaderBuilder::new(schema.clone())
            .with_format(format)
            .with_batch_size(65_536)
            .build(file)
            .map_err(|e| bad(path, e))?;
        let batches = reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(path, e))?;
        (schema, batches)
    } else if name.ends_with(".parquet") || name.ends_with(".pq") {
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(path, e))?;
        let schema = builder.schema().clone();
        let reader = builder
            .with_batch_size(65_536)
            .build()
            .map_err(|e| bad(path, e))?;
        let batches = reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(path, e))?;
        (schema, batches)
    } else {
        return Err(bad(path, "unknown file type: expected .parquet or .csv"));
    };
    concat_batches(&schema, &batches).map_err(|e| bad(path, e))
}

/// A column replay needs: name, type check, what the type should be.
type Requirement<'a> = (&'a str, fn(&DataType) -> bool, &'a str);

/// Checks the columns replay needs (present, right type, no nulls — naming the first bad row),
/// conforms the transaction columns to the transaction schema (other columns, such as the label,
/// follow them), turns the event time into UTC nanoseconds and orders by (event time,
/// tie-break). Rows read from a topic (`partitions`) keep each partition's own order: its
/// partitions are merged by (event time, tie-break) as a consumer reading all of them would.
pub fn prepare(
    path: &Path,
    batch: RecordBatch,
    features: &FeatureConfig,
    replay: &ReplayConfig,
    partitions: Option<Partitions>,
) -> Result<History> {
    let utc = DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
    let mut required: Vec<Requirement<'_>> = vec![
        (
            &features.event_time,
            |d| {
                matches!(
                    d,
                    DataType::Timestamp(..) | DataType::Utf8 | DataType::LargeUtf8
                )
            },
            "a timestamp",
        ),
        (
            &features.order_by,
            |d| d.is_numeric() || matches!(d, DataType::Utf8 | DataType::Timestamp(..)),
            "sortable",
        ),
        (&replay.label, |d| d.is_integer(), "an integer"),
    ];
    for w in &features.windows {
        required.push((
            &w.key,
            |d| d.is_integer() || matches!(d, DataType::Utf8),
            "an integer or string key",
        ));
        required.push((&w.value, |d| d.is_numeric(), "numeric"));
    }
    for r in &features.label_risk {
        required.push((
            &r.key,
            |d| d.is_integer() || matches!(d, DataType::Utf8),
            "an integer or string key",
        ));
    }
    let mut problems = Vec::new();
    for (col, ok, what) in &required {
        match batch.column_by_name(col) {
            None => problems.push(format!("missing column {col:?}")),
            Some(a) if !ok(a.data_type()) => problems.push(format!(
                "column {col:?} is {}, expected {what}",
                a.data_type()
            )),
            Some(a) if a.null_count() > 0 => {
                let row = (0..a.len()).find(|&i| a.is_null(i)).unwrap_or(0);
                problems.push(format!(
                    "column {col:?} is empty or malformed in row {} (of {})",
                    row + 1,
                    a.len()
                ));
            }
            Some(_) => {}
        }
    }
    if !problems.is_empty() {
        return Err(bad(path, problems.join("; ")));
    }
    let batch = conform(path, batch, &features.event_time)?;
    // Event time as UTC nanoseconds; strings are parsed (RFC 3339 / ISO 8601).
    let time_col = batch
        .column_by_name(&features.event_time)
        .cloned()
        .ok_or_else(|| bad(path, "no event time"))?;
    let time_ns = cast(&time_col, &utc)
        .map_err(|e| bad(path, format!("column {:?}: {e}", features.event_time)))?;
    if time_ns.null_count() > 0 {
        let row = (0..time_ns.len())
            .find(|&i| time_ns.is_null(i))
            .unwrap_or(0);
        return Err(bad(
            path,
            format!(
                "column {:?} is not a valid time in row {}",
                features.event_time,
                row + 1
            ),
        ));
    }
    let schema = batch.schema();
    let time_idx = schema
        .index_of(&features.event_time)
        .map_err(|e| bad(path, e))?;
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields[time_idx] = Field::new(&features.event_time, utc.clone(), false);
    let mut columns = batch.columns().to_vec();
    columns[time_idx] = time_ns.clone();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    let order_col = batch
        .column_by_name(&features.order_by)
        .cloned()
        .ok_or_else(|| bad(path, "no order column"))?;
    let mut indices = lexsort_to_indices(
        &[
            SortColumn {
                values: time_ns,
                options: None,
            },
            SortColumn {
                values: order_col,
                options: None,
            },
        ],
        None,
    )?;
    let partitions = match partitions {
        Some(p) if p.of_events.len() == batch.num_rows() => {
            indices = merge_partitions(&indices, &p.of_events);
            Some(Partitions {
                of_events: indices
                    .values()
                    .iter()
                    .map(|&r| p.of_events[r as usize])
                    .collect(),
                of_side: Vec::new(),
                held: p.held,
            })
        }
        Some(p) => {
            return Err(PipelineError::Bug(format!(
                "{} partitions for {} rows",
                p.of_events.len(),
                batch.num_rows()
            )));
        }
        None => None,
    };
    let transactions = take_record_batch(&batch, &indices)?;
    let labels = derive_labels(&transactions, features, replay)?;
    Ok(History {
        partitions,
        source_rows: Some(indices.values().iter().copied().collect()),
        events: transactions,
        event_time: features.event_time.clone(),
        side: Some(labels),
        side_time: features
            .label_risk
            .first()
            .map(|r| r.label_time.clone())
            .unwrap_or_else(|| riskpipe_schemas::label::LABEL_TIME.into()),
    })
}

/// Rows in `sorted` order of (event time, tie-break), reordered so that the rows of each
/// partition keep their input (offset) order: a merge that always takes the partition whose
/// next row sorts first. When every partition is in order this is `sorted` itself.
fn merge_partitions(sorted: &UInt32Array, partitions: &[i32]) -> UInt32Array {
    let mut rank = vec![0u32; partitions.len()];
    for (r, &row) in sorted.values().iter().enumerate() {
        rank[row as usize] = r as u32;
    }
    // Each partition's rows in input order, reversed so the next one pops off the end.
    let mut lanes: BTreeMap<i32, Vec<u32>> = BTreeMap::new();
    for (row, &p) in partitions.iter().enumerate().rev() {
        lanes.entry(p).or_default().push(row as u32);
    }
    let mut lanes: Vec<Vec<u32>> = lanes.into_values().collect();
    let mut heads: BinaryHeap<Reverse<(u32, usize)>> = lanes
        .iter()
        .enumerate()
        .filter_map(|(lane, rows)| rows.last().map(|&row| Reverse((rank[row as usize], lane))))
        .collect();
    let mut out = Vec::with_capacity(partitions.len());
    while let Some(Reverse((_, lane))) = heads.pop() {
        if let Some(row) = lanes[lane].pop() {
            out.push(row);
        }
        if let Some(&next) = lanes[lane].last() {
            heads.push(Reverse((rank[next as usize], lane)));
        }
    }
    UInt32Array::from(out)
}

/// The transaction schema's columns first, cast to their types (an `Int32` id becomes `Int64`),
/// then every other column of the file; the event time is left to the caller.
fn conform(path: &Path, batch: RecordBatch, event_time: &str) -> Result<RecordBatch> {
    let schema = riskpipe_schemas::transaction_schema();
    let mut fields: Vec<Field> = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    let mut problems = Vec::new();
    for f in schema.fields() {
        let Some(c) = batch.column_by_name(f.name()) else {
            problems.push(format!("missing column {:?}", f.name()));
            continue;
        };
        if f.name() == event_time {
            fields.push(Field::new(f.name(), c.data_type().clone(), false));
            columns.push(c.clone());
            continue;
        }
        match cast(c, f.data_type()) {
            Ok(a) if a.null_count() == 0 => {
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

/// The label events of a replay: each fraud's label becomes known `label_delay` after its
/// transaction. Carries the label-risk keys, the event time, the label time and the label.
pub fn derive_labels(
    transactions: &RecordBatch,
    features: &FeatureConfig,
    replay: &ReplayConfig,
) -> Result<RecordBatch> {
    let label = cast(
        transactions.column_by_name(&replay.label).ok_or_else(|| {
            PipelineError::BadInput(format!("missing label column {:?}", replay.label))
        })?,
        &DataType::Int64,
    )?;
    let frauds = arrow::compute::kernels::cmp::neq(&label, &Int64Array::new_scalar(0))?;
    let frauds_only = filter_record_batch(transactions, &frauds)?;
    let delay = i64::try_from(replay.label_delay.as_nanos()).unwrap_or(i64::MAX);
    let time = riskpipe_operators::columns::primitive::<arrow::datatypes::TimestampNanosecondType>(
        &frauds_only,
        &features.event_time,
    )?;
    let label_time: TimestampNanosecondArray = time
        .unary::<_, arrow::datatypes::TimestampNanosecondType>(|t| t.saturating_add(delay))
        .with_timezone("UTC");
    let mut names: Vec<String> = features.label_risk.iter().map(|r| r.key.clone()).collect();
    names.extend([features.order_by.clone(), features.event_time.clone()]);
    // The label event carries the transaction's keys (schemas: fraud label), where present.
    for key in [
        riskpipe_schemas::tx::CUSTOMER_ID,
        riskpipe_schemas::tx::TERMINAL_ID,
    ] {
        if frauds_only.column_by_name(key).is_some() {
            names.push(key.to_string());
        }
    }
    let mut fields = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    for n in &names {
        if fields.iter().any(|f: &Field| f.name() == n) {
            continue;
        }
        let c = frauds_only
            .column_by_name(n)
            .ok_or_else(|| PipelineError::BadInput(format!("missing column {n:?}")))?;
        fields.push(Field::new(n, c.data_type().clone(), false));
        cols.push(c.clone());
    }
    let label_time_name = features
        .label_risk
        .first()
        .map(|r| r.label_time.clone())
        .unwrap_or_else(|| riskpipe_schemas::label::LABEL_TIME.into());
    let label_name = features
        .label_risk
        .first()
        .map(|r| r.label.clone())
        .unwrap_or_else(|| replay.label.clone());
    fields.push(Field::new(
        &label_time_name,
        label_time.data_type().clone(),
        false,
    ));
    cols.push(Arc::new(label_time));
    fields.push(Field::new(&label_name, DataType::Int64, false));
    let ones = frauds_only.num_rows();
    cols.push(Arc::new(Int64Array::from(vec![1i64; ones])));
    // Transactions are time-ordered and the delay is constant, so labels already are in
    // label-time order.
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

/// Decoded transactions with the truth column set from the decoded labels, and the labels of
/// those transactions as label events in label-time order (a Kafka range replay). Each
/// partition of the transactions keeps its offset order.
pub fn from_decoded(
    features: &FeatureConfig,
    replay: &ReplayConfig,
    source: &str,
    transactions: RecordBatch,
    labels: Option<RecordBatch>,
    partitions: Partitions,
) -> Result<History> {
    let labels =
        labels.unwrap_or_else(|| RecordBatch::new_empty(riskpipe_schemas::fraud_label_schema()));
    // Only labels of transactions in the range: others would count frauds whose transactions
    // the windows never saw.
    let ids: HashSet<i64> = columns::primitive::<Int64Type>(&transactions, tx::TRANSACTION_ID)?
        .values()
        .iter()
        .copied()
        .collect();
    let label_ids = columns::primitive::<Int64Type>(&labels, tx::TRANSACTION_ID)?;
    let keep = arrow::array::BooleanArray::from_iter(
        label_ids.values().iter().map(|id| Some(ids.contains(id))),
    );
    let labels = filter_record_batch(&labels, &keep)?;
    let frauds: HashSet<i64> = {
        let id = columns::primitive::<Int64Type>(&labels, tx::TRANSACTION_ID)?;
        let flag = columns::primitive::<Int64Type>(&labels, label::TX_FRAUD)?;
        (0..labels.num_rows())
            .filter(|&i| flag.value(i) != 0)
            .map(|i| id.value(i))
            .collect()
    };
    // The truth column the backtest report reads, from the labels.
    let truth: Int64Array = columns::primitive::<Int64Type>(&transactions, tx::TRANSACTION_ID)?
        .values()
        .iter()
        .map(|id| Some(i64::from(frauds.contains(id))))
        .collect();
    let mut fields: Vec<Arc<Field>> = transactions.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(&replay.label, DataType::Int64, false)));
    let mut columns_ = transactions.columns().to_vec();
    columns_.push(Arc::new(truth));
    let with_truth = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns_)?;
    let mut history = prepare(
        Path::new(source),
        with_truth,
        features,
        replay,
        Some(partitions),
    )?;
    // The label events as they were published (their own label times), in label-time order.
    let label_time = columns::get(&labels, label::LABEL_TIME)?;
    let order = sort_to_indices(label_time, None, None)?;
    history.side = Some(take_record_batch(&labels, &order)?);
    history.side_time = label::LABEL_TIME.into();
    Ok(history)
}

/// Integer view of a column, for reports.
pub fn int_column(batch: &RecordBatch, name: &str) -> Result<Vec<i64>> {
    Ok(riskpipe_operators::columns::i64_values(batch, name)?
        .values()
        .to_vec())
}
