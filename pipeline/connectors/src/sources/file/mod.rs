//! Fraud history files: read a Parquet or CSV history, check it, conform it to the declared
//! events, order it by event time and derive the fraud-label events (as declared) a live
//! deployment would have received.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, TimestampNanosecondArray, UInt32Array,
};
use arrow::compute::{
    SortColumn, cast, concat_batches, filter_record_batch, lexsort_to_indices, sort_to_indices,
    take_record_batch,
};
use arrow::csv::ReaderBuilder;
use arrow::csv::reader::Format;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use riskpipe_operators::FeatureConfig;
use riskpipe_operators::columns::{self, EventId};
use riskpipe_schemas::declared::EventSchema;
use serde::Deserialize;

use super::history::{History, Refused};
use crate::{PipelineError, Result};
use riskpipe_core::Partitions;
use riskpipe_formats::decoders::DeclaredJsonDecoder;

mod checks;

use checks::{conform, refuse_rows};

fn bad(path: &Path, msg: impl std::fmt::Display) -> PipelineError {
    PipelineError::BadInput(format!("{}: {msg}", path.display()))
}

fn default_batch_rows() -> usize {
    8192
}
fn default_label_delay() -> Duration {
    Duration::from_secs(7 * 86_400)
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
    /// The history's truth column (1 = fraud; default: the declared label's name).
    #[serde(default)]
    pub label: Option<String>,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            batch_rows: default_batch_rows(),
            label_delay: default_label_delay(),
            label: None,
        }
    }
}

/// What a fraud history is read as: the declared events and labels, the features' event time,
/// tie-break and keys, and the replay settings.
#[derive(Debug, Clone, Copy)]
pub struct Shape<'a> {
    /// The declared events.
    pub events: &'a EventSchema,
    /// The declared labels.
    pub labels: &'a EventSchema,
    /// The features.
    pub features: &'a FeatureConfig,
    /// How a history is replayed.
    pub replay: &'a ReplayConfig,
    label: &'a str,
}

impl<'a> Shape<'a> {
    /// The shape of a job's histories; a config error when the labels declare no label field.
    pub fn new(
        events: &'a EventSchema,
        labels: &'a EventSchema,
        features: &'a FeatureConfig,
        replay: &'a ReplayConfig,
    ) -> Result<Self> {
        let label = labels
            .label
            .map(|i| labels.fields[i].name.as_str())
            .ok_or_else(|| {
                PipelineError::Config(vec!["job.labels.label: no label field declared".into()])
            })?;
        Ok(Self {
            events,
            labels,
            features,
            replay,
            label,
        })
    }

    /// The history's truth column: `replay.label`, else the declared label's name.
    pub fn truth(&self) -> &'a str {
        self.replay.label.as_deref().unwrap_or(self.label)
    }

    /// The label events' label-time column.
    pub fn label_time(&self) -> &'a str {
        &self.labels.fields[self.labels.time].name
    }
}

/// Reads, checks and orders a fraud history file for replay.
pub fn load(shape: Shape<'_>, input: &Path) -> Result<History> {
    let raw = read_file(input)?;
    prepare(input, raw, shape, None)
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
        // A time in a CSV is text, read by what the job declares (an RFC 3339 event time must
        // carry its offset, as in a message): never guessed by the inference.
        let schema = Arc::new(Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| match f.data_type() {
                    DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => {
                        f.as_ref().clone().with_data_type(DataType::Utf8)
                    }
                    _ => f.as_ref().clone(),
                })
                .collect::<Vec<_>>(),
        ));
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
    shape: Shape<'_>,
    partitions: Option<Partitions>,
) -> Result<History> {
    let Shape { features, .. } = shape;
    let (batch, partitions, kept, refused) = refuse_rows(batch, shape, partitions)?;
    let batch = conform(path, batch, shape.events)?;
    let truth = shape.truth();
    let utc = DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
    let mut required: Vec<Requirement<'_>> = vec![
        (
            &features.event_time,
            |d| {
                d.is_integer()
                    || matches!(
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
        (
            truth,
            |d| d.is_integer() || d == &DataType::Boolean,
            "an integer or a boolean",
        ),
    ];
    for w in &features.windows {
        for part in riskpipe_operators::key_parts(&w.key) {
            required.push((
                part,
                |d| d.is_integer() || matches!(d, DataType::Utf8),
                "an integer or string key",
            ));
        }
        required.push((&w.value, |d| d.is_numeric(), "numeric"));
    }
    for a in &features.aggregate {
        for part in riskpipe_operators::key_parts(&a.key) {
            required.push((
                part,
                |d| d.is_integer() || matches!(d, DataType::Utf8),
                "an integer or string key",
            ));
        }
        // A kind that reads text (distinct) reads any field; the others a number.
        let text = riskpipe_operators::aggregate::kind(&a.kind).is_some_and(|k| k.reads_text());
        if let (Some(v), false) = (&a.value, text) {
            required.push((v, |d| d.is_numeric(), "numeric"));
        }
    }
    for r in &features.label_risk {
        for part in riskpipe_operators::key_parts(&r.key) {
            required.push((
                part,
                |d| d.is_integer() || matches!(d, DataType::Utf8),
                "an integer or string key",
            ));
        }
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
    let labels = derive_labels(&transactions, shape)?;
    let source_rows = indices
        .values()
        .iter()
        .map(|&r| kept.as_ref().map_or(r, |kept| kept[r as usize]))
        .collect();
    Ok(History {
        partitions,
        refused,
        source_rows: Some(source_rows),
        events: transactions,
        event_time: features.event_time.clone(),
        side: Some(labels),
        side_time: shape.label_time().to_string(),
    })
}

/// A history's rows once the refused are taken out: the kept rows and their partitions, which
/// source row each kept row is (`None`: all kept), and the refused.
type Kept = (
    RecordBatch,
    Option<Partitions>,
    Option<Vec<u32>>,
    Vec<Refused>,
);

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

/// The label events of a replay, as the labels are declared: each fraud's label (1, or true)
/// becomes known `label_delay` after its transaction; every other declared label field is the
/// transaction's column of that name.
pub fn derive_labels(transactions: &RecordBatch, shape: Shape<'_>) -> Result<RecordBatch> {
    let (features, replay) = (shape.features, shape.replay);
    let truth = shape.truth();
    let label = cast(
        transactions
            .column_by_name(truth)
            .ok_or_else(|| PipelineError::BadInput(format!("missing label column {truth:?}")))?,
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
    let schema = shape.labels.arrow_schema();
    let ones = frauds_only.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for (i, f) in schema.fields().iter().enumerate() {
        columns.push(if i == shape.labels.time {
            Arc::new(label_time.clone())
        } else if Some(i) == shape.labels.label {
            match f.data_type() {
                DataType::Boolean => Arc::new(arrow::array::BooleanArray::from(vec![true; ones])),
                _ => Arc::new(Int64Array::from(vec![1i64; ones])),
            }
        } else {
            let c = frauds_only.column_by_name(f.name()).ok_or_else(|| {
                PipelineError::BadInput(format!(
                    "the labels declare {:?}, which the history lacks",
                    f.name()
                ))
            })?;
            cast(c, f.data_type())?
        });
    }
    // Transactions are time-ordered and the delay is constant, so labels already are in
    // label-time order.
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Decoded transactions with the truth column set from the decoded labels, and the labels of
/// those transactions as label events in label-time order (a Kafka range replay). Each
/// partition of the transactions keeps its offset order.
pub fn from_decoded(
    shape: Shape<'_>,
    source: &str,
    transactions: RecordBatch,
    labels: Option<RecordBatch>,
    partitions: Partitions,
) -> Result<History> {
    let labels = labels.unwrap_or_else(|| RecordBatch::new_empty(shape.labels.arrow_schema()));
    let id = &shape.events.fields[shape.events.id].name;
    // Only labels of transactions in the range: others would count frauds whose transactions
    // the windows never saw.
    let event_ids = columns::keys(&transactions, id)?;
    let ids: HashSet<EventId> = (0..transactions.num_rows())
        .map(|row| event_ids.id(row))
        .collect();
    let label_ids = columns::keys(&labels, id)?;
    let keep = arrow::array::BooleanArray::from_iter(
        (0..labels.num_rows()).map(|row| Some(ids.contains(&label_ids.id(row)))),
    );
    let labels = filter_record_batch(&labels, &keep)?;
    let frauds: HashSet<EventId> = {
        let ids = columns::keys(&labels, id)?;
        let label = &shape.labels.fields[shape.labels.label.unwrap_or(shape.labels.id)].name;
        let flag = cast(columns::get(&labels, label)?, &DataType::Int64)?;
        let flag = flag.as_primitive::<Int64Type>();
        (0..labels.num_rows())
            .filter(|&i| flag.value(i) != 0)
            .map(|i| ids.id(i))
            .collect()
    };
    // The truth column the backtest report reads, from the labels.
    let truth: Int64Array = (0..transactions.num_rows())
        .map(|row| Some(i64::from(frauds.contains(&event_ids.id(row)))))
        .collect();
    let mut fields: Vec<Arc<Field>> = transactions.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(shape.truth(), DataType::Int64, false)));
    let mut columns_ = transactions.columns().to_vec();
    columns_.push(Arc::new(truth));
    let with_truth = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns_)?;
    let mut history = prepare(Path::new(source), with_truth, shape, Some(partitions))?;
    // The label events as they were published (their own label times), in label-time order.
    let label_time = columns::get(&labels, shape.label_time())?;
    let order = sort_to_indices(label_time, None, None)?;
    history.side = Some(take_record_batch(&labels, &order)?);
    history.side_time = shape.label_time().to_string();
    Ok(history)
}

/// Integer view of a column, for reports.
pub fn int_column(batch: &RecordBatch, name: &str) -> Result<Vec<i64>> {
    Ok(riskpipe_operators::columns::i64_values(batch, name)?
        .values()
        .to_vec())
}
