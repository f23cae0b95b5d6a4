//! `bench list`: the shipped benchmarks, one line each.

use anyhow::Result;
use fewshot::spec::{benchmarks_dir, list_benchmarks, Benchmark, Overrides};

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
    let mut broken = 0;
    for (path, b) in list_benchmarks(&dir)? {
        match b {
            Ok(b) => {
                let labels: Vec<&str> = b.algorithms.iter().map(|a| a.label.as_str()).collect();
                println!(
                    "{:<34} {:<13} {:<10} {:<26} {:<18} {}",
                    b.name,
                    b.dataset,
                    format!(
                        "{}w{}s{}q{}",
                        b.episode.ways,
                        b.episode.shots,
                        b.episode.queries,
                        if b.transductive { " T" } else { "" }
                    ),
                    labels.join(","),
                    b.describe_budget(),
                    one_line(&b.description, 60)
                );
                // Every other profile, resolved (a broken one counts as a
                // broken file).
                for (name, about) in Benchmark::profiles(&path)?.into_iter().skip(1) {
                    let o = Overrides {
                        profile: Some(name.clone()),
                        ..Default::default()
                    };
                    match Benchmark::load_with(&path.display().to_string(), &o) {
                        Ok((p, _)) => println!(
                            "{:<34} {:<13} {:<10} {:<26} {}",
                            format!("  --profile {name}"),
                            "",
                            "",
                            "",
                            format!("{} ({about})", p.describe_budget())
                        ),
                        Err(e) => {
                            broken += 1;
                            println!("{:<34} error: {e}", format!("  --profile {name}"));
                        }
                    }
                }
            }
            Err(e) => {
                broken += 1;
                println!("{:<34} error: {e}", path.display());
            }
        }
    }
    println!(
        "(from {}; run one with `bench run <benchmark>`)",
        dir.display()
    );
    anyhow::ensure!(
        broken == 0,
        "{broken} benchmark file(s) in {} do not parse",
        dir.display()
    );
    Ok(())
}
