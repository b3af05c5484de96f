//! Prometheus metrics and health endpoints over HTTP.
//!
//! `GET /metrics` renders every `metrics` counter, gauge and histogram of the process;
//! `GET /health` answers 200 while the process runs; `GET /ready` answers 200 once the consumer
//! holds partitions and 503 otherwise (Kubernetes readiness); with `observability.admin`,
//! `POST /admin/reload` asks for a model reload (202; the outcome is in the log and in
//! `riskpipe_model_reloads_total`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::{PipelineError, Result};

pub use riskpipe_core::Health;

/// Latency histograms are exported with these buckets (seconds).
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle).
pub fn install() -> Result<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS)
        .map_err(metrics_error)?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(crate::events::BATCH_ROWS.into()),
            &crate::events::BATCH_ROWS_BUCKETS,
        )
        .map_err(metrics_error)?
        .install_recorder()
        .map_err(metrics_error)?;
    crate::events::describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

#[derive(Clone)]
struct Endpoints {
    metrics: PrometheusHandle,
    health: Arc<Health>,
    reloader: Option<Arc<crate::reload::Reloader>>,
}

/// Serves the endpoints on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    health: Arc<Health>,
) -> Result<()> {
    serve_with_admin(listener, metrics, health, None).await
}

/// [`serve`], plus `POST /admin/reload` when a `reloader` is given.
pub async fn serve_with_admin(
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    health: Arc<Health>,
    reloader: Option<Arc<crate::reload::Reloader>>,
) -> Result<()> {
    let mut app = Router::new()
        .route("/metrics", get(render))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready));
    if reloader.is_some() {
        app = app.route("/admin/reload", post(reload));
    }
    let app = app.with_state(Endpoints {
        metrics,
        health,
        reloader,
    });
    axum::serve(listener, app)
        .await
        .map_err(PipelineError::runtime("serving the metrics endpoint"))
}

async fn reload(State(e): State<Endpoints>) -> (StatusCode, &'static str) {
    match &e.reloader {
        Some(r) => {
            r.request();
            (StatusCode::ACCEPTED, "reload requested\n")
        }
        None => (StatusCode::NOT_FOUND, "no admin endpoint\n"),
    }
}

async fn render(State(e): State<Endpoints>) -> String {
    e.metrics.run_upkeep();
    e.metrics.render()
}

async fn ready(State(e): State<Endpoints>) -> (StatusCode, &'static str) {
    if e.health.ready.load(Ordering::Relaxed) && !e.health.stopped.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no partitions assigned\n",
        )
    }
}

fn metrics_error(e: metrics_exporter_prometheus::BuildError) -> PipelineError {
    PipelineError::Metrics(Box::new(e))
}
