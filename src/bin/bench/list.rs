//! `bench list`: the shipped benchmarks, one line each, with every other
//! profile's budget below (fewshot::spec::summaries).

use anyhow::Result;
use fewshot::report::columns::{self, Columns};
use fewshot::spec::{benchmarks_dir, broken, summaries, Listed};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder of benchmark files [default: ./benchmarks, else the crate's]
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// text (the table) or json (one object per benchmark file)
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    format: String,
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
    let list = summaries(&dir)?;
    if a.format == "json" {
        println!("{}", serde_json::to_string_pretty(&as_json(&list))?);
    } else {
        print!("{}", table(&list));
        println!(
            "(from {}; run one with `bench run <benchmark>`)",
            dir.display()
        );
    }
    let broken = broken(&list);
    anyhow::ensure!(
        broken == 0,
        "{broken} benchmark file(s) in {} do not parse",
        dir.display()
    );
    Ok(())
}

/// One object per file: `path`, and either `error` or the summary (`name`,
/// `dataset`, `shape`, `algorithms`, `budget`, `description`, `profiles`,
/// each profile with `name`, `about` and `budget` or `error`).
fn as_json(list: &[Listed]) -> serde_json::Value {
    let files: Vec<serde_json::Value> = list
        .iter()
        .map(|l| match &l.summary {
            Err(e) => serde_json::json!({"path": l.path, "error": e.to_string()}),
            Ok(b) => {
                let profiles: Vec<serde_json::Value> = b
                    .profiles
                    .iter()
                    .map(|p| match &p.budget {
                        Ok(budget) => serde_json::json!({"name": p.name, "about": p.about, "budget": budget}),
                        Err(e) => serde_json::json!({"name": p.name, "about": p.about, "error": e.to_string()}),
                    })
                    .collect();
                serde_json::json!({
                    "path": l.path,
                    "name": b.name,
                    "dataset": b.dataset,
                    "shape": b.shape,
                    "algorithms": b.labels,
                    "budget": b.budget,
                    "description": b.description,
                    "profiles": profiles,
                })
            }
        })
        .collect();
    serde_json::Value::Array(files)
}

/// The terminal table: a line per file, a line per other profile.
fn table(list: &[Listed]) -> String {
    let mut table = Columns::new(vec![
        columns::left("benchmark", 34),
        columns::left("dataset", 13),
        columns::left("shape", 10),
        columns::left("algorithms", 26),
        columns::left("description", 0),
        columns::left("budget", 0),
    ]);
    for l in list {
        let b = match &l.summary {
            Ok(b) => b,
            Err(e) => {
                table.row(vec![l.path.display().to_string(), format!("error: {e}")]);
                continue;
            }
        };
        table.row(vec![
            b.name.clone(),
            b.dataset.clone(),
            b.shape.clone(),
            b.labels.join(","),
            one_line(&b.description, 60),
            b.budget.clone(),
        ]);
        for p in &b.profiles {
            let flag = format!("  --profile {}", p.name);
            match &p.budget {
                Ok(budget) => table.row(vec![
                    flag,
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    format!("{budget} ({})", p.about),
                ]),
                Err(e) => table.row(vec![flag, format!("error: {e}")]),
            }
        }
    }
    table.render()
}
