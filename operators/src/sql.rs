//! Expression features: SQL scalar expressions over the event's fields and other features,
//! in the order their dependencies allow.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion_sql::sqlparser::dialect::GenericDialect;
use datafusion_sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::expr::Expression;
use crate::{Appender, Operator, OperatorError, Result, SqlFeatureConfig};

/// A feature defined by a SQL expression over the batch's columns, e.g. `ln("TX_AMOUNT" + 1)`.
///
/// The expression is planned once per input schema into a DataFusion physical expression and
/// evaluated on each batch without going through a query plan.
#[derive(Debug)]
pub struct SqlFeature {
    name: String,
    expr: Expression,
    fields: Vec<FieldRef>,
    /// The input schema `fields` were typed for.
    typed_for: Option<SchemaRef>,
    appender: Appender,
}

impl SqlFeature {
    /// A feature named `name` computing `expr`.
    pub fn new(name: &str, expr: &str) -> Self {
        Self {
            name: name.into(),
            expr: Expression::new(expr),
            // The type is the expression's, known once the first batch's schema is.
            fields: vec![Arc::new(Field::new(name, DataType::Float64, true))],
            typed_for: None,
            appender: Appender::default(),
        }
    }
}

impl Operator for SqlFeature {
    fn name(&self) -> &str {
        &self.name
    }

    fn output_fields(&self) -> &[FieldRef] {
        &self.fields
    }

    fn process(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        // The type is planned once per input schema, not per batch.
        let schema = batch.schema();
        if self.typed_for.as_ref() != Some(&schema) {
            let field = self
                .expr
                .field(&self.name, &schema)
                .map_err(|e| OperatorError::Expression(self.name.clone(), e))?;
            self.fields = vec![field];
            self.typed_for = Some(schema);
        }
        let values = self
            .expr
            .evaluate(&batch)
            .map_err(|e| OperatorError::Expression(self.name.clone(), e))?;
        self.appender.append(batch, &self.fields, vec![values])
    }
}

/// The names an expression may read: its identifiers as written (riskpipe's names are
/// case-sensitive). Keywords and function names come along; they only matter when a feature
/// has the same name.
fn identifiers(sql: &str) -> BTreeSet<String> {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return BTreeSet::new();
    };
    tokens
        .into_iter()
        .filter_map(|t| match t {
            Token::Word(w) => Some(w.value),
            _ => None,
        })
        .collect()
}

/// The expression features in the order they run: `early` read the events' fields, calendar
/// flags and each other only, and run before every keyed feature (which may aggregate, key or
/// filter by them); `late` read a keyed feature, directly or through another expression, and
/// run after every keyed feature. Within each, an expression runs after those it reads, in
/// declared order otherwise. `keyed` names the keyed features' columns.
#[derive(Debug, Default)]
pub(crate) struct Order {
    pub(crate) early: Vec<usize>,
    pub(crate) late: Vec<usize>,
    /// Expressions that read each other in a cycle (in neither list), as a problem.
    pub(crate) cycle: Option<String>,
}

pub(crate) fn order(sql: &[SqlFeatureConfig], keyed: &HashSet<String>) -> Order {
    let by_name: HashMap<&str, usize> = sql
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let reads: Vec<BTreeSet<String>> = sql.iter().map(|s| identifiers(&s.expr)).collect();
    let needs: Vec<Vec<usize>> = reads
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.iter()
                .filter_map(|n| by_name.get(n.as_str()).copied())
                .filter(|&j| j != i)
                .collect()
        })
        .collect();
    // Declared order among those whose inputs are ready (Kahn's algorithm).
    let mut done = vec![false; sql.len()];
    let mut sorted = Vec::with_capacity(sql.len());
    let mut out = Order::default();
    while sorted.len() < sql.len() {
        let Some(next) = (0..sql.len()).find(|&i| !done[i] && needs[i].iter().all(|&j| done[j]))
        else {
            let stuck: Vec<&str> = (0..sql.len())
                .filter(|&i| !done[i])
                .map(|i| sql[i].name.as_str())
                .collect();
            out.cycle = Some(format!(
                "expression features {stuck:?} read each other in a cycle"
            ));
            break;
        };
        done[next] = true;
        sorted.push(next);
    }
    let mut is_late = vec![false; sql.len()];
    for i in sorted {
        is_late[i] =
            reads[i].iter().any(|n| keyed.contains(n)) || needs[i].iter().any(|&j| is_late[j]);
        match is_late[i] {
            true => out.late.push(i),
            false => out.early.push(i),
        }
    }
    out
}

/// `schema` with the expression features of `which` appended, each planned over the columns
/// before it; every expression that does not plan is a problem.
pub(crate) fn plan_over(
    schema: &Schema,
    sql: &[SqlFeatureConfig],
    which: &[usize],
    problems: &mut Vec<String>,
) -> Schema {
    let mut fields: Vec<FieldRef> = schema.fields().iter().cloned().collect();
    for &i in which {
        let s = &sql[i];
        let current: SchemaRef = Arc::new(Schema::new(fields.clone()));
        match Expression::new(&s.expr).field(&s.name, &current) {
            Ok(f) => fields.push(f),
            Err(e) => problems.push(format!("sql[{i}] ({}): {e}", s.name)),
        }
    }
    Schema::new(fields)
}
