//! Fuzzes riskpipe's JSON input decoder (`riskpipe_pipeline::decoders`) on micro-batches of
//! 1..=4 payloads.
//!
//! Input layout: `[selector] payload (0xFF payload){0,3}`.
//! - selector bits 0-1: the schema: 0 transaction, 1 fraud label (as the shipped config
//!   declares them: the declared-events decoder), 2 market tick (its serde type), 3 position (no
//!   serde type: the arrow-json fallback path).
//! - selector bits 2-4: `max_bytes`, from [`MAX_BYTES`] (half the values are small, so the
//!   oversized path is hit).
//! - the rest is split on 0xFF (a byte that never occurs in UTF-8, hence never in valid JSON)
//!   into at most 4 payloads; the 4th keeps any later 0xFF bytes.
//!
//! Invariants (any failure panics, which libFuzzer reports as a crash):
//! 1. `decode` does not panic.
//! 2. Every index 0..n is accepted or rejected exactly once; `accepted` and `rejected` are in
//!    ascending index order.
//! 3. `batch.num_rows() == accepted.len()` and `batch.schema()` equals the requested schema.
//! 4. Every reason is non-empty and at most 256 bytes.
//! 5. Kinds: `Oversized` exactly when `len > max_bytes`; `Empty` exactly when the payload (not
//!    oversized) is all ASCII whitespace; never `Late` (decoders know no watermark).
//! 6. Every accepted payload is one JSON object (valid JSON, per serde_json; the JSON Schemas all
//!    say `"type": "object"`). Its findings are fixed (fuzz/README.md, fuzz/seeds/regressions/);
//!    `RISKPIPE_FUZZ_SKIP_OBJECT_CHECK=1` turns this one check off, should a new one need it.
//! 7. Batch neighbours change nothing: decoding each payload alone gives the same verdict
//!    (accepted, or rejected with the same kind and reason), and an accepted payload gives the
//!    same row alone as in the batch.
#![no_main]

use std::sync::OnceLock;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use libfuzzer_sys::fuzz_target;
use riskpipe_pipeline::decoders::{self, DecodedPayloads, Decoder};
use riskpipe_pipeline::jobs::RejectKind;

/// `max_bytes` choices (selector bits 2-4).
const MAX_BYTES: [usize; 8] = [1 << 20, 1 << 20, 1 << 20, 1 << 20, 0, 1, 24, 96];
/// Payload separator in the fuzz input.
const SEP: u8 = 0xFF;
/// Most payloads in one decode call.
const MAX_PAYLOADS: usize = 4;
/// Longest reason a dead letter header may carry.
const MAX_REASON: usize = 256;

struct Setup {
    object_check: bool,
    schemas: [SchemaRef; 4],
    decoders: Vec<Box<dyn Decoder>>,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| Setup {
        object_check: std::env::var_os("RISKPIPE_FUZZ_SKIP_OBJECT_CHECK").is_none_or(|v| v == "0"),
        schemas: [
            riskpipe_schemas::transaction_schema(),
            riskpipe_schemas::fraud_label_schema(),
            riskpipe_schemas::market_tick_schema(),
            riskpipe_schemas::position_schema(),
        ],
        decoders: MAX_BYTES
            .iter()
            .map(|&m| -> Box<dyn Decoder> {
                let (events, labels) = handbook();
                Box::new(
                    decoders::JsonDecoder::new(m)
                        .declaring(events)
                        .declaring(labels),
                )
            })
            .collect(),
    })
}

/// The shipped config's declared transactions and labels (what the fraud job decodes by).
fn handbook() -> (
    riskpipe_schemas::declared::EventSchema,
    riskpipe_schemas::declared::EventSchema,
) {
    let cfg = riskpipe_pipeline::PipelineConfig::handbook().expect("shipped config");
    riskpipe_pipeline::jobs::fraud::FraudConfig::of(&cfg)
        .expect("fraud")
        .declarations()
        .expect("declarations")
}

/// The verdict on one payload: `Ok(row)` or `Err((kind, reason))`.
type Verdict = Result<RecordBatch, (RejectKind, String)>;

/// Checks invariants 2-6 on one decode call and returns each payload's verdict.
fn check(
    schema: &SchemaRef,
    payloads: &[&[u8]],
    max_bytes: usize,
    d: &DecodedPayloads,
) -> Vec<Verdict> {
    let n = payloads.len();
    assert_eq!(
        d.batch.num_rows(),
        d.accepted.len(),
        "batch rows != accepted count: {d:?}"
    );
    assert_eq!(
        d.batch.schema().as_ref(),
        schema.as_ref(),
        "batch schema differs from the requested schema"
    );
    assert!(
        d.accepted.windows(2).all(|w| w[0] < w[1]),
        "accepted not strictly ascending: {:?}",
        d.accepted
    );
    assert!(
        d.rejected.windows(2).all(|w| w[0].index < w[1].index),
        "rejected not strictly ascending: {:?}",
        d.rejected
    );
    let mut verdicts: Vec<Option<Verdict>> = (0..n).map(|_| None).collect();
    for (row, &i) in d.accepted.iter().enumerate() {
        assert!(i < n, "accepted index {i} out of range 0..{n}");
        assert!(verdicts[i].is_none(), "index {i} accepted twice");
        verdicts[i] = Some(Ok(d.batch.slice(row, 1)));
    }
    for r in &d.rejected {
        let i = r.index;
        assert!(i < n, "rejected index {i} out of range 0..{n}");
        assert!(
            verdicts[i].is_none(),
            "index {i} both accepted and rejected, or rejected twice: {d:?}"
        );
        assert!(!r.reason.is_empty(), "empty reason: {r:?}");
        assert!(
            r.reason.len() <= MAX_REASON,
            "reason of {} bytes (> {MAX_REASON}): {r:?}",
            r.reason.len()
        );
        assert_ne!(r.kind, RejectKind::Late, "a decoder rejected as late: {r:?}");
        verdicts[i] = Some(Err((r.kind, r.reason.clone())));
    }
    for (i, (p, v)) in payloads.iter().zip(&verdicts).enumerate() {
        let Some(v) = v else {
            panic!("index {i} neither accepted nor rejected: {d:?}");
        };
        let kind = v.as_ref().err().map(|(k, _)| *k);
        let oversized = p.len() > max_bytes;
        assert_eq!(
            kind == Some(RejectKind::Oversized),
            oversized,
            "payload {i} of {} bytes, max_bytes {max_bytes}: {v:?}",
            p.len()
        );
        if v.is_ok() && setup().object_check {
            let object = serde_json::from_slice::<serde_json::Value>(p).map(|j| j.is_object());
            assert!(
                matches!(object, Ok(true)),
                "payload {i} accepted but not one JSON object ({object:?}): {:?}",
                String::from_utf8_lossy(p)
            );
        }
        let blank = !oversized && p.iter().all(u8::is_ascii_whitespace);
        assert_eq!(
            kind == Some(RejectKind::Empty),
            blank,
            "payload {i}: blank={blank}: {v:?}"
        );
    }
    verdicts.into_iter().flatten().collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let setup = setup();
    let schema = &setup.schemas[usize::from(selector & 0b11)];
    let choice = usize::from((selector >> 2) & 0b111);
    let (decoder, max_bytes) = (&setup.decoders[choice], MAX_BYTES[choice]);
    let payloads: Vec<&[u8]> = rest.splitn(MAX_PAYLOADS, |&b| b == SEP).collect();

    let together = decoder.decode("topic", schema, &payloads).expect("JSON decoding never fails as a whole");
    let verdicts = check(schema, &payloads, max_bytes, &together);

    for (i, (p, batch_verdict)) in payloads.iter().zip(verdicts).enumerate() {
        let one = [*p];
        let alone = decoder.decode("topic", schema, &one).expect("JSON decoding never fails as a whole");
        let mut alone_verdict = check(schema, &one, max_bytes, &alone);
        let alone_verdict = alone_verdict.pop().expect("one verdict per payload");
        assert_eq!(
            batch_verdict, alone_verdict,
            "payload {i} of {}: verdict in the batch differs from its verdict alone",
            payloads.len()
        );
    }
});
