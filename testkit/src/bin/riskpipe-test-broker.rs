//! A Kafka-protocol broker for tests and benchmarks: librdkafka's mock cluster hosted in its own
//! process, listening on a free loopback port.
//!
//! The tests of delivery, state and scale-out run against Apache Kafka
//! (`riskpipe_testkit::ApacheKafka`); this broker backs the tests that need a fault only it can
//! inject (request errors, a listener down, message-too-large) and the quicker functional
//! tests. It prints `BOOTSTRAP=<host:port,...>` on its first stdout line, then reads
//! fault-injection commands from stdin, one per line, answering `ok` or `error: ...`:
//!
//! - `topic <name> <partitions>` — create a topic;
//! - `down <broker>` / `up <broker>` — take a broker's listener down / up;
//! - `rtt <broker> <ms>` — add round-trip latency to a broker;
//! - `produce-errors <count>` — fail the next `count` produce requests with a retriable error;
//! - `disconnect-produce <count>` — drop the connection on the next `count` produce requests;
//! - `request-errors <request> <error> <count>` — fail the next `count` requests of a kind with
//!   an error: requests `produce`, `init-producer-id`, `add-partitions-to-txn`,
//!   `add-offsets-to-txn`, `txn-offset-commit`, `end-txn`; errors `not-coordinator`,
//!   `coordinator-load-in-progress`, `concurrent-transactions`, `illegal-generation`,
//!   `invalid-producer-epoch`, `producer-fenced`, `not-enough-replicas` (what the exactly-once
//!   tests drive librdkafka's transaction state machine with), `message-too-large` (a topic
//!   whose limit is below the client's).
//!
//! It exits when stdin closes (its parent went away) or on SIGTERM.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

/// Host librdkafka's mock Kafka cluster in a process of its own.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Number of brokers.
    #[arg(long, default_value_t = 1)]
    brokers: i32,
    /// Topics to create up front, as `name:partitions`.
    #[arg(long = "topic")]
    topics: Vec<String>,
}

fn apply(
    cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    line: &str,
) -> Result<(), String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let int = |i: usize| -> Result<i64, String> {
        words
            .get(i)
            .ok_or_else(|| format!("missing argument {i}"))?
            .parse::<i64>()
            .map_err(|e| format!("argument {i}: {e}"))
    };
    let small = |i: usize| -> Result<i32, String> {
        i32::try_from(int(i)?).map_err(|e| format!("argument {i}: {e}"))
    };
    let e = |e: rdkafka::error::KafkaError| e.to_string();
    match words.first().copied() {
        Some("topic") => {
            let name = words.get(1).ok_or("missing topic name")?;
            cluster.create_topic(name, small(2)?, 1).map_err(e)
        }
        Some("down") => cluster.broker_down(small(1)?).map_err(e),
        Some("up") => cluster.broker_up(small(1)?).map_err(e),
        Some("rtt") => cluster
            .broker_round_trip_time(small(1)?, Duration::from_millis(int(2)?.max(0) as u64))
            .map_err(e),
        Some("produce-errors") => {
            let n = usize::try_from(int(1)?).map_err(|e| e.to_string())?;
            let errors = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; n];
            cluster.request_errors(RDKafkaApiKey::Produce, &errors);
            Ok(())
        }
        Some("disconnect-produce") => {
            let n = usize::try_from(int(1)?).map_err(|e| e.to_string())?;
            let errors = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT; n];
            cluster.request_errors(RDKafkaApiKey::Produce, &errors);
            Ok(())
        }
        Some("request-errors") => {
            let request = match words.get(1).copied() {
                Some("produce") => RDKafkaApiKey::Produce,
                Some("init-producer-id") => RDKafkaApiKey::InitProducerId,
                Some("add-partitions-to-txn") => RDKafkaApiKey::AddPartitionsToTxn,
                Some("add-offsets-to-txn") => RDKafkaApiKey::AddOffsetsToTxn,
                Some("txn-offset-commit") => RDKafkaApiKey::TxnOffsetCommit,
                Some("end-txn") => RDKafkaApiKey::EndTxn,
                other => return Err(format!("unknown request {other:?}")),
            };
            use RDKafkaRespErr::*;
            let error = match words.get(2).copied() {
                Some("not-coordinator") => RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
                Some("coordinator-load-in-progress") => {
                    RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS
                }
                Some("concurrent-transactions") => RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS,
                Some("illegal-generation") => RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION,
                Some("invalid-producer-epoch") => RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH,
                Some("producer-fenced") => RD_KAFKA_RESP_ERR_PRODUCER_FENCED,
                Some("not-enough-replicas") => RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
                Some("message-too-large") => RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE,
                other => return Err(format!("unknown error {other:?}")),
            };
            let n = usize::try_from(int(3)?).map_err(|e| e.to_string())?;
            cluster.request_errors(request, &vec![error; n]);
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?}")),
        None => Ok(()),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cluster = match MockCluster::new(args.brokers) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: starting mock cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    for t in &args.topics {
        let (name, partitions) = t.split_once(':').unwrap_or((t.as_str(), "1"));
        let created = partitions
            .parse::<i32>()
            .map_err(|e| e.to_string())
            .and_then(|p| cluster.create_topic(name, p, 1).map_err(|e| e.to_string()));
        if let Err(e) = created {
            eprintln!("error: creating topic {t:?}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut out = std::io::stdout().lock();
    if writeln!(out, "BOOTSTRAP={}", cluster.bootstrap_servers())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let reply = match apply(&cluster, &line) {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("error: {e}"),
        };
        if writeln!(out, "{reply}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    ExitCode::SUCCESS
}
