//! A dead letter's headers, and the stand-in for bytes too large to forward.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};

use crate::sinks::DeadLetter;

/// A dead letter's stand-in: the source coordinates, size and hash of bytes too large to
/// forward.
#[derive(Debug, Clone)]
pub(super) struct Reference {
    pub(super) key: Option<Vec<u8>>,
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) kind: &'static str,
    pub(super) reason: String,
    pub(super) size: usize,
    sha256: String,
}

impl Reference {
    pub(super) fn of(d: &DeadLetter, m: &crate::sources::Message) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(&m.payload);
        Self {
            key: m.key.clone(),
            topic: m.topic.to_string(),
            partition: m.partition,
            offset: m.offset,
            kind: d.kind.as_str(),
            reason: format!(
                "{}; the original {} bytes are more than the dead-letter topic takes: not forwarded",
                d.reason,
                m.payload.len()
            ),
            size: m.payload.len(),
            sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    pub(super) fn headers(&self) -> OwnedHeaders {
        headers(
            &self.topic,
            self.partition,
            self.offset,
            self.kind,
            &self.reason,
        )
        .insert(Header {
            key: riskpipe_core::dead_letters::SOURCE_SIZE,
            value: Some(self.size.to_string().as_bytes()),
        })
        .insert(Header {
            key: riskpipe_core::dead_letters::SOURCE_SHA256,
            value: Some(self.sha256.as_bytes()),
        })
    }
}

/// The headers every dead letter carries.
pub(super) fn headers(
    topic: &str,
    partition: i32,
    offset: i64,
    kind: &str,
    reason: &str,
) -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header {
            key: riskpipe_core::dead_letters::SOURCE_TOPIC,
            value: Some(topic.as_bytes()),
        })
        .insert(Header {
            key: riskpipe_core::dead_letters::SOURCE_PARTITION,
            value: Some(partition.to_string().as_bytes()),
        })
        .insert(Header {
            key: riskpipe_core::dead_letters::SOURCE_OFFSET,
            value: Some(offset.to_string().as_bytes()),
        })
        .insert(Header {
            key: riskpipe_core::dead_letters::ERROR_KIND,
            value: Some(kind.as_bytes()),
        })
        .insert(Header {
            key: riskpipe_core::dead_letters::ERROR,
            value: Some(reason.as_bytes()),
        })
}

/// Whether a produce error says the record is too large (for the client or the topic).
pub(super) fn too_large(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::MessageBatchTooLarge
        )
    )
}
