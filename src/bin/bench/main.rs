//! `bench`: the fewshot command line. Each subcommand lives in its own file
//! and turns its arguments into library calls; stdout carries tables only,
//! logs go to stderr (`RUST_LOG=debug` for more).

mod data;
mod episodes;
mod perf;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    version,
    about = "Few-shot meta-learning benchmark harness"
)]
struct Cli {
    /// Data directory holding `omniglot/` and `mini-imagenet/`
    /// [default: $FEWSHOT_DATA, else ./data]
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Sample episodes from a dataset and describe them (class names, image ids).
    Episodes(episodes::Args),
    /// Download, verify and inspect datasets.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Performance benchmarks (data pipeline).
    #[command(subcommand)]
    Perf(perf::PerfCommand),
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let data_dir = fewshot::data::data_dir(cli.data_dir.as_deref());
    let result = match cli.command {
        Command::Episodes(a) => episodes::run(&data_dir, a),
        Command::Data(c) => data::run(&data_dir, c),
        Command::Perf(c) => perf::run(&data_dir, c),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
