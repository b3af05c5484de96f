//! The `[kafka]` section of a pipeline config, shared by the Kafka source, the Kafka sink, the
//! topic-range reader and the demo: where to read and publish, how to batch, client properties.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use serde::Deserialize;

use crate::config::Streams;
use crate::decoders::Format;

/// Kafka source and sinks of the live pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// librdkafka properties given to every client as-is (`bootstrap.servers`,
    /// `security.protocol`, `sasl.*`, `ssl.*`, `compression.type`, …).
    pub properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for the consumer only.
    #[serde(default)]
    pub consumer_properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for the producer only (e.g. `linger.ms`, `acks`).
    #[serde(default)]
    pub producer_properties: BTreeMap<String, String>,
    /// Consumer group of the pipeline.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Topic names.
    #[serde(default)]
    pub topics: TopicsConfig,
    /// Micro-batching of consumed messages.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Payload format of every topic: `"json"` (the default) or `"avro"` (Confluent wire
    /// format, with `[kafka.schema_registry]`).
    #[serde(default)]
    pub format: Format,
    /// Per-topic overrides of `format`, by the topic's role (`[kafka.formats]`, e.g.
    /// `scores = "avro"`). Dead letters keep the payload as it was read.
    #[serde(default)]
    pub formats: TopicFormats,
    /// The schema registry of the Avro format.
    #[serde(default)]
    pub schema_registry: Option<crate::schema_registry::RegistryConfig>,
    /// Publish keyed pseudonyms instead of raw ids (opt-in; see `sinks::pseudonyms`).
    #[serde(default)]
    pub pseudonyms: Option<crate::sinks::pseudonyms::PseudonymConfig>,
    /// Payloads larger than this many bytes are dead-lettered, not decoded.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Batches each of the driver's five queues (between consume, decode, features, score,
    /// publish and acknowledgement) may hold; when they are full, consumption waits
    /// (backpressure instead of memory growth).
    #[serde(default = "default_in_flight")]
    pub in_flight_batches: usize,
    /// Offsets of fully acknowledged input are committed this often (and on shutdown).
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// `riskpipe run` fails (exit code 1, naming the last client error) when the consumer holds
    /// no partition this long after starting: Kafka unreachable, credentials refused. "0s"
    /// waits forever.
    #[serde(default = "default_startup_timeout", with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// `"at-least-once"` (the default): outputs are published, then the input offsets
    /// committed, so a crash re-publishes the uncommitted tail (byte-identical copies).
    /// `"exactly-once"`: outputs and input offsets are committed together in Kafka
    /// transactions, every `commit_interval`; consumers reading the outputs with
    /// `isolation.level=read_committed` see each output once. Needs `[state]` and
    /// `transactional_id`.
    #[serde(default)]
    pub processing_guarantee: Guarantee,
    /// The producer's `transactional.id` in exactly-once mode: stable per instance slot and
    /// never shared by two running instances (e.g. `"riskpipe-${env:POD_NAME}"` in a
    /// StatefulSet). A restart with the same id aborts what the previous run left open at once,
    /// instead of after `transaction.timeout.ms`.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// The scale-out topology (`[kafka.repartition]`, README "Scaling out"): the features keyed
    /// by `by` run after a repartition topic, so any number of instances can share the work.
    #[serde(default)]
    pub repartition: Option<RepartitionConfig>,
    /// `${env:NAME}` references that could not be resolved (reported by `problems`).
    #[serde(skip)]
    unresolved: Vec<String>,
}

/// `[kafka.repartition]`: the features keyed by `by` (e.g. the terminal's) run in a second
/// stage that reads the first stage's rows from `<group_id>-by-<name>`, keyed by `by`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepartitionConfig {
    /// The second key.
    #[serde(default = "default_repartition_by")]
    pub by: String,
    /// The repartition topic (default `<group_id>-by-<by without _ID, lower case>`); riskpipe
    /// creates it with the partition count of the transactions topic.
    #[serde(default)]
    pub topic: Option<String>,
    /// Replicas of the repartition topic when riskpipe creates it (default: the broker's
    /// `default.replication.factor`).
    #[serde(default)]
    pub replication_factor: Option<i32>,
}

fn default_repartition_by() -> String {
    riskpipe_schemas::tx::TERMINAL_ID.into()
}

impl RepartitionConfig {
    /// The repartition topic of consumer group `group`; the second stage's consumer group has
    /// the same name.
    pub fn topic(&self, group: &str) -> String {
        self.topic.clone().unwrap_or_else(|| {
            let name = self.by.to_lowercase();
            let name = name.strip_suffix("_id").unwrap_or(&name);
            format!("{group}-by-{}", name.replace('_', "-"))
        })
    }
}

/// What a crash may do to the outputs (`kafka.processing_guarantee`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Guarantee {
    /// Nothing lost; after a crash the uncommitted tail is published again (identical copies).
    #[default]
    AtLeastOnce,
    /// Outputs and input offsets in one Kafka transaction: read_committed consumers see each
    /// output once.
    ExactlyOnce,
}

/// Per-topic payload formats (`[kafka.formats]`); an unset role takes `kafka.format`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicFormats {
    /// The events topic (transactions or ticks).
    #[serde(default, alias = "transactions", alias = "ticks")]
    pub events: Option<Format>,
    /// The labels topic.
    #[serde(default)]
    pub labels: Option<Format>,
    /// The scores topic (risk scores for a market job).
    #[serde(default)]
    pub scores: Option<Format>,
    /// The alerts topic (breaches for a market job).
    #[serde(default)]
    pub alerts: Option<Format>,
}

/// Topic names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Events to score: transactions for a fraud job (JSON,
    /// `schemas/json/transaction.schema.json`; default "transactions"), price ticks for a market
    /// job (`market_tick.schema.json`; default "ticks"). Also accepted as `transactions` / `ticks`.
    #[serde(default, alias = "transactions", alias = "ticks")]
    pub events: Option<String>,
    /// Fraud jobs: fraud labels feeding the delayed-label features (default "fraud-labels";
    /// empty string for none). Market jobs have no side input.
    #[serde(default)]
    pub labels: Option<String>,
    /// One score per transaction.
    #[serde(default = "default_scores")]
    pub scores: String,
    /// Transactions whose score reached the threshold.
    #[serde(default = "default_alerts")]
    pub alerts: String,
    /// Messages that could not be decoded, with the reason in headers.
    #[serde(default = "default_dead_letter")]
    pub dead_letter: String,
    /// The challenger's scores (with `[challenger]`), in the scores' schema and format.
    #[serde(default = "default_challenger")]
    pub challenger: String,
}

/// When a micro-batch is handed to the operators.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// At most this many messages per batch.
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
    /// How long a batch may wait for more messages after its first one when fewer than
    /// `max_rows` are ready; 0 (the default) closes it as soon as no further message is ready.
    #[serde(default = "default_max_delay", with = "humantime_serde")]
    pub max_delay: Duration,
}

fn default_group() -> String {
    "riskpipe".into()
}
fn default_max_message_bytes() -> usize {
    64 * 1024
}
fn default_in_flight() -> usize {
    8
}
fn default_commit_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_scores() -> String {
    "scores".into()
}
fn default_alerts() -> String {
    "alerts".into()
}
fn default_challenger() -> String {
    "scores-challenger".into()
}
fn default_dead_letter() -> String {
    "riskpipe-dead-letter".into()
}
fn default_startup_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_rows() -> usize {
    1024
}
fn default_max_delay() -> Duration {
    Duration::ZERO
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            events: None,
            labels: None,
            scores: default_scores(),
            alerts: default_alerts(),
            dead_letter: default_dead_letter(),
            challenger: default_challenger(),
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_rows: default_max_rows(),
            max_delay: default_max_delay(),
        }
    }
}

/// Properties riskpipe sets itself because delivery guarantees depend on them.
const OWNED: [&str; 5] = [
    "group.id",
    "enable.auto.offset.store",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "transactional.id",
];

impl KafkaConfig {
    /// A config for `bootstrap` with every other setting at its default.
    pub fn for_bootstrap(bootstrap: &str) -> Self {
        let mut properties = BTreeMap::new();
        properties.insert("bootstrap.servers".to_string(), bootstrap.to_string());
        Self {
            properties,
            consumer_properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
            group_id: default_group(),
            topics: TopicsConfig::default(),
            batch: BatchConfig::default(),
            format: Format::default(),
            formats: TopicFormats::default(),
            schema_registry: None,
            pseudonyms: None,
            max_message_bytes: default_max_message_bytes(),
            in_flight_batches: default_in_flight(),
            commit_interval: default_commit_interval(),
            startup_timeout: default_startup_timeout(),
            processing_guarantee: Guarantee::default(),
            transactional_id: None,
            repartition: None,
            unresolved: Vec::new(),
        }
    }

    /// Replaces every `${env:NAME}` in a property value with the environment variable `NAME`,
    /// so secrets (`sasl.password`, ...) stay out of config files and come from the
    /// environment (a Kubernetes Secret, say). Unset variables are reported by
    /// [`Self::problems`], by name only.
    pub fn expand_env(&mut self) {
        self.expand_env_with(|name| std::env::var(name).ok());
    }

    fn expand_env_with(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        let mut unresolved = Vec::new();
        for (section, props) in [
            ("properties", &mut self.properties),
            ("consumer_properties", &mut self.consumer_properties),
            ("producer_properties", &mut self.producer_properties),
        ] {
            for (key, value) in props.iter_mut() {
                *value = expand(value, &lookup, &mut |why| {
                    unresolved.push(format!("kafka.{section}.{key:?}: {why}"));
                });
            }
        }
        if let Some(r) = &mut self.schema_registry {
            for (name, value) in [("username", &mut r.username), ("password", &mut r.password)] {
                if let Some(v) = value {
                    *v = expand(v, &lookup, &mut |why| {
                        unresolved.push(format!("kafka.schema_registry.{name}: {why}"));
                    });
                }
            }
        }
        if let Some(id) = &mut self.transactional_id {
            *id = expand(id, &lookup, &mut |why| {
                unresolved.push(format!("kafka.transactional_id: {why}"));
            });
        }
        self.unresolved = unresolved;
    }

    /// Every problem of this section for a job reading `streams`, checked without connecting
    /// (librdkafka validates each property name and value when a client config is built).
    pub fn problems(&self, streams: Streams) -> Vec<String> {
        let mut p = self.unresolved.clone();
        if let Some(ps) = &self.pseudonyms {
            p.extend(ps.problems());
        }
        if !self.properties.contains_key("bootstrap.servers") {
            p.push("kafka.properties must set \"bootstrap.servers\"".into());
        }
        let all = self
            .properties
            .iter()
            .map(|kv| ("properties", kv))
            .chain(
                self.consumer_properties
                    .iter()
                    .map(|kv| ("consumer_properties", kv)),
            )
            .chain(
                self.producer_properties
                    .iter()
                    .map(|kv| ("producer_properties", kv)),
            );
        for (section, (k, v)) in all {
            if OWNED.contains(&k.as_str()) {
                p.push(format!(
                    "kafka.{section}.{k:?} is set by riskpipe (the delivery guarantee depends on it); use kafka.group_id / kafka.commit_interval / kafka.transactional_id"
                ));
                continue;
            }
            let mut one = ClientConfig::new();
            one.set(k, v);
            if let Err(e) = one.create_native_config() {
                // Never the value: it may be a password (a misspelled `sasl.pasword` too).
                let why = match &e {
                    rdkafka::error::KafkaError::ClientConfig(_, description, _, _) => {
                        if v.is_empty() {
                            description.clone()
                        } else {
                            description.replace(v.as_str(), "<value>")
                        }
                    }
                    other => other.to_string(),
                };
                p.push(format!("kafka.{section}.{k:?}: {why}"));
            }
        }
        if self.group_id.is_empty() {
            p.push("kafka.group_id is empty".into());
        }
        let t = &self.topics;
        if streams.side.is_none() && t.labels.as_deref().is_some_and(|l| !l.is_empty()) {
            p.push("kafka.topics.labels: this job has no labels input".into());
        }
        let events = self.events_topic(streams);
        for (name, value) in [
            ("events", events),
            ("scores", &t.scores),
            ("alerts", &t.alerts),
            ("dead_letter", &t.dead_letter),
            ("challenger", &t.challenger),
        ] {
            if value.is_empty() {
                p.push(format!("kafka.topics.{name} is empty"));
            }
        }
        let inputs = self.inputs(streams);
        for (name, out) in [
            ("scores", &t.scores),
            ("alerts", &t.alerts),
            ("dead_letter", &t.dead_letter),
            ("challenger", &t.challenger),
        ] {
            if inputs.contains(&out.as_str()) {
                p.push(format!(
                    "kafka.topics.{name} {out:?} is also an input topic (the pipeline would consume its own output)"
                ));
            }
        }
        if self.batch.max_rows == 0 {
            p.push("kafka.batch.max_rows must be at least 1".into());
        }
        if self.max_message_bytes == 0 {
            p.push("kafka.max_message_bytes must be at least 1".into());
        }
        if self.in_flight_batches == 0 {
            p.push("kafka.in_flight_batches must be at least 1".into());
        }
        if self.commit_interval.is_zero() {
            p.push("kafka.commit_interval must be more than 0".into());
        }
        match (self.processing_guarantee, self.transactional_id.as_deref()) {
            (Guarantee::ExactlyOnce, None) => p.push(
                "kafka.processing_guarantee = \"exactly-once\" needs kafka.transactional_id (stable per instance, e.g. \"riskpipe-${env:POD_NAME}\")".into(),
            ),
            (Guarantee::ExactlyOnce, Some(id)) if id.trim().is_empty() => {
                p.push("kafka.transactional_id is empty".into());
            }
            (Guarantee::AtLeastOnce, Some(_)) => p.push(
                "kafka.transactional_id is set, but kafka.processing_guarantee is \"at-least-once\" (transactions are used only with \"exactly-once\")".into(),
            ),
            _ => {}
        }
        if streams.side.is_none() && self.formats.labels.is_some() {
            p.push("kafka.formats.labels: this job has no labels input".into());
        }
        let avro: Vec<&str> = self
            .topic_formats(streams)
            .into_iter()
            .filter(|(_, _, f)| *f == Format::Avro)
            .map(|(role, _, _)| role)
            .collect();
        match (avro.is_empty(), &self.schema_registry) {
            (false, None) => p.push(format!(
                "the Avro format (topics: {}) needs [kafka.schema_registry] (its url at least)",
                avro.join(", ")
            )),
            (_, Some(r)) => p.extend(r.problems()),
            _ => {}
        }
        if self.processing_guarantee == Guarantee::ExactlyOnce {
            for (section, props) in [
                ("properties", &self.properties),
                ("consumer_properties", &self.consumer_properties),
            ] {
                if props
                    .get("isolation.level")
                    .is_some_and(|v| v != "read_committed")
                {
                    p.push(format!(
                        "kafka.{section}.\"isolation.level\": exactly-once reads only committed input (read_committed)"
                    ));
                }
            }
        }
        p
    }

    /// A client of the schema registry (`kafka.schema_registry`).
    pub fn registry(
        &self,
    ) -> crate::Result<std::sync::Arc<crate::schema_registry::SchemaRegistry>> {
        let cfg = self.schema_registry.as_ref().ok_or_else(|| {
            crate::PipelineError::Config(vec![
                "the Avro format needs [kafka.schema_registry]".into(),
            ])
        })?;
        Ok(std::sync::Arc::new(
            crate::schema_registry::SchemaRegistry::new(cfg)?,
        ))
    }

    /// Whether outputs and input offsets are committed in Kafka transactions.
    pub fn exactly_once(&self) -> bool {
        self.processing_guarantee == Guarantee::ExactlyOnce
    }

    /// Client config with the user's properties.
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// The events topic of a job reading `streams`.
    pub fn events_topic(&self, streams: Streams) -> &str {
        self.topics.events.as_deref().unwrap_or(streams.events)
    }

    /// The side-input topic of a job reading `streams`, if any.
    pub fn side_topic(&self, streams: Streams) -> Option<&str> {
        let default = streams.side?;
        Some(self.topics.labels.as_deref().unwrap_or(default)).filter(|t| !t.is_empty())
    }

    /// The payload format of each input topic of a job reading `streams`, by topic name.
    pub fn input_formats(&self, streams: Streams) -> Vec<(&str, Format)> {
        let f = &self.formats;
        let mut v = vec![(self.events_topic(streams), f.events.unwrap_or(self.format))];
        v.extend(
            self.side_topic(streams)
                .map(|t| (t, f.labels.unwrap_or(self.format))),
        );
        v
    }

    /// The payload format of each output topic (scores, alerts, the challenger's scores in
    /// the scores' format), by topic name.
    pub fn output_formats(&self) -> [(&str, Format); 3] {
        let f = &self.formats;
        let scores = f.scores.unwrap_or(self.format);
        [
            (self.topics.scores.as_str(), scores),
            (self.topics.alerts.as_str(), f.alerts.unwrap_or(self.format)),
            (self.topics.challenger.as_str(), scores),
        ]
    }

    /// Role, topic and format of every topic with a payload format.
    fn topic_formats(&self, streams: Streams) -> Vec<(&'static str, &str, Format)> {
        let inputs = self.input_formats(streams);
        let roles = ["events", "labels"].into_iter().zip(inputs);
        let outputs = ["scores", "alerts"].into_iter().zip(self.output_formats());
        roles
            .chain(outputs)
            .map(|(role, (topic, format))| (role, topic, format))
            .collect()
    }

    /// Input topics of a job reading `streams`.
    pub fn inputs(&self, streams: Streams) -> Vec<&str> {
        let mut v = vec![self.events_topic(streams)];
        v.extend(self.side_topic(streams));
        v
    }
}

/// Kafka's Java partitioner (`murmur2`, as `Utils.murmur2` and librdkafka's `murmur2_random`
/// for a non-empty key): the partition of `partitions` a record keyed `key` goes to.
pub fn murmur2_partition(key: &[u8], partitions: i32) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ key.len() as u32;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if let Some(&b) = rest.first() {
        h ^= u32::from(b);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    ((h & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

/// `value` with every `${env:NAME}` replaced by `lookup(NAME)`; each reference that cannot be
/// resolved is reported to `problem` by name only (the value may be a secret).
fn expand(
    value: &str,
    lookup: &impl Fn(&str) -> Option<String>,
    problem: &mut impl FnMut(String),
) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${env:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 6..];
        let Some(end) = after.find('}') else {
            problem("unterminated ${env:...} reference".into());
            return out;
        };
        let name = &after[..end];
        match lookup(name) {
            Some(v) => out.push_str(&v),
            None => problem(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// At most one log line per period for a problem that repeats (a dead broker makes librdkafka
/// report the same failure many times a second), saying how many were held back.
#[derive(Debug)]
pub(crate) struct Throttle {
    period: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub(crate) fn new(period: Duration) -> Self {
        Self {
            period,
            state: Mutex::new((None, 0)),
        }
    }

    /// Logs `message` unless a line went out less than a period ago.
    pub(crate) fn warn(&self, message: &dyn std::fmt::Display) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let (last, held) = &mut *state;
        if last.is_some_and(|t| t.elapsed() < self.period) {
            *held += 1;
            return;
        }
        if *held > 0 {
            tracing::warn!("{message} ({held} similar held back)");
        } else {
            tracing::warn!("{message}");
        }
        *last = Some(Instant::now());
        *held = 0;
    }
}

impl Throttle {
    /// A librdkafka log line: debug below warnings, else throttled.
    pub(crate) fn librdkafka(
        &self,
        level: rdkafka::config::RDKafkaLogLevel,
        facility: &str,
        message: &str,
    ) {
        use rdkafka::config::RDKafkaLogLevel;
        match level {
            RDKafkaLogLevel::Debug | RDKafkaLogLevel::Info | RDKafkaLogLevel::Notice => {
                tracing::debug!(target: "librdkafka", "{facility} {message}");
            }
            _ => self.warn(&format_args!("librdkafka: {facility} {message}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_listed_at_once() {
        let mut k = KafkaConfig::for_bootstrap("localhost:9092");
        k.properties.insert("no.such.property".into(), "1".into());
        k.properties
            .insert("enable.auto.offset.store".into(), "true".into());
        k.properties
            .insert("security.protocol".into(), "carrier-pigeon".into());
        k.properties.insert("sasl.pasword".into(), "hunter2".into());
        k.topics.scores = "transactions".into();
        k.batch.max_rows = 0;
        let fraud = Streams {
            events: "transactions",
            side: Some("fraud-labels"),
        };
        let p = k.problems(fraud);
        assert_eq!(p.len(), 6, "{p:#?}");
        assert!(p.iter().any(|s| s.contains("sasl.pasword")), "{p:#?}");
        assert!(!p.iter().any(|s| s.contains("hunter2")), "{p:#?}");
        assert!(p.iter().any(|s| s.contains("no.such.property")));
        assert!(
            p.iter()
                .any(|s| s.contains("security.protocol") && s.contains("Invalid value")),
            "{p:#?}"
        );
        // A property's value is never shown: it may be a secret.
        assert!(!p.iter().any(|s| s.contains("carrier-pigeon")), "{p:#?}");
        assert!(p.iter().any(|s| s.contains("enable.auto.offset.store")));
        assert!(p.iter().any(|s| s.contains("input topic")));
        assert!(p.iter().any(|s| s.contains("max_rows")));
        assert!(KafkaConfig::for_bootstrap("x:1").problems(fraud).is_empty());
        // A market job reads ticks and nothing else: a labels topic is a mistake.
        let market = Streams {
            events: "ticks",
            side: None,
        };
        let mut k = KafkaConfig::for_bootstrap("x:1");
        assert_eq!(k.inputs(market), vec!["ticks"]);
        assert_eq!(k.inputs(fraud), vec!["transactions", "fraud-labels"]);
        k.topics.labels = Some("fraud-labels".into());
        let p = k.problems(market);
        assert!(p.len() == 1 && p[0].contains("no labels input"), "{p:#?}");
        k.topics.labels = Some(String::new());
        assert_eq!(k.inputs(fraud), vec!["transactions"]);
    }

    #[test]
    fn environment_references_are_resolved_and_missing_ones_named_without_values() {
        let mut k = KafkaConfig::for_bootstrap("x:1");
        k.properties
            .insert("sasl.password".into(), "${env:RP_SECRET}".into());
        k.properties
            .insert("sasl.username".into(), "svc-${env:RP_USER}-1".into());
        k.producer_properties
            .insert("client.id".into(), "${env:RP_MISSING}".into());
        k.expand_env_with(|name| match name {
            "RP_SECRET" => Some("hunter2".into()),
            "RP_USER" => Some("fraud".into()),
            _ => None,
        });
        assert_eq!(k.properties["sasl.password"], "hunter2");
        assert_eq!(k.properties["sasl.username"], "svc-fraud-1");
        let fraud = Streams {
            events: "transactions",
            side: Some("fraud-labels"),
        };
        let p = k.problems(fraud);
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(
            p[0].contains("RP_MISSING") && !p[0].contains("hunter2"),
            "{p:#?}"
        );
    }

    #[test]
    fn exactly_once_needs_a_transactional_id_and_committed_reads() {
        let fraud = Streams {
            events: "transactions",
            side: Some("fraud-labels"),
        };
        let mut k = KafkaConfig::for_bootstrap("x:1");
        k.processing_guarantee = Guarantee::ExactlyOnce;
        k.consumer_properties
            .insert("isolation.level".into(), "read_uncommitted".into());
        k.producer_properties
            .insert("transactional.id".into(), "mine".into());
        let p = k.problems(fraud);
        assert_eq!(p.len(), 3, "{p:#?}");
        assert!(p.iter().any(|s| s.contains("needs kafka.transactional_id")));
        assert!(p.iter().any(|s| s.contains("read_committed")));
        assert!(
            p.iter()
                .any(|s| s.contains("\"transactional.id\" is set by riskpipe"))
        );

        // The id comes from the environment, per instance slot.
        let mut k = KafkaConfig::for_bootstrap("x:1");
        k.processing_guarantee = Guarantee::ExactlyOnce;
        k.transactional_id = Some("riskpipe-${env:POD_NAME}".into());
        k.expand_env_with(|name| (name == "POD_NAME").then(|| "riskpipe-2".to_string()));
        assert_eq!(k.transactional_id.as_deref(), Some("riskpipe-riskpipe-2"));
        assert!(k.problems(fraud).is_empty(), "{:#?}", k.problems(fraud));
        k.transactional_id = Some("riskpipe-${env:POD_NAME}".into());
        k.expand_env_with(|_| None);
        let p = k.problems(fraud);
        assert!(
            p.len() == 1 && p[0].contains("kafka.transactional_id") && p[0].contains("POD_NAME"),
            "{p:#?}"
        );

        // A transactional id without exactly-once is a mistake worth naming.
        let mut k = KafkaConfig::for_bootstrap("x:1");
        k.transactional_id = Some("riskpipe-0".into());
        let p = k.problems(fraud);
        assert!(p.len() == 1 && p[0].contains("at-least-once"), "{p:#?}");
    }

    #[test]
    fn per_topic_formats_override_the_default_and_avro_anywhere_needs_a_registry() {
        let fraud = Streams {
            events: "transactions",
            side: Some("fraud-labels"),
        };
        let market = Streams {
            events: "ticks",
            side: None,
        };
        let k: KafkaConfig = toml::from_str(
            r#"
            properties = { "bootstrap.servers" = "x:1" }
            format = "avro"
            [formats]
            labels = "json"
            alerts = "json"
            "#,
        )
        .expect("config");
        assert_eq!(
            k.input_formats(fraud),
            vec![
                ("transactions", Format::Avro),
                ("fraud-labels", Format::Json)
            ]
        );
        assert_eq!(
            k.output_formats(),
            [
                ("scores", Format::Avro),
                ("alerts", Format::Json),
                ("scores-challenger", Format::Avro)
            ]
        );
        let p = k.problems(fraud);
        assert!(
            p.len() == 1 && p[0].contains("(topics: events, scores)"),
            "{p:#?}"
        );
        // A market job has no labels to format.
        let p = k.problems(market);
        assert!(
            p.iter().any(|s| s.contains("kafka.formats.labels")),
            "{p:#?}"
        );
        let unknown = toml::from_str::<KafkaConfig>("[formats]\ndead_letter = \"avro\"");
        assert!(unknown.is_err(), "dead letters keep their payloads as read");
    }
}
