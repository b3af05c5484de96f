//! Checking the `[kafka]` section (every problem at once) and the librdkafka client configs
//! made from it.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

use super::*;
use crate::decoders::Format;
use riskpipe_core::Streams;

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

    pub(super) fn expand_env_with(&mut self, lookup: impl Fn(&str) -> Option<String>) {
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
            ("decisions", &t.decisions),
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
            ("decisions", &t.decisions),
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
    /// the scores' format, decisions in the alerts'), by topic name.
    pub fn output_formats(&self) -> [(&str, Format); 4] {
        let f = &self.formats;
        let scores = f.scores.unwrap_or(self.format);
        let alerts = f.alerts.unwrap_or(self.format);
        [
            (self.topics.scores.as_str(), scores),
            (self.topics.alerts.as_str(), alerts),
            (self.topics.challenger.as_str(), scores),
            (self.topics.decisions.as_str(), alerts),
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

/// `value` with every `${env:NAME}` replaced by `lookup(NAME)`; each reference that cannot be
/// resolved is reported to `problem` by name only (the value may be a secret).
pub(super) fn expand(
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
