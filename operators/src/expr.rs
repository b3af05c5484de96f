//! The one expression language: SQL scalar expressions (expression features, aggregation
//! filters) planned by DataFusion's SQL planner and evaluated by its physical expressions on each
//! batch. Built from DataFusion's planner, function and expression crates alone (no query
//! engine), so it is in the binary every user installs.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, FieldRef, SchemaRef};
use datafusion_common::config::ConfigOptions;
use datafusion_common::{DFSchema, DataFusionError, TableReference, plan_err};
use datafusion_expr::execution_props::ExecutionProps;
use datafusion_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion_expr::planner::{ContextProvider, ExprPlanner};
use datafusion_expr::simplify::SimplifyContext;
use datafusion_expr::{AggregateUDF, Expr, HigherOrderUDF, ScalarUDF, TableSource, WindowUDF};
use datafusion_optimizer::simplify_expressions::ExprSimplifier;
use datafusion_physical_expr::{PhysicalExpr, create_physical_expr};
use datafusion_sql::parser::DFParserBuilder;
use datafusion_sql::planner::{PlannerContext, SqlToRel};
use datafusion_sql::sqlparser::dialect::GenericDialect;

/// DataFusion's scalar functions (core, math, date and time, strings) and the planners that
/// turn SQL syntax into them (`EXTRACT`, `POSITION`, `||`, ...): what a query in DataFusion's
/// own SQL may call in a row expression.
struct Functions {
    scalars: HashMap<String, Arc<ScalarUDF>>,
    planners: Vec<Arc<dyn ExprPlanner>>,
    options: ConfigOptions,
}

static FUNCTIONS: LazyLock<Functions> = LazyLock::new(|| {
    let mut scalars = HashMap::new();
    for f in datafusion_functions::all_default_functions() {
        for alias in f.aliases() {
            scalars.insert(alias.clone(), f.clone());
        }
        scalars.insert(f.name().to_string(), f);
    }
    Functions {
        scalars,
        planners: vec![
            Arc::new(datafusion_functions::core::planner::CoreFunctionPlanner::default()),
            Arc::new(datafusion_functions::datetime::planner::DatetimeFunctionPlanner),
            Arc::new(datafusion_functions::unicode::planner::UnicodeFunctionPlanner),
        ],
        // Names are case-sensitive as written (`TX_AMOUNT` is the column TX_AMOUNT), as in
        // every riskpipe query.
        options: {
            let mut o = ConfigOptions::default();
            o.sql_parser.enable_ident_normalization = false;
            o
        },
    }
});

impl ContextProvider for Functions {
    fn get_table_source(
        &self,
        name: TableReference,
    ) -> datafusion_common::Result<Arc<dyn TableSource>> {
        plan_err!("an expression reads the event's fields, not a table ({name})")
    }

    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        &self.planners
    }

    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.scalars.get(name).cloned()
    }

    fn get_higher_order_meta(&self, _name: &str) -> Option<Arc<HigherOrderUDF>> {
        None
    }

    // Aggregates and window functions span rows; an expression reads one event.
    fn get_aggregate_meta(&self, _name: &str) -> Option<Arc<AggregateUDF>> {
        None
    }

    fn get_window_meta(&self, _name: &str) -> Option<Arc<WindowUDF>> {
        None
    }

    fn get_variable_type(&self, _variable_names: &[String]) -> Option<DataType> {
        None
    }

    fn options(&self) -> &ConfigOptions {
        &self.options
    }

    fn udf_names(&self) -> Vec<String> {
        self.scalars.keys().cloned().collect()
    }

    fn higher_order_function_names(&self) -> Vec<String> {
        Vec::new()
    }

    fn udaf_names(&self) -> Vec<String> {
        Vec::new()
    }

    fn udwf_names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The functions every expression may call and, first, a few more of one caller's own (a
/// decision rule's `in_list`).
struct WithExtra<'a> {
    base: &'a Functions,
    extra: &'a [Arc<ScalarUDF>],
}

impl ContextProvider for WithExtra<'_> {
    fn get_table_source(
        &self,
        name: TableReference,
    ) -> datafusion_common::Result<Arc<dyn TableSource>> {
        self.base.get_table_source(name)
    }

    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        self.base.get_expr_planners()
    }

    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.extra
            .iter()
            .find(|f| f.name() == name)
            .cloned()
            .or_else(|| self.base.get_function_meta(name))
    }

    fn get_higher_order_meta(&self, name: &str) -> Option<Arc<HigherOrderUDF>> {
        self.base.get_higher_order_meta(name)
    }

    fn get_aggregate_meta(&self, name: &str) -> Option<Arc<AggregateUDF>> {
        self.base.get_aggregate_meta(name)
    }

    fn get_window_meta(&self, name: &str) -> Option<Arc<WindowUDF>> {
        self.base.get_window_meta(name)
    }

    fn get_variable_type(&self, variable_names: &[String]) -> Option<DataType> {
        self.base.get_variable_type(variable_names)
    }

    fn options(&self) -> &ConfigOptions {
        self.base.options()
    }

    fn udf_names(&self) -> Vec<String> {
        let mut names = self.base.udf_names();
        names.extend(self.extra.iter().map(|f| f.name().to_string()));
        names
    }

    fn higher_order_function_names(&self) -> Vec<String> {
        Vec::new()
    }

    fn udaf_names(&self) -> Vec<String> {
        Vec::new()
    }

    fn udwf_names(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Why an expression cannot be planned or evaluated.
#[derive(Debug, thiserror::Error)]
pub enum ExprError {
    /// The text is not SQL, names a field the events lack, calls an unknown function or has
    /// the wrong type: the config's fault.
    #[error("{0}")]
    Plan(String),
    /// Evaluation failed on a batch that planned: DataFusion's error (a bug or an input the
    /// checks let through).
    #[error("evaluating: {0}")]
    Evaluate(#[from] DataFusionError),
}

/// Checks that `sql` parses as one SQL expression (its fields are checked against a schema when
/// it is planned).
pub fn check_syntax(sql: &str) -> Result<(), String> {
    parse(sql).map(|_| ()).map_err(|e| e.to_string())
}

fn parse(sql: &str) -> datafusion_common::Result<datafusion_sql::sqlparser::ast::ExprWithAlias> {
    DFParserBuilder::new(sql)
        .with_dialect(&GenericDialect {})
        .build()?
        .parse_into_expr()
}

/// `sql` planned over `schema` into a physical expression, types coerced as DataFusion's own
/// queries coerce them.
pub fn plan(sql: &str, schema: &SchemaRef) -> Result<Arc<dyn PhysicalExpr>, ExprError> {
    plan_with(sql, schema, &[])
}

/// [`plan`], the expression also calling `extra` functions.
pub fn plan_with(
    sql: &str,
    schema: &SchemaRef,
    extra: &[Arc<ScalarUDF>],
) -> Result<Arc<dyn PhysicalExpr>, ExprError> {
    let plan_error = |e: DataFusionError| ExprError::Plan(e.strip_backtrace());
    let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(plan_error)?;
    let parsed = parse(sql).map_err(plan_error)?;
    let functions = WithExtra {
        base: &FUNCTIONS,
        extra,
    };
    let logical: Expr = SqlToRel::new(&functions)
        .sql_to_expr_with_alias(parsed, &df_schema, &mut PlannerContext::new())
        .map_err(plan_error)?;
    let df_schema = Arc::new(df_schema);
    let simplifier = ExprSimplifier::new(
        SimplifyContext::builder()
            .with_schema(df_schema.clone())
            .build(),
    );
    let coerced = simplifier.coerce(logical, &df_schema).map_err(plan_error)?;
    create_physical_expr(
        &coerced,
        &df_schema,
        &ExecutionProps::new(),
        &PhysicalPlanningContext::default(),
    )
    .map_err(plan_error)
}

/// One expression, planned once per input schema and evaluated on each batch.
#[derive(Debug)]
pub struct Expression {
    sql: String,
    planned: Option<(SchemaRef, Arc<dyn PhysicalExpr>)>,
    extra: Vec<Arc<ScalarUDF>>,
}

impl Expression {
    /// The expression `sql` (planned on the first batch).
    pub fn new(sql: &str) -> Self {
        Self::with_functions(sql, Vec::new())
    }

    /// The expression `sql`, which may also call `extra` functions.
    pub fn with_functions(sql: &str, extra: Vec<Arc<ScalarUDF>>) -> Self {
        Self {
            sql: sql.into(),
            planned: None,
            extra,
        }
    }

    /// Its text.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The expression planned for `schema` (replanned when the schema changes).
    pub fn planned(&mut self, schema: &SchemaRef) -> Result<Arc<dyn PhysicalExpr>, ExprError> {
        match &self.planned {
            Some((s, e)) if s == schema => Ok(e.clone()),
            _ => {
                let e = plan_with(&self.sql, schema, &self.extra)?;
                self.planned = Some((schema.clone(), e.clone()));
                Ok(e)
            }
        }
    }

    /// Its field (name, type, nullability) over `schema`.
    pub fn field(&mut self, name: &str, schema: &SchemaRef) -> Result<FieldRef, ExprError> {
        let e = self.planned(schema)?;
        Ok(Arc::new(arrow::datatypes::Field::new(
            name,
            e.data_type(schema)?,
            e.nullable(schema)?,
        )))
    }

    /// Its value for every row of `batch`.
    pub fn evaluate(&mut self, batch: &RecordBatch) -> Result<ArrayRef, ExprError> {
        let e = self.planned(&batch.schema())?;
        Ok(e.evaluate(batch)?.into_array(batch.num_rows())?)
    }

    /// Per row of `batch`, whether the predicate holds (NULL does not).
    pub fn matches(&mut self, batch: &RecordBatch) -> Result<BooleanArray, ExprError> {
        let values = self.evaluate(batch)?;
        let Some(b) = values.as_any().downcast_ref::<BooleanArray>() else {
            return Err(ExprError::Plan(format!(
                "{:?} is {}, not a condition (true or false)",
                self.sql,
                values.data_type()
            )));
        };
        // NULL counts as false: a condition on a missing value does not hold.
        Ok(match b.nulls() {
            Some(nulls) => BooleanArray::new(b.values() & nulls.inner(), None),
            None => b.clone(),
        })
    }
}

impl From<arrow::error::ArrowError> for ExprError {
    fn from(e: arrow::error::ArrowError) -> Self {
        ExprError::Evaluate(e.into())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, AsArray, Float64Array, RecordBatch, TimestampNanosecondArray};
    use arrow::datatypes::{DataType, Field, Int32Type, Schema, TimeUnit};

    use super::{ExprError, Expression};

    fn events() -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                false,
            ),
            Field::new("amount", DataType::Float64, true),
        ]);
        // 2026-07-01 22:30 UTC and 2026-01-15 06:00 UTC.
        let times = [1_782_945_000_000_000_000i64, 1_768_456_800_000_000_000];
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(TimestampNanosecondArray::from(times.to_vec()).with_timezone("UTC")),
                Arc::new(Float64Array::from(vec![Some(12.5), None])),
            ],
        )
        .expect("batch")
    }

    /// The hour of day in a declared time zone, summer and winter time alike.
    #[test]
    fn hour_of_day_in_a_declared_time_zone() {
        for (zone, hours) in [("Europe/Paris", [0, 7]), ("America/New_York", [18, 1])] {
            let sql = format!("CAST(date_part('hour', time AT TIME ZONE '{zone}') AS INT)");
            let out = Expression::new(&sql).evaluate(&events()).expect("evaluate");
            assert_eq!(out.as_primitive::<Int32Type>().values(), &hours, "{zone}");
        }
    }

    /// A condition on a missing value does not hold.
    #[test]
    fn null_conditions_do_not_match() {
        let m = Expression::new("amount > 10")
            .matches(&events())
            .expect("matches");
        assert_eq!(m.null_count(), 0);
        assert_eq!((m.value(0), m.value(1)), (true, false));
        let e = Expression::new("amount * 2")
            .matches(&events())
            .expect_err("not a condition");
        assert!(e.to_string().contains("not a condition"), "{e}");
    }

    /// Unknown fields and functions are the config's fault, named in the message; aggregates
    /// read more than one event and are refused.
    #[test]
    fn plan_errors_name_the_problem() {
        for (sql, expected) in [
            ("amont + 1", "amont"),
            ("lnn(amount)", "lnn"),
            ("SUM(amount)", "sum"),
        ] {
            let e = Expression::new(sql)
                .evaluate(&events())
                .expect_err("plan error");
            assert!(matches!(e, ExprError::Plan(_)), "{sql}: {e:?}");
            assert!(
                e.to_string().to_lowercase().contains(expected),
                "{sql}: {e}"
            );
        }
    }
}
