//! The `riskpipe` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};
use riskpipe_pipeline::backtest::{self, Outcome};
use riskpipe_pipeline::demo::DemoOptions;
use riskpipe_pipeline::driver::Counters;
use riskpipe_pipeline::observe::{self, Health};
use riskpipe_pipeline::reload::Reloader;
use riskpipe_pipeline::sources::kafka_range::Bound;
use riskpipe_pipeline::{PipelineConfig, PipelineError, bench, demo, export, jobs, live};

/// Streaming risk scoring: Arrow feature operators and ONNX Runtime models, live and in replay.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replay a history file through features and model, write scores and a report (a fraud
    /// pipeline: ROC/PR report; a market pipeline: VaR backtest with the RiskMetrics baseline).
    Backtest {
        /// Pipeline config (TOML); default: the shipped handbook fraud pipeline.
        #[arg(long)]
        config: Option<PathBuf>,
        /// History: Parquet or CSV (default: the handbook transactions, or a market config's
        /// backtest.input).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Market pipelines: the instrument whose VaR is evaluated (default: the first).
        #[arg(long)]
        instrument: Option<String>,
        /// Fraud pipelines: the drift reference to compare each day with (a
        /// drift_reference.json an earlier backtest wrote); default: the split's training days.
        #[arg(long)]
        drift_reference: Option<PathBuf>,
        /// Fraud pipelines with `[decisions]`: a rules file (TOML: outcomes and `[[rules]]`) whose
        /// decisions of the same events are compared with the config's, in rules.json.
        #[arg(long)]
        rules_candidate: Option<PathBuf>,
        /// Directory for scores.parquet, report.json and curves.png / var.png.
        #[arg(long, default_value = "out/backtest")]
        output: PathBuf,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Training-set export: every configured feature over a history, by the operators that
    /// score live; a fraud job adds LABEL (1 or 0) and LABEL_KNOWN_AT (event time + label_delay).
    Features {
        /// Pipeline config (TOML); default: the shipped handbook fraud pipeline.
        #[arg(long)]
        config: Option<PathBuf>,
        /// History: Parquet or CSV (default as for backtest).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Output Parquet file.
        #[arg(long)]
        output: PathBuf,
    },
    /// Measure a full replay against scoring the same rows alone (median of --runs); with
    /// --rules, the replay with those decision rules against it without any, interleaved.
    Bench {
        /// Pipeline config (TOML); default: the shipped handbook fraud pipeline.
        #[arg(long)]
        config: Option<PathBuf>,
        /// History: Parquet or CSV.
        #[arg(long, default_value = default_history())]
        input: PathBuf,
        /// Repetitions.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Fraud pipelines: a rules file (TOML: outcomes, `[[rules]]`, `[[lists]]`); each run
        /// replays the history without `[decisions]` and with these rules, in alternating order.
        #[arg(long)]
        rules: Option<PathBuf>,
    },
    /// The main job: consume transactions and labels from Kafka, publish scores, alerts and
    /// dead letters (at-least-once); stops cleanly on SIGTERM / SIGINT.
    Run {
        /// Pipeline config (TOML) with a `[kafka]` section.
        #[arg(long)]
        config: PathBuf,
        /// Serve /metrics, /health and /ready here (overrides observability.listen).
        #[arg(long)]
        metrics_addr: Option<String>,
        /// Kafka bootstrap servers (overrides kafka.properties."bootstrap.servers").
        #[arg(long)]
        bootstrap_servers: Option<String>,
        /// Checkpoint the job's state here (overrides state.dir; sets up `[state]` with its
        /// defaults where the config has none).
        #[arg(long)]
        state_dir: Option<String>,
    },
    /// Backtest a Kafka topic range: same pipeline and report as `backtest`.
    Replay {
        /// Pipeline config (TOML) with a `[kafka]` section.
        #[arg(long)]
        config: PathBuf,
        /// First offset (every partition); default: the earliest retained.
        #[arg(long, conflicts_with = "from_time")]
        from_offset: Option<i64>,
        /// End offset, exclusive (every partition); default: the end at start.
        #[arg(long, conflicts_with = "to_time")]
        to_offset: Option<i64>,
        /// First message time, RFC 3339 (via the broker's offsets-for-times).
        #[arg(long)]
        from_time: Option<String>,
        /// End message time, RFC 3339, exclusive.
        #[arg(long)]
        to_time: Option<String>,
        /// Directory for scores.parquet, report.json and curves.png.
        #[arg(long, default_value = "out/replay")]
        output: PathBuf,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// The live pipeline end to end on an in-process Kafka (librdkafka mock cluster): publishes
    /// card transactions and labels, scores them live, shows throughput / latency / alerts.
    Demo {
        /// Pipeline config (TOML); default: the shipped handbook fraud pipeline.
        #[arg(long)]
        config: Option<PathBuf>,
        /// History to publish from (Parquet or CSV, e.g. the handbook's transactions.parquet);
        /// default: a simulated handbook-shaped history (`riskpipe simulate`).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Seed of the simulated history.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Transactions to publish.
        #[arg(long, default_value_t = 100_000)]
        transactions: usize,
        /// Transactions to skip from the start of the history; the job's horizon before the
        /// first published one is replayed into the state first. Default: the first
        /// transaction with the whole horizon before it.
        #[arg(long)]
        skip: Option<usize>,
        /// Transactions per second (0 = as fast as possible).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Partitions of the transactions topic.
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// Serve /metrics, /health and /ready here while the demo runs.
        #[arg(long)]
        metrics_addr: Option<String>,
        /// No live status line.
        #[arg(long)]
        quiet: bool,
        /// Payload format: json, or avro (schema-registry wire format, with an in-process
        /// schema registry beside the mock cluster).
        #[arg(long, default_value = "json", value_parser = ["json", "avro"])]
        format: String,
    },
    /// Write a simulated card-payment history shaped like the handbook's (its columns,
    /// 5,000 customers, 10,000 terminals, three fraud scenarios), the same for a seed on every
    /// run.
    Simulate {
        /// Parquet file to write.
        #[arg(long)]
        output: PathBuf,
        /// Days of payments from 2018-04-01.
        #[arg(long, default_value_t = 183)]
        days: u32,
        /// Seed of every draw.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Durable state: what the checkpoints hold.
    State {
        #[command(subcommand)]
        action: StateCommand,
    },
    /// Check a config and its model without touching any data; lists every problem.
    Validate {
        /// Pipeline config (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Write the JSON Schema and Avro schema of the records a config publishes (scores and
    /// alerts, shaped by its declaration), for the tools that read them.
    Schemas {
        /// Pipeline config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Directory written: `<record>.schema.json` and `<record>.avsc` per record.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// Print every complete checkpoint: offsets per input partition, tables, rows, bytes, and
    /// the keys of the newest.
    Inspect {
        /// The state directory (`state.dir`) or object-store URL.
        #[arg(long)]
        dir: String,
    },
}

fn default_history() -> &'static str {
    "../shared/data/handbook/transactions.parquet"
}

fn simulation(seed: u64, days: u32) -> riskpipe_pipeline::demo::simulated::Simulation {
    riskpipe_pipeline::demo::simulated::Simulation {
        seed,
        days,
        ..Default::default()
    }
}

fn load_config(path: Option<&Path>) -> Result<PipelineConfig, PipelineError> {
    match path {
        Some(p) => PipelineConfig::load(p),
        None => PipelineConfig::handbook(),
    }
}

/// The history a backtest or export reads: `--input`, else a market job's `backtest.input`,
/// else the handbook transactions.
fn input_of(input: Option<PathBuf>, cfg: &PipelineConfig) -> PathBuf {
    input
        .or_else(|| cfg.default_input())
        .unwrap_or_else(|| default_history().into())
}

fn runtime() -> Result<tokio::runtime::Runtime, PipelineError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(PipelineError::runtime("starting the async runtime"))
}

/// Resolves on SIGTERM or SIGINT.
/// SIGHUP asks for a model reload (unix; elsewhere there is the admin call).
async fn reload_on_hangup(reloader: Arc<Reloader>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the model");
                    reloader.request();
                }
            }
            Err(e) => tracing::warn!("no SIGHUP handler, reload by the admin call: {e}"),
        }
    }
    #[cfg(not(unix))]
    let _ = reloader;
}

async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn parse_time(s: &str) -> Result<i64, PipelineError> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| PipelineError::Config(vec![format!("{s:?} is not an RFC 3339 time: {e}")]))
}

fn print_outcome(outcome: &Outcome, source: &str) {
    println!(
        "replayed {} {} {source}in {:.2} s ({:.0} events/s)",
        outcome.replayed,
        outcome.report.events(),
        outcome.replay_time.as_secs_f64(),
        outcome.replayed as f64 / outcome.replay_time.as_secs_f64()
    );
    let (rejected, reasons) = &outcome.rejected;
    if *rejected > 0 {
        println!(
            "rejected {rejected} {} (not scored):",
            outcome.report.events()
        );
        for r in reasons {
            println!("  {r}");
        }
    }
    println!();
    print!("{}", outcome.report.table());
    for f in &outcome.files {
        println!("wrote {}", f.display());
    }
}

fn run(cli: Cli) -> Result<(), PipelineError> {
    match cli.command {
        Command::Run {
            config,
            metrics_addr,
            bootstrap_servers,
            state_dir,
        } => {
            let mut cfg = PipelineConfig::load(&config)?;
            if let Some(dir) = state_dir {
                cfg.set_state_dir(dir)?;
            }
            if let (Some(servers), Some(kafka)) = (bootstrap_servers, cfg.kafka.as_mut()) {
                kafka.properties.insert("bootstrap.servers".into(), servers);
            }
            if let Some(addr) = metrics_addr {
                cfg.observability.listen = Some(addr);
            }
            let listen = cfg.observability.listen.clone();
            let rt = runtime()?;
            let summary = rt.block_on(async {
                let health = Arc::new(Health::default());
                let reloader = Reloader::new(&cfg);
                if let Some(addr) = listen {
                    let listener = tokio::net::TcpListener::bind(&addr)
                        .await
                        .map_err(PipelineError::runtime("binding the metrics endpoint"))?;
                    let local = listener
                        .local_addr()
                        .map_err(PipelineError::runtime("binding the metrics endpoint"))?;
                    tracing::info!("metrics and health on http://{local}");
                    let handle = observe::install()?;
                    let admin = cfg.observability.admin.then(|| reloader.clone());
                    tokio::spawn(observe::serve_with_admin(
                        listener,
                        handle,
                        health.clone(),
                        admin,
                    ));
                }
                tokio::spawn(reload_on_hangup(reloader.clone()));
                live::run_reloading(
                    &cfg,
                    health,
                    Arc::new(Counters::default()),
                    termination(),
                    Some(reloader),
                )
                .await
            })?;
            println!(
                "stopped: {} events, {} side events (labels) consumed; {} scores, {} alerts, {} dead letters published",
                summary.events, summary.side, summary.scores, summary.alerts, summary.dead_letters
            );
        }
        Command::Replay {
            config,
            from_offset,
            to_offset,
            from_time,
            to_time,
            output,
            quiet,
        } => {
            let cfg = PipelineConfig::load(&config)?;
            cfg.validate()?;
            let bound =
                |offset: Option<i64>, time: Option<String>| -> Result<Bound, PipelineError> {
                    Ok(match (offset, time) {
                        (Some(o), _) => Bound::Offset(o),
                        (None, Some(t)) => Bound::TimeMs(parse_time(&t)?),
                        (None, None) => Bound::Edge,
                    })
                };
            let (from, to) = (bound(from_offset, from_time)?, bound(to_offset, to_time)?);
            let started = Instant::now();
            let kafka = cfg.kafka.as_ref().ok_or_else(|| {
                PipelineError::Config(vec!["no [kafka] section: replay reads from Kafka".into()])
            })?;
            let decoder = kafka.decoder(cfg.streams(), &cfg.job.kind().inputs())?;
            let (history, rejected) = backtest::kafka_history(&cfg, decoder.as_ref(), from, to)?;
            if !rejected.is_empty() {
                eprintln!(
                    "skipped {} undecodable event messages (see the log)",
                    rejected.len()
                );
            }
            let opts = backtest::Options {
                show_progress: !quiet,
                instrument: None,
                drift_reference: None,
                rules_candidate: None,
            };
            let outcome = backtest::run(&cfg, Arc::new(history), started, &output, &opts)?;
            print_outcome(&outcome, "from Kafka ");
        }
        Command::Demo {
            config,
            input,
            seed,
            transactions,
            skip,
            rate,
            partitions,
            metrics_addr,
            quiet,
            format,
        } => {
            let mut cfg = load_config(config.as_deref())?;
            cfg.validate()?;
            let history = match &input {
                Some(input) => {
                    if !quiet {
                        eprintln!("loading {} ...", input.display());
                    }
                    backtest::load(&cfg, input)?
                }
                None => {
                    if !quiet {
                        eprintln!(
                            "simulating a handbook-shaped history (seed {seed}; --input FILE for your own) ..."
                        );
                    }
                    let fraud = riskpipe_pipeline::jobs::fraud::FraudConfig::of(&cfg)?;
                    simulation(seed, 183).history(fraud)?
                }
            };
            let rt = runtime()?;
            let metrics = match metrics_addr {
                Some(a) => Some(
                    std::net::TcpListener::bind(&a)
                        .map_err(PipelineError::runtime("binding the metrics endpoint"))?,
                ),
                None => None,
            };
            let opts = DemoOptions {
                transactions,
                skip,
                rate,
                partitions,
                show_progress: !quiet,
                metrics,
                format: if format == "avro" {
                    riskpipe_pipeline::decoders::Format::Avro
                } else {
                    riskpipe_pipeline::decoders::Format::Json
                },
                input: input.ok_or(seed),
            };
            let summary = demo::run_demo(&rt, &mut cfg, &history, opts)?;
            print!("{summary}");
            if summary.scored < summary.pipeline.events {
                return Err(PipelineError::BadInput(format!(
                    "only {} of {} transactions were scored",
                    summary.scored, summary.pipeline.events
                )));
            }
        }
        Command::Simulate { output, days, seed } => {
            let batch = simulation(seed, days).transactions()?;
            riskpipe_pipeline::sinks::parquet::write(&output, std::slice::from_ref(&batch), None)?;
            eprintln!(
                "{} transactions over {days} days written to {}",
                batch.num_rows(),
                output.display()
            );
        }
        Command::Backtest {
            config,
            input,
            instrument,
            drift_reference,
            rules_candidate,
            output,
            quiet,
        } => {
            let cfg = load_config(config.as_deref())?;
            cfg.validate()?;
            let started = Instant::now();
            let history = backtest::load(&cfg, &input_of(input, &cfg))?;
            let opts = backtest::Options {
                show_progress: !quiet,
                instrument,
                drift_reference,
                rules_candidate,
            };
            let outcome = backtest::run(&cfg, Arc::new(history), started, &output, &opts)?;
            print_outcome(&outcome, "");
        }
        Command::Features {
            config,
            input,
            output,
        } => {
            let cfg = load_config(config.as_deref())?;
            let rows = export::features(&cfg, &input_of(input, &cfg), &output)?;
            println!(
                "wrote {rows} rows with every feature to {}",
                output.display()
            );
        }
        Command::Bench {
            config,
            input,
            runs,
            rules,
        } => {
            let cfg = load_config(config.as_deref())?;
            cfg.validate()?;
            match rules {
                Some(rules) => println!(
                    "{}",
                    bench::with_and_without_rules(&cfg, &input, &rules, runs)?
                ),
                None => println!("{}", bench::replay_vs_scoring(&cfg, &input, runs)?),
            }
        }
        Command::State {
            action: StateCommand::Inspect { dir },
        } => {
            if !dir.contains("://") && !Path::new(&dir).is_dir() {
                return Err(PipelineError::Config(vec![format!(
                    "--dir {dir}: no such directory"
                )]));
            }
            let cfg = riskpipe_pipeline::state::StateConfig {
                dir,
                interval: std::time::Duration::from_secs(60),
                retain: usize::MAX,
                rebuild: Default::default(),
                ephemeral: false,
            };
            let store = riskpipe_pipeline::state::CheckpointStore::open(&cfg)?;
            let text = runtime()?.block_on(riskpipe_pipeline::state::inspect(&store))?;
            print!("{text}");
        }
        Command::Schemas { config, out } => {
            let cfg = PipelineConfig::load(&config)?;
            cfg.validate()?;
            std::fs::create_dir_all(&out).map_err(PipelineError::io("creating", &out))?;
            for record in cfg.job.kind().record_schemas(&cfg)? {
                for (file, text) in [
                    (format!("{}.schema.json", record.file), &record.json_schema),
                    (format!("{}.avsc", record.file), &record.avro_schema),
                ] {
                    let path = out.join(file);
                    std::fs::write(&path, format!("{text}\n"))
                        .map_err(PipelineError::io("writing", &path))?;
                    println!(
                        "{} ({} on topic {:?})",
                        path.display(),
                        record.name,
                        record.topic
                    );
                }
            }
        }
        Command::Validate { config } => {
            let cfg = PipelineConfig::load(&config)?;
            let mut problems = cfg.problems();
            if problems.is_empty() {
                // Load the model and check its inputs against what the job computes: the same
                // check `run` and `backtest` make.
                if let Err(e) = jobs::build(&cfg) {
                    problems.extend(e.problems());
                }
            }
            if !problems.is_empty() {
                return Err(PipelineError::Config(problems));
            }
            println!("{}: ok", config.display());
            // What `run` will do with the state (it cannot see the checkpoints from here).
            match cfg.state_at_start() {
                Ok(start) => println!("state at start: {start}"),
                Err(refusal) => println!("state at start: `riskpipe run` refuses: {refusal}"),
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if cli.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        // Colours only for a person at a terminal: none in a file or a pipe, none under
        // NO_COLOR (set and not empty, as no-color.org says).
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && !no_color;
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .init();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
