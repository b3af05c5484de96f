//! `riskpipe run`: the live pipeline — the Kafka source, the configured job and the Kafka sink
//! on the driver — until the shutdown future resolves (then it drains, commits and returns) or
//! a stage fails for good.
//!
//! With `[state]`, the start restores the job's state first: the newest usable checkpoint
//! (of this job and these definitions; an unreadable one falls back to the one before), then
//! the gap between its offsets and the group's committed offsets replayed through the feature
//! stage (and the score stage, when it keeps state), nothing published, then the consumer joins at the committed offsets.
//! The state is then what an uninterrupted run would hold there, so the uncommitted tail that
//! a crash leaves is scored again with the same bits.
//!
//! In exactly-once mode the transactional producer is initialised first (which aborts what a
//! previous run left open), and an aborted transaction restarts the run in this process, from
//! the restore on: the input goes back to the last committed transaction and the state to
//! match, so what is published again is what the aborted transaction held, bit for bit. In the
//! repartitioned topology each stage is transactional under an id of its own, and a rebalance
//! hands partitions over through a commit (see `sources::Handover`).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;

use crate::config::PipelineConfig;
use crate::driver::{Checkpoints, Counters, Driver, Summary};
use crate::events;
use crate::jobs::partitioned::{Installs, MakeStage};
use crate::jobs::{self, Job, Side, StateSnapshot};
use crate::kafka::RepartitionConfig;
use crate::observe::Health;
use crate::reload::{ModelSlot, Reloader};
use crate::sinks::kafka::KafkaSink;
use crate::sources::kafka::Follow;
use crate::sources::kafka::KafkaSource;
use crate::sources::kafka_assign::PartitionRestore;
use crate::sources::{kafka_range, kafka_restore};
use crate::state::{CheckpointStore, Positions, Rebuild, StateConfig};
use crate::{PipelineError, Result};

/// Checks the config, builds the job (loading its model), joins the consumer group and runs;
/// in exactly-once mode, again from the last committed transaction after one was aborted.
pub async fn run(
    cfg: &PipelineConfig,
    health: Arc<Health>,
    counters: Arc<Counters>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<Summary> {
    run_reloading(cfg, health, counters, shutdown, None).await
}

/// [`run`], with the score stage taking the models `reloader` checks (its file watch runs
/// until shutdown; SIGHUP and `POST /admin/reload` call [`Reloader::request`]).
pub async fn run_reloading(
    cfg: &PipelineConfig,
    health: Arc<Health>,
    counters: Arc<Counters>,
    shutdown: impl Future<Output = ()> + Send,
    reloader: Option<Arc<Reloader>>,
) -> Result<Summary> {
    cfg.validate()?;
    // Never empty state silently: checkpoints, or the user's explicit choice.
    let start = cfg
        .state_at_start()
        .map_err(|e| PipelineError::Config(vec![e]))?;
    tracing::info!("state: {start}");
    if cfg.state.is_none() && cfg.ephemeral_state {
        events::state_origin("empty");
    }
    let shutdown = shutdown.shared();
    let slot = reloader.as_ref().map(|r| r.slot());
    // Beside the runs, never ending first: the runs drain on shutdown, the reloader just stops.
    let reloading = async {
        if let Some(r) = &reloader {
            r.clone().run(shutdown.clone()).await;
        }
        std::future::pending::<()>().await;
    };
    let running = async {
        let mut restarts: u32 = 0;
        loop {
            let started = Instant::now();
            match run_once(cfg, &health, &counters, shutdown.clone(), slot.clone()).await {
                Err(e @ PipelineError::Transaction { aborted: true, .. }) => {
                    // Back off when aborts follow each other (a broker refusing every commit).
                    if started.elapsed() > Duration::from_secs(60) {
                        restarts = 0;
                    }
                    restarts += 1;
                    let wait = Duration::from_millis(500 * u64::from(restarts.min(20)));
                    health.set_ready(false);
                    tracing::warn!(
                        restarts,
                        "{e}; restarting from the last committed transaction in {wait:?}"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.clone() => break Ok(counters.summary()),
                    }
                }
                other => break other,
            }
        }
    };
    let result = tokio::select! {
        result = running => result,
        () = reloading => unreachable!("the reloader never ends first"),
    };
    health.set_stopped();
    result
}

/// One run: restore, join, score until shutdown or an error.
async fn run_once(
    cfg: &PipelineConfig,
    health: &Arc<Health>,
    counters: &Arc<Counters>,
    shutdown: impl Future<Output = ()> + Send + Clone,
    models: Option<Arc<ModelSlot>>,
) -> Result<Summary> {
    let kafka = cfg.kafka.as_ref().ok_or_else(|| {
        PipelineError::Config(vec![
            "no [kafka] section: the live pipeline needs one".into(),
        ])
    })?;
    match &kafka.repartition {
        Some(r) => run_repartitioned(cfg, r, health, counters, shutdown, models).await,
        None => run_stage(cfg, Stage::Whole, health, counters, shutdown, models, None).await,
    }
}

/// Which job a run drives: the whole job, or one side of the repartitioned topology (the
/// events topic has `origins` partitions).
#[derive(Debug, Clone)]
enum Stage {
    Whole,
    Split {
        by: String,
        origins: i32,
        side: Side,
    },
}

impl Stage {
    /// A new stage of one partition's features, for a stage that keeps them per partition.
    fn partition_maker(&self, cfg: &PipelineConfig) -> Result<Option<MakeStage>> {
        Ok(match self {
            Stage::Whole => None,
            Stage::Split { by, origins, side } => {
                Some(cfg.job.kind().split_partition_stage(by, *origins, *side)?)
            }
        })
    }

    fn build(&self, cfg: &PipelineConfig) -> Result<Job> {
        match self {
            Stage::Whole => jobs::build(cfg),
            Stage::Split { by, origins, side } => {
                cfg.job.kind().split_stage(cfg, by, *origins, *side)
            }
        }
    }
}

/// The scale-out topology in this process: the first stage reads the transactions and
/// forwards rows to the repartition topic (created here if missing, with the transactions
/// topic's partition count), the second reads them with the labels and scores; each with a
/// consumer group, offsets and checkpoints (`state.dir/stage-1`, `stage-2`) of its own. The
/// second stage's summary is the run's.
async fn run_repartitioned(
    cfg: &PipelineConfig,
    repartition: &RepartitionConfig,
    health: &Arc<Health>,
    counters: &Arc<Counters>,
    shutdown: impl Future<Output = ()> + Send + Clone,
    models: Option<Arc<ModelSlot>>,
) -> Result<Summary> {
    let kafka = cfg.kafka.clone().ok_or_else(|| {
        PipelineError::Config(vec![
            "no [kafka] section: the live pipeline needs one".into(),
        ])
    })?;
    let topic = repartition.topic(&kafka.group_id);
    let (streams, made) = (cfg.streams(), topic.clone());
    let replication = repartition.replication_factor;
    let origins = tokio::task::spawn_blocking(move || {
        kafka_range::ensure_copartitioned(
            &kafka,
            kafka.events_topic(streams),
            &made,
            replication,
            kafka.side_topic(streams),
        )
    })
    .await
    .map_err(|e| PipelineError::Bug(format!("topic task: {e}")))??;
    let (first, second) = stage_configs(cfg, &topic);
    let by = repartition.by.clone();
    let forwarding = Arc::new(Counters::default());
    // Each stage's consumer reports its own assignment; the process is ready when both hold
    // theirs.
    let parts = (Arc::new(Health::part()), Arc::new(Health::part()));
    let stages = async {
        tokio::try_join!(
            run_stage(
                &first,
                Stage::Split {
                    by: by.clone(),
                    origins,
                    side: Side::Before,
                },
                &parts.0,
                &forwarding,
                shutdown.clone(),
                None,
                Some(topic.clone()),
            ),
            run_stage(
                &second,
                Stage::Split {
                    by,
                    origins,
                    side: Side::After,
                },
                &parts.1,
                counters,
                shutdown,
                models,
                None,
            ),
        )
    };
    let mut stages = std::pin::pin!(stages);
    let (before, after) = loop {
        tokio::select! {
            done = &mut stages => break done?,
            () = tokio::time::sleep(Duration::from_millis(200)) => health.set_ready(
                parts.0.ready.load(std::sync::atomic::Ordering::Relaxed)
                    && parts.1.ready.load(std::sync::atomic::Ordering::Relaxed),
            ),
        }
    };
    tracing::info!(
        transactions = before.events,
        "first stage: {} transactions read, forwarded to {topic}",
        before.events
    );
    Ok(after)
}

/// The two stages' configs: the first reads no labels; the second reads the repartition topic
/// (riskpipe's JSON, whatever `format` says) in a consumer group named after it; each keeps its
/// checkpoints in a directory of its own.
fn stage_configs(cfg: &PipelineConfig, topic: &str) -> (PipelineConfig, PipelineConfig) {
    let stage = |name: &str, edit: &dyn Fn(&mut crate::kafka::KafkaConfig)| {
        let mut c = cfg.clone();
        if let Some(k) = c.kafka.as_mut() {
            k.repartition = None;
            // Each stage's producer is transactional on its own (one id would fence the other).
            if let Some(id) = k.transactional_id.as_mut() {
                *id = format!("{id}-{name}");
            }
            edit(k);
        }
        if let Some(s) = c.state.as_mut() {
            s.dir = format!("{}/{name}", s.dir.trim_end_matches('/'));
        }
        c
    };
    let first = stage("stage-1", &|k| k.topics.labels = Some(String::new()));
    let second = stage("stage-2", &|k| {
        k.topics.events = Some(topic.to_string());
        k.formats.events = Some(crate::decoders::Format::Json);
        k.group_id = topic.to_string();
    });
    (first, second)
}

/// One driver over one job: restore (with `[state]`), join, score until shutdown or an error.
async fn run_stage(
    cfg: &PipelineConfig,
    stage: Stage,
    health: &Arc<Health>,
    counters: &Arc<Counters>,
    shutdown: impl Future<Output = ()> + Send,
    models: Option<Arc<ModelSlot>>,
    forward_to: Option<String>,
) -> Result<Summary> {
    let kafka = cfg.kafka.as_ref().ok_or_else(|| {
        PipelineError::Config(vec![
            "no [kafka] section: the live pipeline needs one".into(),
        ])
    })?;
    // Before the committed offsets are looked up (see the module documentation).
    let transactional = if kafka.exactly_once() {
        Some(KafkaSink::transactional(kafka).await?)
    } else {
        None
    };
    let mut job = stage.build(cfg)?;
    let mut follow = None;
    let (job, checkpoints, start) = match (&cfg.state, stage.partition_maker(cfg)?) {
        // State per partition, restored as partitions are assigned (scale-out).
        (Some(state), Some(make)) => {
            let store = CheckpointStore::open(state)?;
            let installs = Arc::new(Installs::default());
            if !job.features.adopt(installs.clone()) {
                return Err(PipelineError::Bug(
                    "a repartitioned stage without state per partition".into(),
                ));
            }
            let kind = cfg.job.kind();
            let restore = PartitionRestore::new(
                kafka,
                cfg.streams(),
                job.inputs.clone(),
                kafka.decoder(cfg.streams(), &job.inputs)?,
                store.clone(),
                make,
                kind.name(),
                kind.batch_rows(),
                rebuild_horizon(cfg, state),
            )?;
            follow = Some(Follow { restore, installs });
            let checkpoints = Checkpoints {
                store,
                interval: state.interval,
                job: kind.name(),
                next_id: 0,
                per_partition: true,
            };
            (job, Some(checkpoints), Positions::new())
        }
        (Some(state), None) => {
            let (cfg, state) = (cfg.clone(), state.clone());
            let (job, checkpoints, start) =
                tokio::task::spawn_blocking(move || restore(&cfg, &state, job, &stage))
                    .await
                    .map_err(|e| PipelineError::Bug(format!("restore task: {e}")))??;
            (job, Some(checkpoints), start)
        }
        (None, _) => (job, None, Positions::new()),
    };
    let mut job = job;
    if let Some(slot) = models
        && !job.scoring.follow_models(slot)
    {
        tracing::warn!("the {} job does not reload its model", job.kind);
    }
    let source = KafkaSource::new(kafka, cfg.streams(), health.clone())?.starting_from(start);
    let source = match follow {
        Some(f) => source.following(f),
        None => source,
    };
    let sink = match transactional {
        Some(sink) => sink.committing_for(source.membership()),
        None => KafkaSink::new(kafka)?,
    };
    let sink = sink.redacting(
        redactor(kafka, cfg, &job.inputs),
        pseudonymized(&job.inputs),
    );
    let sink = match &forward_to {
        Some(topic) => sink.forwarding_to(topic),
        None => sink,
    };
    let driver = Driver::new(
        kafka.decoder(cfg.streams(), &job.inputs)?,
        kafka.in_flight_batches,
    )
    .with_checkpoints(checkpoints)
    .with_commit_interval(kafka.commit_interval);
    driver
        .run(source, job, sink, counters.clone(), shutdown)
        .await
}

/// How far back a partition without a checkpoint is rebuilt (`state.rebuild`): `None` for the
/// earliest offsets.
fn rebuild_horizon(cfg: &PipelineConfig, state: &StateConfig) -> Option<jobs::Horizon> {
    match state.rebuild {
        Rebuild::Horizon => cfg.job.kind().rebuild_horizon(cfg),
        Rebuild::Earliest => None,
    }
}

/// Restores `job`'s state (blocking; on a thread of the runtime's blocking pool):
/// the newest usable checkpoint, then the gap up to the committed offsets, silently. Returns the
/// job, the checkpointing to go on with and the positions the state now reflects.
fn restore(
    cfg: &PipelineConfig,
    state: &StateConfig,
    mut job: Job,
    stage: &Stage,
) -> Result<(Job, Checkpoints, Positions)> {
    let kafka = cfg.kafka.as_ref().ok_or_else(|| {
        PipelineError::Config(vec![
            "no [kafka] section: the live pipeline needs one".into(),
        ])
    })?;
    let rt = tokio::runtime::Handle::current();
    let started = Instant::now();
    let kind = cfg.job.kind();
    let store = CheckpointStore::open(state)?;
    let mut restored = Positions::new();
    let mut from = None;
    for m in rt.block_on(store.manifests())? {
        if m.job != kind.name() {
            tracing::warn!(id = m.id, "checkpoint of a {} job: not used", m.job);
            continue;
        }
        let restored_job = rt.block_on(store.read(&m)).and_then(|s| {
            let (features, score) = s.split();
            job.features.restore(features)?;
            match score {
                Some(s) => job.scoring.restore(s),
                // The stage decides whether it can start without its state (the market job's
                // portfolios cannot; the fraud job's baseline and drift counts can).
                None if job.scoring.has_state() => job
                    .scoring
                    .restore(StateSnapshot::default())
                    .map_err(|e| PipelineError::Checkpoint {
                        id: m.id,
                        reason: format!("no state for the score stage: {e}"),
                    }),
                None => Ok(()),
            }
        });
        match restored_job {
            Ok(()) => {
                restored = m.positions;
                from = Some(m.id);
                break;
            }
            Err(e) => {
                tracing::warn!(id = m.id, "checkpoint not used, trying an older one: {e}");
                // A failed restore may have changed part of the state: start from new stages.
                job = stage.build(cfg)?;
            }
        }
    }
    let decoder = kafka.decoder(cfg.streams(), &job.inputs)?;
    let horizon = rebuild_horizon(cfg, state);
    let gap = kafka_restore::gap(
        kafka,
        cfg.streams(),
        &job.inputs,
        decoder.as_ref(),
        &restored,
        horizon.as_ref(),
    )?;
    let scoring: Option<&mut dyn jobs::ScoreStage> = if job.scoring.has_state() {
        Some(job.scoring.as_mut())
    } else {
        None
    };
    let refused = jobs::warm_up(job.features.as_mut(), scoring, gap.input, kind.batch_rows())?;
    let next_id = rt.block_on(store.next_id())?;
    let seconds = started.elapsed().as_secs_f64();
    events::restored(seconds, gap.messages);
    events::state_origin(if from.is_some() {
        "checkpoint"
    } else {
        "rebuilt"
    });
    tracing::info!(
        checkpoint = from,
        replayed = gap.messages,
        refused,
        keys = job.features.state_keys(),
        seconds,
        "state restored from {}",
        store.location()
    );
    let checkpoints = Checkpoints {
        store,
        interval: state.interval,
        job: kind.name(),
        next_id,
        per_partition: false,
    };
    Ok((job, checkpoints, gap.positions))
}

/// What the dead letters of the job's input topics may carry: each declared stream's sensitive
/// fields kept out (a JSON topic's rewritten, an Avro topic's payloads withheld).
fn redactor(
    kafka: &crate::kafka::KafkaConfig,
    cfg: &PipelineConfig,
    inputs: &jobs::Inputs,
) -> crate::sinks::redact::Redactor {
    let formats = kafka.input_formats(cfg.streams());
    let mut redactor = crate::sinks::redact::Redactor::default();
    for declared in &inputs.declared {
        let schema = declared.arrow_schema();
        let stream = if schema == inputs.events {
            formats.first()
        } else if inputs.side.as_ref() == Some(&schema) {
            formats.get(1)
        } else {
            None
        };
        if let Some((topic, format)) = stream {
            redactor = redactor.stream(topic, *format == crate::decoders::Format::Json, declared);
        }
    }
    redactor
}

/// The declared fields published as their pseudonyms.
fn pseudonymized(inputs: &jobs::Inputs) -> Vec<String> {
    inputs
        .declared
        .iter()
        .flat_map(|d| d.fields.iter())
        .filter(|f| f.sensitive == Some(riskpipe_schemas::declared::Sensitive::Pseudonymize))
        .map(|f| f.name.clone())
        .collect()
}
