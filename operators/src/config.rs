//! The feature configuration: the one place each feature is defined.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{DataType, FieldRef, Schema};
use serde::Deserialize;

use crate::aggregate::{AggregateConfig, Aggregation};
use crate::{
    CalendarFlags, FeatureChain, LabelRisk, Operator, OperatorError, Result, WindowAggregate,
    window::Aggregate,
};

/// Every feature of a pipeline. Compiled to the streaming [`FeatureChain`] and to the batch
/// DataFusion query alike.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureConfig {
    /// Event-time column of the events (a UTC timestamp); a job fills it in from its declared
    /// events when the config leaves it out.
    #[serde(default)]
    pub event_time: String,
    /// Column ordering events of equal event time (the event id); filled in like `event_time`.
    #[serde(default)]
    pub order_by: String,
    /// Calendar flags of the event time.
    #[serde(default)]
    pub calendar: Option<CalendarConfig>,
    /// Keyed sliding-window aggregates over (t - span, t].
    #[serde(default)]
    pub windows: Vec<WindowConfig>,
    /// Keyed aggregations of any registered kind over (t - span, t], any span.
    #[serde(default)]
    pub aggregate: Vec<AggregateConfig>,
    /// Keyed fraud rates from delayed labels over (t - delay - span, t - delay].
    #[serde(default)]
    pub label_risk: Vec<LabelRiskConfig>,
    /// SQL expressions over the event's fields and other features, evaluated with DataFusion's
    /// expression engine, in the order their dependencies allow.
    #[serde(default)]
    pub sql: Vec<SqlFeatureConfig>,
}

/// A checkpoint's state is restored only into features whose `Debug` text (their fingerprint)
/// is the same: `aggregate` is written only where there are some, so configs without them keep
/// the fingerprint of the checkpoints written before aggregations existed.
impl std::fmt::Debug for FeatureConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("FeatureConfig");
        d.field("event_time", &self.event_time)
            .field("order_by", &self.order_by)
            .field("calendar", &self.calendar)
            .field("windows", &self.windows);
        if !self.aggregate.is_empty() {
            d.field("aggregate", &self.aggregate);
        }
        d.field("label_risk", &self.label_risk)
            .field("sql", &self.sql)
            .finish()
    }
}

fn default_night_last_hour() -> u32 {
    6
}

/// Calendar flags (UTC): 1 or 0 per event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarConfig {
    /// Output column: 1 on Saturday and Sunday.
    pub weekend: Option<String>,
    /// Output column: 1 when the hour of day is at most `night_last_hour`.
    pub night: Option<String>,
    /// Last hour (0–23) that counts as night.
    #[serde(default = "default_night_last_hour")]
    pub night_last_hour: u32,
}

/// Count / sum / mean of `value` per `key` over the events in (t - span, t], counting the
/// current event and, among events of equal time, only those earlier in the order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Key column (integer or string), or several combined: `key = ["card.id", "merchant.id"]`
    /// is held as `"card.id × merchant.id"` ([`key_parts`]).
    #[serde(deserialize_with = "key_columns")]
    pub key: String,
    /// Numeric column aggregated by `sum` and `mean`.
    pub value: String,
    /// Window lengths, e.g. `["1d", "7d"]`.
    #[serde(deserialize_with = "durations")]
    pub spans: Vec<Duration>,
    /// Output name template for the count (`{key}`, `{days}`, `{span}` are replaced).
    pub count: Option<String>,
    /// Output name template for the sum.
    pub sum: Option<String>,
    /// Output name template for the mean.
    pub mean: Option<String>,
}

/// Per `key`, the number of the key's events in (t - delay - span, t - delay] and the fraction of
/// them labelled fraud, with labels known only from label events (known at their label time).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRiskConfig {
    /// Key column, present in transactions and in label events; or several, as a window's.
    #[serde(deserialize_with = "key_columns")]
    pub key: String,
    /// How long after a transaction its label is assumed known (> 0).
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// Window lengths, e.g. `["1d", "7d"]`.
    #[serde(deserialize_with = "durations")]
    pub spans: Vec<Duration>,
    /// Output name template for the count of the key's events in the window.
    pub count: Option<String>,
    /// Output name template for the fraud rate (0 when the window is empty).
    pub risk: Option<String>,
    /// Label column in label events (and in histories used for batch export); a job fills it
    /// in from its declared labels when the config leaves it out.
    #[serde(default)]
    pub label: String,
    /// Column of label events saying when the label became known; filled in like `label`.
    #[serde(default)]
    pub label_time: String,
}

/// A feature computed by a SQL expression, e.g. `ln("TX_AMOUNT" + 1)`. One that reads only the
/// event's fields (and calendar flags and other such expressions) runs before the keyed features,
/// which may aggregate, key or filter by it; one that reads a keyed feature runs after them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlFeatureConfig {
    /// Output column.
    pub name: String,
    /// DataFusion SQL scalar expression over the event's fields and other features (names are
    /// case-sensitive; quote those that are not plain identifiers: `"card.id"`).
    pub expr: String,
}

/// What joins the columns of a key that combines several (`key = ["a", "b"]` is `"a × b"`).
pub const KEY_SEPARATOR: &str = " \u{d7} ";

/// The columns of a key: one, or those a combined key joins.
pub fn key_parts(key: &str) -> Vec<&str> {
    key.split(KEY_SEPARATOR).collect()
}

/// A key: one column's name, or a list of at least two, joined by [`KEY_SEPARATOR`] (a serde
/// `deserialize_with`, for every config that names a key).
pub fn key_columns<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Key {
        One(String),
        Many(Vec<String>),
    }
    match Key::deserialize(d)? {
        Key::One(k) => Ok(k),
        Key::Many(parts) if parts.len() >= 2 && parts.iter().all(|p| !p.is_empty()) => {
            Ok(parts.join(KEY_SEPARATOR))
        }
        Key::Many(_) => Err(serde::de::Error::custom(
            "a key of several columns lists at least two names",
        )),
    }
}

pub(crate) fn durations<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<Duration>, D::Error> {
    let raw: Vec<String> = Vec::deserialize(d)?;
    raw.iter()
        .map(|s| {
            humantime::parse_duration(s)
                .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
        })
        .collect()
}

/// A label-risk output: (span index, count column, risk column).
pub(crate) type RiskOutput = (usize, Option<String>, Option<String>);

const DAY_NS: u128 = 86_400 * 1_000_000_000;

/// Fills a name template: `{key}`, `{span}` (e.g. `7days`) and `{days}` (whole days).
pub(crate) fn feature_name(
    template: &str,
    key: &str,
    span: Duration,
) -> std::result::Result<String, String> {
    let mut name = template.replace("{key}", key).replace(
        "{span}",
        &humantime::format_duration(span)
            .to_string()
            .replace(' ', ""),
    );
    if name.contains("{days}") {
        if !span.as_nanos().is_multiple_of(DAY_NS) {
            return Err(format!(
                "template {template:?} uses {{days}} but span {} is not whole days",
                humantime::format_duration(span)
            ));
        }
        name = name.replace("{days}", &(span.as_nanos() / DAY_NS).to_string());
    }
    if name.contains('{') || name.contains('}') {
        return Err(format!(
            "template {template:?} has an unknown placeholder (known: {{key}}, {{days}}, {{span}})"
        ));
    }
    Ok(name)
}

pub(crate) fn ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl FeatureConfig {
    /// Output names of the window outputs as (aggregate, span index, name).
    pub(crate) fn window_outputs(
        w: &WindowConfig,
    ) -> std::result::Result<Vec<(Aggregate, usize, String)>, String> {
        let mut out = Vec::new();
        for (i, span) in w.spans.iter().enumerate() {
            for (agg, template) in [
                (Aggregate::Count, &w.count),
                (Aggregate::Sum, &w.sum),
                (Aggregate::Mean, &w.mean),
            ] {
                if let Some(t) = template {
                    out.push((agg, i, feature_name(t, &w.key, *span)?));
                }
            }
        }
        Ok(out)
    }

    /// Output names of a label-risk block as (span index, count name, risk name).
    pub(crate) fn risk_outputs(
        r: &LabelRiskConfig,
    ) -> std::result::Result<Vec<RiskOutput>, String> {
        r.spans
            .iter()
            .enumerate()
            .map(|(i, span)| {
                let c = r
                    .count
                    .as_deref()
                    .map(|t| feature_name(t, &r.key, *span))
                    .transpose()?;
                let k = r
                    .risk
                    .as_deref()
                    .map(|t| feature_name(t, &r.key, *span))
                    .transpose()?;
                Ok((i, c, k))
            })
            .collect()
    }

    /// Every problem with this configuration against the transaction schema (and the label
    /// schema, where label features are configured), all at once.
    pub fn validate(&self, transactions: &Schema, labels: Option<&Schema>) -> Vec<String> {
        let mut problems = Vec::new();
        let mut names: HashSet<String> = transactions
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let mut add_name = |problems: &mut Vec<String>, n: String| {
            if !names.insert(n.clone()) {
                problems.push(format!(
                    "feature {n:?} is defined twice or clashes with an input column"
                ));
            }
        };
        let col = |schema: &Schema,
                   name: &str,
                   what: &str,
                   ok: fn(&DataType) -> bool,
                   problems: &mut Vec<String>| match schema.field_with_name(name)
        {
            Ok(f) if ok(f.data_type()) => {}
            Ok(f) => problems.push(format!(
                "{what} column {name:?} has type {}, which does not fit",
                f.data_type()
            )),
            Err(_) => problems.push(format!("{what} column {name:?} is not in the input")),
        };
        let is_time = |d: &DataType| matches!(d, DataType::Timestamp(..));
        let is_key = |d: &DataType| {
            d.is_integer() || matches!(d, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
        };
        let is_num = |d: &DataType| d.is_numeric();
        // What the keyed features read: the event's fields, calendar flags and the expression
        // features that run before them.
        let order = crate::sql::order(&self.sql, &self.keyed_names());
        problems.extend(order.cycle.clone());
        let mut read: Vec<arrow::datatypes::FieldRef> =
            transactions.fields().iter().cloned().collect();
        if let Some(c) = &self.calendar {
            read.extend(
                c.weekend
                    .iter()
                    .chain(c.night.iter())
                    .map(|n| Arc::new(arrow::datatypes::Field::new(n, DataType::Int64, false))),
            );
        }
        let events =
            crate::sql::plan_over(&Schema::new(read), &self.sql, &order.early, &mut problems);
        let transactions_only = transactions;
        let transactions = &events;
        col(
            transactions,
            &self.event_time,
            "event_time",
            is_time,
            &mut problems,
        );
        col(
            transactions,
            &self.order_by,
            "order_by",
            |d| d.is_numeric() || matches!(d, DataType::Timestamp(..) | DataType::Utf8),
            &mut problems,
        );
        if let Some(c) = &self.calendar {
            if c.weekend.is_none() && c.night.is_none() {
                problems.push("calendar: name at least one of weekend, night".into());
            }
            if c.night_last_hour > 23 {
                problems.push(format!(
                    "calendar.night_last_hour must be 0..=23, not {}",
                    c.night_last_hour
                ));
            }
            for n in c.weekend.iter().chain(c.night.iter()) {
                add_name(&mut problems, n.clone());
            }
        }
        for (i, w) in self.windows.iter().enumerate() {
            for part in key_parts(&w.key) {
                col(
                    transactions,
                    part,
                    &format!("windows[{i}].key"),
                    is_key,
                    &mut problems,
                );
            }
            col(
                transactions,
                &w.value,
                &format!("windows[{i}].value"),
                is_num,
                &mut problems,
            );
            if w.spans.is_empty() {
                problems.push(format!("windows[{i}]: spans is empty"));
            }
            if w.spans.iter().any(|s| s.is_zero()) {
                problems.push(format!("windows[{i}]: a span must be longer than zero"));
            }
            if w.count.is_none() && w.sum.is_none() && w.mean.is_none() {
                problems.push(format!(
                    "windows[{i}]: name at least one of count, sum, mean"
                ));
            }
            match Self::window_outputs(w) {
                Ok(outs) => outs
                    .into_iter()
                    .for_each(|(_, _, n)| add_name(&mut problems, n)),
                Err(e) => problems.push(format!("windows[{i}]: {e}")),
            }
        }
        for (i, a) in self.aggregate.iter().enumerate() {
            let at = format!("aggregate[{i}]");
            for part in key_parts(&a.key) {
                col(
                    transactions,
                    part,
                    &format!("{at}.key"),
                    is_key,
                    &mut problems,
                );
            }
            if let Some(v) = &a.value {
                // A kind that reads text reads any field; the others a number.
                let text = crate::aggregate::kind(&a.kind).is_some_and(|k| k.reads_text());
                col(
                    transactions,
                    v,
                    &format!("{at}.value"),
                    if text { |_: &DataType| true } else { is_num },
                    &mut problems,
                );
            }
            problems.extend(a.problems(&at));
            match a.outputs() {
                Ok(outs) => outs
                    .into_iter()
                    .for_each(|(_, _, n)| add_name(&mut problems, n)),
                Err(e) => problems.push(format!("{at}: {e}")),
            }
        }
        if !self.label_risk.is_empty() {
            // Labels name the transaction they are about by this id.
            col(
                transactions_only,
                &self.order_by,
                "order_by (the transaction id labels name)",
                is_key,
                &mut problems,
            );
        }
        for (i, r) in self.label_risk.iter().enumerate() {
            for part in key_parts(&r.key) {
                col(
                    transactions,
                    part,
                    &format!("label_risk[{i}].key"),
                    is_key,
                    &mut problems,
                );
            }
            match labels {
                Some(l) => {
                    // Labels may name their transaction only: without the key or the event
                    // time, riskpipe takes them from the transaction (LabelRisk::naming_events);
                    // where labels carry them, they must fit.
                    let carried = |name: &str| l.field_with_name(name).is_ok();
                    for part in key_parts(&r.key).into_iter().filter(|p| carried(p)) {
                        col(
                            l,
                            part,
                            &format!("label_risk[{i}].key (labels)"),
                            is_key,
                            &mut problems,
                        );
                    }
                    if carried(&self.event_time) {
                        col(
                            l,
                            &self.event_time,
                            "event_time (labels)",
                            is_time,
                            &mut problems,
                        );
                    }
                    col(
                        l,
                        &r.label_time,
                        &format!("label_risk[{i}].label_time"),
                        is_time,
                        &mut problems,
                    );
                    col(
                        l,
                        &self.order_by,
                        "order_by (labels: the labelled transaction)",
                        is_key,
                        &mut problems,
                    );
                    col(
                        l,
                        &r.label,
                        &format!("label_risk[{i}].label"),
                        |d| d.is_integer() || d == &DataType::Boolean,
                        &mut problems,
                    );
                }
                None => problems.push(format!("label_risk[{i}]: needs a fraud-label source")),
            }
            if r.delay.is_zero() {
                problems.push(format!("label_risk[{i}]: delay must be longer than zero (a zero delay would read the current event's own label)"));
            }
            if r.spans.is_empty() || r.spans.iter().any(|s| s.is_zero()) {
                problems.push(format!(
                    "label_risk[{i}]: spans must be non-empty and longer than zero"
                ));
            }
            if r.count.is_none() && r.risk.is_none() {
                problems.push(format!("label_risk[{i}]: name at least one of count, risk"));
            }
            match Self::risk_outputs(r) {
                Ok(outs) => outs
                    .into_iter()
                    .flat_map(|(_, c, k)| c.into_iter().chain(k))
                    .for_each(|n| add_name(&mut problems, n)),
                Err(e) => problems.push(format!("label_risk[{i}]: {e}")),
            }
        }
        for (i, a) in self.aggregate.iter().enumerate() {
            if let Some(f) = &a.filter {
                match crate::expr::Expression::new(f).field("filter", &Arc::new(events.clone())) {
                    Ok(field) if field.data_type() == &DataType::Boolean => {}
                    Ok(field) => problems.push(format!(
                        "aggregate[{i}].filter {f:?} is {}, not a condition (true or false)",
                        field.data_type()
                    )),
                    Err(e) => problems.push(format!("aggregate[{i}].filter: {e}")),
                }
            }
        }
        for (i, s) in self.sql.iter().enumerate() {
            if let Err(e) = crate::expr::check_syntax(&s.expr) {
                problems.push(format!("sql[{i}] ({}): {e}", s.name));
            }
            add_name(&mut problems, s.name.clone());
        }
        // The expressions after the keyed features read every column before them.
        if problems.is_empty() && !order.late.is_empty() {
            let keyed = FeatureConfig {
                sql: Vec::new(),
                calendar: None,
                ..self.clone()
            }
            .build_chain();
            match keyed {
                Ok(chain) => {
                    let mut fields: Vec<arrow::datatypes::FieldRef> =
                        events.fields().iter().cloned().collect();
                    fields.extend(chain.output_fields());
                    crate::sql::plan_over(
                        &Schema::new(fields),
                        &self.sql,
                        &order.late,
                        &mut problems,
                    );
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        problems
    }

    /// The columns of the keyed features (windows, aggregations, label risks).
    pub(crate) fn keyed_names(&self) -> HashSet<String> {
        let windows = self
            .windows
            .iter()
            .flat_map(|w| Self::window_outputs(w).unwrap_or_default())
            .map(|(_, _, n)| n);
        let aggregations = self
            .aggregate
            .iter()
            .flat_map(|a| a.outputs().unwrap_or_default())
            .map(|(_, _, n)| n);
        let risks = self
            .label_risk
            .iter()
            .flat_map(|r| Self::risk_outputs(r).unwrap_or_default())
            .flat_map(|(_, c, k)| c.into_iter().chain(k));
        windows.chain(aggregations).chain(risks).collect()
    }

    /// Builds the streaming operators. Configuration errors are reported all together.
    pub fn build_chain(&self) -> Result<FeatureChain> {
        self.build_chain_for(false)
    }

    /// [`FeatureConfig::build_chain`], the label risks taking labels that name their
    /// transaction only when `labels_name_events` ([`LabelRisk::naming_events`]).
    pub fn build_chain_for(&self, labels_name_events: bool) -> Result<FeatureChain> {
        let mut problems = Vec::new();
        let mut ops: Vec<Box<dyn Operator>> = Vec::new();
        if let Some(c) = &self.calendar {
            ops.push(Box::new(CalendarFlags::new(
                &self.event_time,
                c.weekend.clone(),
                c.night.clone(),
                c.night_last_hour,
            )));
        }
        let order = crate::sql::order(&self.sql, &self.keyed_names());
        problems.extend(order.cycle.clone());
        let expression = |i: &usize| -> Box<dyn Operator> {
            let s = &self.sql[*i];
            Box::new(crate::SqlFeature::new(&s.name, &s.expr))
        };
        ops.extend(order.early.iter().map(expression));
        // One operator remembering events by id is enough to refuse a transaction published
        // twice: the label-risk history holds every transaction within its reach; without
        // label risk (the first stage of the repartitioned topology), the windows do.
        let window_ids = self.label_risk.is_empty().then_some(self.order_by.as_str());
        for (i, w) in self.windows.iter().enumerate() {
            match Self::window_outputs(w) {
                Ok(outs) => ops.push(Box::new(WindowAggregate::new(
                    &w.key,
                    &w.value,
                    &self.event_time,
                    window_ids,
                    w.spans.iter().map(|s| ns(*s)).collect(),
                    outs,
                ))),
                Err(e) => problems.push(format!("windows[{i}]: {e}")),
            }
        }
        for (i, a) in self.aggregate.iter().enumerate() {
            let mut found = a.problems(&format!("aggregate[{i}]"));
            if found.is_empty() {
                match Aggregation::new(a, &self.event_time) {
                    Ok(op) => ops.push(Box::new(op)),
                    Err(e) => found.push(format!("aggregate[{i}]: {e}")),
                }
            }
            problems.extend(found);
        }
        for (i, r) in self.label_risk.iter().enumerate() {
            match Self::risk_outputs(r) {
                Ok(outs) => {
                    let risk = LabelRisk::new(r, &self.event_time, &self.order_by, outs);
                    ops.push(Box::new(match labels_name_events {
                        true => risk.naming_events(),
                        false => risk,
                    }));
                }
                Err(e) => problems.push(format!("label_risk[{i}]: {e}")),
            }
        }
        ops.extend(order.late.iter().map(expression));
        if !problems.is_empty() {
            return Err(OperatorError::Config(problems));
        }
        Ok(FeatureChain::new(ops))
    }

    /// The definitions split at a repartition by `key` (scale-out): the first part holds what
    /// runs before it (calendar flags, expressions over the events, windows over other keys),
    /// the second what runs after it on rows keyed by `key` (windows and label risks over `key`,
    /// then the expressions that read keyed features). Every label risk must be keyed by `key`, since labels reach
    /// only the second part; each problem is listed.
    pub fn split_by(&self, key: &str) -> Result<(FeatureConfig, FeatureConfig)> {
        let problems: Vec<String> = self
            .label_risk
            .iter()
            .enumerate()
            .filter(|(_, r)| r.key != key)
            .map(|(i, r)| {
                format!(
                    "label_risk[{i}] is keyed by {:?}: with a repartition by {key:?} every label risk must be keyed by it (labels reach only the stage after the repartition)",
                    r.key
                )
            })
            .collect();
        let mut problems = problems;
        let (after, before): (Vec<WindowConfig>, Vec<WindowConfig>) =
            self.windows.iter().cloned().partition(|w| w.key == key);
        let (aggregate_after, aggregate_before): (Vec<AggregateConfig>, Vec<AggregateConfig>) =
            self.aggregate.iter().cloned().partition(|a| a.key == key);
        // The first stage's state is per partition of the transactions: one key, the one
        // producers partition them by.
        let keys: std::collections::BTreeSet<&str> = before
            .iter()
            .map(|w| w.key.as_str())
            .chain(aggregate_before.iter().map(|a| a.key.as_str()))
            .collect();
        if keys.len() > 1 {
            problems.push(format!(
                "windows before the repartition by {key:?} are keyed by {keys:?}: with a repartition they must share one key, the one the transactions topic is partitioned by"
            ));
        }
        // Expressions that read only the events run in the first part (its keyed features may
        // read them); the rest after the repartition, beside the features they read.
        let order = crate::sql::order(&self.sql, &self.keyed_names());
        problems.extend(order.cycle.clone());
        if !problems.is_empty() {
            return Err(OperatorError::Config(problems));
        }
        let pick = |which: &[usize]| which.iter().map(|&i| self.sql[i].clone()).collect();
        let first = FeatureConfig {
            windows: before,
            aggregate: aggregate_before,
            label_risk: Vec::new(),
            sql: pick(&order.early),
            ..self.clone()
        };
        let second = FeatureConfig {
            calendar: None,
            windows: after,
            aggregate: aggregate_after,
            sql: pick(&order.late),
            ..self.clone()
        };
        Ok((first, second))
    }

    /// How far back in event time the features of an event look: the longest window, or the
    /// longest label-risk delay plus span. State older than this behind the watermark is freed,
    /// so a rebuild that reads this far back (plus the lateness) ends in the same state.
    pub fn reach(&self) -> Duration {
        let windows = self
            .windows
            .iter()
            .flat_map(|w| w.spans.iter().copied())
            .chain(self.aggregate.iter().flat_map(|a| a.spans.iter().copied()));
        let risks = self.label_risk.iter().map(|r| {
            r.delay
                .saturating_add(r.spans.iter().copied().max().unwrap_or_default())
        });
        windows.chain(risks).max().unwrap_or_default()
    }

    /// Names of every feature column, in the order the chain appends them.
    pub fn feature_names(&self) -> Result<Vec<String>> {
        Ok(self.build_chain()?.feature_names())
    }

    /// The columns the chain appends to events of the schema `events`, with their types: an
    /// expression's type is its own over those columns, which only planning it tells. Where
    /// the events do not fit the features (a problem [`FeatureConfig::validate`] lists), the
    /// chain's declared fields (an expression's as a nullable Float64).
    pub fn output_fields(&self, events: &arrow::datatypes::SchemaRef) -> Result<Vec<FieldRef>> {
        let mut chain = self.build_chain()?;
        let declared = chain.output_fields();
        // An empty batch plans every expression and changes no state.
        Ok(
            match chain.process(arrow::array::RecordBatch::new_empty(events.clone())) {
                Ok(out) => out.schema().fields()[events.fields().len()..].to_vec(),
                Err(_) => declared,
            },
        )
    }
}
