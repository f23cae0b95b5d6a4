//! `bench`: the fewshot command line. Each subcommand lives in its own file
//! and turns its arguments into library calls; stdout carries tables only,
//! logs go to stderr (`RUST_LOG=debug` for more).

mod compare;
mod data;
mod episodes;
mod eval;
mod import;
mod list;
mod perf;
mod plan;
mod report;
mod run;
mod selftest;
mod show;
mod trace;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// candle allocates a fresh buffer for every tensor op; glibc's malloc
/// returns large blocks to the kernel on free, and the resulting page-fault
/// and TLB-shootdown storm cost more than the arithmetic (measured with
/// perf: see docs/perf.md). mimalloc keeps freed pages for reuse.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

    /// Where tensors live: cpu, cuda or cuda:N (CUDA needs a bench built
    /// with `--features cuda`, scripts/build-cuda.sh)
    #[arg(long, global = true, default_value = "cpu")]
    device: fewshot::device::DeviceSpec,

    /// Colour in log lines on stderr: auto (when stderr is a terminal and
    /// NO_COLOR is unset or empty), always or never
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto)]
    color: Color,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Meta-train and evaluate every algorithm of a benchmark; print the leaderboard.
    Run(run::Args),
    /// Split a multi-seed run into units for a job array (Slurm script or
    /// plain commands); `bench show` merges their results.
    Plan(plan::Args),
    /// The gradient checks (finite differences, fused against composed,
    /// the meta-LSTM's gradient-descent case) on --device, in about a minute.
    Selftest,
    /// List the shipped benchmarks (name, dataset, shape, algorithms, budget).
    List(list::Args),
    /// Reprint a run's leaderboard (with paired differences) from its folder.
    Show(show::Args),
    /// Compare two runs of one benchmark algorithm by algorithm (paired);
    /// exit status 1 when one got significantly worse, 2 on an error.
    Compare(compare::Args),
    /// Test a run's trained algorithms on another benchmark's fixed test
    /// episodes (cross-dataset evaluation).
    Eval(eval::Args),
    /// One leaderboard across benchmarks (the newest complete run of each,
    /// or the runs given).
    Report(report::Args),
    /// Record and plot the gate values of a learned optimizer on test episodes.
    Trace(trace::Args),
    /// Describe a benchmark's (or a dataset's) seeded episodes, or export
    /// them (CSV, images, safetensors, fingerprint) for other code.
    Episodes(episodes::Args),
    /// Add a row scored outside fewshot (per-episode accuracy or per-query
    /// predictions on exported episodes) to a run's leaderboard.
    Import(import::Args),
    /// Download, verify and inspect datasets.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Performance benchmarks (data pipeline).
    #[command(subcommand)]
    Perf(perf::PerfCommand),
}

/// `--color`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Color {
    Auto,
    Always,
    Never,
}

impl Color {
    /// Whether log lines on stderr carry ANSI colour: `auto` follows
    /// <https://no-color.org> (a non-empty NO_COLOR turns colour off) and
    /// colours only a terminal.
    fn ansi(self) -> bool {
        self.ansi_given(
            std::env::var_os("NO_COLOR"),
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
        )
    }

    fn ansi_given(self, no_color: Option<std::ffi::OsString>, terminal: bool) -> bool {
        match self {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => no_color.is_none_or(|v| v.is_empty()) && terminal,
        }
    }
}

/// Exit status of a command that failed (any error: bad input, a missing
/// file, a run that could not finish). Status 1 is `bench compare`'s
/// "an algorithm got significantly worse"; clap's usage errors are 2 too.
const EXIT_ERROR: i32 = 2;

/// mimalloc's `purge_delay` option (mimalloc.h, `mi_option_purge_delay`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    // Die quietly on a closed pipe (`bench list | head`), as Unix tools do,
    // instead of panicking in println!.
    // SAFETY: restoring a signal's default disposition before any thread starts.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Never hand freed pages back to the kernel: mini-ImageNet activations
    // are ~68 MB per tensor, and re-faulting them costs more than the math.
    // SAFETY: setting a documented mimalloc option; no memory is touched.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // candle runs element-wise ops on its own barrier pool, whose single
    // lock serialises concurrent callers; fewshot parallelises across
    // episodes instead (rayon), so by default candle's pool is turned off.
    // Measured: FOMAML 20 meta-steps 33 s -> 15 s, same numbers (docs/perf.md).
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    // FEWSHOT_SIMD=0 runs the baseline builds of the CPU kernels instead of
    // their AVX2 builds (the same numbers; for A/B timing, docs/perf.md).
    if std::env::var("FEWSHOT_SIMD").is_ok_and(|v| v == "0") {
        fewshot::model::kernels::simd::set_simd(false);
    }
    let cli = Cli::parse();
    // Log lines go to stderr and, during a run, to <run-dir>/run.log
    // (plain text; fewshot::run::logfile).
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(cli.color.ansi()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(|| fewshot::run::logfile::Sink)
                .with_target(false)
                .with_ansi(false),
        )
        .init();
    let data_dir = fewshot::data::data_dir(cli.data_dir.as_deref());
    let result = on_worker(move || match cli.command {
        Command::Run(a) => run::run(&data_dir, cli.device, a),
        Command::Selftest => selftest::run(cli.device),
        Command::Plan(a) => plan::run(&data_dir, a),
        Command::List(a) => list::run(a),
        Command::Show(a) => show::run(a),
        Command::Report(a) => report::run(a),
        Command::Eval(a) => eval::run(&data_dir, cli.device, a),
        Command::Compare(a) => match compare::run(a) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => Err(e),
        },
        Command::Trace(a) => trace::run(&data_dir, cli.device, a),
        Command::Episodes(a) => episodes::run(&data_dir, a),
        Command::Import(a) => import::run(&data_dir, a),
        Command::Data(c) => data::run(&data_dir, c),
        Command::Perf(c) => perf::run(&data_dir, cli.device, c),
    });
    if let Err(e) = result {
        eprintln!("error: {}", error_text(&e));
        std::process::exit(EXIT_ERROR);
    }
}

/// Run the command on a worker of rayon's global pool (`RAYON_NUM_THREADS`
/// threads, as before). The fused kernels call rayon several times per
/// learner pass; from a thread outside the pool each call hands its work
/// to the pool and sleeps until a worker wakes it (two futex round trips
/// per call: 16% of a single-threaded batch-10 learner pass in `perf
/// record`). On a worker the caller runs its own share and the others
/// steal the rest. Workers get the main thread's 8 MiB of stack.
fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let built = rayon::ThreadPoolBuilder::new()
        .stack_size(8 << 20)
        .build_global();
    if let Err(e) = built {
        tracing::debug!("rayon's global pool was already built: {e}");
    }
    rayon::scope(|_| f())
}

/// An error and its causes, each said once: library errors already include
/// their source in their own text, so a cause whose text is already there
/// is not repeated.
fn error_text(e: &anyhow::Error) -> String {
    let mut s = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if s.contains(&c) {
            continue;
        }
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(&c);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::Color;

    #[test]
    fn colour_follows_no_color_and_the_terminal_unless_forced() {
        let set = || Some("1".into());
        let empty = || Some("".into());
        assert!(Color::Auto.ansi_given(None, true));
        assert!(Color::Auto.ansi_given(empty(), true));
        assert!(!Color::Auto.ansi_given(set(), true));
        assert!(!Color::Auto.ansi_given(None, false));
        assert!(Color::Always.ansi_given(set(), false));
        assert!(!Color::Never.ansi_given(None, true));
    }
}
