//! `bench compare`: what changed between two runs of one benchmark.

use std::path::PathBuf;

use anyhow::Result;
use fewshot::report;
use fewshot::report::columns::{self, Columns};
use fewshot::run::catalogue::load as load_results;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The earlier run folder
    before: PathBuf,
    /// The later run folder
    after: PathBuf,
    /// text (the table) or json (one object per algorithm: accuracies as
    /// fractions, the paired change with its 95% half-width, the verdict)
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    format: String,
}

/// Prints one line per algorithm with the paired change and its 95%
/// interval; `Ok(false)` (exit status 1, for scripts) when an algorithm
/// got significantly worse; an error exits with status 2 (main.rs).
pub fn run(a: Args) -> Result<bool> {
    let (x, y) = (load_results(&a.before)?, load_results(&a.after)?);
    let changes = report::compare(&x, &y)?;
    let worse = changes.iter().any(|c| c.verdict() == "WORSE");
    if a.format == "json" {
        let rows: Vec<serde_json::Value> = changes
            .iter()
            .map(|c| {
                serde_json::json!({
                    "label": c.label,
                    "before": c.before,
                    "after": c.after,
                    "change": c.diff,
                    "verdict": c.verdict(),
                })
            })
            .collect();
        let out = serde_json::json!({
            "benchmark": x.benchmark,
            "before": a.before,
            "after": a.after,
            "changes": rows,
            "worse": worse,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(!worse);
    }
    println!(
        "{}: {} -> {} (paired over the same test episodes, 95% t intervals)",
        x.benchmark,
        a.before.display(),
        a.after.display()
    );
    let mut table = Columns::new(vec![
        columns::left("algorithm", 14),
        columns::right("before %", 10),
        columns::right("after %", 10),
        columns::right("change (pp)", 18).gap("  "),
        columns::left("verdict", 0),
    ]);
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
        table.row(vec![
            c.label.clone(),
            pct(c.before),
            pct(c.after),
            change,
            c.verdict().to_string(),
        ]);
    }
    print!("{}", table.render());
    Ok(!worse)
}
