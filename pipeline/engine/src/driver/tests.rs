//! The driver's contract with sources, jobs and sinks: a bad-input error dead-letters its batch
//! and the run goes on; any other error stops it; a batch is acknowledged only after its
//! delivery, in batch order, and the final commit happens only after a clean drain.

use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type};
use riskpipe_operators::columns;

use super::*;
use crate::sinks::Origin;
use crate::sinks::collect::CollectSink;
use crate::sources::{Acker, Message, Payload, SourceBatch, Stop};
use riskpipe_core::{
    FeatureStage, Featured, Inputs, JobInput, JobOutput, Records, Reject, RejectKind, ScoreStage,
};

const ROWS: usize = 4;

/// `batches` batches of `ROWS` rows; column X holds the batch number.
#[derive(Debug)]
struct Numbers {
    batches: usize,
    next: usize,
    acks: Arc<Mutex<Vec<usize>>>,
    finished: Arc<Mutex<bool>>,
}

#[derive(Debug)]
struct NumbersAcker {
    acks: Arc<Mutex<Vec<usize>>>,
    finished: Arc<Mutex<bool>>,
}

impl Acker for NumbersAcker {
    type Ack = usize;
    fn ack(&mut self, batch: usize) {
        self.acks.lock().expect("lock").push(batch);
    }
    fn finish(&mut self) -> Result<bool> {
        *self.finished.lock().expect("lock") = true;
        Ok(true)
    }
}

impl Source for Numbers {
    type Ack = usize;
    type Acker = NumbersAcker;

    async fn next(&mut self, _stop: &mut Stop) -> Result<Option<SourceBatch<usize>>> {
        if self.next == self.batches {
            return Ok(None);
        }
        let n = self.next;
        self.next += 1;
        let x: ArrayRef = Arc::new(Int64Array::from(vec![n as i64; ROWS]));
        let events = RecordBatch::try_from_iter([("X", x)])?;
        Ok(Some(SourceBatch {
            payload: Payload::Rows {
                input: JobInput {
                    side: None,
                    events,
                    partitions: None,
                },
                first_row: n * ROWS,
            },
            ack: n,
        }))
    }

    fn acker(&self) -> NumbersAcker {
        NumbersAcker {
            acks: self.acks.clone(),
            finished: self.finished.clone(),
        }
    }

    fn names(&self) -> (&str, &str) {
        ("numbers", "none")
    }
}

/// Batch 1: its first row is invalid. `bad_input`: the batch fails a check. `bug`: the stage
/// breaks.
#[derive(Debug)]
struct Picky {
    bad_input: usize,
    bug: usize,
}

impl FeatureStage for Picky {
    fn process(&mut self, input: JobInput) -> Result<Featured> {
        let n = columns::primitive::<Int64Type>(&input.events, "X")?.value(0) as usize;
        if n == self.bad_input {
            return Err(PipelineError::BadInput(format!("batch {n} is bad")));
        }
        if n == self.bug {
            return Err(PipelineError::Bug(format!("batch {n} broke the stage")));
        }
        if n == 1 {
            return Ok(Featured {
                batch: input.events.slice(1, ROWS - 1),
                rejects: vec![Reject {
                    row: 0,
                    kind: RejectKind::Invalid,
                    reason: "the first row of batch 1".into(),
                }],
            });
        }
        Ok(Featured {
            batch: input.events,
            rejects: Vec::new(),
        })
    }
}

/// One score record per row.
#[derive(Debug)]
struct Echo;

impl ScoreStage for Echo {
    fn process(&mut self, featured: Featured) -> Result<JobOutput> {
        let keys = cast(featured.batch.column(0), &DataType::Utf8)?;
        Ok(JobOutput {
            scored: Some(featured.batch.clone()),
            scores: Some(Records {
                batch: featured.batch,
                keys,
                key_column: Some("X".into()),
            }),
            ..JobOutput::default()
        })
    }
}

struct Run {
    result: Result<Summary>,
    acks: Vec<usize>,
    finished: bool,
    sink: CollectSink,
}

fn run(batches: usize, bad_input: usize, bug: usize) -> Run {
    let acks = Arc::new(Mutex::new(Vec::new()));
    let finished = Arc::new(Mutex::new(false));
    let source = Numbers {
        batches,
        next: 0,
        acks: acks.clone(),
        finished: finished.clone(),
    };
    let job = Job {
        kind: "test",
        model: "echo".into(),
        members: Vec::new(),
        inputs: Inputs {
            events: Arc::new(arrow::datatypes::Schema::empty()),
            side: None,
            declared: Vec::new(),
        },
        features: Box::new(Picky { bad_input, bug }),
        scoring: Box::new(Echo),
    };
    let sink = CollectSink::default();
    let driver = Driver::new(crate::decoders::json(1), 2);
    let result = driver.run_blocking(source, job, sink.clone(), Arc::new(Counters::default()));
    let acks = acks.lock().expect("lock").clone();
    let finished = *finished.lock().expect("lock");
    Run {
        result,
        acks,
        finished,
        sink,
    }
}

#[test]
fn bad_input_dead_letters_its_batch_and_the_run_goes_on() {
    let r = run(5, 2, usize::MAX);
    let summary = r.result.expect("a bad batch does not stop the run");
    assert_eq!(
        r.acks,
        vec![0, 1, 2, 3, 4],
        "every batch acknowledged, in order"
    );
    assert!(r.finished, "committed after the drain");
    // Batches 0, 3, 4 whole, batch 1 less its first row; batch 2 and that row are dead letters.
    assert_eq!(summary.scores, 4 + 3 + 4 + 4);
    assert_eq!(summary.dead_letters, 1 + 4);
    let collected = r.sink.take().expect("collected");
    let dead: Vec<(usize, RejectKind)> = collected
        .dead
        .iter()
        .map(|d| match d.origin {
            Origin::Row(row) => (row, d.kind),
            Origin::Message(_) | Origin::FileRow(_) => panic!("rows come from a row source"),
        })
        .collect();
    assert_eq!(
        dead,
        vec![
            (4, RejectKind::Invalid),
            (8, RejectKind::Schema),
            (9, RejectKind::Schema),
            (10, RejectKind::Schema),
            (11, RejectKind::Schema),
        ]
    );
    assert!(collected.dead[1].reason.contains("batch 2 is bad"));
}

#[test]
fn any_other_error_stops_the_run_without_acknowledging_the_failed_batch() {
    let r = run(8, usize::MAX, 3);
    let e = r.result.expect_err("a bug stops the run");
    assert!(matches!(e, PipelineError::Bug(_)), "{e}");
    assert!(r.acks.iter().all(|&b| b < 3), "acknowledged {:?}", r.acks);
    assert!(
        r.acks.windows(2).all(|w| w[0] + 1 == w[1]),
        "in order: {:?}",
        r.acks
    );
    assert!(!r.finished, "no final commit after a failure");
}

/// One batch of messages: two events, one side input and one malformed event.
#[derive(Debug)]
struct OneMessageBatch {
    sent: bool,
    acks: Arc<Mutex<Vec<usize>>>,
    finished: Arc<Mutex<bool>>,
}

impl Source for OneMessageBatch {
    type Ack = usize;
    type Acker = NumbersAcker;

    async fn next(&mut self, _stop: &mut Stop) -> Result<Option<SourceBatch<usize>>> {
        if std::mem::replace(&mut self.sent, true) {
            return Ok(None);
        }
        let message = |side: bool, offset: i64, payload: &str| Message {
            side,
            topic: Arc::from(if side { "side" } else { "events" }),
            partition: 0,
            offset,
            key: None,
            payload: payload.as_bytes().to_vec(),
            created_ms: Some(0),
        };
        Ok(Some(SourceBatch {
            payload: Payload::Messages {
                messages: vec![
                    message(false, 0, r#"{"X": 1}"#),
                    message(true, 0, r#"{"Y": 2}"#),
                    message(false, 1, r#"{"X": "#),
                    message(false, 2, r#"{"X": 1}"#),
                ],
                held: Arc::from([0]),
            },
            ack: 0,
        }))
    }

    fn acker(&self) -> NumbersAcker {
        NumbersAcker {
            acks: self.acks.clone(),
            finished: self.finished.clone(),
        }
    }

    fn names(&self) -> (&str, &str) {
        ("events", "side")
    }
}

#[test]
fn a_batch_the_features_refuse_dead_letters_its_events_and_side_inputs() {
    use arrow::datatypes::{Field, Schema};
    let acks = Arc::new(Mutex::new(Vec::new()));
    let finished = Arc::new(Mutex::new(false));
    let source = OneMessageBatch {
        sent: false,
        acks: acks.clone(),
        finished: finished.clone(),
    };
    let int = |name: &str| Arc::new(Schema::new(vec![Field::new(name, DataType::Int64, false)]));
    let job = Job {
        kind: "test",
        model: "echo".into(),
        members: Vec::new(),
        inputs: Inputs {
            events: int("X"),
            side: Some(int("Y")),
            declared: Vec::new(),
        },
        features: Box::new(Picky {
            bad_input: 1,
            bug: usize::MAX,
        }),
        scoring: Box::new(Echo),
    };
    let sink = CollectSink::default();
    let driver = Driver::new(crate::decoders::json(1024), 2);
    let summary = driver
        .run_blocking(source, job, sink.clone(), Arc::new(Counters::default()))
        .expect("bad input does not stop the run");
    assert_eq!((summary.events, summary.side), (3, 1));
    assert_eq!(summary.scores, 0);
    let mut dead: Vec<(String, i64, RejectKind)> = sink
        .take()
        .expect("collected")
        .dead
        .iter()
        .map(|d| match &d.origin {
            Origin::Message(m) => (m.topic.to_string(), m.offset, d.kind),
            Origin::Row(_) | Origin::FileRow(_) => {
                panic!("messages come from a message source")
            }
        })
        .collect();
    dead.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    assert_eq!(
        dead,
        vec![
            ("events".to_string(), 0, RejectKind::Schema),
            ("events".to_string(), 1, RejectKind::Malformed),
            ("events".to_string(), 2, RejectKind::Schema),
            ("side".to_string(), 0, RejectKind::Schema),
        ],
        "every message of the batch is accounted for"
    );
    assert_eq!(*acks.lock().expect("lock"), vec![0]);
    assert!(*finished.lock().expect("lock"));
}

/// One batch, then nothing until the pipeline stops: a quiet topic.
#[derive(Debug)]
struct Quiet {
    sent: bool,
}

impl Source for Quiet {
    type Ack = usize;
    type Acker = NumbersAcker;

    async fn next(&mut self, stop: &mut Stop) -> Result<Option<SourceBatch<usize>>> {
        if !std::mem::replace(&mut self.sent, true) {
            let x: ArrayRef = Arc::new(Int64Array::from(vec![0i64; ROWS]));
            return Ok(Some(SourceBatch {
                payload: Payload::Rows {
                    input: JobInput {
                        side: None,
                        events: RecordBatch::try_from_iter([("X", x)])?,
                        partitions: None,
                    },
                    first_row: 0,
                },
                ack: 0,
            }));
        }
        while !*stop.borrow() {
            if stop.changed().await.is_err() {
                break;
            }
        }
        Ok(None)
    }

    fn acker(&self) -> NumbersAcker {
        NumbersAcker {
            acks: Arc::default(),
            finished: Arc::default(),
        }
    }

    fn names(&self) -> (&str, &str) {
        ("quiet", "none")
    }
}

#[derive(Debug)]
struct Panics;

impl ScoreStage for Panics {
    fn process(&mut self, _featured: Featured) -> Result<JobOutput> {
        panic!("a scoring bug");
    }
}

#[test]
fn a_panicking_stage_stops_a_quiet_source_instead_of_hanging() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let job = Job {
            kind: "test",
            model: "panics".into(),
            members: Vec::new(),
            inputs: Inputs {
                events: Arc::new(arrow::datatypes::Schema::empty()),
                side: None,
                declared: Vec::new(),
            },
            features: Box::new(Picky {
                bad_input: usize::MAX,
                bug: usize::MAX,
            }),
            scoring: Box::new(Panics),
        };
        let driver = Driver::new(crate::decoders::json(1), 2);
        let r = driver.run_blocking(
            Quiet { sent: false },
            job,
            CollectSink::default(),
            Arc::new(Counters::default()),
        );
        let _ = done_tx.send(r.map(|_| ()));
    });
    let r = done_rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the run ends instead of waiting on the quiet source");
    let e = r.expect_err("a panic is an error");
    assert!(e.to_string().contains("panicked"), "{e}");
}

/// Acknowledging batch n puts the source at offset n + 1 of partition 0.
#[derive(Debug, Default)]
struct OffsetAcker {
    next: i64,
}

impl Acker for OffsetAcker {
    type Ack = usize;
    fn ack(&mut self, batch: usize) {
        self.next = batch as i64 + 1;
    }
    fn finish(&mut self) -> Result<bool> {
        Ok(true)
    }
    fn positions(&self) -> crate::state::Positions {
        let mut p = crate::state::Positions::new();
        p.entry("numbers".into()).or_default().insert(0, self.next);
        p
    }
}

/// [`Numbers`] with offsets.
#[derive(Debug)]
struct Offsets(Numbers);

impl Source for Offsets {
    type Ack = usize;
    type Acker = OffsetAcker;
    async fn next(&mut self, stop: &mut Stop) -> Result<Option<SourceBatch<usize>>> {
        self.0.next(stop).await
    }
    fn acker(&self) -> OffsetAcker {
        OffsetAcker::default()
    }
    fn names(&self) -> (&str, &str) {
        self.0.names()
    }
}

/// What a transactional sink saw: each commit's input position and the batches sent in it.
#[derive(Debug, Default)]
struct Transactions {
    open: Vec<i64>,
    committed: Vec<(i64, Vec<i64>)>,
    aborted: usize,
}

/// A transactional sink whose `fail_at`-th commit (0-based) fails as aborted.
#[derive(Debug, Clone)]
struct TxnSink {
    seen: Arc<Mutex<Transactions>>,
    fail_at: usize,
}

impl crate::sinks::Sink for TxnSink {
    type Delivery = std::future::Ready<Result<crate::sinks::Delivered>>;

    async fn send(&mut self, batch: crate::sinks::SinkBatch) -> Result<Self::Delivery> {
        let scores = batch
            .output
            .scores
            .as_ref()
            .map_or(0, |r| r.batch.num_rows());
        if let Some(r) = &batch.output.scores {
            let x = columns::primitive::<Int64Type>(&r.batch, "X")?.value(0);
            self.seen.lock().expect("lock").open.push(x);
        }
        Ok(std::future::ready(Ok(crate::sinks::Delivered {
            scores: scores as u64,
            ..Default::default()
        })))
    }

    fn transactional(&self) -> bool {
        true
    }

    async fn commit(&mut self, positions: &crate::state::Positions) -> Result<()> {
        let mut seen = self.seen.lock().expect("lock");
        if seen.committed.len() == self.fail_at {
            seen.open.clear();
            seen.aborted += 1;
            return Err(PipelineError::Transaction {
                op: "committing",
                source: "the test sink refuses this commit".into(),
                aborted: true,
            });
        }
        let at = positions["numbers"][&0];
        let batches = std::mem::take(&mut seen.open);
        seen.committed.push((at, batches));
        Ok(())
    }
}

/// A job that accepts every row (but [`Picky`]'s first of batch 1) and scores by echoing.
fn echo_job() -> Job {
    Job {
        kind: "test",
        model: "echo".into(),
        members: Vec::new(),
        inputs: Inputs {
            events: Arc::new(arrow::datatypes::Schema::empty()),
            side: None,
            declared: Vec::new(),
        },
        features: Box::new(Picky {
            bad_input: usize::MAX,
            bug: usize::MAX,
        }),
        scoring: Box::new(Echo),
    }
}

fn run_transactional(
    batches: usize,
    every: std::time::Duration,
    fail_at: usize,
) -> (Result<Summary>, Transactions) {
    let source = Offsets(Numbers {
        batches,
        next: 0,
        acks: Arc::default(),
        finished: Arc::default(),
    });
    let job = echo_job();
    let sink = TxnSink {
        seen: Arc::default(),
        fail_at,
    };
    let driver = Driver::new(crate::decoders::json(1), 2).with_commit_interval(every);
    let result = driver.run_blocking(source, job, sink.clone(), Arc::new(Counters::default()));
    let seen = std::mem::take(&mut *sink.seen.lock().expect("lock"));
    (result, seen)
}

#[test]
fn a_transaction_holds_exactly_the_outputs_of_the_input_positions_it_commits() {
    // A commit after every batch: each transaction is one batch and the position after it.
    let (r, seen) = run_transactional(6, std::time::Duration::ZERO, usize::MAX);
    r.expect("the run ends cleanly");
    let expected: Vec<(i64, Vec<i64>)> = (0..6).map(|n| (n + 1, vec![n])).collect();
    assert_eq!(seen.committed, expected);
    // A long interval: the drain commits everything in one transaction at the end.
    let (r, seen) = run_transactional(6, std::time::Duration::from_secs(3600), usize::MAX);
    // Picky refuses the first row of batch 1.
    assert_eq!(r.expect("clean").scores, 6 * ROWS as u64 - 1);
    assert_eq!(seen.committed, vec![(6, (0..6).collect())]);
    assert!(seen.open.is_empty(), "nothing left outside a transaction");
}

#[test]
fn an_aborted_transaction_stops_the_run_before_any_later_output_is_sent() {
    let (r, seen) = run_transactional(8, std::time::Duration::ZERO, 3);
    let e = r.expect_err("an aborted transaction ends the run");
    assert!(
        matches!(e, PipelineError::Transaction { aborted: true, .. }),
        "{e}"
    );
    assert_eq!(seen.aborted, 1);
    let expected: Vec<(i64, Vec<i64>)> = (0..3).map(|n| (n + 1, vec![n])).collect();
    assert_eq!(seen.committed, expected, "the transactions before it stand");
    assert!(
        seen.open.is_empty(),
        "no batch after the aborted one was sent: {:?}",
        seen.open
    );
}

/// [`Offsets`] whose consumer loses its partitions after `revoke_at` batches: like a revoke
/// callback inside the consumer's poll, `next` waits there (up to `within`) for the commit of
/// every batch handed on before it reads on.
#[derive(Debug)]
struct Revoked {
    numbers: Numbers,
    handover: Arc<crate::sources::Handover>,
    revoke_at: usize,
    within: std::time::Duration,
    handed_over: Arc<Mutex<Option<bool>>>,
}

/// [`OffsetAcker`] that counts acknowledgements into the hand-over.
#[derive(Debug)]
struct HandoverAcker {
    offsets: OffsetAcker,
    handover: Arc<crate::sources::Handover>,
}

impl Drop for HandoverAcker {
    fn drop(&mut self) {
        self.handover.close();
    }
}

impl Acker for HandoverAcker {
    type Ack = usize;
    fn ack(&mut self, batch: usize) {
        self.offsets.ack(batch);
        self.handover.ack();
    }
    fn finish(&mut self) -> Result<bool> {
        Ok(true)
    }
    fn positions(&self) -> crate::state::Positions {
        self.offsets.positions()
    }
    fn handover(&self) -> Option<Arc<crate::sources::Handover>> {
        Some(self.handover.clone())
    }
}

impl Source for Revoked {
    type Ack = usize;
    type Acker = HandoverAcker;
    async fn next(&mut self, stop: &mut Stop) -> Result<Option<SourceBatch<usize>>> {
        if self.numbers.next == self.revoke_at {
            let handed_over = self.handover.revoked(self.within);
            *self.handed_over.lock().expect("lock") = Some(handed_over);
        }
        let batch = self.numbers.next(stop).await?;
        if batch.is_some() {
            self.handover.issue();
        }
        Ok(batch)
    }
    fn acker(&self) -> HandoverAcker {
        HandoverAcker {
            offsets: OffsetAcker::default(),
            handover: self.handover.clone(),
        }
    }
    fn names(&self) -> (&str, &str) {
        self.numbers.names()
    }
}

fn run_revoked(within: std::time::Duration) -> (Result<Summary>, Transactions, Option<bool>) {
    let handed_over = Arc::new(Mutex::new(None));
    let source = Revoked {
        numbers: Numbers {
            batches: 8,
            next: 0,
            acks: Arc::default(),
            finished: Arc::default(),
        },
        handover: Arc::default(),
        revoke_at: 3,
        within,
        handed_over: handed_over.clone(),
    };
    let job = echo_job();
    let sink = TxnSink {
        seen: Arc::default(),
        fail_at: usize::MAX,
    };
    // No commit falls due by time: only the revoke and the drain commit.
    let driver = Driver::new(crate::decoders::json(1), 2)
        .with_commit_interval(std::time::Duration::from_secs(3600));
    let result = driver.run_blocking(source, job, sink.clone(), Arc::new(Counters::default()));
    let seen = std::mem::take(&mut *sink.seen.lock().expect("lock"));
    let handed_over = *handed_over.lock().expect("lock");
    (result, seen, handed_over)
}

#[test]
fn a_revoke_gets_a_commit_of_every_batch_handed_on_before_the_partitions_go() {
    let (r, seen, handed_over) = run_revoked(std::time::Duration::from_secs(30));
    r.expect("the run ends cleanly");
    assert_eq!(handed_over, Some(true), "the revoke's commit came");
    // Batches 0-2 were handed on before the revoke: one transaction holds exactly them and
    // the position after them; the drain commits the rest.
    assert_eq!(
        seen.committed,
        vec![(3, vec![0, 1, 2]), (8, vec![3, 4, 5, 6, 7])]
    );
}

#[test]
fn a_revoke_whose_commit_does_not_come_aborts_the_open_transaction() {
    let (r, seen, handed_over) = run_revoked(std::time::Duration::ZERO);
    assert_eq!(handed_over, Some(false));
    let e = r.expect_err("the tainted transaction is aborted");
    assert!(
        matches!(e, PipelineError::Transaction { aborted: true, .. }),
        "{e}"
    );
    assert!(
        seen.committed.is_empty(),
        "nothing of the partitions given up was committed: {:?}",
        seen.committed
    );
}
