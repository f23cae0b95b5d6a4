//! The leaderboard, built once from a run's results and rendered for each
//! reader: the terminal table (stdout), `leaderboard.md` (to paste into a
//! paper or README) and `leaderboard.csv` (for scripts), next to
//! `results.json` in the run folder.
//!
//! Columns: accuracy with its 95% interval over the test episodes; the
//! paired difference to the best row over the same episodes with its 95%
//! interval ([`crate::report::stats`]); test episodes, meta-steps, training
//! episodes, training and test seconds, and which checkpoint was tested.
//! A last column shows the published result the benchmark names for the
//! row (`T`: transductive), with the sources listed under the table.
//! Marks: `*` the best row; `~` a row whose paired difference to the best
//! is not distinguishable from zero at 95%.

use std::path::Path;

pub mod columns;
pub mod curves;
pub mod figure;
pub mod html;
pub mod import;
pub mod optimisation;
pub mod results;
pub mod stats;
pub mod trace;

use crate::error::Result;
use crate::spec;
use crate::util::write_atomic;
use columns::Columns;
use results::{best_row, RunResults};

/// One row, formatted once for every renderer.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub mark: &'static str,
    pub label: String,
    /// Accuracy and its half-width, in percent.
    pub accuracy: f64,
    pub ci95: Option<f64>,
    /// Paired difference to the best row and its half-width, in points.
    pub vs_best: Option<(f64, Option<f64>)>,
    pub test_episodes: usize,
    pub meta_steps: u64,
    pub train_episodes: u64,
    pub train_seconds: f64,
    pub test_seconds: f64,
    pub tested: String,
    /// Run seeds the row averages (1 for a single run) and the across-seed
    /// standard deviation of the accuracy, in points.
    pub seeds: usize,
    pub seed_sd: Option<f64>,
    /// The published result (percent), if the benchmark names one.
    pub published: Option<crate::spec::Published>,
    /// Scored outside fewshot (`bench import`): no training or test time.
    pub imported: bool,
}

/// A row's formatted cells, the same in every rendering (plain text with
/// `+/-`; each renderer escapes or decorates them).
#[derive(Debug, Clone, PartialEq)]
pub struct Cells {
    /// `12.34 +/- 0.56`.
    pub accuracy: String,
    /// `3 (sd 0.41)` over several run seeds, `1` for one.
    pub seeds: String,
    /// The paired difference to the best, empty for the best row.
    pub vs_best: String,
    /// Meta-steps, training episodes, training and test seconds (`{:.0}`,
    /// `{:.1}`), or `-` for an imported row, which fewshot neither trained
    /// nor tested.
    pub steps: String,
    pub episodes: String,
    pub train: String,
    pub test: String,
    /// `98.30 +/- 0.50 T` (T: transductive), or empty.
    pub published: String,
}

impl Row {
    pub fn cells(&self) -> Cells {
        let timed = |v: String| if self.imported { "-".to_string() } else { v };
        Cells {
            accuracy: pm(self.accuracy, self.ci95),
            seeds: match self.seed_sd {
                Some(sd) => format!("{} (sd {sd:.2})", self.seeds),
                None => self.seeds.to_string(),
            },
            vs_best: self.vs_best.map(|(v, c)| pm(v, c)).unwrap_or_default(),
            steps: timed(self.meta_steps.to_string()),
            episodes: timed(self.train_episodes.to_string()),
            train: timed(format!("{:.0}", self.train_seconds)),
            test: timed(format!("{:.1}", self.test_seconds)),
            published: published_cell(&self.published),
        }
    }
}

/// The leaderboard of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub title: String,
    pub rows: Vec<Row>,
}

/// The legend under every rendering.
pub const LEGEND: &str = "* best; ~ paired difference to the best not distinguishable from 0 (95%)";

impl Table {
    pub fn of(r: &RunResults) -> Table {
        let title = format!(
            "{} ({}, {}-way {}-shot, {} queries, {}; batch norm: meta-train {}, test {})",
            r.benchmark,
            r.dataset,
            r.episode.ways,
            r.episode.shots,
            r.episode.queries,
            if r.transductive {
                "transductive"
            } else {
                "non-transductive"
            },
            spec::variant_name(&r.batch_norm.meta_train),
            spec::variant_name(&r.batch_norm.eval),
        );
        let title = match (&r.profile, r.run_seeds.is_empty()) {
            (Some(p), true) => {
                format!("{title}; profile {p}, run seed {}", r.run_seed.unwrap_or(0))
            }
            (Some(p), false) => format!(
                "{title}; profile {p}, run seeds {}",
                seed_list(&r.run_seeds)
            ),
            (None, false) => format!("{title}; run seeds {}", seed_list(&r.run_seeds)),
            (None, true) => title,
        };
        let best = best_row(&r.results);
        let rows = r
            .results
            .iter()
            .enumerate()
            .map(|(i, x)| Row {
                mark: match &x.vs_best {
                    _ if best == Some(i) => "*",
                    Some(d) if !d.excludes_zero() => "~",
                    _ => "",
                },
                label: x.label.clone(),
                accuracy: 100.0 * x.accuracy,
                ci95: x.ci95.map(|c| 100.0 * c),
                vs_best: x
                    .vs_best
                    .map(|d| (100.0 * d.mean, d.ci95.map(|c| 100.0 * c))),
                test_episodes: x.test_episodes,
                meta_steps: x.meta_steps,
                train_episodes: x.train_episodes,
                train_seconds: x.train_seconds,
                test_seconds: x.test_seconds,
                tested: x.selected.clone(),
                seeds: x.seeds.len().max(1),
                seed_sd: x.seed_sd.map(|v| 100.0 * v),
                published: x.published.clone(),
                imported: x.imported.is_some(),
            })
            .collect();
        Table { title, rows }
    }
}

fn seed_list(seeds: &[u64]) -> String {
    seeds
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `12.34 +/- 0.56` (or `n/a` for a missing half-width).
fn pm(v: f64, c: Option<f64>) -> String {
    let c = c.map(|c| format!("{c:.2}")).unwrap_or_else(|| "n/a".into());
    format!("{v:.2} +/- {c}")
}

/// `+/-` written `±` (Markdown and HTML).
fn plus_minus(s: &str) -> String {
    s.replace("+/-", "±")
}

/// `98.30 +/- 0.50 T` (T: transductive), or empty.
fn published_cell(p: &Option<crate::spec::Published>) -> String {
    p.as_ref()
        .map(|p| {
            format!(
                "{}{}",
                pm(p.accuracy, p.ci95),
                if p.transductive { " T" } else { "" }
            )
        })
        .unwrap_or_default()
}

/// One line per published number: where it comes from.
fn sources(t: &Table, r: &RunResults) -> String {
    let mut s = String::new();
    for x in r.results.iter().filter(|x| x.budgets.len() > 1) {
        s.push_str(&format!(
            "{} was meta-trained under {} budgets: {}\n",
            x.label,
            x.budgets.len(),
            crate::spec::describe_spans(&x.budgets)
        ));
    }
    for x in &r.results {
        if let Some(i) = &x.imported {
            s.push_str(&format!(
                "imported {}: {} from {} ({}, {})\n",
                x.label,
                i.scores,
                i.file.display(),
                i.sha256,
                i.at
            ));
        }
    }
    for x in &t.rows {
        if let Some(p) = &x.published {
            s.push_str(&format!(
                "published {}: {} ({})\n",
                x.label,
                p.source,
                if p.transductive {
                    "transductive"
                } else {
                    "non-transductive"
                }
            ));
        }
    }
    s
}

/// The terminal table, ending with the legend and the results file.
pub fn terminal(r: &RunResults) -> String {
    let t = Table::of(r);
    let mut s = format!("{}\n", t.title);
    let mut table = Columns::new(vec![
        columns::left("", 2).gap(""),
        columns::left("algorithm", 14),
        columns::right("accuracy (%)", 16),
        columns::right("run seeds", 13),
        columns::right("vs best (pp)", 16),
        columns::right("test ep", 8),
        columns::right("meta-steps", 10),
        columns::right("train ep", 12),
        columns::right("train", 10),
        columns::right("test", 9),
        columns::right("tested", 10).gap("  "),
        columns::left("published (%)", 0),
    ]);
    for x in &t.rows {
        let c = x.cells();
        let secs = |v: String| if x.imported { v } else { format!("{v}s") };
        table.row(vec![
            x.mark.to_string(),
            x.label.clone(),
            c.accuracy,
            c.seeds,
            c.vs_best,
            x.test_episodes.to_string(),
            c.steps,
            c.episodes,
            secs(c.train),
            secs(c.test),
            x.tested.to_string(),
            c.published,
        ]);
    }
    s.push_str(&table.render());
    s.push_str(&sources(&t, r));
    for n in &r.notes {
        s.push_str(&format!("note: {n}\n"));
    }
    let results = if r.run_seeds.is_empty() {
        r.run_dir.join(crate::layout::RESULTS).display().to_string()
    } else {
        format!(
            "merged from the units {}",
            r.run_dir.join("seed-<s>/<label>/results.json").display()
        )
    };
    s.push_str(&format!("{LEGEND}\nresults: {results}\n"));
    s
}

/// A Markdown table with the title as a heading.
pub fn markdown(r: &RunResults) -> String {
    let t = Table::of(r);
    let mut s = format!("### {}\n\n", t.title);
    s.push_str("| | algorithm | accuracy (%) | run seeds | vs best (pp) | test episodes | meta-steps | train episodes | train (s) | test (s) | tested | published (%) |\n");
    s.push_str(
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |\n",
    );
    for x in &t.rows {
        let c = x.cells();
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            if x.mark == "*" { "\\*" } else { x.mark },
            x.label,
            plus_minus(&c.accuracy),
            c.seeds,
            plus_minus(&c.vs_best),
            x.test_episodes,
            c.steps,
            c.episodes,
            c.train,
            c.test,
            x.tested,
            plus_minus(&c.published)
        ));
    }
    s.push('\n');
    for l in sources(&t, r)
        .lines()
        .chain(r.notes.iter().map(String::as_str))
    {
        s.push_str(&format!("- {l}\n"));
    }
    s.push_str(&format!("\n{}\n", LEGEND.replace('*', "\\*")));
    s
}

/// One CSV line per row, full precision, empty cells where a value does
/// not exist.
pub fn csv(r: &RunResults) -> String {
    let t = Table::of(r);
    let opt = |v: Option<f64>| v.map(|x| x.to_string()).unwrap_or_default();
    let rows = t.rows.iter().map(|x| {
        let untimed = |v: String| if x.imported { String::new() } else { v };
        [
            r.benchmark.clone(),
            x.mark.to_string(),
            x.label.clone(),
            x.accuracy.to_string(),
            opt(x.ci95),
            x.seeds.to_string(),
            opt(x.seed_sd),
            opt(x.vs_best.map(|v| v.0)),
            opt(x.vs_best.and_then(|v| v.1)),
            x.test_episodes.to_string(),
            untimed(x.meta_steps.to_string()),
            untimed(x.train_episodes.to_string()),
            untimed(x.train_seconds.to_string()),
            untimed(x.test_seconds.to_string()),
            x.tested.to_string(),
            opt(x.published.as_ref().map(|p| p.accuracy)),
            opt(x.published.as_ref().and_then(|p| p.ci95)),
            x.published
                .as_ref()
                .map(|p| p.transductive.to_string())
                .unwrap_or_default(),
        ]
    });
    crate::util::csv_text(
        &[
            "benchmark",
            "mark",
            "label",
            "accuracy_pct",
            "ci95_pct",
            "run_seeds",
            "seed_sd_pp",
            "vs_best_pp",
            "vs_best_ci95_pp",
            "test_episodes",
            "meta_steps",
            "train_episodes",
            "train_seconds",
            "test_seconds",
            "tested",
            "published_pct",
            "published_ci95_pct",
            "published_transductive",
        ],
        rows,
    )
}

/// Write a results folder's files: `results.json`, `leaderboard.md`,
/// `leaderboard.csv` and, when any row's folder has a validation curve,
/// `curves.svg` and `curves.png` ([`curves::write`]; each atomically).
pub fn write_files(r: &RunResults, dir: &Path) -> Result<()> {
    r.write_json(dir)?;
    write_leaderboards(r, dir)?;
    curves::write(r, dir).map(|_| ())
}

/// Write `leaderboard.md` and `leaderboard.csv` (each atomically); a
/// multi-seed run's folder has these without a `results.json` of its own.
pub fn write_leaderboards(r: &RunResults, dir: &Path) -> Result<()> {
    write_atomic(
        &dir.join(crate::layout::LEADERBOARD_MD),
        markdown(r).as_bytes(),
    )?;
    write_atomic(&dir.join(crate::layout::LEADERBOARD_CSV), csv(r).as_bytes())
}

/// Rows without a published number take it from the benchmark file of the
/// same name (`benchmarks/<name>.yaml`), for runs written before results
/// carried them; nothing changes when there is no such file.
pub fn fill_published(r: &mut RunResults) {
    if r.results.iter().all(|x| x.published.is_some()) {
        return;
    }
    let Ok((b, _)) = crate::spec::Benchmark::load(&r.benchmark) else {
        return;
    };
    for x in &mut r.results {
        if x.published.is_none() {
            x.published = b.published.get(&x.label).cloned();
        }
    }
}

/// One leaderboard across benchmarks: a row per (benchmark, algorithm),
/// the paired difference to the best of its benchmark, the published
/// number, and the run it comes from. `md`: Markdown, else text.
pub fn across(runs: &[RunResults], md: bool) -> String {
    let mut s = String::new();
    if md {
        s.push_str("| benchmark | | algorithm | accuracy (%) | run seeds | vs best (pp) | published (%) | meta-steps | train (s) | run |\n");
        s.push_str("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n");
    }
    let mut table = Columns::new(vec![
        columns::left("benchmark", 32),
        columns::left("", 2).gap(""),
        columns::left("algorithm", 12),
        columns::right("accuracy (%)", 16),
        columns::right("run seeds", 13),
        columns::right("vs best (pp)", 16),
        columns::right("published (%)", 18),
        columns::right("meta-steps", 10),
        columns::right("train", 8).gap("  "),
        columns::left("run", 0),
    ]);
    for r in runs {
        let t = Table::of(r);
        for x in &t.rows {
            let c = x.cells();
            let run = r.run_dir.display();
            if md {
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | `{run}` |\n",
                    r.benchmark,
                    if x.mark == "*" { "\\*" } else { x.mark },
                    x.label,
                    plus_minus(&c.accuracy),
                    c.seeds,
                    plus_minus(&c.vs_best),
                    plus_minus(&c.published),
                    c.steps,
                    c.train
                ));
            } else {
                let train = if x.imported {
                    c.train
                } else {
                    format!("{}s", c.train)
                };
                table.row(vec![
                    r.benchmark.clone(),
                    x.mark.to_string(),
                    x.label.clone(),
                    c.accuracy,
                    c.seeds,
                    c.vs_best,
                    c.published,
                    c.steps,
                    train,
                    run.to_string(),
                ]);
            }
        }
    }
    if !md {
        s.push_str(&table.render());
    }
    let legend = format!("{LEGEND}; published numbers are the papers' (T: transductive), not ours");
    if md {
        s.push_str(&format!("\n{}\n", legend.replace('*', "\\*")));
    } else {
        s.push_str(&format!("{legend}\n"));
    }
    s
}

/// How one algorithm changed between two runs of the same benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub label: String,
    /// Accuracy in each run (fractions), `None` where the run lacks the row.
    pub before: Option<f64>,
    pub after: Option<f64>,
    /// Paired difference after - before over the same episodes.
    pub diff: Option<crate::report::stats::Interval>,
}

impl Change {
    /// `better`, `WORSE` (interval excludes zero) or `same` (noise);
    /// `only before` / `only after` for unmatched rows.
    pub fn verdict(&self) -> &'static str {
        match (&self.diff, self.before, self.after) {
            (Some(d), _, _) if d.excludes_zero() && d.mean > 0.0 => "better",
            (Some(d), _, _) if d.excludes_zero() => "WORSE",
            (Some(_), _, _) => "same",
            (None, Some(_), None) => "only before",
            (None, None, Some(_)) => "only after",
            _ => "not paired",
        }
    }
}

/// What decides a run's test episodes, in words: `fewshot-5way1shot
/// (omniglot, 5-way 1-shot, 15 queries, episode seed 0, non-transductive)`.
fn setting(r: &RunResults) -> String {
    format!(
        "`{}` ({}, {}-way {}-shot, {} queries, episode seed {}, {})",
        r.benchmark,
        r.dataset,
        r.episode.ways,
        r.episode.shots,
        r.episode.queries,
        r.seed.map_or("unrecorded".into(), |s| s.to_string()),
        if r.transductive {
            "transductive"
        } else {
            "non-transductive"
        }
    )
}

/// Per-algorithm paired changes from run `a` to run `b`. Both must have
/// scored the same test episodes (benchmark, dataset, episode shape and
/// count), else the differences cannot be paired and this is an error.
pub fn compare(a: &RunResults, b: &RunResults) -> Result<Vec<Change>> {
    let same = a.benchmark == b.benchmark
        && a.dataset == b.dataset
        && a.episode == b.episode
        && a.transductive == b.transductive
        && (a.seed.is_none() || b.seed.is_none() || a.seed == b.seed);
    if !same {
        return Err(crate::error::Error::Invalid {
            field: "runs".into(),
            value: format!("{} and {}", a.run_dir.display(), b.run_dir.display()),
            allowed: format!(
                "runs of one benchmark on the same test episodes (got {} and {})",
                setting(a),
                setting(b)
            ),
        });
    }
    let mut labels: Vec<&str> = a.results.iter().map(|r| r.label.as_str()).collect();
    for r in &b.results {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
    }
    Ok(labels
        .into_iter()
        .map(|l| {
            let ra = a.results.iter().find(|r| r.label == l);
            let rb = b.results.iter().find(|r| r.label == l);
            let diff = match (ra, rb) {
                (Some(x), Some(y)) => crate::report::stats::paired_difference(
                    &y.episode_accuracy,
                    &x.episode_accuracy,
                ),
                _ => None,
            };
            Change {
                label: l.to_string(),
                before: ra.map(|r| r.accuracy),
                after: rb.map(|r| r.accuracy),
                diff,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::results::pair_with_best;
    use crate::report::results::tests::{results, row};

    #[test]
    fn runs_that_cannot_be_paired_are_described_in_words() {
        let a = results(vec![row("x", &[1.0, 0.0])]);
        let mut b = a.clone();
        b.benchmark = "u".into();
        b.episode.shots = 5;
        let e = compare(&a, &b).unwrap_err().to_string();
        assert!(
            e.contains("`t` (omniglot, 5-way 1-shot, 1 queries, episode seed 0, non-transductive)")
                && e.contains("`u` (omniglot, 5-way 5-shot")
                && !e.contains("EpisodeSpec"),
            "{e}"
        );
    }

    #[test]
    fn every_rendering_shows_the_same_rows() {
        let mut rows = vec![
            row("a", &[0.60, 0.80, 0.40, 0.90, 0.70]),
            row("b", &[0.64, 0.86, 0.44, 0.92, 0.74]),
            row("c", &[0.66, 0.84, 0.45, 0.90, 0.73]),
        ];
        pair_with_best(&mut rows);
        rows[1].published = Some(crate::spec::Published {
            accuracy: 98.3,
            ci95: Some(0.5),
            source: "Finn et al. 2017, table 1".into(),
            transductive: true,
        });
        let r = results(rows);
        let (text, md, csv) = (terminal(&r), markdown(&r), csv(&r));
        // CSV: header + one line per row, 18 fields, full precision that
        // rounds to what the terminal shows.
        let lines: Vec<Vec<&str>> = csv
            .lines()
            .skip(1)
            .map(|l| l.split(',').collect())
            .collect();
        assert_eq!(lines.len(), 3);
        for (f, x) in lines.iter().zip(&r.results) {
            assert_eq!(f.len(), 18);
            // One run seed, so no spread across seeds.
            assert_eq!((f[5], f[6]), ("1", ""));
            assert_eq!(f[2], x.label);
            let acc: f64 = f[3].parse().unwrap();
            assert!((acc - 100.0 * x.accuracy).abs() < 1e-9);
            let shown = format!("{acc:.2} +/- {:.2}", f[4].parse::<f64>().unwrap());
            assert!(
                text.contains(&shown) && md.contains(&shown.replace("+/-", "±")),
                "{shown}"
            );
        }
        assert_eq!(lines[1][1], "*");
        assert_eq!(lines[2][1], "~");
        assert_eq!(lines[0][1], "");
        assert!(lines[1][7].is_empty() && !lines[0][7].is_empty());
        // Markdown: a heading, a header, a rule and one line per row.
        assert_eq!(md.lines().filter(|l| l.starts_with('|')).count(), 2 + 3);
        assert!(md.contains("| -4.00 ± 1.76 |"), "{md}");
        // The published number, marked transductive, with its source.
        assert!(
            text.contains("98.30 +/- 0.50 T") && md.contains("98.30 ± 0.50 T"),
            "{text}"
        );
        assert!(
            text.contains("published b: Finn et al. 2017, table 1 (transductive)"),
            "{text}"
        );
        assert_eq!(&lines[1][15..18], &["98.3", "0.5", "true"]);
        assert_eq!(&lines[0][15..18], &["", "", ""]);
    }

    #[test]
    fn rows_over_several_run_seeds_show_the_spread() {
        let mut r = results(vec![crate::report::results::combine(&[
            (0, row("a", &[0.6, 0.8])),
            (1, row("a", &[0.8, 0.8])),
        ])]);
        r.run_seeds = vec![0, 1];
        r.run_seed = None;
        r.profile = Some("budgeted".into());
        let (text, md, csv) = (terminal(&r), markdown(&r), csv(&r));
        // Seed accuracies 0.7 and 0.8: sd 0.0707 = 7.07 points.
        assert!(
            text.contains("2 (sd 7.07)") && md.contains("2 (sd 7.07)"),
            "{text}"
        );
        assert!(text.contains("profile budgeted, run seeds 0,1"), "{text}");
        let f: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
        assert_eq!(f[5], "2");
        assert!((f[6].parse::<f64>().unwrap() - 100.0 * 0.1 / 2f64.sqrt()).abs() < 1e-9);
    }
}
