//! Feature operators: Arrow `RecordBatch` in, the same batch with feature columns appended out.
//!
//! A [`FeatureConfig`] (one TOML table, see `config/fraud-handbook.toml`) is the single
//! definition of every feature. It compiles two ways:
//! - [`FeatureConfig::build_chain`] builds the streaming [`FeatureChain`] that live scoring and
//!   replay both run: events ordered by (event time, tie-break column) flow through
//!   [`CalendarFlags`], [`WindowAggregate`]s, [`Aggregation`]s (any registered [`Kind`] over
//!   any span, optionally of the events a condition selects), [`LabelRisk`]s and
//!   [`SqlFeature`]s (SQL expressions, [`expr`]: the one expression language), each keeping its
//!   per-key state across batches; fraud-label events reach the stateful operators through
//!   [`Operator::observe_labels`];
//! - with the `sql` cargo feature, `batch::batch_features` compiles the same definitions to one
//!   DataFusion query with window frames over event time, which exports training sets over a
//!   whole history.
//!
//! Tests prove the two produce the same values, which is what keeps training and serving equal.
//!
//! [`decisions`] turns scored rows into decisions: rules (SQL predicates of the same expression
//! language) each naming an outcome, the most severe matching outcome deciding.
//!
//! State is keyed by the key column and follows the watermark the job hands over: what no event still
//! to come can see is freed, so memory is bounded by the events inside the windows, not by the
//! keys ever seen.

pub mod aggregate;
#[cfg(feature = "sql")]
pub mod batch;
mod calendar;
pub mod columns;
mod config;
pub mod decisions;
pub mod expr;
mod label_risk;
pub mod lists;
mod market;
mod sql;
mod state;
mod window;

use std::fmt;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{FieldRef, Schema, SchemaRef};
use arrow::error::ArrowError;
use riskpipe_schemas::Fault;

pub use aggregate::{AggregateConfig, Aggregation, Kind};
pub use calendar::CalendarFlags;
pub use config::{
    CalendarConfig, FeatureConfig, KEY_SEPARATOR, LabelRiskConfig, SqlFeatureConfig, WindowConfig,
    key_columns, key_parts,
};
pub use label_risk::LabelRisk;
pub use market::{Ewma, QuantileOf, Rolling, RollingQuantile, SeriesFeatures, SeriesOperator};
pub use sql::SqlFeature;
pub use state::state_table_keys;
pub use window::{Aggregate, WindowAggregate};

/// Errors of the operators crate.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The batch does not fit what the operator needs (missing column, wrong type, null).
    #[error("bad input: {0}")]
    BadInput(String),
    /// The feature configuration is invalid; every problem is listed.
    #[error("invalid feature config:\n  - {}", .0.join("\n  - "))]
    Config(Vec<String>),
    /// A checkpoint's state table does not fit the operator (written by another feature config
    /// or another version): riskpipe is misconfigured.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// Arrow failed on data that had passed the checks: a bug.
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    /// An expression (feature or filter, named first) does not plan over its input or failed
    /// evaluating: riskpipe is misconfigured.
    #[error("expression {0}: {1}")]
    Expression(String, expr::ExprError),
    /// DataFusion failed planning or running a feature query.
    #[cfg(feature = "sql")]
    #[error("datafusion: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

impl OperatorError {
    /// Whose fault the error is.
    pub fn fault(&self) -> Fault {
        match self {
            OperatorError::BadInput(_) => Fault::BadInput,
            #[cfg(feature = "sql")]
            OperatorError::DataFusion(_) => Fault::Bug,
            OperatorError::Config(_)
            | OperatorError::Checkpoint(_)
            | OperatorError::Expression(..)
            | OperatorError::Arrow(_) => Fault::Bug,
        }
    }
}

/// Result of this crate.
pub type Result<T, E = OperatorError> = std::result::Result<T, E>;

/// One feature stage. Operators are fed transactions in event-time order and append their
/// columns; stateful ones keep per-key state between batches.
pub trait Operator: Send + fmt::Debug {
    /// Name used in logs and metrics.
    fn name(&self) -> &str;
    /// The columns this operator appends, in order.
    fn output_fields(&self) -> &[FieldRef];
    /// Appends this operator's feature columns to `batch`.
    fn process(&mut self, batch: RecordBatch) -> Result<RecordBatch>;
    /// Takes fraud-label events. Operators that do not use labels ignore them.
    fn observe_labels(&mut self, _labels: &RecordBatch) -> Result<()> {
        Ok(())
    }
    /// No event at or before `watermark` (ns since the epoch) will be processed any more: state
    /// that only such events could see is freed, and keys left with nothing are dropped. Never
    /// called, state grows with every key ever seen; results are the same either way.
    fn advance_watermark(&mut self, _watermark: i64) {}
    /// Keys held in state (0 for stateless operators).
    fn keys(&self) -> usize {
        0
    }
    /// Which events of `batch` the operator has taken in already (by their key and id), for
    /// operators that remember events by id; `None` for the others. A row read twice (an
    /// at-least-once repartition topic re-delivers rows) must not count twice.
    fn seen(&self, _batch: &RecordBatch) -> Result<Option<Vec<bool>>> {
        Ok(None)
    }
    /// The operator's keyed state (with its watermark) as one Arrow table, for a checkpoint;
    /// `None` for stateless operators.
    fn snapshot(&self) -> Result<Option<RecordBatch>> {
        Ok(None)
    }
    /// Replaces the operator's state with a table [`Operator::snapshot`] made: afterwards it
    /// computes exactly what the operator that made the table would have.
    fn restore(&mut self, _table: &RecordBatch) -> Result<()> {
        Err(OperatorError::Checkpoint(format!(
            "{} keeps no state, but the checkpoint has a table for it",
            self.name()
        )))
    }
}

/// The operators of one feature configuration, in order.
#[derive(Debug)]
pub struct FeatureChain {
    operators: Vec<Box<dyn Operator>>,
}

impl FeatureChain {
    /// A chain of the given operators.
    pub fn new(operators: Vec<Box<dyn Operator>>) -> Self {
        Self { operators }
    }

    /// Runs `batch` through every operator.
    pub fn process(&mut self, mut batch: RecordBatch) -> Result<RecordBatch> {
        for op in &mut self.operators {
            batch = op.process(batch)?;
        }
        Ok(batch)
    }

    /// Hands label events to every operator.
    pub fn observe_labels(&mut self, labels: &RecordBatch) -> Result<()> {
        for op in &mut self.operators {
            op.observe_labels(labels)?;
        }
        Ok(())
    }

    /// Moves every operator's watermark (see [`Operator::advance_watermark`]).
    pub fn advance_watermark(&mut self, watermark: i64) {
        for op in &mut self.operators {
            op.advance_watermark(watermark);
        }
    }

    /// Which events of `batch` an operator that remembers events by id has taken in already:
    /// any of them (each remembers for as long as its windows look back); `None`: none does.
    pub fn seen(&self, batch: &RecordBatch) -> Result<Option<Vec<bool>>> {
        let mut all: Option<Vec<bool>> = None;
        for op in &self.operators {
            if let Some(seen) = op.seen(batch)? {
                match &mut all {
                    Some(all) => all.iter_mut().zip(seen).for_each(|(a, s)| *a |= s),
                    None => all = Some(seen),
                }
            }
        }
        Ok(all)
    }

    /// Keys held in state, over every operator.
    pub fn keys(&self) -> usize {
        self.operators.iter().map(|op| op.keys()).sum()
    }

    /// Every stateful operator's table (see [`Operator::snapshot`]), named by its position and
    /// name in the chain.
    pub fn snapshot(&self) -> Result<Vec<(String, RecordBatch)>> {
        let mut tables = Vec::new();
        for (i, op) in self.operators.iter().enumerate() {
            if let Some(t) = op.snapshot()? {
                tables.push((format!("{i}-{}", op.name()), t));
            }
        }
        Ok(tables)
    }

    /// Restores every stateful operator from the tables of [`FeatureChain::snapshot`]: each
    /// must have its table and no table may be left over (a checkpoint of another chain).
    pub fn restore(&mut self, tables: &[(String, RecordBatch)]) -> Result<()> {
        let mut used = 0;
        for (i, op) in self.operators.iter_mut().enumerate() {
            let name = format!("{i}-{}", op.name());
            match tables.iter().find(|(n, _)| *n == name) {
                Some((_, t)) => {
                    op.restore(t)?;
                    used += 1;
                }
                None if op.snapshot()?.is_some() => {
                    return Err(OperatorError::Checkpoint(format!(
                        "the checkpoint has no state for operator {name}"
                    )));
                }
                None => {}
            }
        }
        if used != tables.len() {
            let names: Vec<&str> = tables.iter().map(|(n, _)| n.as_str()).collect();
            return Err(OperatorError::Checkpoint(format!(
                "the checkpoint's tables {names:?} do not match this feature chain"
            )));
        }
        Ok(())
    }

    /// The columns the chain appends, in order.
    pub fn output_fields(&self) -> Vec<FieldRef> {
        self.operators
            .iter()
            .flat_map(|op| op.output_fields().iter().cloned())
            .collect()
    }

    /// Names of all feature columns the chain appends, in order.
    pub fn feature_names(&self) -> Vec<String> {
        self.operators
            .iter()
            .flat_map(|op| op.output_fields().iter().map(|f| f.name().clone()))
            .collect()
    }
}

/// Appends columns to batches, rebuilding the output schema only when the input schema changes
/// (not once per batch).
#[derive(Debug, Default)]
pub(crate) struct Appender {
    cached: Option<(SchemaRef, SchemaRef)>,
}

impl Appender {
    pub(crate) fn append(
        &mut self,
        batch: RecordBatch,
        fields: &[FieldRef],
        arrays: Vec<ArrayRef>,
    ) -> Result<RecordBatch> {
        let input = batch.schema();
        let output = match &self.cached {
            Some((i, o)) if i == &input => o.clone(),
            _ => {
                for f in fields {
                    if input.column_with_name(f.name()).is_some() {
                        return Err(OperatorError::BadInput(format!(
                            "input already has a column named {:?}, which a feature would overwrite",
                            f.name()
                        )));
                    }
                }
                let mut all: Vec<FieldRef> = input.fields().iter().cloned().collect();
                all.extend(fields.iter().cloned());
                let o = SchemaRef::new(Schema::new_with_metadata(all, input.metadata().clone()));
                self.cached = Some((input, o.clone()));
                o
            }
        };
        let mut columns = batch.columns().to_vec();
        columns.extend(arrays);
        Ok(RecordBatch::try_new(output, columns)?)
    }
}
