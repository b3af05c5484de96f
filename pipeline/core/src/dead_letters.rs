//! What a dead letter is: its headers and the kinds of problem, stated once here for the sink
//! that writes them and the reference page users read (`docs/reference/dead-letters.md`).

use crate::RejectKind;

/// The topic the message was read from.
pub const SOURCE_TOPIC: &str = "riskpipe.source.topic";
/// Its partition.
pub const SOURCE_PARTITION: &str = "riskpipe.source.partition";
/// Its offset.
pub const SOURCE_OFFSET: &str = "riskpipe.source.offset";
/// The kind of problem ([`RejectKind::as_str`]).
pub const ERROR_KIND: &str = "riskpipe.error.kind";
/// What is wrong, naming the field and the rule, never a value.
pub const ERROR: &str = "riskpipe.error";
/// A message too large for the dead-letter topic: its size in bytes (sent without payload).
pub const SOURCE_SIZE: &str = "riskpipe.source.size";
/// A message too large for the dead-letter topic: the SHA-256 of its payload.
pub const SOURCE_SHA256: &str = "riskpipe.source.sha256";
/// Present when the payload was withheld (its stream declares sensitive fields riskpipe could
/// not remove from it).
pub const PAYLOAD: &str = "riskpipe.payload";

/// Every header a dead letter may carry, with what it holds.
pub const HEADERS: [(&str, &str); 8] = [
    (SOURCE_TOPIC, "the topic the message was read from"),
    (SOURCE_PARTITION, "its partition"),
    (SOURCE_OFFSET, "its offset"),
    (ERROR_KIND, "the kind of problem (below)"),
    (
        ERROR,
        "what is wrong, naming the field and the rule, never a value (at most 256 bytes)",
    ),
    (
        SOURCE_SIZE,
        "only when the message is too large for the dead-letter topic: its size in bytes (the dead letter then carries no payload)",
    ),
    (
        SOURCE_SHA256,
        "only then: the SHA-256 of its payload, to find it in the source topic",
    ),
    (
        PAYLOAD,
        "only when the payload was withheld: its stream declares sensitive fields riskpipe could not remove from it (not a JSON object, or Avro)",
    ),
];

impl RejectKind {
    /// Every kind, in the order of the reference page.
    pub const ALL: [RejectKind; 9] = [
        RejectKind::Oversized,
        RejectKind::Empty,
        RejectKind::Malformed,
        RejectKind::Schema,
        RejectKind::Invalid,
        RejectKind::Late,
        RejectKind::Duplicate,
        RejectKind::Model,
        RejectKind::Redelivered,
    ];

    /// What the kind means to the producer of the message, and what to do about it.
    pub fn meaning(self) -> &'static str {
        match self {
            RejectKind::Oversized => {
                "larger than `kafka.max_message_bytes`: fix the producer, or raise the limit"
            }
            RejectKind::Empty => "no payload, or only whitespace: fix the producer",
            RejectKind::Malformed => {
                "not the wire format: broken or truncated JSON, two values in one message, an Avro frame that does not start with 0 or does not read: fix the producer"
            }
            RejectKind::Schema => {
                "readable, but not the declared shape: a missing, null, unknown, duplicated or mistyped field, a writer schema that does not resolve to the declaration: fix the producer or the declaration"
            }
            RejectKind::Invalid => {
                "of the declared shape, but a value its rules refuse (minimum, maximum, allowed values, length), a number beyond ±1e15 or not finite, an event time further ahead than `job.event_time.max_future_skew`: fix the producer, or the rule"
            }
            RejectKind::Late => {
                "behind its partition's latest event time by more than `job.event_time.allowed_lateness`: its key's state has moved past it; publish on time, or allow more lateness"
            }
            RejectKind::Duplicate => {
                "an event whose id the job has taken in already (its producer published it twice): counting it again would change its key's features, so the copy is refused"
            }
            RejectKind::Model => {
                "admitted, but the model's answer for it is no probability (not finite, or outside [0, 1]): never published as a score; look at the model"
            }
            RejectKind::Redelivered => {
                "a row of the repartition topic taken in already (the topic is at-least-once): dropped and counted, never sent to the dead-letter topic"
            }
        }
    }
}

/// The reference page of dead letters: headers and kinds.
pub fn reference() -> String {
    let mut page = String::from(
        "# Dead letters\n\nEvery message riskpipe cannot score goes to the dead-letter topic \
         (`kafka.topics.dead_letter`) with its original key and payload (but for the fields \
         its stream declares sensitive) and these headers; the pipeline goes on. Generated from \
         `pipeline/core/src/dead_letters.rs`.\n\n| header | holds |\n| --- | --- |\n",
    );
    for (name, holds) in HEADERS {
        page.push_str(&format!("| `{name}` | {holds} |\n"));
    }
    page.push_str(
        "\n## Kinds\n\nThe `riskpipe.error.kind` header, and the `kind` label of \
         `riskpipe_dead_letters_total`.\n\n| kind | meaning |\n| --- | --- |\n",
    );
    for kind in RejectKind::ALL {
        page.push_str(&format!("| `{}` | {} |\n", kind.as_str(), kind.meaning()));
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page is what this module says (bless with `RISKPIPE_BLESS=1`), every kind once.
    #[test]
    fn the_dead_letters_reference_page_is_current() {
        let mut names: Vec<&str> = RejectKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), RejectKind::ALL.len(), "a kind listed twice");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/reference/dead-letters.md");
        let page = reference();
        if std::env::var_os("RISKPIPE_BLESS").is_some() {
            std::fs::write(&path, &page).expect("write");
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == page,
            "docs/reference/dead-letters.md is stale: run RISKPIPE_BLESS=1 cargo test -p riskpipe-core"
        );
    }
}
