//! The batch twin of the streaming operators: one DataFusion query computing every feature of a
//! [`FeatureConfig`] over a whole history with window frames over event time.
//!
//! Exactness notes: event time becomes an integer (`__t`, nanoseconds) so that the open lower
//! window bound (t - span, t] is the closed frame `span - 1 PRECEDING`. RANGE frames include every
//! peer of equal time, while the streaming semantics count only peers earlier in the order; the
//! query subtracts the later peers, computed per (key, time) with a ROWS frame.

use datafusion::dataframe::DataFrame;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::config::{FeatureConfig, ns};
use crate::window::Aggregate;
use crate::{OperatorError, Result};

/// A DataFusion session configured like every riskpipe query: identifiers are case-sensitive
/// as written, so `TX_AMOUNT` means the column `TX_AMOUNT`.
pub fn session() -> SessionContext {
    let config =
        SessionConfig::new().set_bool("datafusion.sql_parser.enable_ident_normalization", false);
    SessionContext::new_with_config(config)
}

fn q(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A key's columns, quoted, for `PARTITION BY` (a combined key partitions by each).
fn key_sql(key: &str) -> String {
    crate::config::key_parts(key)
        .into_iter()
        .map(q)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The SQL computing all features of `cfg` over `table`, ordered by (event time, order_by).
/// Output columns: the table's own columns listed in `keep`, then the features in the streaming
/// chain's order.
pub fn batch_sql(cfg: &FeatureConfig, table: &str, keep: &[String]) -> Result<String> {
    let t = q(&cfg.event_time);
    let ord = q(&cfg.order_by);
    let mut peers = Vec::new(); // level 1
    let mut raw = Vec::new(); // level 2
    let mut finals = Vec::new(); // level 3
    // Level 0: the events with their time as an integer, calendar flags and the expressions
    // that read only these (which the keyed features may read).
    let mut base = vec![format!("CAST({t} AS BIGINT) AS \"__t\"")];
    if let Some(c) = &cfg.calendar {
        if let Some(w) = &c.weekend {
            base.push(format!(
                "CASE WHEN date_part('dow', {t}) IN (0, 6) THEN 1 ELSE 0 END AS {}",
                q(w)
            ));
            finals.push(q(w));
        }
        if let Some(n) = &c.night {
            base.push(format!(
                "CASE WHEN date_part('hour', {t}) <= {} THEN 1 ELSE 0 END AS {}",
                c.night_last_hour,
                q(n)
            ));
            finals.push(q(n));
        }
    }
    let config_err = |e: String| OperatorError::Config(vec![e]);
    for (i, w) in cfg.windows.iter().enumerate() {
        let (k, v) = (key_sql(&w.key), format!("CAST({} AS DOUBLE)", q(&w.value)));
        let later = format!(
            "OVER (PARTITION BY {k}, \"__t\" ORDER BY {ord} ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING)"
        );
        peers.push(format!("COUNT(*) {later} AS \"__pc{i}\""));
        peers.push(format!("COALESCE(SUM({v}) {later}, 0) AS \"__ps{i}\""));
        for (s, span) in w.spans.iter().enumerate() {
            let frame = format!(
                "OVER (PARTITION BY {k} ORDER BY \"__t\" RANGE BETWEEN {} PRECEDING AND CURRENT ROW)",
                ns(*span) - 1
            );
            raw.push(format!("COUNT(*) {frame} - \"__pc{i}\" AS \"__c{i}_{s}\""));
            raw.push(format!(
                "COALESCE(SUM({v}) {frame}, 0) - \"__ps{i}\" AS \"__s{i}_{s}\""
            ));
        }
        for (agg, s, name) in FeatureConfig::window_outputs(w).map_err(config_err)? {
            finals.push(match agg {
                Aggregate::Count => format!("\"__c{i}_{s}\" AS {}", q(&name)),
                Aggregate::Sum => format!("\"__s{i}_{s}\" AS {}", q(&name)),
                Aggregate::Mean => format!(
                    "\"__s{i}_{s}\" / CAST(\"__c{i}_{s}\" AS DOUBLE) AS {}",
                    q(&name)
                ),
            });
        }
    }
    for (i, a) in cfg.aggregate.iter().enumerate() {
        let kind = crate::aggregate::kind(&a.kind)
            .ok_or_else(|| config_err(format!("aggregate[{i}]: unknown kind {:?}", a.kind)))?;
        let k = key_sql(&a.key);
        let value = match a
            .value
            .as_deref()
            .filter(|_| kind.reads_value() && !kind.reads_text())
        {
            Some(v) => format!("CAST({} AS DOUBLE)", q(v)),
            None => "1.0".into(),
        };
        let text = match a.value.as_deref().filter(|_| kind.reads_text()) {
            Some(v) => format!("CAST({} AS VARCHAR)", q(v)),
            None => "NULL".into(),
        };
        let (value, text) = match &a.filter {
            Some(f) => (
                format!("CASE WHEN ({f}) THEN {value} END"),
                format!("CASE WHEN ({f}) THEN {text} END"),
            ),
            None => (value, text),
        };
        let skip = if a.filter.is_some() {
            " IGNORE NULLS"
        } else {
            ""
        };
        // Per row: the value of the first (selected) event by id of its key and time.
        peers.push(format!(
            "FIRST_VALUE({value}){skip} OVER (PARTITION BY {k}, \"__t\" ORDER BY {ord} ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS \"__gf{i}\""
        ));
        let current = a.current() && kind.takes_current();
        for (s, span) in a.spans.iter().enumerate() {
            let span = ns(*span);
            let twin = crate::aggregate::Twin {
                value: value.clone(),
                text: text.clone(),
                partition: k.clone(),
                params: a.params(),
                filter: a.filter.clone(),
                earlier: format!(
                    "OVER (PARTITION BY {k} ORDER BY \"__t\" RANGE BETWEEN {} PRECEDING AND 1 PRECEDING)",
                    span - 1
                ),
                peers: format!(
                    "OVER (PARTITION BY {k}, \"__t\" ORDER BY {ord} ROWS BETWEEN UNBOUNDED PRECEDING AND {})",
                    if current {
                        "CURRENT ROW"
                    } else {
                        "1 PRECEDING"
                    }
                ),
                ordered: format!("OVER (PARTITION BY {k} ORDER BY \"__t\", {ord})"),
                group_first: format!("\"__gf{i}\""),
                time: "\"__t\"".into(),
                current,
                span,
            };
            for (c, sql) in kind.twins(&twin).into_iter().enumerate() {
                raw.push(format!("{sql} AS \"__a{i}_{s}_{c}\""));
            }
        }
        for (s, c, name) in a.outputs().map_err(config_err)? {
            finals.push(format!("\"__a{i}_{s}_{c}\" AS {}", q(&name)));
        }
    }
    for (j, r) in cfg.label_risk.iter().enumerate() {
        let k = key_sql(&r.key);
        let d = ns(r.delay);
        for (s, span) in r.spans.iter().enumerate() {
            let frame = format!(
                "OVER (PARTITION BY {k} ORDER BY \"__t\" RANGE BETWEEN {} PRECEDING AND {d} PRECEDING)",
                d + ns(*span) - 1
            );
            raw.push(format!("COUNT(*) {frame} AS \"__rc{j}_{s}\""));
            raw.push(format!("COALESCE(SUM(CASE WHEN CAST({} AS BIGINT) <> 0 THEN 1 ELSE 0 END) {frame}, 0) AS \"__rf{j}_{s}\"", q(&r.label)));
        }
        for (s, c, rk) in FeatureConfig::risk_outputs(r).map_err(config_err)? {
            if let Some(c) = c {
                finals.push(format!("\"__rc{j}_{s}\" AS {}", q(&c)));
            }
            if let Some(rk) = rk {
                finals.push(format!(
                    "CASE WHEN \"__rc{j}_{s}\" = 0 THEN 0.0 ELSE CAST(\"__rf{j}_{s}\" AS DOUBLE) / CAST(\"__rc{j}_{s}\" AS DOUBLE) END AS {}",
                    q(&rk)
                ));
            }
        }
    }
    let keep_cols: Vec<String> = keep.iter().map(|c| q(c)).collect();
    let with_extra = |level: &Vec<String>| {
        if level.is_empty() {
            String::new()
        } else {
            format!(", {}", level.join(", "))
        }
    };
    let order = crate::sql::order(&cfg.sql, &cfg.keyed_names());
    if let Some(cycle) = order.cycle {
        return Err(config_err(cycle));
    }
    let mut events = format!("SELECT *, {} FROM {}", base.join(", "), q(table));
    for &i in &order.early {
        let f = &cfg.sql[i];
        events = format!("SELECT *, {} AS {} FROM ({events})", f.expr, q(&f.name));
        finals.push(q(&f.name));
    }
    let mut sql = format!(
        "SELECT {keep}, {finals}, \"__t\" FROM (SELECT *{raw} FROM (SELECT *{peers} FROM ({events})))",
        keep = keep_cols.join(", "),
        finals = if finals.is_empty() {
            "1 AS \"__none\"".into()
        } else {
            finals.join(", ")
        },
        raw = with_extra(&raw),
        peers = with_extra(&peers),
    );
    // The other expressions read the keyed features too, as in the streaming chain.
    for &i in &order.late {
        let f = &cfg.sql[i];
        sql = format!("SELECT *, {} AS {} FROM ({sql})", f.expr, q(&f.name));
    }
    let mut out: Vec<String> = keep_cols;
    out.extend(cfg.feature_names()?.iter().map(|n| q(n)));
    Ok(format!(
        "SELECT {} FROM ({sql}) ORDER BY \"__t\", {ord}",
        out.join(", ")
    ))
}

/// Runs [`batch_sql`] on a registered table.
pub async fn batch_features(
    ctx: &SessionContext,
    cfg: &FeatureConfig,
    table: &str,
    keep: &[String],
) -> Result<DataFrame> {
    let sql = batch_sql(cfg, table, keep)?;
    Ok(ctx.sql(&sql).await?)
}

/// Every feature of `cfg` over the history file `path` (Parquet; CSV by its extension) with the
/// file's own columns, ordered by (event time, `order_by`): the batch twin of a whole history,
/// which the full-history tests hold the streaming chain equal to.
pub fn features_of_file(
    cfg: &FeatureConfig,
    path: &std::path::Path,
) -> Result<Vec<arrow::array::RecordBatch>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| OperatorError::BadInput(format!("starting the async runtime: {e}")))?;
    runtime.block_on(async {
        let ctx = session();
        let file = path.to_string_lossy().to_string();
        if file.to_lowercase().ends_with(".csv") {
            ctx.register_csv("history", &file, datafusion::prelude::CsvReadOptions::new())
                .await?;
        } else {
            ctx.register_parquet(
                "history",
                &file,
                datafusion::prelude::ParquetReadOptions::default(),
            )
            .await?;
        }
        let keep: Vec<String> = ctx
            .table("history")
            .await?
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        Ok(batch_features(&ctx, cfg, "history", &keep)
            .await?
            .collect()
            .await?)
    })
}
