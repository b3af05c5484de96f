//! Every metric riskpipe exports, named once. The driver emits them for every execution (live,
//! Kafka replay, backtest), so a dashboard built on these names works for all of them.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

/// Input messages or rows per topic (`topic` label).
pub const EVENTS_IN: &str = "riskpipe_events_in_total";
/// Output records acknowledged by the sink, per output (`topic`: scores, alerts, dead_letter).
pub const EVENTS_OUT: &str = "riskpipe_events_out_total";
/// Rows per micro-batch.
pub const BATCH_ROWS: &str = "riskpipe_batch_rows";
/// Seconds per stage and batch (`stage`: decode, features, score, encode, publish).
pub const STAGE_SECONDS: &str = "riskpipe_stage_seconds";
/// Seconds from an input message's producer timestamp to its score's acknowledgement.
pub const END_TO_END_SECONDS: &str = "riskpipe_end_to_end_seconds";
/// Dead letters per kind (`kind`: oversized, empty, malformed, schema, invalid, late, duplicate).
pub const DEAD_LETTERS: &str = "riskpipe_dead_letters_total";
/// Offset commits (`result`: ok, error).
pub const COMMITS: &str = "riskpipe_commits_total";
/// Kafka transactions of the exactly-once mode (`result`: committed, aborted).
pub const TRANSACTIONS: &str = "riskpipe_transactions_total";
/// Seconds to commit one transaction (its outputs flushed, the input offsets sent, the commit).
pub const TRANSACTION_SECONDS: &str = "riskpipe_transaction_commit_seconds";
/// Consumer errors the pipeline logged and went past.
pub const CONSUMER_ERRORS: &str = "riskpipe_consumer_errors_total";
/// Re-delivered messages the source skipped: read already by this process (after a rebalance).
pub const REDELIVERY_SKIPPED: &str = "riskpipe_redelivered_skipped_total";
/// Messages behind the partition's end (`topic`, `partition`), from librdkafka statistics.
pub const CONSUMER_LAG: &str = "riskpipe_consumer_lag";
/// 1 while the consumer holds partitions and the pipeline runs, else 0 (as `/ready`).
pub const READY: &str = "riskpipe_ready";
/// The event-time watermark, seconds since the epoch (absent until every partition sent one).
pub const WATERMARK: &str = "riskpipe_watermark_seconds";
/// Keys held in the feature operators' state (a key per operator that keeps it).
pub const STATE_KEYS: &str = "riskpipe_state_keys";

/// Seconds to write a checkpoint (tables and manifest).
pub const CHECKPOINT_SECONDS: &str = "riskpipe_checkpoint_seconds";
/// Bytes of the last checkpoint's tables.
pub const CHECKPOINT_BYTES: &str = "riskpipe_checkpoint_bytes";
/// When the last checkpoint was written, seconds since the epoch (age: `time() - this`).
pub const CHECKPOINT_TIME: &str = "riskpipe_checkpoint_timestamp_seconds";
/// Checkpoint writes that failed (the pipeline goes on; the next one retries).
pub const CHECKPOINT_FAILURES: &str = "riskpipe_checkpoint_failures_total";
/// Seconds the last start spent restoring state (checkpoint read and silent replay).
pub const RESTORE_SECONDS: &str = "riskpipe_restore_seconds";
/// Input messages replayed silently into the restored state at the last start.
pub const RESTORE_REPLAYED: &str = "riskpipe_restore_replayed_messages";
/// Where the state `riskpipe run` started with came from: 1 for its `origin` (`checkpoint`,
/// `rebuilt` from the topics without one, `empty` by the user's choice).
pub const STATE_ORIGIN: &str = "riskpipe_state_origin";
/// Model reloads, per result: `offered` (checked, swapped in at the next batch), `unchanged`,
/// `refused` (the old model keeps scoring), `swapped`, `refused_live` (failed on the live batch).
pub const MODEL_RELOADS: &str = "riskpipe_model_reloads_total";
/// 1 for the model version scoring now (`model` = `<file>@<version>`), 0 for those before it.
pub const MODEL_INFO: &str = "riskpipe_model_info";
/// Seconds the score stage spent checking a new model on its first batch (the swap's pause).
pub const MODEL_SWAP_SECONDS: &str = "riskpipe_model_swap_seconds";
/// Rows the challenger scored, by whether its alert decision `agree`s with the champion's
/// (`unfit`: it answered no probability for the row).
pub const CHALLENGER_ROWS: &str = "riskpipe_challenger_rows_total";
/// Events a decision rule matched (`rule`; `shadow`: `true` for a rule on trial, which never
/// decides).
pub const RULE_HITS: &str = "riskpipe_rule_hits_total";
/// Events decided, by `outcome`.
pub const DECISIONS: &str = "riskpipe_decisions_total";
/// Reloads of the decision rules by `result`: `offered` (checked, waiting for the next
/// batch), `unchanged`, `refused` (the running rules stay), `swapped` (deciding from a batch on).
pub const RULES_RELOADS: &str = "riskpipe_rules_reloads_total";
/// `[decisions] jump_factor`, per `rule`: the alert `RiskpipeRuleHitRateJump` fires when the
/// rule's hit rate over the last hour exceeds this many times its rate over the last day.
pub const RULE_JUMP_FACTOR: &str = "riskpipe_rule_jump_factor";
/// Seconds the challenger took per batch (beside `riskpipe_stage_seconds{stage="score"}`).
pub const CHALLENGER_SECONDS: &str = "riskpipe_challenger_seconds";
/// Population stability index of a model input or the score (`column`) over the drift window
/// ending on the latest event's day, against the drift reference (`[drift]`).
pub const DRIFT_PSI: &str = "riskpipe_drift_psi";
/// Times a column's PSI crossed the drift threshold (`column`, `direction`: `over`, `under`).
pub const DRIFT_CROSSINGS: &str = "riskpipe_drift_crossings_total";
/// Rows of a repartition topic taken in already (re-delivered by the at-least-once stage
/// before it) and dropped.
pub const REPARTITION_DUPLICATES: &str = "riskpipe_repartition_duplicates_total";
/// Rows read from a partition their key does not belong to (scale-out, `input`: labels or
/// transactions): their features miss part of their key's history.
pub const MISROUTED: &str = "riskpipe_misrouted_total";
/// Mean absolute difference of the two models' scores over the last batch.
pub const CHALLENGER_DIFFERENCE: &str = "riskpipe_challenger_score_difference";

/// Buckets of the batch-size histogram (rows); every other histogram is seconds.
pub const BATCH_ROWS_BUCKETS: [f64; 12] = [
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 4096.0, 8192.0, 16384.0, 65536.0,
];

/// A timed stage of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Payloads to Arrow.
    Decode,
    /// Side inputs and feature operators.
    Features,
    /// Model, alerts and their reasons.
    Score,
    /// Output records to payloads.
    Encode,
    /// From handing a batch's records to the sink to its acknowledgement.
    Publish,
    /// Copying the feature state for a checkpoint (on the feature thread, between batches).
    Snapshot,
}

impl Stage {
    /// The `stage` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Features => "features",
            Stage::Score => "score",
            Stage::Encode => "encode",
            Stage::Publish => "publish",
            Stage::Snapshot => "snapshot",
        }
    }
}

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Set to the latest value.
    Gauge,
    /// A distribution (seconds, except [`BATCH_ROWS`]).
    Histogram,
}

/// One exported metric: its name, kind, labels and HELP line.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// The name, as Prometheus shows it.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Its labels' names.
    pub labels: &'static [&'static str],
    /// The HELP line.
    pub help: &'static str,
}

/// Every metric riskpipe exports: the HELP lines and the reference page
/// (`docs/reference/metrics.md`, [`reference()`]) come from here.
pub const METRICS: &[Metric] = &[
    Metric {
        name: EVENTS_IN,
        kind: Kind::Counter,
        labels: &["topic"],
        help: "Input messages or rows, per topic",
    },
    Metric {
        name: EVENTS_OUT,
        kind: Kind::Counter,
        labels: &["topic"],
        help: "Output records acknowledged, per output",
    },
    Metric {
        name: BATCH_ROWS,
        kind: Kind::Histogram,
        labels: &[],
        help: "Rows per micro-batch",
    },
    Metric {
        name: STAGE_SECONDS,
        kind: Kind::Histogram,
        labels: &["stage"],
        help: "Seconds per stage and batch",
    },
    Metric {
        name: END_TO_END_SECONDS,
        kind: Kind::Histogram,
        labels: &[],
        help: "Seconds from an input's producer timestamp to its score's acknowledgement",
    },
    Metric {
        name: DEAD_LETTERS,
        kind: Kind::Counter,
        labels: &["kind"],
        help: "Dead letters, per kind",
    },
    Metric {
        name: COMMITS,
        kind: Kind::Counter,
        labels: &["result"],
        help: "Offset commits, per result",
    },
    Metric {
        name: TRANSACTIONS,
        kind: Kind::Counter,
        labels: &["result"],
        help: "Kafka transactions (exactly-once mode), per result",
    },
    Metric {
        name: TRANSACTION_SECONDS,
        kind: Kind::Histogram,
        labels: &[],
        help: "Seconds to commit a transaction: outputs flushed, input offsets sent, committed",
    },
    Metric {
        name: CONSUMER_ERRORS,
        kind: Kind::Counter,
        labels: &[],
        help: "Consumer errors logged and gone past",
    },
    Metric {
        name: REDELIVERY_SKIPPED,
        kind: Kind::Counter,
        labels: &[],
        help: "Re-delivered messages skipped: this process read them already (after a rebalance)",
    },
    Metric {
        name: CONSUMER_LAG,
        kind: Kind::Gauge,
        labels: &["topic", "partition"],
        help: "Messages behind the partition's end",
    },
    Metric {
        name: READY,
        kind: Kind::Gauge,
        labels: &[],
        help: "1 while the consumer holds partitions and the pipeline runs",
    },
    Metric {
        name: WATERMARK,
        kind: Kind::Gauge,
        labels: &[],
        help: "Event-time watermark, seconds since the epoch",
    },
    Metric {
        name: STATE_KEYS,
        kind: Kind::Gauge,
        labels: &[],
        help: "Keys held in the feature operators' state",
    },
    Metric {
        name: CHECKPOINT_SECONDS,
        kind: Kind::Histogram,
        labels: &[],
        help: "Seconds to write a checkpoint",
    },
    Metric {
        name: CHECKPOINT_BYTES,
        kind: Kind::Gauge,
        labels: &[],
        help: "Bytes of the last checkpoint's state tables",
    },
    Metric {
        name: CHECKPOINT_TIME,
        kind: Kind::Gauge,
        labels: &[],
        help: "When the last checkpoint was written, seconds since the epoch",
    },
    Metric {
        name: CHECKPOINT_FAILURES,
        kind: Kind::Counter,
        labels: &[],
        help: "Checkpoint writes that failed",
    },
    Metric {
        name: RESTORE_SECONDS,
        kind: Kind::Gauge,
        labels: &[],
        help: "Seconds the last start spent restoring state (checkpoint and silent replay)",
    },
    Metric {
        name: RESTORE_REPLAYED,
        kind: Kind::Gauge,
        labels: &[],
        help: "Input messages replayed silently into the restored state at the last start",
    },
    Metric {
        name: STATE_ORIGIN,
        kind: Kind::Gauge,
        labels: &["origin"],
        help: "1 for where the state at the last start came from: checkpoint, rebuilt or empty (by choice)",
    },
    Metric {
        name: MODEL_RELOADS,
        kind: Kind::Counter,
        labels: &["result"],
        help: "Model reloads, per result",
    },
    Metric {
        name: MODEL_INFO,
        kind: Kind::Gauge,
        labels: &["model"],
        help: "1 for the model version scoring now",
    },
    Metric {
        name: MODEL_SWAP_SECONDS,
        kind: Kind::Gauge,
        labels: &[],
        help: "Seconds the last model swap checked the new model on its first batch",
    },
    Metric {
        name: CHALLENGER_ROWS,
        kind: Kind::Counter,
        labels: &["agreement"],
        help: "Rows the challenger scored, by agreement of its alert decision with the champion's",
    },
    Metric {
        name: RULE_HITS,
        kind: Kind::Counter,
        labels: &["rule", "shadow"],
        help: "Events a decision rule matched (shadow rules too)",
    },
    Metric {
        name: DECISIONS,
        kind: Kind::Counter,
        labels: &["outcome"],
        help: "Events decided, by outcome",
    },
    Metric {
        name: RULES_RELOADS,
        kind: Kind::Counter,
        labels: &["result"],
        help: "Reloads of the decision rules by result (offered, unchanged, refused, swapped)",
    },
    Metric {
        name: RULE_JUMP_FACTOR,
        kind: Kind::Gauge,
        labels: &["rule"],
        help: "How many times its daily hit rate a rule's hourly rate may reach before RiskpipeRuleHitRateJump fires",
    },
    Metric {
        name: CHALLENGER_SECONDS,
        kind: Kind::Histogram,
        labels: &[],
        help: "Seconds the challenger took per batch",
    },
    Metric {
        name: DRIFT_PSI,
        kind: Kind::Gauge,
        labels: &["column"],
        help: "PSI of a model input or the score over the drift window against the reference",
    },
    Metric {
        name: DRIFT_CROSSINGS,
        kind: Kind::Counter,
        labels: &["column", "direction"],
        help: "Times a column's PSI crossed the drift threshold, by direction",
    },
    Metric {
        name: REPARTITION_DUPLICATES,
        kind: Kind::Counter,
        labels: &[],
        help: "Rows of a repartition topic taken in already and dropped",
    },
    Metric {
        name: MISROUTED,
        kind: Kind::Counter,
        labels: &["input"],
        help: "Rows read from a partition their key does not belong to, per input",
    },
    Metric {
        name: CHALLENGER_DIFFERENCE,
        kind: Kind::Gauge,
        labels: &[],
        help: "Mean absolute difference of the champion's and challenger's scores, last batch",
    },
];

/// Describes every metric (HELP lines); called once when the exporter is installed.
pub fn describe() {
    for m in METRICS {
        match m.kind {
            Kind::Counter => describe_counter!(m.name, m.help),
            Kind::Gauge => describe_gauge!(m.name, m.help),
            Kind::Histogram => describe_histogram!(m.name, m.help),
        }
    }
    // Series without labels exist from the start, so dashboards and alerts see 0, not nothing.
    counter!(CONSUMER_ERRORS).increment(0);
    gauge!(READY).set(0.0);
}

/// The metrics reference page (Markdown), generated from [`METRICS`]; a test keeps
/// `docs/reference/metrics.md` equal to it.
pub fn reference() -> String {
    let mut page = String::from(
        "# Metrics\n\n\
         Generated from `pipeline/core/src/events.rs` (`riskpipe_core::events::METRICS`); \
         `RISKPIPE_BLESS=1 cargo test -p riskpipe-core` rewrites this page. Every execution \
         (live, Kafka replay, backtest) exports them under the same names on \
         `[observability] listen`'s `/metrics`. Histograms are in seconds, except \
         `riskpipe_batch_rows` (rows).\n\n\
         | name | kind | labels | what it counts |\n|---|---|---|---|\n",
    );
    for m in METRICS {
        let labels = match m.labels {
            [] => "—".to_string(),
            l => l
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        page.push_str(&format!(
            "| `{}` | {} | {labels} | {} |\n",
            m.name,
            match m.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            },
            m.help
        ));
    }
    page
}

/// Readiness changed.
pub fn ready(ready: bool) {
    gauge!(READY).set(if ready { 1.0 } else { 0.0 });
}

/// A stage took `seconds` for one batch.
pub fn stage_time(stage: Stage, seconds: f64) {
    histogram!(STAGE_SECONDS, "stage" => stage.as_str()).record(seconds);
}

/// A micro-batch of `rows` arrived.
pub fn batch_rows(rows: usize) {
    histogram!(BATCH_ROWS).record(rows as f64);
}

/// `n` inputs arrived from `topic`.
pub fn events_in(topic: &str, n: u64) {
    counter!(EVENTS_IN, "topic" => topic.to_string()).increment(n);
}

/// `n` outputs of `output` were acknowledged.
pub fn events_out(output: &'static str, n: u64) {
    counter!(EVENTS_OUT, "topic" => output).increment(n);
}

/// One dead letter of `kind`.
pub fn dead_letter(kind: &'static str) {
    counter!(DEAD_LETTERS, "kind" => kind).increment(1);
}

/// Where event time and the feature state stand after a batch.
pub fn event_time(watermark_ns: i64, state_keys: usize) {
    if watermark_ns != i64::MIN {
        gauge!(WATERMARK).set(watermark_ns as f64 / 1e9);
    }
    gauge!(STATE_KEYS).set(state_keys as f64);
}

/// An offset commit ended with `ok`.
pub fn commit(ok: bool) {
    counter!(COMMITS, "result" => if ok { "ok" } else { "error" }).increment(1);
}

/// A transaction was committed in `seconds`.
pub fn transaction_committed(seconds: f64) {
    counter!(TRANSACTIONS, "result" => "committed").increment(1);
    histogram!(TRANSACTION_SECONDS).record(seconds);
}

/// A transaction was aborted (its outputs are re-published after the restart from the last
/// committed one).
pub fn transaction_aborted() {
    counter!(TRANSACTIONS, "result" => "aborted").increment(1);
}

/// The challenger scored a batch in `seconds`: `agree` rows with the champion's alert
/// decision, `disagree` without, scores `difference` apart on average.
pub fn challenger_scored(seconds: f64, agree: u64, disagree: u64, difference: f64) {
    histogram!(CHALLENGER_SECONDS).record(seconds);
    counter!(CHALLENGER_ROWS, "agreement" => "agree").increment(agree);
    counter!(CHALLENGER_ROWS, "agreement" => "disagree").increment(disagree);
    gauge!(CHALLENGER_DIFFERENCE).set(difference);
}

/// Rule `rule` matched `n` events of a batch.
pub fn rule_hits(rule: &str, shadow: bool, n: u64) {
    counter!(RULE_HITS, "rule" => rule.to_string(), "shadow" => if shadow { "true" } else { "false" })
        .increment(n);
}

/// A reload of the decision rules ended with `result`.
pub fn rules_reload(result: &'static str) {
    counter!(RULES_RELOADS, "result" => result).increment(1);
}

/// Rule `rule` alerts when its hourly hit rate exceeds `factor` times its daily one.
pub fn rule_jump_factor(rule: &str, factor: f64) {
    gauge!(RULE_JUMP_FACTOR, "rule" => rule.to_string()).set(factor);
}

/// `n` events of a batch were decided `outcome`.
pub fn decisions(outcome: &str, n: u64) {
    counter!(DECISIONS, "outcome" => outcome.to_string()).increment(n);
}

/// The challenger answered `rows` rows with no probability (no record published for them).
pub fn challenger_unfit(rows: u64) {
    counter!(CHALLENGER_ROWS, "agreement" => "unfit").increment(rows);
}

/// A row of a repartition topic was taken in already and is dropped.
pub fn repartition_duplicate() {
    counter!(REPARTITION_DUPLICATES).increment(1);
}

/// `n` rows of `input` arrived in a partition their key does not belong to.
pub fn misrouted(input: &'static str, n: u64) {
    counter!(MISROUTED, "input" => input).increment(n);
}

/// `column`'s PSI over the drift window.
pub fn drift_psi(column: &str, psi: f64) {
    gauge!(DRIFT_PSI, "column" => column.to_string()).set(psi);
}

/// The drift monitor watches `columns`: their crossing counts exist from 0, so an alert rule's
/// `increase()` sees the first crossing.
pub fn drift_columns<'a>(columns: impl Iterator<Item = &'a str>) {
    for column in columns {
        for direction in ["over", "under"] {
            counter!(DRIFT_CROSSINGS, "column" => column.to_string(), "direction" => direction)
                .increment(0);
        }
    }
}

/// `column`'s PSI went over the drift threshold (`over`), or back under it.
pub fn drift_crossed(column: &str, over: bool) {
    let direction = if over { "over" } else { "under" };
    counter!(DRIFT_CROSSINGS, "column" => column.to_string(), "direction" => direction)
        .increment(1);
}

/// A model reload ended with `result`.
pub fn model_reload(result: &'static str) {
    counter!(MODEL_RELOADS, "result" => result).increment(1);
}

/// The score stage scores with `model` now, instead of `before` (if any), after a check of
/// `seconds`.
pub fn model_scoring(model: &str, before: Option<&str>, seconds: f64) {
    if let Some(b) = before {
        gauge!(MODEL_INFO, "model" => b.to_string()).set(0.0);
        gauge!(MODEL_SWAP_SECONDS).set(seconds);
        model_reload("swapped");
    }
    gauge!(MODEL_INFO, "model" => model.to_string()).set(1.0);
}

/// The source skipped a message this process had read already.
pub fn redelivery_skipped() {
    counter!(REDELIVERY_SKIPPED).increment(1);
}

/// The consumer reported an error the pipeline went past.
pub fn consumer_error() {
    counter!(CONSUMER_ERRORS).increment(1);
}

/// A partition's consumer lag.
pub fn consumer_lag(topic: &str, partition: i32, lag: i64) {
    gauge!(CONSUMER_LAG, "topic" => topic.to_string(), "partition" => partition.to_string())
        .set(lag as f64);
}

/// The end-to-end latency histogram (seconds), looked up once per batch.
pub fn end_to_end() -> metrics::Histogram {
    histogram!(END_TO_END_SECONDS)
}

/// A checkpoint of `bytes` was written in `seconds`, at `created_ms`.
pub fn checkpoint_written(seconds: f64, bytes: u64, created_ms: i64) {
    histogram!(CHECKPOINT_SECONDS).record(seconds);
    gauge!(CHECKPOINT_BYTES).set(bytes as f64);
    gauge!(CHECKPOINT_TIME).set(created_ms as f64 / 1e3);
}

/// A checkpoint write failed.
pub fn checkpoint_failed() {
    counter!(CHECKPOINT_FAILURES).increment(1);
}

/// The state started from `origin` (`checkpoint`, `rebuilt` or `empty`).
pub fn state_origin(origin: &'static str) {
    gauge!(STATE_ORIGIN, "origin" => origin).set(1.0);
}

/// The start restored its state in `seconds`, replaying `messages` silently.
pub fn restored(seconds: f64, messages: usize) {
    gauge!(RESTORE_SECONDS).set(seconds);
    gauge!(RESTORE_REPLAYED).set(messages as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference page is what [`METRICS`] says (bless with `RISKPIPE_BLESS=1`), and every
    /// metric is in the table once.
    #[test]
    fn the_metrics_reference_page_is_current() {
        let mut names: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len(), "a metric listed twice");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../docs/reference/metrics.md");
        let page = reference();
        if std::env::var_os("RISKPIPE_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().expect("docs/reference")).expect("mkdir");
            std::fs::write(&path, &page).expect("write");
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == page,
            "docs/reference/metrics.md is stale: run RISKPIPE_BLESS=1 cargo test -p riskpipe-core"
        );
    }
}
