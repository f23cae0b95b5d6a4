//! Results of an optimisation benchmark: one row per optimiser with every
//! test problem's final loss and the loss curve over the T steps, the
//! score and its intervals, and the tables and figure made from them.
//!
//! The score is deepmind/learning-to-learn's "log mean final error"
//! (`util.py` ~35-40): log10 of the mean over the fixed test problems of
//! f(theta_T). Its 95% interval is the Student-t interval of that mean,
//! mapped through log10 (no lower end when the interval reaches 0). The
//! paired comparison with the best row is over the same problems in log
//! space: the mean over problems of log10 f_row(theta_T) - log10
//! f_best(theta_T), with its t interval, so a row is "below the best" only
//! when it loses on the problems themselves, not through one outlier.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::stats::{mean_interval, paired_difference, sample_sd, Interval};
use crate::algo::optimizer::Tuning;
use crate::error::{Error, Result};

/// One optimiser's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OptRow {
    pub label: String,
    pub algorithm: String,
    /// Learned (meta-trained) or hand-designed (tuned).
    pub learned: bool,
    /// f(theta_T) of every test problem, in problem order.
    pub final_loss: Vec<f64>,
    /// log10 of the mean final loss.
    pub log10_loss: f64,
    /// log10 of the 95% interval's ends of the mean final loss (the lower
    /// end is absent when the interval reaches 0).
    pub log10_low: Option<f64>,
    pub log10_high: Option<f64>,
    /// Paired difference to the best row in log10 final loss (absent on
    /// the best row itself).
    pub vs_best: Option<Interval>,
    /// Mean and standard deviation over test problems of f(theta_t), t =
    /// 0..=T.
    pub curve_mean: Vec<f64>,
    pub curve_sd: Vec<f64>,
    /// What tuning chose (hand-designed), if anything.
    pub tuning: Option<Tuning>,
    /// Meta-training steps done (learned) and the state tested
    /// (`best@300`, `final@300`).
    pub meta_steps: u64,
    pub selected: Option<String>,
    pub train_seconds: f64,
    /// Seconds to optimise all test problems.
    pub test_seconds: f64,
}

impl OptRow {
    /// A row scored from its test curves (`curves[i]` = the losses of
    /// problem i at theta_0..theta_T).
    pub fn scored(label: &str, algorithm: &str, learned: bool, curves: &[Vec<f64>]) -> OptRow {
        let final_loss: Vec<f64> = curves
            .iter()
            .map(|c| c.last().copied().unwrap_or(f64::NAN))
            .collect();
        let iv = mean_interval(&final_loss);
        let steps = curves.first().map_or(0, |c| c.len());
        let mut curve_mean = vec![0.0; steps];
        let mut curve_sd = vec![0.0; steps];
        for t in 0..steps {
            let xs: Vec<f64> = curves.iter().map(|c| c[t]).collect();
            curve_mean[t] = xs.iter().sum::<f64>() / xs.len() as f64;
            curve_sd[t] = sample_sd(&xs).unwrap_or(0.0);
        }
        OptRow {
            label: label.into(),
            algorithm: algorithm.into(),
            learned,
            log10_loss: iv.mean.log10(),
            log10_low: iv
                .ci95
                .and_then(|c| (iv.mean - c > 0.0).then(|| (iv.mean - c).log10())),
            log10_high: iv.ci95.map(|c| (iv.mean + c).log10()),
            final_loss,
            vs_best: None,
            curve_mean,
            curve_sd,
            tuning: None,
            meta_steps: 0,
            selected: None,
            train_seconds: 0.0,
            test_seconds: 0.0,
        }
    }
}

/// The best row: lowest log10 mean final loss (NaN never wins).
pub fn best_row(rows: &[OptRow]) -> Option<usize> {
    rows.iter()
        .enumerate()
        .filter(|(_, r)| r.log10_loss.is_finite())
        .min_by(|a, b| a.1.log10_loss.total_cmp(&b.1.log10_loss))
        .map(|(i, _)| i)
}

/// Fill every row's paired difference to the best.
pub fn pair_with_best(rows: &mut [OptRow]) {
    let Some(b) = best_row(rows) else { return };
    let best: Vec<f64> = rows[b].final_loss.iter().map(|l| l.log10()).collect();
    for (i, r) in rows.iter_mut().enumerate() {
        r.vs_best = if i == b {
            None
        } else {
            let mine: Vec<f64> = r.final_loss.iter().map(|l| l.log10()).collect();
            paired_difference(&mine, &best)
        };
    }
}

/// An optimisation run's results (`results.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OptResults {
    pub benchmark: String,
    pub task: String,
    /// The problem family in words.
    pub problem: String,
    pub steps: usize,
    pub seed: u64,
    pub run_seed: u64,
    pub profile: String,
    pub test_problems: usize,
    pub run_dir: std::path::PathBuf,
    pub results: Vec<OptRow>,
    /// Published numbers by label, shown beside ours.
    #[serde(default)]
    pub published: std::collections::BTreeMap<String, crate::spec::optimisation::PublishedLoss>,
}

impl OptResults {
    /// Read `results.json` of `run_dir`.
    pub fn read(run_dir: &Path) -> Result<OptResults> {
        let path = run_dir.join(crate::layout::RESULTS);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Results {
            path,
            reason: e.to_string(),
        })
    }

    /// Write results.json, leaderboard.md/.csv, curves.csv and the curve
    /// figure into `dir`, each atomically.
    pub fn write_all(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(|e| Error::Results {
            path: dir.join(crate::layout::RESULTS),
            reason: e.to_string(),
        })?;
        crate::util::write_atomic(&dir.join(crate::layout::RESULTS), json.as_bytes())?;
        crate::util::write_atomic(
            &dir.join(crate::layout::LEADERBOARD_MD),
            markdown(self).as_bytes(),
        )?;
        crate::util::write_atomic(
            &dir.join(crate::layout::LEADERBOARD_CSV),
            csv(self).as_bytes(),
        )?;
        crate::util::write_atomic(
            &dir.join(crate::layout::LOSS_CURVES),
            curves_csv(self).as_bytes(),
        )?;
        plot_curves(self, &dir.join(crate::layout::LOSS_CURVES_SVG))
    }
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.filter(|x| x.is_finite())
        .map_or("-".into(), |x| format!("{x:.digits$}"))
}

/// The leaderboard rows, best first, as cells.
fn cells(r: &OptResults) -> Vec<[String; 7]> {
    let mut rows: Vec<&OptRow> = r.results.iter().collect();
    rows.sort_by(|a, b| a.log10_loss.total_cmp(&b.log10_loss));
    let best = best_row(&r.results).map(|i| r.results[i].label.clone());
    rows.iter()
        .map(|x| {
            let mark = if Some(&x.label) == best.as_ref() {
                "*"
            } else if x.vs_best.is_some_and(|d| !d.excludes_zero()) {
                "~"
            } else {
                ""
            };
            let chosen = match (&x.tuning, &x.selected) {
                (Some(t), _) => t.chosen.clone(),
                (None, Some(s)) => format!("learned, {s}"),
                (None, None) => "given".into(),
            };
            [
                mark.into(),
                x.label.clone(),
                fmt_opt(Some(x.log10_loss), 3),
                format!(
                    "[{}, {}]",
                    fmt_opt(x.log10_low, 3),
                    fmt_opt(x.log10_high, 3)
                ),
                x.vs_best.map_or("best".into(), |d| {
                    format!("{:+.3} ± {}", d.mean, fmt_opt(d.ci95, 3))
                }),
                chosen,
                r.published
                    .get(&x.label)
                    .map_or("".into(), |p| format!("{:.2} ({})", p.log10_loss, p.source)),
            ]
        })
        .collect()
}

const HEADER: [&str; 7] = [
    "",
    "optimiser",
    "log10 final loss",
    "95% interval",
    "vs best (paired, log10)",
    "rate / selection",
    "published",
];

/// The leaderboard for a terminal.
pub fn terminal(r: &OptResults) -> String {
    let mut table = super::columns::Columns::new(
        HEADER
            .iter()
            .map(|h| super::columns::left(h, 0).gap("  "))
            .collect(),
    );
    for row in cells(r) {
        table.row(row.to_vec());
    }
    let mut out = format!(
        "{}: {} steps of {}, {} test problems (seed {}), run seed {}\n",
        r.benchmark, r.steps, r.problem, r.test_problems, r.seed, r.run_seed
    );
    out += &table.render();
    out += "* best; ~ paired 95% interval of the difference to the best includes 0\n";
    out
}

/// The leaderboard as markdown.
pub fn markdown(r: &OptResults) -> String {
    let mut out = format!(
        "# {}\n\n{} steps of {}; {} test problems (problem seed {}), run seed {}, profile {}.\n\
         Score: log10 of the mean final loss f(theta_T) over the test problems (lower is better).\n\n",
        r.benchmark, r.steps, r.problem, r.test_problems, r.seed, r.run_seed, r.profile
    );
    out += &format!("| {} |\n", HEADER.join(" | "));
    out += &format!("|{}\n", " --- |".repeat(HEADER.len()));
    for row in cells(r) {
        out += &format!("| {} |\n", row.join(" | "));
    }
    out += "\n`*` best; `~` the paired 95% interval of the difference to the best includes 0.\n";
    out
}

/// The leaderboard as CSV (one row per optimiser, in results order).
pub fn csv(r: &OptResults) -> String {
    let f = |v: Option<f64>| v.map_or(String::new(), |x| x.to_string());
    let rows = r.results.iter().map(|x| {
        [
            r.benchmark.clone(),
            x.label.clone(),
            x.algorithm.clone(),
            x.learned.to_string(),
            x.log10_loss.to_string(),
            f(x.log10_low),
            f(x.log10_high),
            f(x.vs_best.map(|d| d.mean)),
            f(x.vs_best.and_then(|d| d.ci95)),
            x.tuning
                .as_ref()
                .map_or(String::new(), |t| t.chosen.clone()),
            x.meta_steps.to_string(),
            x.selected.clone().unwrap_or_default(),
            x.train_seconds.to_string(),
            x.test_seconds.to_string(),
        ]
    });
    crate::util::csv_text(
        &[
            "benchmark",
            "label",
            "algorithm",
            "learned",
            "log10_loss",
            "log10_low",
            "log10_high",
            "vs_best",
            "vs_best_ci95",
            "chosen",
            "meta_steps",
            "selected",
            "train_seconds",
            "test_seconds",
        ],
        rows,
    )
}

/// Every optimiser's loss curve: `label,step,mean,sd`.
pub fn curves_csv(r: &OptResults) -> String {
    let rows = r.results.iter().flat_map(|x| {
        x.curve_mean
            .iter()
            .zip(&x.curve_sd)
            .enumerate()
            .map(|(t, (m, s))| [x.label.clone(), t.to_string(), m.to_string(), s.to_string()])
    });
    crate::util::csv_text(&["label", "step", "mean_loss", "sd_loss"], rows)
}

/// The mean loss curves of every optimiser on a log scale, as SVG (text
/// measured with the figures' font, [`super::figure`]).
pub fn plot_curves(r: &OptResults, svg: &Path) -> Result<()> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| Error::Results {
        path: svg.to_path_buf(),
        reason: e.to_string(),
    };
    let positive: Vec<f64> = r
        .results
        .iter()
        .flat_map(|x| x.curve_mean.iter().copied())
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    if positive.is_empty() {
        tracing::warn!("{}: no finite positive loss to plot", svg.display());
        return Ok(());
    }
    let (lo, hi) = positive
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(a, b), v| (a.min(*v), b.max(*v)));
    let text = super::figure::font_available();
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (900, 560)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut builder = ChartBuilder::on(&root);
        builder.margin(12);
        if text {
            builder
                .caption(
                    format!(
                        "{}: mean loss over {} test problems",
                        r.benchmark, r.test_problems
                    ),
                    ("sans-serif", 20),
                )
                .x_label_area_size(40)
                .y_label_area_size(70);
        }
        let mut chart = builder
            .build_cartesian_2d(0..r.steps, (lo * 0.8..hi * 1.25).log_scale())
            .map_err(|e| err(&e))?;
        if text {
            chart
                .configure_mesh()
                .x_desc("step t")
                .y_desc("f(theta_t)")
                .draw()
                .map_err(|e| err(&e))?;
        }
        for (i, x) in r.results.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let pts: Vec<(usize, f64)> = x
                .curve_mean
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite() && **v > 0.0)
                .map(|(t, v)| (t, *v))
                .collect();
            let series = chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(|e| err(&e))?;
            if text {
                series
                    .label(x.label.clone())
                    .legend(move |(a, b)| PathElement::new(vec![(a, b), (a + 20, b)], color));
            }
        }
        if text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(&e))?;
        } else {
            tracing::warn!(
                "{}: no font could be registered, the figure has no text (see docs/traces.md)",
                svg.display()
            );
        }
        root.present().map_err(|e| err(&e))?;
    }
    crate::util::write_atomic(svg, out.as_bytes())
}

/// An observer ([`crate::algo::Observer`]) that summarises every series a
/// learned optimiser reports (its proposed updates, its gates) per series,
/// step and parameter group over the problems it watches: mean, standard
/// deviation, mean absolute value and the 5th, 50th and 95th percentiles
/// over all coordinates of all watched problems.
#[derive(Default)]
pub struct SeriesStats {
    /// Per (series, step, group), every reported value.
    cells: Vec<((String, usize, String), Vec<f32>)>,
}

impl crate::algo::Observer for SeriesStats {
    fn record(&mut self, series: &str, step: usize, layer: &str, values: &[f32]) {
        let key = (series.to_string(), step, layer.to_string());
        match self.cells.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.extend_from_slice(values),
            None => self.cells.push((key, values.to_vec())),
        }
    }
}

impl SeriesStats {
    /// `series,step,group,n,mean,sd,mean_abs,p5,p50,p95`, one line per
    /// reported (series, step, group), in report order.
    pub fn csv(&self) -> String {
        let rows = self.cells.iter().map(|((series, step, group), v)| {
            let n = v.len().max(1) as f64;
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
            let sd = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
            let mean_abs = v.iter().map(|&x| (x as f64).abs()).sum::<f64>() / n;
            let mut sorted: Vec<f64> = v.iter().map(|&x| x as f64).collect();
            sorted.sort_by(f64::total_cmp);
            let q = |p: f64| sorted[((p * (sorted.len() - 1) as f64).round()) as usize];
            [
                series.clone(),
                step.to_string(),
                group.clone(),
                v.len().to_string(),
                mean.to_string(),
                sd.to_string(),
                mean_abs.to_string(),
                q(0.05).to_string(),
                q(0.5).to_string(),
                q(0.95).to_string(),
            ]
        });
        crate::util::csv_text(
            &[
                "series", "step", "group", "n", "mean", "sd", "mean_abs", "p5", "p50", "p95",
            ],
            rows,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str, finals: &[f64]) -> OptRow {
        let curves: Vec<Vec<f64>> = finals.iter().map(|f| vec![1.0, *f]).collect();
        OptRow::scored(label, label, false, &curves)
    }

    #[test]
    fn the_score_is_log10_of_the_mean_final_loss() {
        let r = row("a", &[0.1, 0.3]);
        assert!((r.log10_loss - 0.2f64.log10()).abs() < 1e-15);
        assert_eq!(r.curve_mean, vec![1.0, 0.2]);
        assert!(r.log10_high.unwrap() > r.log10_loss);
    }

    #[test]
    fn the_paired_difference_is_in_log_space_over_the_same_problems() {
        let mut rows = vec![row("a", &[1.0, 10.0, 100.0]), row("b", &[0.1, 1.0, 10.0])];
        pair_with_best(&mut rows);
        assert_eq!(best_row(&rows), Some(1));
        let d = rows[0].vs_best.unwrap();
        assert!((d.mean - 1.0).abs() < 1e-12, "{d:?}");
        assert_eq!(d.ci95, Some(0.0));
        assert!(rows[1].vs_best.is_none());
    }

    #[test]
    fn a_diverged_row_never_wins() {
        let rows = vec![row("nan", &[f64::NAN, 1.0]), row("ok", &[5.0, 5.0])];
        assert_eq!(best_row(&rows), Some(1));
    }
}
