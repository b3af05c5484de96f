//! The `riskpipe` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use riskpipe_pipeline::{PipelineConfig, PipelineError};

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
    /// Replay a history file through features and model, write scores and a report.
    Backtest {
        /// Pipeline config (TOML); default: the shipped handbook fraud pipeline.
        #[arg(long)]
        config: Option<PathBuf>,
        /// History: Parquet or CSV with transactions and their fraud labels.
        #[arg(long, default_value = default_history())]
        input: PathBuf,
        /// Directory for scores.parquet, report.json and curves.png.
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
        /// History: Parquet or CSV.
        #[arg(long, default_value = default_history())]
        input: PathBuf,
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

fn run(cli: Cli) -> Result<(), PipelineError> {
    match cli.command {
        Command::Backtest {
            config,
            input,
            output,
            quiet,
        } => {
            let cfg = load_config(config.as_deref())?;
            let outcome = riskpipe_pipeline::backtest(&cfg, &input, &output, !quiet)?;
            println!(
                "replayed {} transactions in {:.1} s ({:.0} events/s)\n",
                outcome.replayed,
                outcome.replay_time.as_secs_f64(),
                outcome.replayed as f64 / outcome.replay_time.as_secs_f64()
            );
            print!("{}", outcome.report.table());
            for f in &outcome.files {
                println!("wrote {}", f.display());
            }
        }
        Command::Features {
            config,
            input,
            output,
        } => {
            let cfg = load_config(config.as_deref())?;
            // The export needs no model: check only the features.
            let problems = cfg.features.validate(
                &riskpipe_schemas::transaction_schema(),
                Some(&riskpipe_schemas::fraud_label_schema()),
            );
            if !problems.is_empty() {
                return Err(PipelineError::Config(problems));
            }
            let rows = riskpipe_pipeline::export_features(&cfg.features, &input, &output)?;
            println!(
                "wrote {rows} rows with features {:?} to {}",
                cfg.features.feature_names()?,
                output.display()
            );
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
