//! Keyed aggregations over any span, one registered [`Kind`] each (count, sum, mean, min, max,
//! variance, standard deviation, first, last, time since the previous event, distinct count,
//! first-seen, the last k values, decayed sum and count; `kinds/` holds one file per kind). A kind says how it reads a window of a key's events and how its batch twin
//! reads the same window in DataFusion's built-in SQL; the operator, its state, its checkpoint
//! table, config validation and the reference docs are the same for every kind.
//!
//! Adding a kind: a file implementing [`Kind`] and one [`register_kind!`](crate::register_kind) line in it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, FieldRef};
use serde::Deserialize;

use crate::columns;
use crate::config::{durations, feature_name, key_columns, ns};
use crate::expr::Expression;
use crate::state::{KeyedState, StateReader, StateTable, Watermark};
use crate::window::{Series, series_columns};
use crate::{Appender, Operator, Result};

mod kinds;

#[doc(hidden)]
pub use inventory;

/// The events of one key that an event's window holds: those with time in (t − span, t], in
/// (time, id) order, the current event included or not as declared.
#[derive(Debug)]
pub struct Window<'a> {
    times: &'a VecDeque<i64>,
    values: &'a VecDeque<f64>,
    /// The values as text, for a kind that reads text (see [`Kind::reads_text`]).
    texts: Option<&'a VecDeque<Option<Box<str>>>>,
    /// Positions `lo..hi` of the key's events.
    lo: usize,
    hi: usize,
    /// The current event's time (ns since the epoch).
    pub now: i64,
    /// The span (ns).
    pub span: i64,
    /// The aggregation's parameters.
    pub params: Params,
}

impl<'a> Window<'a> {
    /// A window over `times` and `values` (equal lengths, times ascending) at positions
    /// `lo..hi`; what the operator hands a kind, and what tests build by hand.
    pub fn new(
        times: &'a VecDeque<i64>,
        values: &'a VecDeque<f64>,
        lo: usize,
        hi: usize,
        now: i64,
        span: i64,
    ) -> Self {
        let hi = hi.min(times.len()).min(values.len());
        Self {
            times,
            values,
            texts: None,
            lo: lo.min(hi),
            hi,
            now,
            span,
            params: Params::default(),
        }
    }

    /// The same window with the aggregation's parameters.
    pub fn with_params(self, params: Params) -> Self {
        Self { params, ..self }
    }

    /// The same window over the events' values as text (as long as `times`).
    pub fn with_texts(self, texts: &'a VecDeque<Option<Box<str>>>) -> Self {
        let hi = self.hi.min(texts.len());
        Self {
            texts: Some(texts),
            hi,
            lo: self.lo.min(hi),
            ..self
        }
    }

    /// The values as text, from the latest event to the earliest (`None` for a null value);
    /// empty for a kind that does not read text.
    pub fn texts_latest_first(&self) -> impl Iterator<Item = Option<&str>> + '_ {
        self.texts
            .into_iter()
            .flat_map(move |t| t.range(self.lo..self.hi).rev().map(|v| v.as_deref()))
    }

    /// Each event's text with its [`text_hash`], from the latest to the earliest (`None` for a
    /// null value); empty for a kind that does not read text.
    pub fn hashed_texts_latest_first(&self) -> impl Iterator<Item = (u64, Option<&str>)> + '_ {
        self.values
            .range(self.lo..self.hi)
            .rev()
            .map(|v| v.to_bits())
            .zip(self.texts_latest_first())
    }

    /// (time, value) of each event, from the latest to the earliest.
    pub fn events_latest_first(&self) -> impl Iterator<Item = (i64, f64)> + '_ {
        self.times
            .range(self.lo..self.hi)
            .rev()
            .copied()
            .zip(self.values.range(self.lo..self.hi).rev().copied())
    }

    /// Events in the window.
    pub fn len(&self) -> usize {
        self.hi - self.lo
    }

    pub fn is_empty(&self) -> bool {
        self.hi == self.lo
    }

    /// The values, from the latest event to the earliest (the order every sum adds them in,
    /// so a value depends only on which events the window holds).
    pub fn latest_first(&self) -> impl Iterator<Item = f64> + '_ {
        self.values.range(self.lo..self.hi).rev().copied()
    }

    /// The earliest event's (time, value).
    pub fn earliest(&self) -> Option<(i64, f64)> {
        (!self.is_empty()).then(|| (self.times[self.lo], self.values[self.lo]))
    }

    /// The latest event's (time, value).
    pub fn latest(&self) -> Option<(i64, f64)> {
        (!self.is_empty()).then(|| (self.times[self.hi - 1], self.values[self.hi - 1]))
    }

    /// The sum of the values, latest to earliest.
    pub fn sum(&self) -> f64 {
        self.latest_first().fold(0.0, |s, v| s + v)
    }
}

/// The SQL pieces a kind's batch twin is written with, for one aggregation and span. The twin
/// reads the same window as the stream as two disjoint frames: the key's events at earlier
/// times within the span (`earlier`) and its events at the current time up to the current one
/// by id (`peers`; the current one included or not as declared), since a RANGE frame over time
/// alone would also hold the later events of equal time.
#[derive(Debug, Clone)]
pub struct Twin {
    /// The value as a DOUBLE expression (`1` for a kind that reads none); NULL for an event the
    /// filter does not select, which every aggregate function then skips.
    pub value: String,
    /// The value as text (`CAST(… AS VARCHAR)`), NULL where the filter does not select the
    /// event, for a kind that reads text.
    pub text: String,
    /// `PARTITION BY` of the key's columns.
    pub partition: String,
    /// The aggregation's condition, if any (SQL).
    pub filter: Option<String>,
    /// `OVER (...)`: the key's events with time in [t − span + 1, t − 1] (ns).
    pub earlier: String,
    /// `OVER (...)`: the key's events at time t, ordered by id, up to the current one.
    pub peers: String,
    /// `OVER (...)`: the key's events ordered by (time, id), for `LAG`.
    pub ordered: String,
    /// Per row, the value of the first event by id among the key's events of its time.
    pub group_first: String,
    /// The event time as an integer (ns).
    pub time: String,
    /// Whether the window holds the current event.
    pub current: bool,
    /// The span (ns).
    pub span: i64,
    /// The aggregation's parameters.
    pub params: Params,
}

impl Twin {
    /// `f(value)` over each of the two frames.
    pub fn parts(&self, f: &str) -> (String, String) {
        (
            format!("{f}({}) {}", self.value, self.earlier),
            format!("{f}({}) {}", self.value, self.peers),
        )
    }

    /// `f(expr)` over each of the two frames.
    pub fn parts_of(&self, f: &str, expr: &str) -> (String, String) {
        (
            format!("{f}({expr}) {}", self.earlier),
            format!("{f}({expr}) {}", self.peers),
        )
    }

    /// The number of events in the window (BIGINT).
    pub fn count(&self) -> String {
        let (a, b) = self.parts("COUNT");
        format!("({a} + {b})")
    }

    /// The sum of the values in the window (0 when empty).
    pub fn sum(&self) -> String {
        let (a, b) = self.parts("SUM");
        format!("(COALESCE({a}, 0) + COALESCE({b}, 0))")
    }

    /// `expr`, NULL where the filter does not select the event.
    pub fn selected(&self, expr: &str) -> String {
        match &self.filter {
            Some(f) => format!("CASE WHEN ({f}) THEN {expr} END"),
            None => expr.to_string(),
        }
    }

    /// What follows a value function (`FIRST_VALUE`, `LAG`) so that it skips the events the
    /// filter does not select.
    pub fn skip_unselected(&self) -> &'static str {
        match self.filter {
            Some(_) => " IGNORE NULLS",
            None => "",
        }
    }

    /// `f(expr)` of the selected event before the current one in (time, id) order, e.g.
    /// `LAG(x)`.
    pub fn before(&self, f: &str, expr: &str) -> String {
        format!(
            "{f}({}){} {}",
            self.selected(expr),
            self.skip_unselected(),
            self.ordered
        )
    }

    /// `expr` of the selected event before the current one in (time, id) order when it lies
    /// within the span, else `otherwise`.
    pub fn previous(&self, expr: &str, otherwise: &str) -> String {
        self.nth_previous(1, expr, otherwise)
    }

    /// `expr` of the `n`-th selected event before the current one in (time, id) order when it
    /// lies within the span, else `otherwise`.
    pub fn nth_previous(&self, n: usize, expr: &str, otherwise: &str) -> String {
        let lag = |e: &str| {
            format!(
                "LAG({}, {n}){} {}",
                self.selected(e),
                self.skip_unselected(),
                self.ordered
            )
        };
        format!(
            "CASE WHEN {lag_t} > {t} - {span} THEN {lag} ELSE {otherwise} END",
            lag_t = lag(&self.time),
            t = self.time,
            lag = lag(expr),
            span = self.span,
        )
    }
}

/// A parameter some kinds take besides the value and the spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parameter {
    /// `half_life`: a duration (see [`AggregateConfig::half_life`]).
    HalfLife,
    /// `k`: a count of values (see [`AggregateConfig::k`]).
    K,
}

impl Parameter {
    /// Its name in the config.
    pub fn name(self) -> &'static str {
        match self {
            Parameter::HalfLife => "half_life",
            Parameter::K => "k",
        }
    }

    /// A config line giving it (what tests and benches use).
    pub fn example(self) -> &'static str {
        match self {
            Parameter::HalfLife => "half_life = \"3h\"",
            Parameter::K => "k = 3",
        }
    }
}

/// The config lines giving every parameter `kind` takes (for tests and benches that declare
/// every registered kind).
pub fn example_parameters(kind: &dyn Kind) -> String {
    kind.parameters()
        .iter()
        .map(|p| format!("{}\n", p.example()))
        .collect()
}

/// The parameters of one aggregation, as its kind reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Params {
    /// The half-life (ns); 0 when not given.
    pub half_life: i64,
    /// The number of values; 0 when not given.
    pub k: usize,
}

/// A kind's entry in the reference docs.
#[derive(Debug, Clone, Copy)]
pub struct Doc {
    /// What it computes over the window, exactly (summation order, population or sample).
    pub definition: &'static str,
    /// Its value when the window holds no event.
    pub empty: &'static str,
    /// A config example.
    pub example: &'static str,
}

/// One aggregation kind: how it reads a window, and its batch twin.
pub trait Kind: Send + Sync + 'static {
    /// The name `kind = "…"` selects.
    fn name(&self) -> &'static str;
    /// Whether it reads the `value` field (count and time since do not).
    fn reads_value(&self) -> bool {
        true
    }
    /// Whether it reads the value as text (any field's type, by Arrow's cast to text) rather
    /// than as a number.
    fn reads_text(&self) -> bool {
        false
    }
    /// The parameters it requires (none by default).
    fn parameters(&self) -> &'static [Parameter] {
        &[]
    }
    /// A problem with the parameters for a span, if any (e.g. a span too long for a half-life).
    fn check(&self, _params: &Params, _span: std::time::Duration) -> Option<String> {
        None
    }
    /// How many columns it writes per span (one by default).
    fn width(&self, _params: &Params) -> usize {
        1
    }
    /// Its column's type: Int64 or Float64.
    fn output(&self) -> DataType {
        DataType::Float64
    }
    /// Whether the current event may be in its own window; `false` for a kind defined over
    /// the events before it (time since the previous event), whose window never holds it.
    fn takes_current(&self) -> bool {
        true
    }
    /// Its value over `window` (Int64 outputs are whole numbers).
    fn value(&self, window: &Window<'_>) -> f64;
    /// Its values over `window`, one per column (`out` is [`Kind::width`] long); by default
    /// the one [`Kind::value`].
    fn values(&self, window: &Window<'_>, out: &mut [f64]) {
        if let Some(first) = out.first_mut() {
            *first = self.value(window);
        }
    }
    /// The same value in DataFusion's built-in SQL over the frames of `twin`.
    fn twin(&self, twin: &Twin) -> String;
    /// The same values, one per column; by default the one [`Kind::twin`].
    fn twins(&self, twin: &Twin) -> Vec<String> {
        vec![self.twin(twin)]
    }
    /// Its reference entry.
    fn doc(&self) -> Doc;
}

/// A kind's registration (see [`register_kind!`](crate::register_kind)).
pub struct Registered(pub &'static dyn Kind);

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Registered").field(&self.0.name()).finish()
    }
}

inventory::collect!(Registered);

/// Registers a kind: `register_kind!(Max);` beside its definition makes `kind = "max"` valid
/// in every config, in validation, the batch twin and the reference docs.
#[macro_export]
macro_rules! register_kind {
    ($kind:expr) => {
        $crate::aggregate::inventory::submit! {
            $crate::aggregate::Registered(&$kind)
        }
    };
}

/// Every registered kind, by name.
pub fn kinds() -> Vec<&'static dyn Kind> {
    let mut all: Vec<&'static dyn Kind> = inventory::iter::<Registered>
        .into_iter()
        .map(|r| r.0)
        .collect();
    all.sort_by_key(|k| k.name());
    all
}

/// The kind registered as `name`.
pub fn kind(name: &str) -> Option<&'static dyn Kind> {
    inventory::iter::<Registered>
        .into_iter()
        .map(|r| r.0)
        .find(|k| k.name() == name)
}

/// One aggregation: a kind of a value per key, over each of its spans.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// Key field (integer or text), or several combined, as a window's.
    #[serde(deserialize_with = "key_columns")]
    pub key: String,
    /// The registered kind (see the feature reference).
    pub kind: String,
    /// The field it aggregates: a number, or any field for the kinds that read text
    /// (`distinct`).
    #[serde(default)]
    pub value: Option<String>,
    /// Window lengths, any of seconds, minutes, hours and days: `["10m", "1h", "30d"]`.
    #[serde(deserialize_with = "durations")]
    pub spans: Vec<Duration>,
    /// Output name template (`{key}`, `{span}`, `{days}` are replaced); one column per span.
    pub name: String,
    /// Whether an event's window holds the event itself (default true).
    #[serde(default)]
    pub include_current: Option<bool>,
    /// A condition on the event (a SQL predicate, e.g. `channel = 'online'`): the windows hold
    /// only the key's events it is true for (NULL is not true); every event still gets a value.
    #[serde(default)]
    pub filter: Option<String>,
    /// The half-life of a decayed kind (`decayed_sum`, `decayed_count`): an event's weight
    /// halves with each half-life of age.
    #[serde(default, deserialize_with = "duration")]
    pub half_life: Option<Duration>,
    /// How many values a `last_k` aggregation keeps (one column each).
    #[serde(default)]
    pub k: Option<usize>,
}

fn duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    let raw = String::deserialize(d)?;
    humantime::parse_duration(&raw)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("{raw:?}: {e}")))
}

impl AggregateConfig {
    /// Output names as (span index, column index, name): one column per span, or with a kind
    /// that writes several, one per span and column (the template's `{i}`: 1, 2, …).
    pub(crate) fn outputs(&self) -> std::result::Result<Vec<(usize, usize, String)>, String> {
        let width = kind(&self.kind).map_or(1, |k| k.width(&self.params()));
        if width > 1 && !self.name.contains("{i}") {
            return Err(format!(
                "{} writes {width} columns per span: the name template needs {{i}} (1 to {width})",
                self.kind
            ));
        }
        let mut out = Vec::new();
        for (s, span) in self.spans.iter().enumerate() {
            for c in 0..width {
                let template = self.name.replace("{i}", &(c + 1).to_string());
                out.push((s, c, feature_name(&template, &self.key, *span)?));
            }
        }
        Ok(out)
    }

    /// The parameters as the kind reads them.
    pub fn params(&self) -> Params {
        Params {
            half_life: self.half_life.map_or(0, ns),
            k: self.k.unwrap_or(0),
        }
    }

    /// Whether windows hold their current event.
    pub(crate) fn current(&self) -> bool {
        self.include_current.unwrap_or(true)
    }

    /// Every problem of this aggregation that needs no schema: the kind, its value, its
    /// spans, the current event.
    pub(crate) fn problems(&self, at: &str) -> Vec<String> {
        let mut problems = Vec::new();
        match kind(&self.kind) {
            None => problems.push(format!(
                "{at}: unknown kind {:?} (known: {})",
                self.kind,
                kinds()
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Some(k) => {
                match (&self.value, k.reads_value()) {
                    (None, true) => {
                        problems.push(format!("{at}: {} needs a value field", k.name()))
                    }
                    (Some(v), false) => problems.push(format!(
                        "{at}: {} reads no value, but value = {v:?} is given",
                        k.name()
                    )),
                    _ => {}
                }
                let takes = k.parameters();
                let given = [
                    (Parameter::HalfLife, self.half_life.is_some()),
                    (Parameter::K, self.k.is_some()),
                ];
                for (p, is_given) in given {
                    match (takes.contains(&p), is_given) {
                        (true, false) => {
                            problems.push(format!("{at}: {} needs {}", k.name(), p.name()))
                        }
                        (false, true) => {
                            problems.push(format!("{at}: {} takes no {}", k.name(), p.name()))
                        }
                        _ => {}
                    }
                }
                if self.half_life.is_some_and(|h| h.is_zero()) {
                    problems.push(format!("{at}: half_life must be longer than zero"));
                }
                if self.k == Some(0) {
                    problems.push(format!("{at}: k must be at least 1"));
                }
                if takes
                    .iter()
                    .all(|p| given.iter().any(|(g, is)| g == p && *is))
                {
                    let params = self.params();
                    problems.extend(
                        self.spans
                            .iter()
                            .filter(|s| !s.is_zero())
                            .filter_map(|s| k.check(&params, *s))
                            .map(|p| format!("{at}: {p}")),
                    );
                }
                if !k.takes_current() && self.include_current.is_some() {
                    problems.push(format!(
                        "{at}: {} is defined over the events before the current one; include_current does not apply",
                        k.name()
                    ));
                }
            }
        }
        if let Some(f) = &self.filter
            && let Err(e) = crate::expr::check_syntax(f)
        {
            problems.push(format!("{at}.filter: {e}"));
        }
        if self.spans.is_empty() {
            problems.push(format!("{at}: spans is empty"));
        }
        if self.spans.iter().any(|s| s.is_zero()) {
            problems.push(format!("{at}: a span must be longer than zero"));
        }
        problems
    }
}

/// The hash a kind that reads text keeps per event in place of a number (as the bits of its
/// value), so that comparing values compares integers first: fixed seeds, the same in every
/// process (a restore recomputes it from the text all the same).
pub fn text_hash(text: &str) -> u64 {
    const SEEDS: (u64, u64, u64, u64) = (
        0x5269_736b_7069_7065,
        0x2064_6973_7469_6e63,
        0x7420_7465_7874_2068,
        0x6173_6820_7365_6564,
    );
    ahash::RandomState::with_seeds(SEEDS.0, SEEDS.1, SEEDS.2, SEEDS.3).hash_one(text)
}

/// A text's value slot: its hash's bits, 0 for a null.
fn text_value(text: Option<&str>) -> f64 {
    text.map_or(0.0, |t| f64::from_bits(text_hash(t)))
}

/// One key's events: times and values, and for a kind that reads text, the values as text.
#[derive(Debug, Default)]
pub(crate) struct Held {
    series: Series,
    /// One per event, for a kind that reads text (boxed: the other kinds pay 8 bytes a key).
    #[allow(
        clippy::box_collection,
        reason = "a deque inline would add 24 bytes to every key of every kind"
    )]
    texts: Option<Box<VecDeque<Option<Box<str>>>>>,
}

impl Held {
    /// Inserts an event (its text too, for a kind that reads text); returns its position.
    fn insert(&mut self, t: i64, v: f64, text: Option<Option<Box<str>>>) -> usize {
        let pos = self.series.insert(t, v, None);
        if let Some(text) = text {
            self.texts.get_or_insert_default().insert(pos, text);
        }
        pos
    }
}

impl crate::state::Expiring for Held {
    fn evict(&mut self, horizon: i64) {
        let before = self.series.times.len();
        crate::state::Expiring::evict(&mut self.series, horizon);
        if let Some(texts) = &mut self.texts {
            texts.drain(..before - self.series.times.len());
        }
    }

    fn is_empty(&self) -> bool {
        self.series.times.is_empty()
    }
}

/// The streaming operator of one [`AggregateConfig`]: per key, its events within the longest
/// span (time and value), each event's window read by the kind for every span.
pub struct Aggregation {
    name: String,
    kind: &'static dyn Kind,
    key: String,
    value: Option<String>,
    filter: Option<Expression>,
    time: String,
    current: bool,
    params: Params,
    /// Columns per span.
    width: usize,
    /// Span (ns) per span index.
    spans: Vec<i64>,
    fields: Vec<FieldRef>,
    state: KeyedState<Held>,
    watermark: Watermark,
    appender: Appender,
}

impl std::fmt::Debug for Aggregation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregation")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("spans", &self.spans)
            .finish_non_exhaustive()
    }
}

impl Aggregation {
    /// The operator of `cfg` over events whose time is the column `time`; `None` with the
    /// problem when the kind is unknown or a name template does not fill.
    pub(crate) fn new(cfg: &AggregateConfig, time: &str) -> std::result::Result<Self, String> {
        let kind = kind(&cfg.kind).ok_or_else(|| format!("unknown kind {:?}", cfg.kind))?;
        let outputs = cfg.outputs()?;
        let spans: Vec<i64> = cfg.spans.iter().map(|s| ns(*s)).collect();
        let fields = outputs
            .iter()
            .map(|(_, _, name)| Arc::new(Field::new(name, kind.output(), false)))
            .collect();
        let params = cfg.params();
        Ok(Self {
            name: format!("aggregate({}:{})", kind.name(), cfg.key),
            kind,
            key: cfg.key.clone(),
            value: cfg.value.clone().filter(|_| kind.reads_value()),
            filter: cfg.filter.as_deref().map(Expression::new),
            time: time.into(),
            current: cfg.current() && kind.takes_current(),
            width: kind.width(&params),
            params,
            watermark: Watermark::new(spans.iter().copied().max().unwrap_or(0)),
            spans,
            fields,
            state: KeyedState::default(),
            appender: Appender::default(),
        })
    }
}

impl Operator for Aggregation {
    fn name(&self) -> &str {
        &self.name
    }

    fn output_fields(&self) -> &[FieldRef] {
        &self.fields
    }

    fn process(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let keys = columns::keys(&batch, &self.key)?;
        let times = columns::event_times(&batch, &self.time)?;
        let (values, texts) = match (&self.value, self.kind.reads_text()) {
            (Some(v), true) => (None, Some(columns::texts(&batch, v)?)),
            (Some(v), false) => (Some(columns::f64_values(&batch, v)?), None),
            (None, _) => (None, None),
        };
        let selected = match &mut self.filter {
            Some(f) => Some(f.matches(&batch).map_err(|e| {
                crate::OperatorError::Expression(format!("{} filter", self.name), e)
            })?),
            None => None,
        };
        let n = batch.num_rows();
        // Columns per row: every span's `width` columns.
        let per_row = self.spans.len() * self.width;
        let mut out = vec![0f64; n * per_row];
        let (spans, kind, current, params, width) = (
            &self.spans,
            self.kind,
            self.current,
            self.params,
            self.width,
        );
        let horizon = self.watermark.horizon();
        let selects = |row: usize| selected.as_ref().is_none_or(|s| s.value(row));
        let text_of = |row: usize| -> Option<Option<Box<str>>> {
            texts
                .as_ref()
                .map(|t: &StringArray| t.is_valid(row).then(|| t.value(row).into()))
        };
        // An unselected event whose key holds nothing reads empty windows and adds no key.
        let nothing = Held {
            texts: texts.as_ref().map(|_| Box::default()),
            ..Held::default()
        };
        self.state.for_each_row_adding(&keys, selects, |row, held| {
            let t = times[row];
            let row_out = &mut out[row * per_row..(row + 1) * per_row];
            let (held, hi, added) = match held {
                Some(held) if selects(row) => {
                    let text = text_of(row);
                    let v = match (&values, &text) {
                        (Some(v), _) => v.value(row),
                        (None, Some(text)) => text_value(text.as_deref()),
                        (None, None) => 0.0,
                    };
                    let pos = held.insert(t, v, text);
                    (Some(held), pos + usize::from(current), true)
                }
                // The window the event would have joined, itself left out.
                Some(held) => {
                    let hi = held.series.times.partition_point(|&x| x <= t);
                    (Some(held), hi, false)
                }
                None => (None, 0, false),
            };
            let view: &Held = held.as_deref().unwrap_or(&nothing);
            let series = &view.series;
            for (s, &span) in spans.iter().enumerate() {
                let after = t.saturating_sub(span);
                let lo = series.times.partition_point(|&x| x <= after).min(hi);
                let mut window =
                    Window::new(&series.times, &series.values, lo, hi, t, span).with_params(params);
                if let Some(texts) = &view.texts {
                    window = window.with_texts(texts);
                }
                kind.values(&window, &mut row_out[s * width..(s + 1) * width]);
            }
            // Only a key that gained an event sheds old ones here (the others at the
            // watermark's sweeps), so no key is left empty between sweeps.
            if let (Some(held), true) = (held, added) {
                crate::state::Expiring::evict(held, horizon);
            }
        });
        let arrays: Vec<ArrayRef> = (0..per_row)
            .map(|c| -> ArrayRef {
                let col = (0..n).map(|r| out[r * per_row + c]);
                match kind.output() {
                    DataType::Int64 => {
                        Arc::new(Int64Array::from_iter_values(col.map(|x| x as i64)))
                    }
                    _ => Arc::new(Float64Array::from_iter_values(col)),
                }
            })
            .collect();
        self.appender.append(batch, &self.fields, arrays)
    }

    fn advance_watermark(&mut self, watermark: i64) {
        self.state.advance(&mut self.watermark, watermark);
    }

    fn keys(&self) -> usize {
        self.state.len()
    }

    /// One row per event held: key, time, value; the watermark in the metadata.
    fn snapshot(&self) -> Result<Option<RecordBatch>> {
        let rows = self.state.iter().map(|(_, h)| h.series.times.len()).sum();
        let mut table = StateTable::with_capacity(rows);
        let (mut times, mut values) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
        let mut texts = self
            .kind
            .reads_text()
            .then(|| arrow::array::StringBuilder::with_capacity(rows, rows * 8));
        for (key, held) in self.state.iter() {
            table.key_rows(key, held.series.times.len());
            times.extend(held.series.times.iter().copied());
            values.extend(held.series.values.iter().copied());
            if let Some(builder) = &mut texts {
                match &held.texts {
                    Some(t) => t.iter().for_each(|v| builder.append_option(v.as_deref())),
                    None => (0..held.series.times.len()).for_each(|_| builder.append_null()),
                }
            }
        }
        let mut columns = series_columns(times, values);
        if let Some(mut builder) = texts {
            columns.push(("text", DataType::Utf8, true, Arc::new(builder.finish())));
        }
        table.finish(columns, Some(&self.watermark)).map(Some)
    }

    fn restore(&mut self, table: &RecordBatch) -> Result<()> {
        let r = StateReader::new(table)?;
        let times = r.primitive::<arrow::datatypes::Int64Type>("time")?;
        let values = r.primitive::<arrow::datatypes::Float64Type>("value")?;
        let texts = match self.kind.reads_text() {
            true => Some(r.string("text")?),
            false => None,
        };
        let mut state = KeyedState::<Held>::default();
        for row in 0..r.rows() {
            let text: Option<Option<Box<str>>> =
                texts.map(|t| t.is_valid(row).then(|| t.value(row).into()));
            // A text's hash from the text itself, not from the table.
            let v = match &text {
                Some(text) => text_value(text.as_deref()),
                None => values.value(row),
            };
            state.entry(r.key(row)?).insert(times.value(row), v, text);
        }
        self.watermark = r.watermark(self.watermark.reach())?;
        self.state = state;
        Ok(())
    }
}

/// The feature reference's table of kinds, generated from the registry (what
/// `docs/reference/features.md` holds between its markers).
pub fn reference_table() -> String {
    let mut out = String::from(
        "| kind | reads | parameters | type | over the window (t − span, t] | empty window | example |\n|---|---|---|---|---|---|---|\n",
    );
    for k in kinds() {
        let doc = k.doc();
        let ty = match k.output() {
            DataType::Int64 => "Int64",
            _ => "Float64",
        };
        let reads = match (k.reads_value(), k.reads_text()) {
            (false, _) => "no value",
            (true, false) => "a number",
            (true, true) => "any field, as text",
        };
        let params = match k.parameters() {
            [] => "—".to_string(),
            ps => ps
                .iter()
                .map(|p| format!("`{}`", p.name()))
                .collect::<Vec<_>>()
                .join(", "),
        };
        out.push_str(&format!(
            "| `{}` | {reads} | {params} | {ty} | {} | {} | `{}` |\n",
            k.name(),
            doc.definition,
            doc.empty,
            doc.example.replace('|', "\\|"),
        ));
    }
    out
}

/// The page `docs/reference/features.md`: how aggregations are declared and read, and every
/// registered kind.
pub fn reference_page() -> String {
    format!(
        "# Aggregation kinds\n\n\
Generated from riskpipe's registry of aggregation kinds (`RISKPIPE_BLESS=1 cargo test -p \
riskpipe-operators reference` rewrites it); each kind's definition is the code a golden test \
checks by hand and a property test against its batch twin.\n\n\
<!-- extends examples/payments/payments.toml -->\n```toml\n[[job.features.aggregate]]\nkey = \"card.id\"          # a field, or several: [\"card.id\", \"merchant.id\"]\n\
kind = \"max\"             # one of the kinds below\nvalue = \"amount.value\"   # the number it reads (not for count, since_previous)\n\
spans = [\"10m\", \"1h\", \"30d\"]   # seconds (s), minutes (m), hours (h), days (d)\n\
name = \"card_max_{{span}}\" # one column per span: {{key}}, {{span}} (10m, 1h, 30days), {{days}}\n\
include_current = true   # whether an event's window holds the event itself (default true)\n\
filter = \"channel = 'online'\"   # optional: only the events this SQL condition is true for\n```\n\n\
Some kinds take a parameter: `half_life = \"1h\"` (the decayed kinds), `k = 3` (`last_k`, whose \
name template then needs `{{i}}`: one column per value, 1 the latest).\n\n\
An event at time t reads the key's events with time in (t − span, t]: an event exactly at \
t − span is out. Events of equal time are ordered by the events' id; an event's window holds \
those before it in that order (and itself, with `include_current`), never those after. A \
late event (within the allowed lateness) reads the key's events that arrived before it with \
a time up to its own (those of equal time included whatever their id), as a replay of the same \
topic reads them too. Sums add from the latest event to the earliest, so \
a value depends only on which events the window holds, never on how batches were cut or when \
old events were freed. Models take no nulls: every kind has a value over an empty window (an \
event whose key has nothing earlier in the span and that is not counted itself). With a \
`filter`, the windows hold only the events it selects (NULL does not select); an event it does \
not select still gets a value, over the window it would have joined, itself left out.\n\n{}",
        reference_table()
    )
}

#[cfg(test)]
mod tests {
    /// The reference page is written from the registry, so it cannot go stale.
    #[test]
    fn the_reference_page_lists_every_registered_kind() {
        let page = super::reference_page();
        for k in super::kinds() {
            assert!(
                page.contains(&format!("| `{}` |", k.name())),
                "{}",
                k.name()
            );
        }
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/reference/features.md");
        if std::env::var_os("RISKPIPE_BLESS").is_some() {
            std::fs::write(&path, &page).expect("write");
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == page,
            "docs/reference/features.md is stale: run RISKPIPE_BLESS=1 cargo test -p riskpipe-operators reference"
        );
    }
}
