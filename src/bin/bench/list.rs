//! `bench list`: the shipped benchmarks, one line each, with every other
//! profile's budget below (fewshot::spec::summaries).

use anyhow::Result;
use fewshot::spec::{benchmarks_dir, broken, summaries};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder of benchmark files [default: ./benchmarks, else the crate's]
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

/// The description on one line, cut at a word to at most `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let mut s = String::new();
    for w in text.split_whitespace() {
        if s.chars().count() + w.chars().count() + 1 > max {
            s.push_str(" ...");
            break;
        }
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(w);
    }
    s
}

pub fn run(a: Args) -> Result<()> {
    let dir = a.dir.unwrap_or_else(benchmarks_dir);
    println!(
        "{:<34} {:<13} {:<10} {:<26} {:<18} description",
        "benchmark", "dataset", "shape", "algorithms", "budget"
    );
    let list = summaries(&dir)?;
    for l in &list {
        let b = match &l.summary {
            Ok(b) => b,
            Err(e) => {
                println!("{:<34} error: {e}", l.path.display());
                continue;
            }
        };
        println!(
            "{:<34} {:<13} {:<10} {:<26} {:<18} {}",
            b.name,
            b.dataset,
            b.shape,
            b.labels.join(","),
            b.budget,
            one_line(&b.description, 60)
        );
        for p in &b.profiles {
            let flag = format!("  --profile {}", p.name);
            match &p.budget {
                Ok(budget) => println!(
                    "{flag:<34} {:<13} {:<10} {:<26} {budget} ({})",
                    "", "", "", p.about
                ),
                Err(e) => println!("{flag:<34} error: {e}"),
            }
        }
    }
    println!(
        "(from {}; run one with `bench run <benchmark>`)",
        dir.display()
    );
    let broken = broken(&list);
    anyhow::ensure!(
        broken == 0,
        "{broken} benchmark file(s) in {} do not parse",
        dir.display()
    );
    Ok(())
}
