//! The Confluent Schema Registry client of the Avro decoder and encoder: writer schemas fetched
//! by id (`GET /schemas/ids/{id}`) and cached for the process's life (an id never changes its
//! schema), output schemas registered under their subject (`POST /subjects/{subject}/versions`,
//! which returns the existing id when the schema is registered already).
//!
//! A schema id the registry does not know (404) is the message's fault (a dead letter); a
//! registry that cannot be reached or answers otherwise is an outside system's fault: the
//! pipeline stops without committing, so a restart tries again.
//!
//! [`memory`] is an in-memory registry of the same REST subset, for the demo and the tests.

pub mod memory;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use crate::{PipelineError, Result};

/// `[kafka.schema_registry]`: where the Avro schemas live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL, e.g. `https://registry.example.com:8081`.
    pub url: String,
    /// Basic-auth user (`${env:NAME}` references are resolved).
    #[serde(default)]
    pub username: Option<String>,
    /// Basic-auth password (`${env:NAME}` references are resolved; never logged).
    #[serde(default)]
    pub password: Option<String>,
    /// A PEM file of the CA certificates that sign the registry's TLS certificate (default: the
    /// Mozilla roots).
    #[serde(default)]
    pub ssl_ca_location: Option<PathBuf>,
    /// Longest wait for one registry call.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Subject an output topic's schema is registered under: `"topic"` (`<topic>-value`, the
    /// Confluent default TopicNameStrategy) or `"record"` (`riskpipe.<Record>`).
    #[serde(default)]
    pub subject_strategy: SubjectStrategy,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// How an output schema's subject is named.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectStrategy {
    /// `<topic>-value` (TopicNameStrategy).
    #[default]
    Topic,
    /// The record's full name (RecordNameStrategy).
    Record,
}

impl SubjectStrategy {
    /// The subject of the value schema of `topic` whose record is `full_name`.
    pub fn subject(self, topic: &str, full_name: &str) -> String {
        match self {
            SubjectStrategy::Topic => format!("{topic}-value"),
            SubjectStrategy::Record => full_name.to_string(),
        }
    }
}

impl RegistryConfig {
    /// Every problem of the section, checked without connecting.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => p.push(format!(
                "kafka.schema_registry.url: scheme {:?} is not http or https",
                u.scheme()
            )),
            Err(e) => p.push(format!("kafka.schema_registry.url: {e}")),
        }
        if self.username.is_some() != self.password.is_some() {
            p.push("kafka.schema_registry: username and password go together".into());
        }
        if let Some(ca) = &self.ssl_ca_location
            && !ca.is_file()
        {
            p.push(format!(
                "kafka.schema_registry.ssl_ca_location {} does not exist",
                ca.display()
            ));
        }
        if self.timeout.is_zero() {
            p.push("kafka.schema_registry.timeout must be more than 0".into());
        }
        p
    }
}

/// A writer schema as the registry gave it.
#[derive(Debug)]
pub enum WriterSchema {
    /// Parsed.
    Avro(apache_avro::Schema),
    /// The registry knows no schema of this id.
    Unknown,
    /// Not an Avro schema riskpipe can read (another schema type, or unparsable): why.
    Unreadable(String),
}

/// A registry client with its caches; shared by every decoder and encoder of the process.
pub struct SchemaRegistry {
    agent: ureq::Agent,
    base: String,
    authorization: Option<String>,
    by_id: Mutex<HashMap<u32, Arc<WriterSchema>>>,
    registered: Mutex<HashMap<(String, String), u32>>,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn failed(op: &'static str, url: &str, reason: impl std::fmt::Display) -> PipelineError {
    PipelineError::SchemaRegistry {
        op,
        url: url.to_string(),
        reason: reason.to_string(),
    }
}

/// `GET /schemas/ids/{id}` and `POST …/versions` answers (only the fields riskpipe reads).
#[derive(Deserialize)]
struct SchemaById {
    schema: String,
    #[serde(rename = "schemaType", default)]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
struct Registered {
    id: u32,
}

impl SchemaRegistry {
    /// A client of `cfg` (connects on the first call).
    pub fn new(cfg: &RegistryConfig) -> Result<Self> {
        use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
        let mut tls = TlsConfig::builder().provider(TlsProvider::NativeTls);
        if let Some(ca) = &cfg.ssl_ca_location {
            let pem = std::fs::read(ca).map_err(PipelineError::io("reading", ca))?;
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect::<Vec<Certificate<'static>>>();
            if certs.is_empty() {
                return Err(PipelineError::Config(vec![format!(
                    "kafka.schema_registry.ssl_ca_location {}: no PEM certificate in it",
                    ca.display()
                )]));
            }
            tls = tls.root_certs(RootCerts::new_with_certs(&certs));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.timeout))
            .http_status_as_error(false)
            .tls_config(tls.build())
            .build()
            .into();
        let authorization = match (&cfg.username, &cfg.password) {
            (Some(u), Some(p)) => Some(format!("Basic {}", base64(&format!("{u}:{p}")))),
            _ => None,
        };
        Ok(Self {
            agent,
            base: cfg.url.trim_end_matches('/').to_string(),
            authorization,
            by_id: Mutex::new(HashMap::new()),
            registered: Mutex::new(HashMap::new()),
        })
    }

    fn get(&self, path: &str) -> std::result::Result<(u16, String), ureq::Error> {
        let mut req = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Accept", "application/vnd.schemaregistry.v1+json");
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a);
        }
        let mut resp = req.call()?;
        let status = resp.status().as_u16();
        Ok((status, resp.body_mut().read_to_string()?))
    }

    fn post(&self, path: &str, body: String) -> std::result::Result<(u16, String), ureq::Error> {
        let mut req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json");
        if let Some(a) = &self.authorization {
            req = req.header("Authorization", a);
        }
        let mut resp = req.send(body)?;
        let status = resp.status().as_u16();
        Ok((status, resp.body_mut().read_to_string()?))
    }

    /// The writer schema of `id`, from the cache or the registry.
    pub fn schema_by_id(&self, id: u32) -> Result<Arc<WriterSchema>> {
        if let Some(s) = self.by_id.lock().ok().and_then(|m| m.get(&id).cloned()) {
            return Ok(s);
        }
        let path = format!("/schemas/ids/{id}");
        let url = format!("{}{path}", self.base);
        let (status, body) = self
            .get(&path)
            .map_err(|e| failed("fetching a schema", &url, e))?;
        let schema = match status {
            200 => match serde_json::from_str::<SchemaById>(&body) {
                Ok(s) if s.schema_type.as_deref().is_some_and(|t| t != "AVRO") => {
                    WriterSchema::Unreadable(format!(
                        "a {} schema, not Avro",
                        s.schema_type.unwrap_or_default()
                    ))
                }
                Ok(s) => match apache_avro::Schema::parse_str(&s.schema) {
                    Ok(schema) => WriterSchema::Avro(schema),
                    Err(e) => WriterSchema::Unreadable(format!("not a valid Avro schema: {e}")),
                },
                Err(e) => return Err(failed("fetching a schema", &url, e)),
            },
            404 => WriterSchema::Unknown,
            other => {
                return Err(failed(
                    "fetching a schema",
                    &url,
                    format!("HTTP {other}: {}", short(&body)),
                ));
            }
        };
        let schema = Arc::new(schema);
        if let Ok(mut m) = self.by_id.lock() {
            m.insert(id, schema.clone());
        }
        Ok(schema)
    }

    /// Registers `schema` (canonical JSON) under `subject`; its id (the existing one when the
    /// subject has it already).
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32> {
        let key = (subject.to_string(), schema.to_string());
        if let Some(id) = self
            .registered
            .lock()
            .ok()
            .and_then(|m| m.get(&key).copied())
        {
            return Ok(id);
        }
        let path = format!("/subjects/{}/versions", percent(subject));
        let url = format!("{}{path}", self.base);
        let body = serde_json::json!({ "schema": schema, "schemaType": "AVRO" }).to_string();
        let (status, answer) = self
            .post(&path, body)
            .map_err(|e| failed("registering a schema", &url, e))?;
        if status != 200 {
            return Err(failed(
                "registering a schema",
                &url,
                format!("HTTP {status}: {}", short(&answer)),
            ));
        }
        let id = serde_json::from_str::<Registered>(&answer)
            .map_err(|e| failed("registering a schema", &url, e))?
            .id;
        if let Ok(mut m) = self.registered.lock() {
            m.insert(key, id);
        }
        Ok(id)
    }
}

/// At most 200 characters of a registry answer, for an error message.
fn short(body: &str) -> String {
    body.chars().take(200).collect()
}

/// A subject in a URL path.
fn percent(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Standard base64 (basic auth).
fn base64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for chunk in b.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                out.push(char::from(T[((v >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_and_subjects_are_encoded_as_the_registry_expects() {
        assert_eq!(
            base64("Aladdin:open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(base64("ab"), "YWI=");
        assert_eq!(base64("abc"), "YWJj");
        assert_eq!(percent("scores-value"), "scores-value");
        assert_eq!(percent("a b/c"), "a%20b%2Fc");
        assert_eq!(
            SubjectStrategy::Topic.subject("scores", "riskpipe.Score"),
            "scores-value"
        );
        assert_eq!(
            SubjectStrategy::Record.subject("scores", "riskpipe.Score"),
            "riskpipe.Score"
        );
    }

    #[test]
    fn every_problem_of_the_section_is_listed() {
        let cfg = RegistryConfig {
            url: "ftp://registry".into(),
            username: Some("u".into()),
            password: None,
            ssl_ca_location: Some("/no/such/ca.pem".into()),
            timeout: Duration::ZERO,
            subject_strategy: SubjectStrategy::Topic,
        };
        let p = cfg.problems();
        assert_eq!(p.len(), 4, "{p:#?}");
    }
}
