//! The `riskpipe` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::sync::Arc;

use clap::{Parser, Subcommand};
use riskpipe_pipeline::kafka::demo::DemoOptions;
use riskpipe_pipeline::kafka::live::{Health, LiveCounters};
use riskpipe_pipeline::kafka::replay::Bound;
use riskpipe_pipeline::market::{self, MarketConfig};
use riskpipe_pipeline::{PipelineConfig, PipelineError, kafka};

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
        /// Directory for scores.parquet, report.json and curves.png / var.png.
        #[arg(long, default_value = "out/backtest")]
        output: PathBuf,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Compute every configured feature over a history with DataFusion (training-set export).
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
    /// Measure a full replay against scoring the same rows alone (median of --runs).
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
    },
    /// The main job: consume transactions and labels from Kafka, publish scores, alerts and
    /// dead letters (at-least-once); stops cleanly on SIGTERM / SIGINT.
    Run {
        /// Pipeline config (TOML) with a [kafka] section.
        #[arg(long)]
        config: PathBuf,
        /// Serve /metrics, /health and /ready here (overrides observability.listen).
        #[arg(long)]
        metrics_addr: Option<String>,
    },
    /// Backtest a Kafka topic range: same pipeline and report as `backtest`.
    Replay {
        /// Pipeline config (TOML) with a [kafka] section.
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
    /// handbook transactions and labels, scores them live, shows throughput / latency / alerts.
    Demo {
        /// Pipeline config (TOML); default: the shipped handbook fraud pipeline.
        #[arg(long)]
        config: Option<PathBuf>,
        /// History to publish from.
        #[arg(long, default_value = default_history())]
        input: PathBuf,
        /// Transactions to publish.
        #[arg(long, default_value_t = 100_000)]
        transactions: usize,
        /// Transactions to skip from the start of the history.
        #[arg(long, default_value_t = 0)]
        skip: usize,
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
    },
    /// Check a config and its model without touching any data; lists every problem.
    Validate {
        /// Pipeline config (TOML).
        #[arg(long)]
        config: PathBuf,
    },
}

fn default_history() -> &'static str {
    "../shared/data/handbook/transactions.parquet"
}

fn load_config(path: Option<&Path>) -> Result<PipelineConfig, PipelineError> {
    match path {
        Some(p) => PipelineConfig::load(p),
        None => PipelineConfig::handbook(),
    }
}

#[cfg(feature = "sql")]
fn export_fraud_features(
    cfg: &PipelineConfig,
    input: &Path,
    output: &Path,
) -> Result<(), PipelineError> {
    let rows = riskpipe_pipeline::export_features(&cfg.features, input, output)?;
    println!(
        "wrote {rows} rows with features {:?} to {}",
        cfg.features.feature_names()?,
        output.display()
    );
    Ok(())
}

#[cfg(not(feature = "sql"))]
fn export_fraud_features(
    _cfg: &PipelineConfig,
    _input: &Path,
    _output: &Path,
) -> Result<(), PipelineError> {
    Err(PipelineError::Config(vec![
        "the fraud training-set export runs on DataFusion: build riskpipe with `--features sql` \
         (models/train/run.sh does)"
            .into(),
    ]))
}

/// The market config at `path`, when it is one.
fn market_config(path: Option<&Path>) -> Result<Option<MarketConfig>, PipelineError> {
    match path {
        Some(p) if market::is_market_config(p)? => Ok(Some(MarketConfig::load(p)?)),
        _ => Ok(None),
    }
}

fn market_input(input: Option<PathBuf>, cfg: &MarketConfig) -> Result<PathBuf, PipelineError> {
    input.or_else(|| cfg.backtest.input.clone()).ok_or_else(|| {
        PipelineError::Config(vec![
            "no --input and no backtest.input in the market config".into(),
        ])
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, PipelineError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| PipelineError::External(format!("starting async runtime: {e}")))
}

async fn bind(addr: &str) -> Result<tokio::net::TcpListener, PipelineError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| PipelineError::External(format!("binding metrics endpoint {addr}: {e}")))
}

/// Resolves on SIGTERM or SIGINT.
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

fn print_outcome(outcome: &riskpipe_pipeline::BacktestOutcome, source: &str) {
    println!(
        "replayed {} transactions {source}in {:.1} s ({:.0} events/s)\n",
        outcome.replayed,
        outcome.replay_time.as_secs_f64(),
        outcome.replayed as f64 / outcome.replay_time.as_secs_f64()
    );
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
        } => {
            let market = market_config(Some(&config))?;
            let fraud = match market {
                Some(_) => None,
                None => Some(PipelineConfig::load(&config)?),
            };
            let listen = metrics_addr
                .or_else(|| fraud.as_ref().and_then(|c| c.observability.listen.clone()));
            let rt = runtime()?;
            let summary = rt.block_on(async {
                let health = Arc::new(Health::default());
                if let Some(addr) = listen {
                    let listener = bind(&addr).await?;
                    let local = listener
                        .local_addr()
                        .map_err(|e| PipelineError::External(e.to_string()))?;
                    tracing::info!("metrics and health on http://{local}");
                    let handle = kafka::observe::install()?;
                    tokio::spawn(kafka::observe::serve(listener, handle, health.clone()));
                }
                let counters = Arc::new(LiveCounters::default());
                match (&market, &fraud) {
                    (Some(m), _) => {
                        kafka::live::run_market(m, health, counters, termination()).await
                    }
                    (None, Some(f)) => kafka::live::run(f, health, counters, termination()).await,
                    (None, None) => Err(PipelineError::Bug("no config".into())),
                }
            })?;
            println!(
                "stopped: {} events, {} labels consumed; {} scores, {} alerts, {} dead letters published",
                summary.transactions,
                summary.labels,
                summary.scores,
                summary.alerts,
                summary.dead_letters
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
            let started = std::time::Instant::now();
            let (history, rejected) = kafka::replay::history_from_kafka(&cfg, from, to)?;
            if rejected > 0 {
                eprintln!("skipped {rejected} undecodable transaction messages (see the log)");
            }
            let outcome =
                riskpipe_pipeline::backtest_history(&cfg, &history, started, &output, !quiet)?;
            print_outcome(&outcome, "from Kafka ");
        }
        Command::Demo {
            config,
            input,
            transactions,
            skip,
            rate,
            partitions,
            metrics_addr,
            quiet,
        } => {
            let mut cfg = load_config(config.as_deref())?;
            cfg.validate()?;
            if !quiet {
                eprintln!("loading {} ...", input.display());
            }
            let history = riskpipe_pipeline::load_history(&cfg, &input)?;
            let rt = runtime()?;
            let metrics = match metrics_addr {
                Some(a) => Some(std::net::TcpListener::bind(&a).map_err(|e| {
                    PipelineError::External(format!("binding metrics endpoint {a}: {e}"))
                })?),
                None => None,
            };
            let opts = DemoOptions {
                transactions,
                skip,
                rate,
                partitions,
                show_progress: !quiet,
                metrics,
            };
            let summary = kafka::demo::run_demo(&rt, &mut cfg, &history, opts)?;
            let secs = summary.elapsed.as_secs_f64();
            println!("riskpipe demo (in-process Kafka mock cluster, live pipeline)");
            println!(
                "  transactions published   {:>10}",
                summary.pipeline.transactions
            );
            println!("  fraud labels published   {:>10}", summary.pipeline.labels);
            println!("  scores published         {:>10}", summary.pipeline.scores);
            println!("  distinct scored          {:>10}", summary.scored);
            println!(
                "  dead letters             {:>10}",
                summary.pipeline.dead_letters
            );
            println!(
                "  alerts                   {:>10}  ({} on frauds, precision {:.3})",
                summary.alerts.0,
                summary.alerts.1,
                summary.alerts.1 as f64 / summary.alerts.0.max(1) as f64
            );
            println!("  wall time                {secs:>10.2} s");
            println!(
                "  throughput               {:>10.0} events/s",
                summary.scored as f64 / secs
            );
            println!(
                "  latency produce->ack     p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  (transaction produced -> its score acknowledged)",
                summary.pipeline_latency_ms[0],
                summary.pipeline_latency_ms[1],
                summary.pipeline_latency_ms[2]
            );
            println!(
                "  latency send->consumer   p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  (... -> score read by a downstream consumer)",
                summary.latency_ms[0], summary.latency_ms[1], summary.latency_ms[2]
            );
            if summary.scored < summary.pipeline.transactions {
                return Err(PipelineError::External(format!(
                    "only {} of {} transactions were scored",
                    summary.scored, summary.pipeline.transactions
                )));
            }
        }
        Command::Backtest {
            config,
            input,
            instrument,
            output,
            quiet,
        } => {
            if let Some(cfg) = market_config(config.as_deref())? {
                let input = market_input(input, &cfg)?;
                let started = std::time::Instant::now();
                let outcome = market::backtest(&cfg, &input, &output, instrument.as_deref())?;
                println!(
                    "replayed {} ticks in {:.2} s\n",
                    outcome.scored.iter().map(|b| b.num_rows()).sum::<usize>(),
                    started.elapsed().as_secs_f64()
                );
                print!("{}", outcome.report.table());
                for f in &outcome.files {
                    println!("wrote {}", f.display());
                }
                return Ok(());
            }
            let cfg = load_config(config.as_deref())?;
            let input = input.unwrap_or_else(|| default_history().into());
            let outcome = riskpipe_pipeline::backtest(&cfg, &input, &output, !quiet)?;
            print_outcome(&outcome, "");
        }
        Command::Features {
            config,
            input,
            output,
        } => {
            if let Some(cfg) = market_config(config.as_deref())? {
                let input = market_input(input, &cfg)?;
                let rows = market::export_features(&cfg, &input, &output)?;
                println!(
                    "wrote {rows} ticks with features {:?} to {}",
                    cfg.market.features.names(),
                    output.display()
                );
                return Ok(());
            }
            let cfg = load_config(config.as_deref())?;
            let input = input.unwrap_or_else(|| default_history().into());
            // The export needs no model: check only the features.
            let problems = cfg.features.validate(
                &riskpipe_schemas::transaction_schema(),
                Some(&riskpipe_schemas::fraud_label_schema()),
            );
            if !problems.is_empty() {
                return Err(PipelineError::Config(problems));
            }
            export_fraud_features(&cfg, &input, &output)?;
        }
        Command::Bench {
            config,
            input,
            runs,
        } => {
            let cfg = load_config(config.as_deref())?;
            cfg.validate()?;
            println!(
                "{}",
                riskpipe_pipeline::bench::replay_vs_scoring(&cfg, &input, runs)?
            );
        }
        Command::Validate { config } => {
            if let Some(cfg) = market_config(Some(&config))? {
                let mut problems = cfg.problems();
                if problems.is_empty()
                    && let Err(e) = market::MarketStage::new(&cfg)
                {
                    problems.push(e.to_string());
                }
                if !problems.is_empty() {
                    return Err(PipelineError::Config(problems));
                }
                println!("{}: ok", config.display());
                return Ok(());
            }
            let cfg = PipelineConfig::load(&config)?;
            let mut problems = cfg.problems();
            if problems.is_empty() {
                // Load the model to check its inputs against the configured features.
                match riskpipe_models::Scorer::load(&cfg.model) {
                    Ok(scorer) => {
                        let features = cfg.features.feature_names()?;
                        let schema = riskpipe_schemas::transaction_schema();
                        for f in scorer.features() {
                            if !features.contains(f) && schema.column_with_name(f).is_none() {
                                problems.push(format!("model input {f:?} is neither a configured feature nor a transaction column"));
                            }
                        }
                    }
                    Err(e) => problems.push(e.to_string()),
                }
            }
            if !problems.is_empty() {
                return Err(PipelineError::Config(problems));
            }
            println!("{}: ok", config.display());
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
        tracing_subscriber::fmt()
            .with_env_filter(filter)
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
