//! Scored ticks and portfolio VaR to the records of `schemas/json/risk_score.schema.json` and
//! `limit_breach.schema.json`, as Arrow: instrument scores keyed by instrument, then portfolio
//! scores and breaches keyed by portfolio.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray, TimestampNanosecondArray,
};
use arrow::compute::{concat, filter};
use arrow::datatypes::Float64Type;
use arrow::datatypes::SchemaRef;
use riskpipe_operators::columns;
use riskpipe_schemas::market;

use super::config::{PortfolioConfig, VAR, VOLATILITY};
use super::portfolio::PortfolioVar;
use crate::jobs::{Records, Repeated};
use crate::{PipelineError, Result};

fn times(values: impl IntoIterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampNanosecondArray::from_iter_values(values).with_timezone("UTC"))
}

/// One score per tick that has a VaR (ticks in their warm-up have none), then one per
/// portfolio VaR.
pub(crate) fn scores(
    schema: &SchemaRef,
    scored: &RecordBatch,
    portfolio: &[PortfolioVar],
    portfolios: &[PortfolioConfig],
    confidence: f64,
    model: &mut Repeated,
) -> Result<Records> {
    let var = columns::primitive::<Float64Type>(scored, VAR).map_err(PipelineError::produced)?;
    let has_var = BooleanArray::from_iter((0..var.len()).map(|i| Some(var.is_valid(i))));
    let pick = |name: &str| -> Result<ArrayRef> {
        Ok(filter(
            columns::get(scored, name)
                .map_err(PipelineError::produced)?
                .as_ref(),
            &has_var,
        )?)
    };
    let instruments = pick(market::INSTRUMENT)?;
    let vol =
        columns::primitive::<Float64Type>(scored, VOLATILITY).map_err(PipelineError::produced)?;
    let volatility: Float64Array = (0..vol.len())
        .filter(|&i| var.is_valid(i))
        .map(|i| if vol.is_valid(i) { vol.value(i) } else { 0.0 })
        .collect();
    let k = instruments.len();
    let names = StringArray::from_iter_values(
        portfolio
            .iter()
            .map(|p| portfolios[p.portfolio].name.as_str()),
    );
    let n = k + portfolio.len();
    let instrument_column = concat(&[
        instruments.as_ref(),
        &arrow::array::new_null_array(instruments.data_type(), portfolio.len()),
    ])?;
    let portfolio_column = concat(&[
        &arrow::array::new_null_array(names.data_type(), k),
        &names as &dyn Array,
    ])?;
    let keys = concat(&[instruments.as_ref(), &names as &dyn Array])?;
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            instrument_column,
            portfolio_column,
            concat(&[
                pick(market::TIME)?.as_ref(),
                times(portfolio.iter().map(|p| p.time)).as_ref(),
            ])?,
            concat(&[
                pick(VAR)?.as_ref(),
                &Float64Array::from_iter_values(portfolio.iter().map(|p| p.var)) as &dyn Array,
            ])?,
            Arc::new(Float64Array::from(vec![confidence; n])),
            concat(&[
                &volatility as &dyn Array,
                &Float64Array::from_iter_values(portfolio.iter().map(|p| p.volatility)),
            ])?,
            model.column(n),
        ],
    )?;
    Ok(Records {
        batch,
        keys,
        key_column: None,
    })
}

/// One breach per portfolio VaR over its limit.
pub(crate) fn breaches(
    schema: &SchemaRef,
    portfolio: &[PortfolioVar],
    portfolios: &[PortfolioConfig],
    confidence: f64,
    model: &mut Repeated,
) -> Result<Records> {
    let over: Vec<&PortfolioVar> = portfolio
        .iter()
        .filter(|p| p.var > portfolios[p.portfolio].limit)
        .collect();
    let names: ArrayRef = Arc::new(StringArray::from_iter_values(
        over.iter().map(|p| portfolios[p.portfolio].name.as_str()),
    ));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            names.clone(),
            times(over.iter().map(|p| p.time)),
            Arc::new(Float64Array::from_iter_values(over.iter().map(|p| p.var))),
            Arc::new(Float64Array::from_iter_values(
                over.iter().map(|p| portfolios[p.portfolio].limit),
            )),
            Arc::new(Float64Array::from(vec![confidence; over.len()])),
            model.column(over.len()),
        ],
    )?;
    Ok(Records {
        batch,
        keys: names,
        key_column: Some(market::PORTFOLIO.into()),
    })
}
