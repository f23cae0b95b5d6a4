//! `bench compare`: what changed between two runs of one benchmark.

use std::path::PathBuf;

use anyhow::Result;
use fewshot::report;
use fewshot::run::catalogue::load as load_results;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The earlier run folder
    before: PathBuf,
    /// The later run folder
    after: PathBuf,
}

/// Prints one line per algorithm with the paired change and its 95%
/// interval; exits with status 1 when an algorithm got significantly
/// worse (for scripts), 0 otherwise.
pub fn run(a: Args) -> Result<bool> {
    let (x, y) = (load_results(&a.before)?, load_results(&a.after)?);
    let changes = report::compare(&x, &y)?;
    println!(
        "{}: {} -> {} (paired over the same test episodes, 95% t intervals)",
        x.benchmark,
        a.before.display(),
        a.after.display()
    );
    println!(
        "{:<14} {:>10} {:>10} {:>18}  verdict",
        "algorithm", "before %", "after %", "change (pp)"
    );
    let pct = |v: Option<f64>| v.map(|v| format!("{:.2}", 100.0 * v)).unwrap_or_default();
    for c in &changes {
        let change = c
            .diff
            .map(|d| {
                format!(
                    "{:+.2} +/- {}",
                    100.0 * d.mean,
                    d.ci95
                        .map(|h| format!("{:.2}", 100.0 * h))
                        .unwrap_or_else(|| "n/a".into())
                )
            })
            .unwrap_or_default();
        println!(
            "{:<14} {:>10} {:>10} {:>18}  {}",
            c.label,
            pct(c.before),
            pct(c.after),
            change,
            c.verdict()
        );
    }
    Ok(changes.iter().all(|c| c.verdict() != "WORSE"))
}
