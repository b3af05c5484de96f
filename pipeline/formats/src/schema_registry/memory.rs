//! An in-memory schema registry speaking the Confluent REST subset that serializers use:
//! `POST /subjects/{subject}/versions` (register; the same schema gets the same id),
//! `POST /subjects/{subject}` (look up), `GET /schemas/ids/{id}`, `GET /subjects`,
//! `GET /subjects/{subject}/versions[/{version|latest}]`, with optional basic auth. It backs
//! `riskpipe demo --format avro` (as the mock cluster backs Kafka) and the tests; it is not a
//! registry to run in production (no persistence, no compatibility rules).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::{PipelineError, Result};

#[derive(Debug, Default)]
struct Store {
    /// Schema text of id `i + 1`, with its canonical form.
    schemas: Vec<(String, String)>,
    /// Ids of each subject's versions, in order.
    subjects: BTreeMap<String, Vec<u32>>,
}

/// The registry's state, shared with whoever started it.
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    store: Mutex<Store>,
    /// `Basic …` header value required of every request, if any.
    authorization: Option<String>,
    /// `GET /schemas/ids/{id}` requests answered.
    lookups: AtomicU64,
}

impl MemoryRegistry {
    /// An empty registry; with `credentials` (user, password) it requires basic auth.
    pub fn new(credentials: Option<(&str, &str)>) -> Arc<Self> {
        Arc::new(Self {
            authorization: credentials
                .map(|(u, p)| format!("Basic {}", super::base64(&format!("{u}:{p}")))),
            ..Self::default()
        })
    }

    /// How many schemas were fetched by id.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// The subjects registered, in order.
    pub fn subjects(&self) -> Vec<String> {
        self.store
            .lock()
            .map(|s| s.subjects.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Registers `schema` under `subject` directly; its id.
    pub fn register(&self, subject: &str, schema: &str) -> std::result::Result<u32, String> {
        let canonical = apache_avro::Schema::parse_str(schema)
            .map_err(|e| e.to_string())?
            .canonical_form();
        let mut store = self.store.lock().map_err(|_| "poisoned".to_string())?;
        let id = match store.schemas.iter().position(|(_, c)| *c == canonical) {
            Some(i) => i as u32 + 1,
            None => {
                store.schemas.push((schema.to_string(), canonical));
                store.schemas.len() as u32
            }
        };
        let versions = store.subjects.entry(subject.to_string()).or_default();
        if !versions.contains(&id) {
            versions.push(id);
        }
        Ok(id)
    }

    /// Serves the registry on `listener` until the process ends.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) -> Result<()> {
        let app = Router::new()
            .route("/schemas/ids/{id}", get(by_id))
            .route("/subjects", get(subjects))
            .route("/subjects/{subject}", post(lookup))
            .route("/subjects/{subject}/versions", get(versions).post(register))
            .route("/subjects/{subject}/versions/{version}", get(version))
            .with_state(self);
        axum::serve(listener, app)
            .await
            .map_err(PipelineError::runtime("serving the schema registry"))
    }

    fn allowed(&self, headers: &HeaderMap) -> bool {
        match &self.authorization {
            None => true,
            Some(want) => headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|got| got == want),
        }
    }
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            "application/vnd.schemaregistry.v1+json",
        )],
        body.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, code: u32, message: &str) -> Response {
    answer(status, json!({ "error_code": code, "message": message }))
}

fn unauthorized() -> Response {
    error(StatusCode::UNAUTHORIZED, 40101, "Unauthorized")
}

/// The `schema` field of a register or lookup request.
fn schema_of(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    if v.get("schemaType")
        .and_then(|t| t.as_str())
        .is_some_and(|t| t != "AVRO")
    {
        return None;
    }
    v.get("schema")?.as_str().map(str::to_string)
}

async fn by_id(
    State(r): State<Arc<MemoryRegistry>>,
    headers: HeaderMap,
    Path(id): Path<u32>,
) -> Response {
    if !r.allowed(&headers) {
        return unauthorized();
    }
    r.lookups.fetch_add(1, Ordering::Relaxed);
    let Ok(store) = r.store.lock() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, 50001, "poisoned");
    };
    match id
        .checked_sub(1)
        .and_then(|i| store.schemas.get(i as usize))
    {
        Some((schema, _)) => answer(StatusCode::OK, json!({ "schema": schema })),
        None => error(StatusCode::NOT_FOUND, 40403, "Schema not found"),
    }
}

async fn subjects(State(r): State<Arc<MemoryRegistry>>, headers: HeaderMap) -> Response {
    if !r.allowed(&headers) {
        return unauthorized();
    }
    let names: Vec<String> = r
        .store
        .lock()
        .map(|s| s.subjects.keys().cloned().collect())
        .unwrap_or_default();
    answer(StatusCode::OK, json!(names))
}

async fn register(
    State(r): State<Arc<MemoryRegistry>>,
    headers: HeaderMap,
    Path(subject): Path<String>,
    body: String,
) -> Response {
    if !r.allowed(&headers) {
        return unauthorized();
    }
    let Some(schema) = schema_of(&body) else {
        return error(StatusCode::UNPROCESSABLE_ENTITY, 42201, "Invalid schema");
    };
    match r.register(&subject, &schema) {
        Ok(id) => answer(StatusCode::OK, json!({ "id": id })),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, 42201, &e),
    }
}

/// The registered version of `subject` that is `schema`, as lookups answer it.
fn found(store: &Store, subject: &str, id: u32) -> Option<serde_json::Value> {
    let versions = store.subjects.get(subject)?;
    let version = versions.iter().position(|&v| v == id)? + 1;
    let (schema, _) = store.schemas.get(id as usize - 1)?;
    Some(json!({ "subject": subject, "id": id, "version": version, "schema": schema }))
}

async fn lookup(
    State(r): State<Arc<MemoryRegistry>>,
    headers: HeaderMap,
    Path(subject): Path<String>,
    body: String,
) -> Response {
    if !r.allowed(&headers) {
        return unauthorized();
    }
    let canonical = schema_of(&body)
        .and_then(|s| apache_avro::Schema::parse_str(&s).ok())
        .map(|s| s.canonical_form());
    let Ok(store) = r.store.lock() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, 50001, "poisoned");
    };
    let id = canonical.and_then(|c| store.schemas.iter().position(|(_, k)| *k == c));
    match id.and_then(|i| found(&store, &subject, i as u32 + 1)) {
        Some(v) => answer(StatusCode::OK, v),
        None => error(StatusCode::NOT_FOUND, 40403, "Schema not found"),
    }
}

async fn versions(
    State(r): State<Arc<MemoryRegistry>>,
    headers: HeaderMap,
    Path(subject): Path<String>,
) -> Response {
    if !r.allowed(&headers) {
        return unauthorized();
    }
    let Ok(store) = r.store.lock() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, 50001, "poisoned");
    };
    match store.subjects.get(&subject) {
        Some(v) => answer(StatusCode::OK, json!((1..=v.len()).collect::<Vec<_>>())),
        None => error(StatusCode::NOT_FOUND, 40401, "Subject not found"),
    }
}

async fn version(
    State(r): State<Arc<MemoryRegistry>>,
    headers: HeaderMap,
    Path((subject, version)): Path<(String, String)>,
) -> Response {
    if !r.allowed(&headers) {
        return unauthorized();
    }
    let Ok(store) = r.store.lock() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, 50001, "poisoned");
    };
    let Some(ids) = store.subjects.get(&subject) else {
        return error(StatusCode::NOT_FOUND, 40401, "Subject not found");
    };
    let index = match version.as_str() {
        "latest" => ids.len().checked_sub(1),
        v => v.parse::<usize>().ok().and_then(|v| v.checked_sub(1)),
    };
    match index
        .and_then(|i| ids.get(i))
        .and_then(|&id| found(&store, &subject, id))
    {
        Some(v) => answer(StatusCode::OK, v),
        None => error(StatusCode::NOT_FOUND, 40402, "Version not found"),
    }
}
