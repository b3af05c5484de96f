//! Sensitive fields kept out of dead letters: a dead letter carries its message's bytes, so
//! before it leaves riskpipe each field its stream declares sensitive is removed (`drop`) or
//! replaced by its keyed pseudonym (`pseudonymize`, as [`Pseudonyms`] makes them); the message's
//! key is never carried as it came (it may be such a value): it becomes the pseudonym of its
//! text, or is left out when there are no pseudonyms. A payload riskpipe cannot rewrite (not a JSON object,
//! or Avro) of a stream with sensitive fields is withheld: the dead letter carries its
//! coordinates, kind and reason, and a header saying the payload was withheld.

use std::sync::Arc;

use riskpipe_schemas::declared::{EventSchema, Sensitive};
use serde_json::Value;

use super::pseudonyms::Pseudonyms;
use crate::sources::Message;

/// One stream's sensitive fields: each field's path and how it is kept out.
#[derive(Debug, Clone)]
struct Stream {
    topic: String,
    /// Whether its payloads are JSON (else withheld whole).
    json: bool,
    fields: Vec<(Vec<String>, Sensitive)>,
}

/// What a dead letter may carry of its message.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    streams: Vec<Stream>,
    pseudonyms: Option<Arc<Pseudonyms>>,
}

/// A message's payload and key as a dead letter may carry them.
#[derive(Debug, PartialEq, Eq)]
pub enum Redacted {
    /// Nothing sensitive declared for its topic: as it came.
    Unchanged,
    /// Sensitive fields removed or pseudonymized.
    Rewritten {
        /// The payload without them.
        payload: Vec<u8>,
        /// The key, or its pseudonym (`None`: dropped).
        key: Option<Vec<u8>>,
    },
    /// A payload that could not be read to find them: neither it nor the key is carried.
    Withheld,
}

impl Redactor {
    /// Keeps `declared`'s sensitive fields out of the dead letters of `topic` (JSON payloads
    /// rewritten when `json`, else withheld). A stream without sensitive fields adds nothing.
    pub fn stream(mut self, topic: &str, json: bool, declared: &EventSchema) -> Self {
        let fields: Vec<(Vec<String>, Sensitive)> = declared
            .fields
            .iter()
            .filter_map(|f| f.sensitive.map(|how| (f.path.clone(), how)))
            .collect();
        if !fields.is_empty() {
            self.streams.push(Stream {
                topic: topic.to_string(),
                json,
                fields,
            });
        }
        self
    }

    /// Pseudonyms for the fields declared `pseudonymize` (without them such a field is dropped).
    pub fn with_pseudonyms(mut self, pseudonyms: Option<Pseudonyms>) -> Self {
        self.pseudonyms = pseudonyms.map(Arc::new);
        self
    }

    /// Whether any stream declares a sensitive field.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// What a dead letter of `message` may carry.
    pub fn redact(&self, message: &Message) -> Redacted {
        let Some(stream) = self.streams.iter().find(|s| *s.topic == *message.topic) else {
            return Redacted::Unchanged;
        };
        if !stream.json {
            return Redacted::Withheld;
        }
        let Ok(Value::Object(mut event)) = serde_json::from_slice::<Value>(&message.payload) else {
            return Redacted::Withheld;
        };
        let mut key = message.key.clone();
        let mut key_followed = false;
        for (path, how) in &stream.fields {
            let Some((last, parents)) = path.split_last() else {
                continue;
            };
            let mut at = Some(&mut event);
            for member in parents {
                at = at
                    .and_then(|o| o.get_mut(member))
                    .and_then(Value::as_object_mut);
            }
            let Some(object) = at else { continue };
            let Some(value) = object.remove(last) else {
                continue;
            };
            let shown = match &value {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            };
            let pseudonym = match (how, &self.pseudonyms, &value) {
                (Sensitive::Pseudonymize, Some(p), Value::String(s)) => {
                    Some(Value::String(p.of_text(s)))
                }
                (Sensitive::Pseudonymize, Some(p), Value::Number(n)) => {
                    n.as_i64().map(|i| Value::from(p.of(i)))
                }
                _ => None,
            };
            // A key that is this value's text follows it.
            if !key_followed
                && key.is_some()
                && key.as_deref() == shown.as_deref().map(str::as_bytes)
            {
                key = pseudonym.as_ref().map(|p| match p {
                    Value::String(s) => s.clone().into_bytes(),
                    other => other.to_string().into_bytes(),
                });
                key_followed = true;
            }
            if let Some(p) = pseudonym {
                object.insert(last.clone(), p);
            }
        }
        // A key that is no sensitive value here may still be one (the payload lacks the
        // field): never carried as it came, but as its text's pseudonym where there are
        // pseudonyms, else not at all.
        if !key_followed {
            key = match (&self.pseudonyms, &key) {
                (Some(p), Some(k)) => Some(p.of_text(&String::from_utf8_lossy(k)).into_bytes()),
                _ => None,
            };
        }
        match serde_json::to_vec(&Value::Object(event)) {
            Ok(payload) => Redacted::Rewritten { payload, key },
            Err(_) => Redacted::Withheld,
        }
    }
}

#[cfg(test)]
mod tests {
    use riskpipe_schemas::declared::EventsConfig;

    use super::*;

    fn declared() -> EventSchema {
        toml::from_str::<EventsConfig>(
            r#"
id = "payment_id"
time = { field = "at", format = "epoch_millis" }
sensitive = { "card.number" = "drop", "card.id" = "pseudonymize", "holder" = "pseudonymize" }
fields = [
  { name = "payment_id", type = "string" },
  { name = "at", type = "integer" },
  { name = "card.id", type = "string" },
  { name = "card.number", type = "string" },
  { name = "holder", type = "integer" },
]
"#,
        )
        .expect("toml")
        .check()
        .expect("declaration")
    }

    fn message(topic: &str, key: Option<&str>, payload: &str) -> Message {
        Message {
            side: false,
            topic: topic.into(),
            partition: 0,
            offset: 7,
            key: key.map(|k| k.as_bytes().to_vec()),
            payload: payload.as_bytes().to_vec(),
            created_ms: None,
        }
    }

    #[test]
    fn sensitive_fields_are_dropped_or_pseudonymized_and_the_key_follows() {
        let pseudonyms = Pseudonyms::new(b"0123456789abcdef", Vec::new()).expect("pseudonyms");
        let card = pseudonyms.of_text("c-42");
        let holder = pseudonyms.of(77);
        let redactor = Redactor::default()
            .stream("payments", true, &declared())
            .stream("plain", true, &declared_without_sensitive())
            .with_pseudonyms(Some(pseudonyms));
        let m = message(
            "payments",
            Some("c-42"),
            r#"{"payment_id": "p", "at": 5, "card": {"id": "c-42", "number": "4111111111111111"}, "holder": 77, "extra": true}"#,
        );
        let Redacted::Rewritten { payload, key } = redactor.redact(&m) else {
            panic!("rewritten");
        };
        let v: Value = serde_json::from_slice(&payload).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"payment_id": "p", "at": 5, "card": {"id": card}, "holder": holder, "extra": true})
        );
        assert!(!String::from_utf8_lossy(&payload).contains("4111"));
        assert_eq!(
            key,
            Some(card.clone().into_bytes()),
            "the key follows the card id"
        );
        // A key the payload does not show (its card id missing) is not carried as it came.
        let Redacted::Rewritten { key, .. } = redactor.redact(&message(
            "payments",
            Some("c-42"),
            r#"{"payment_id": "p", "at": 5, "card": {"number": "4111111111111111"}}"#,
        )) else {
            panic!("rewritten");
        };
        assert_eq!(key, Some(card.clone().into_bytes()));
        // A payload that is not a JSON object is withheld; so is one of an Avro stream.
        assert_eq!(
            redactor.redact(&message("payments", Some("c-42"), "{not json")),
            Redacted::Withheld
        );
        let avro = Redactor::default().stream("payments", false, &declared());
        assert_eq!(
            avro.redact(&message("payments", None, "{}")),
            Redacted::Withheld
        );
        // Another topic, or a stream without sensitive fields: as it came.
        assert_eq!(
            redactor.redact(&message("other", None, "{}")),
            Redacted::Unchanged
        );
        assert_eq!(
            redactor.redact(&message("plain", None, "{}")),
            Redacted::Unchanged
        );
        // Without pseudonyms a pseudonymized field is dropped, never left as it is.
        let bare = Redactor::default().stream("payments", true, &declared());
        let Redacted::Rewritten { payload, key } = bare.redact(&m) else {
            panic!("rewritten");
        };
        let v: Value = serde_json::from_slice(&payload).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"payment_id": "p", "at": 5, "card": {}, "extra": true})
        );
        assert_eq!(key, None);
    }

    fn declared_without_sensitive() -> EventSchema {
        toml::from_str::<EventsConfig>(
            r#"
id = "payment_id"
time = { field = "at", format = "epoch_millis" }
fields = [
  { name = "payment_id", type = "string" },
  { name = "at", type = "integer" },
]
"#,
        )
        .expect("toml")
        .check()
        .expect("declaration")
    }
}
