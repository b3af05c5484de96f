//! Keyed state of the streaming operators, the watermark that frees it, and the key columns of
//! the Arrow tables a checkpoint stores it as.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::StringBuilder;
use arrow::array::{Array, ArrayRef, AsArray, Int64Array, Int64Builder, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};

use crate::columns::Keys;
use crate::{OperatorError, Result};

/// Per-key state, for integer and string keys alike.
#[derive(Debug)]
pub(crate) struct KeyedState<S> {
    ints: HashMap<i64, S, ahash::RandomState>,
    strs: HashMap<String, S, ahash::RandomState>,
}

impl<S> Default for KeyedState<S> {
    fn default() -> Self {
        Self {
            ints: HashMap::default(),
            strs: HashMap::default(),
        }
    }
}

impl<S: Default> KeyedState<S> {
    /// Calls `f(row, state_of_row's_key)` for every row, in order.
    pub(crate) fn for_each_row(&mut self, keys: &Keys, mut f: impl FnMut(usize, &mut S)) {
        match keys {
            Keys::Int(a) => {
                for (row, k) in a.values().iter().enumerate() {
                    f(row, self.ints.entry(*k).or_default());
                }
            }
            Keys::Str(a) => {
                for row in 0..a.len() {
                    let k = a.value(row);
                    if !self.strs.contains_key(k) {
                        self.strs.insert(k.to_owned(), S::default());
                    }
                    if let Some(state) = self.strs.get_mut(k) {
                        f(row, state);
                    }
                }
            }
        }
    }
}

impl<S: Default> KeyedState<S> {
    /// As [`KeyedState::for_each_row`], except that a row for which `adds(row)` is false only
    /// reads its key's state (`None` where the key has none): no key is added for it.
    pub(crate) fn for_each_row_adding(
        &mut self,
        keys: &Keys,
        adds: impl Fn(usize) -> bool,
        mut f: impl FnMut(usize, Option<&mut S>),
    ) {
        match keys {
            Keys::Int(a) => {
                for (row, k) in a.values().iter().enumerate() {
                    match adds(row) {
                        true => f(row, Some(self.ints.entry(*k).or_default())),
                        false => f(row, self.ints.get_mut(k)),
                    }
                }
            }
            Keys::Str(a) => {
                for row in 0..a.len() {
                    let k = a.value(row);
                    if adds(row) && !self.strs.contains_key(k) {
                        self.strs.insert(k.to_owned(), S::default());
                    }
                    f(row, self.strs.get_mut(k));
                }
            }
        }
    }
}

impl<S> KeyedState<S> {
    /// Calls `f(row, state)` for every row whose key has state (read only; no key is added).
    pub(crate) fn for_each_present(&self, keys: &Keys, mut f: impl FnMut(usize, &S)) {
        match keys {
            Keys::Int(a) => {
                for (row, k) in a.values().iter().enumerate() {
                    if let Some(s) = self.ints.get(k) {
                        f(row, s);
                    }
                }
            }
            Keys::Str(a) => {
                for row in 0..a.len() {
                    if let Some(s) = self.strs.get(a.value(row)) {
                        f(row, s);
                    }
                }
            }
        }
    }
}

/// A key's state that the watermark shrinks.
pub(crate) trait Expiring {
    /// Drops what lies at or before `horizon`: no event still to come can see it.
    fn evict(&mut self, horizon: i64);
    /// Nothing left: the key can go.
    fn is_empty(&self) -> bool;
}

impl<S: Expiring> KeyedState<S> {
    /// Moves `watermark` to `to`; when a sweep is due, shrinks every key's state and drops the
    /// keys left empty.
    pub(crate) fn advance(&mut self, watermark: &mut Watermark, to: i64) {
        if !watermark.advance(to) {
            return;
        }
        let horizon = watermark.horizon();
        let keep = |s: &mut S| {
            s.evict(horizon);
            !s.is_empty()
        };
        self.ints.retain(|_, s| keep(s));
        self.strs.retain(|_, s| keep(s));
        // A map keeps its capacity when keys go: give most of it back once it is mostly empty.
        if self.ints.len() * 4 < self.ints.capacity() {
            self.ints.shrink_to(self.ints.len() * 2);
        }
        if self.strs.len() * 4 < self.strs.capacity() {
            self.strs.shrink_to(self.strs.len() * 2);
        }
    }
}

impl<S> KeyedState<S> {
    /// Number of keys held.
    pub(crate) fn len(&self) -> usize {
        self.ints.len() + self.strs.len()
    }

    /// Every key and its state, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Key<'_>, &S)> {
        self.ints
            .iter()
            .map(|(k, s)| (Key::Int(*k), s))
            .chain(self.strs.iter().map(|(k, s)| (Key::Str(k), s)))
    }
}

impl<S: Default> KeyedState<S> {
    /// The state of `key`, made empty if the key is new.
    pub(crate) fn entry(&mut self, key: Key<'_>) -> &mut S {
        match key {
            Key::Int(k) => self.ints.entry(k).or_default(),
            Key::Str(k) => self.strs.entry(k.to_owned()).or_default(),
        }
    }
}

/// A key of a checkpoint table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key<'a> {
    Int(i64),
    Str(&'a str),
}

/// Names of the key columns of a state table: integer keys in one, string keys in the other.
const KEY_INT: &str = "key_int";
const KEY_STR: &str = "key_str";
/// Schema metadata of a state table: the operator's watermark.
const WATERMARK_AT: &str = "riskpipe.watermark.at";
const WATERMARK_SWEPT: &str = "riskpipe.watermark.swept";

/// Builds a state table: the key columns, then the operator's own.
#[derive(Debug, Default)]
pub(crate) struct StateTable {
    ints: Int64Builder,
    strs: StringBuilder,
}

impl StateTable {
    /// Starts the row of `key`; the caller appends the row's other columns.
    /// A table of about `rows` rows.
    pub(crate) fn with_capacity(rows: usize) -> Self {
        Self {
            ints: Int64Builder::with_capacity(rows),
            strs: StringBuilder::with_capacity(rows, 0),
        }
    }

    pub(crate) fn key(&mut self, key: Key<'_>) {
        self.key_rows(key, 1);
    }

    /// `rows` rows of `key` at once (the snapshot's pause is mostly this column).
    pub(crate) fn key_rows(&mut self, key: Key<'_>, rows: usize) {
        match key {
            Key::Int(k) => {
                self.ints.append_value_n(k, rows);
                self.strs.append_nulls(rows);
            }
            Key::Str(k) => {
                self.ints.append_nulls(rows);
                for _ in 0..rows {
                    self.strs.append_value(k);
                }
            }
        }
    }

    /// The table: key columns, then `columns` (name, type, nullable, values), the watermark in
    /// the schema metadata.
    pub(crate) fn finish(
        mut self,
        columns: Vec<(&str, DataType, bool, ArrayRef)>,
        watermark: Option<&Watermark>,
    ) -> Result<RecordBatch> {
        let mut fields = vec![
            Field::new(KEY_INT, DataType::Int64, true),
            Field::new(KEY_STR, DataType::Utf8, true),
        ];
        let mut arrays: Vec<ArrayRef> =
            vec![Arc::new(self.ints.finish()), Arc::new(self.strs.finish())];
        for (name, dt, nullable, array) in columns {
            fields.push(Field::new(name, dt, nullable));
            arrays.push(array);
        }
        let metadata = watermark
            .map(|w| {
                [
                    (WATERMARK_AT.to_string(), w.at.to_string()),
                    (WATERMARK_SWEPT.to_string(), w.swept.to_string()),
                ]
                .into()
            })
            .unwrap_or_default();
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new_with_metadata(fields, metadata)),
            arrays,
        )?)
    }
}

fn unfit(msg: String) -> OperatorError {
    OperatorError::Checkpoint(msg)
}

/// Distinct keys of an operator's state table (what [`crate::Operator::snapshot`] wrote);
/// `None` for a table without key columns.
pub fn state_table_keys(table: &RecordBatch) -> Option<usize> {
    let r = StateReader::new(table).ok()?;
    let mut ints = std::collections::HashSet::new();
    let mut strs = std::collections::HashSet::new();
    for row in 0..r.rows() {
        match r.key(row).ok()? {
            Key::Int(k) => {
                ints.insert(k);
            }
            Key::Str(k) => {
                strs.insert(k);
            }
        }
    }
    Some(ints.len() + strs.len())
}

/// Reads a state table back: its keys, its columns, its watermark.
#[derive(Debug)]
pub(crate) struct StateReader<'a> {
    table: &'a RecordBatch,
    ints: &'a Int64Array,
    strs: &'a StringArray,
}

impl<'a> StateReader<'a> {
    /// Checks the key columns of `table`.
    pub(crate) fn new(table: &'a RecordBatch) -> Result<Self> {
        let col = |name: &str| {
            table
                .column_by_name(name)
                .ok_or_else(|| unfit(format!("state table has no column {name:?}")))
        };
        let ints = col(KEY_INT)?
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| unfit(format!("{KEY_INT} is not Int64")))?;
        let strs = col(KEY_STR)?
            .as_string_opt::<i32>()
            .ok_or_else(|| unfit(format!("{KEY_STR} is not Utf8")))?;
        Ok(Self { table, ints, strs })
    }

    /// The key of `row`.
    pub(crate) fn key(&self, row: usize) -> Result<Key<'a>> {
        if self.ints.is_valid(row) {
            Ok(Key::Int(self.ints.value(row)))
        } else if self.strs.is_valid(row) {
            Ok(Key::Str(self.strs.value(row)))
        } else {
            Err(unfit(format!("state table row {row} has no key")))
        }
    }

    /// The column `name`.
    pub(crate) fn column(&self, name: &str) -> Result<&'a ArrayRef> {
        self.table
            .column_by_name(name)
            .ok_or_else(|| unfit(format!("state table has no column {name:?}")))
    }

    /// The state column `name` as text, checked.
    pub(crate) fn string(&self, name: &str) -> Result<&'a StringArray> {
        self.column(name)?
            .as_string_opt::<i32>()
            .ok_or_else(|| unfit(format!("state column {name:?} is not Utf8")))
    }

    /// The column `name` as `T`, checked.
    pub(crate) fn primitive<T: arrow::datatypes::ArrowPrimitiveType>(
        &self,
        name: &str,
    ) -> Result<&'a arrow::array::PrimitiveArray<T>> {
        self.column(name)?
            .as_primitive_opt::<T>()
            .ok_or_else(|| unfit(format!("state column {name:?} is not {}", T::DATA_TYPE)))
    }

    /// The watermark the table was written with (none yet if it had none).
    pub(crate) fn watermark(&self, reach: i64) -> Result<Watermark> {
        let meta = self.table.schema_ref().metadata();
        let read = |k: &str| -> Result<i64> {
            meta.get(k).map_or(Ok(i64::MIN), |v| {
                v.parse()
                    .map_err(|_| unfit(format!("state table metadata {k} = {v:?} is no integer")))
            })
        };
        Ok(Watermark {
            at: read(WATERMARK_AT)?,
            swept: read(WATERMARK_SWEPT)?,
            reach,
        })
    }

    /// Rows.
    pub(crate) fn rows(&self) -> usize {
        self.table.num_rows()
    }
}

/// The watermark as an operator sees it: no event at or before it arrives any more. It only
/// moves forward, and a sweep over every key happens once it has moved a fraction of the
/// operator's reach (how far back from an event its windows look) since the last one, so
/// sweeping costs little per event while memory stays bounded by the events inside the windows
/// (plus that fraction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Watermark {
    at: i64,
    swept: i64,
    reach: i64,
}

/// Sweeps happen every `1 / SWEEP_FRACTION` of the longest window.
const SWEEP_FRACTION: i64 = 16;

impl Watermark {
    /// No watermark yet, for an operator whose windows reach `reach` ns back.
    pub(crate) fn new(reach: i64) -> Self {
        Self {
            at: i64::MIN,
            swept: i64::MIN,
            reach,
        }
    }

    /// Moves to `watermark` (never back); true when the keys are due a sweep.
    fn advance(&mut self, watermark: i64) -> bool {
        if watermark <= self.at {
            return false;
        }
        self.at = watermark;
        let every = (self.reach / SWEEP_FRACTION).max(1);
        if self.swept == i64::MIN || watermark.saturating_sub(self.swept) >= every {
            self.swept = watermark;
            return true;
        }
        false
    }

    /// How far back from an event the operator's windows look (ns).
    pub(crate) fn reach(&self) -> i64 {
        self.reach
    }

    /// Events at or before this are outside every window of every event still to come.
    pub(crate) fn horizon(&self) -> i64 {
        self.at.saturating_sub(self.reach)
    }
}
