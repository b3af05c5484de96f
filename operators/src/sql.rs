//! SQL expression features evaluated by DataFusion on each batch.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, FieldRef, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::batch::session;
use crate::{Appender, Operator, OperatorError, Result};

/// A feature defined by a SQL expression over the batch's columns, e.g. `ln("TX_AMOUNT" + 1)`.
///
/// The expression is planned once per input schema into a DataFusion physical expression and
/// evaluated on each batch without going through a query plan.
#[derive(Debug)]
pub struct SqlFeature {
    name: String,
    expr: String,
    fields: Vec<FieldRef>,
    compiled: Option<(SchemaRef, Arc<dyn PhysicalExpr>)>,
    appender: Appender,
}

impl SqlFeature {
    /// A feature named `name` computing `expr`.
    pub fn new(name: &str, expr: &str) -> Self {
        Self {
            name: name.into(),
            expr: expr.into(),
            // The type is the expression's, known once the first batch's schema is.
            fields: vec![Arc::new(Field::new(name, DataType::Float64, true))],
            compiled: None,
            appender: Appender::default(),
        }
    }

    /// Checks that `expr` parses as SQL (column names are checked against a schema later).
    pub fn check_syntax(expr: &str) -> std::result::Result<(), String> {
        Parser::new(&GenericDialect {})
            .try_with_sql(expr)
            .and_then(|mut p| p.parse_expr())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn compile(&mut self, schema: &SchemaRef) -> Result<Arc<dyn PhysicalExpr>> {
        let ctx = session();
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let logical = ctx
            .parse_sql_expr(&self.expr, &df_schema)
            .map_err(|e| OperatorError::BadInput(format!("sql feature {:?}: {e}", self.name)))?;
        let physical = ctx.create_physical_expr(logical, &df_schema)?;
        let dt = physical.data_type(schema)?;
        self.fields = vec![Arc::new(Field::new(
            &self.name,
            dt,
            physical.nullable(schema)?,
        ))];
        self.compiled = Some((schema.clone(), physical.clone()));
        Ok(physical)
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
        let schema = batch.schema();
        let expr = match &self.compiled {
            Some((s, e)) if s == &schema => e.clone(),
            _ => self.compile(&schema)?,
        };
        let values = expr.evaluate(&batch)?.into_array(batch.num_rows())?;
        self.appender.append(batch, &self.fields, vec![values])
    }
}
