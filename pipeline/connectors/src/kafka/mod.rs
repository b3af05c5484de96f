//! The `[kafka]` section of a pipeline config, shared by the Kafka source, the Kafka sink, the
//! topic-range reader and the demo: where to read and publish, how to batch, client properties.
//!
//! Here the section's types; `client`: checking it and the librdkafka client configs made
//! from it; `formats`: its decoder and encoder; `partitioner`: Kafka's Java partitioner; `throttle`: repeated log lines held back.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::decoders::Format;

mod client;
mod formats;
mod partitioner;
mod throttle;

pub use partitioner::murmur2_partition;
pub(crate) use throttle::Throttle;

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
    /// The scale-out topology (`[kafka.repartition]`, docs/concepts/scale-out.md): the features keyed
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
    /// The second key: a declared field of the events, or a list of them (the key of the second
    /// stage's features). Rows are forwarded keyed by its first field: every combination of a
    /// key of several fields then lands in one partition, and labels keyed by that field too.
    #[serde(deserialize_with = "riskpipe_operators::key_columns")]
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

impl RepartitionConfig {
    /// The repartition topic of consumer group `group`; the second stage's consumer group has
    /// the same name.
    pub fn topic(&self, group: &str) -> String {
        self.topic.clone().unwrap_or_else(|| {
            let names: Vec<String> = riskpipe_operators::key_parts(&self.by)
                .into_iter()
                .map(|part| {
                    let part = part.to_lowercase();
                    let part = part.strip_suffix("_id").unwrap_or(&part);
                    // A topic name holds letters, digits, '.', '_' and '-' only.
                    part.chars()
                        .map(|c| match c {
                            'a'..='z' | '0'..='9' | '.' => c,
                            _ => '-',
                        })
                        .collect()
                })
                .collect();
            format!("{group}-by-{}", names.join("-x-"))
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
    /// Decisions (with `[decisions]`): one per scored event, its outcome, every matching rule
    /// and the rules' version, in the alerts' format.
    #[serde(default = "default_decisions")]
    pub decisions: String,
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
fn default_decisions() -> String {
    "decisions".into()
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
            decisions: default_decisions(),
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

#[cfg(test)]
mod tests {

    use super::*;
    use riskpipe_core::Streams;

    /// A repartition's default topic is named by its key: one field, or each of several.
    #[test]
    fn a_repartition_topic_is_named_by_its_key() {
        let by = |text: &str| -> RepartitionConfig { toml::from_str(text).expect("repartition") };
        assert_eq!(by(r#"by = "TERMINAL_ID""#).topic("g"), "g-by-terminal");
        let pair = by(r#"by = ["merchant.id", "merchant_category"]"#);
        assert_eq!(pair.by, "merchant.id \u{d7} merchant_category");
        assert_eq!(pair.topic("g"), "g-by-merchant.id-x-merchant-category");
        assert!(toml::from_str::<RepartitionConfig>(r#"by = ["one"]"#).is_err());
    }

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
                ("scores-challenger", Format::Avro),
                ("decisions", Format::Json)
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
