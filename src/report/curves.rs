//! The validation curves of a few-shot run as one figure:
//! [`crate::layout::CURVES_SVG`] and [`crate::layout::CURVES_PNG`] at the top
//! of the run folder.
//!
//! Two panels side by side share the y axis, validation accuracy (%) on the
//! run's fixed validation episodes: (a) against meta-training wall time in
//! minutes (validation time excluded, the `train_seconds` column), (b)
//! against training episodes (`train_episodes`). One coloured line per
//! algorithm, a dot at every validation point and a light band of its 95%
//! interval (`val_ci95`), read from each algorithm folder's
//! [`crate::layout::CURVE`] by header name ([`crate::data::table`]). The
//! two axes answer different questions: (a) what a fixed budget of time
//! buys, (b) how much each algorithm learns from each episode it sees.
//!
//! An algorithm without a curve, with an unreadable one (a warning) or with
//! no validation rows is absent from the figure; a run with no curve at all
//! has no figure. Text: [`crate::report::figure`], the embedded DejaVu Sans (or
//! `$FEWSHOT_FONT`), never a system font.

use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};
use crate::layout;
use crate::report::figure::{self, DrawResult};
use crate::report::results::RunResults;

/// One validation point of an algorithm's curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Training episodes seen before this validation.
    pub train_episodes: u64,
    /// Seconds of meta-training before this validation (validation excluded).
    pub train_seconds: f64,
    /// Mean validation accuracy, a fraction in [0, 1].
    pub accuracy: f64,
    /// Half-width of its 95% interval (a fraction), when recorded.
    pub ci95: Option<f64>,
}

/// One algorithm's validation curve.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub label: String,
    pub points: Vec<Point>,
}

/// Width and height of the figure, in pixels.
pub const FIGURE_SIZE: (u32, u32) = (1200, 500);
/// Height of the title band above the panels, in pixels.
const TITLE_HEIGHT: u32 = 54;
/// Margin left and right of the panels and below them, in pixels.
const MARGIN: u32 = 10;
/// Opacity of the 95% bands.
const BAND_OPACITY: f64 = 0.15;

/// Colours of the algorithms, in the order of the results (Tableau 10: as
/// distinct as ten colours get, and readable by most colour-blind readers);
/// an eleventh algorithm takes the first colour again.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The validation points of a `curve.csv` (rows without a validation
/// accuracy are training-only points and skipped). The `val_ci95` column
/// is optional.
pub fn read_curve(path: &Path) -> Result<Vec<Point>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |line: usize, why: String| Error::Csv {
        path: path.to_path_buf(),
        reason: format!("line {line}: {why}"),
    };
    let rows = crate::data::table::read(
        path,
        &text,
        &["train_episodes", "train_seconds", "val_accuracy"],
    )?;
    // Same rows in the same order (the reader skips the same empty lines).
    let ci: Vec<String> = crate::data::table::read(path, &text, &["val_ci95"])
        .ok()
        .filter(|c| c.len() == rows.len())
        .map(|c| c.into_iter().map(|r| r.values[0].clone()).collect())
        .unwrap_or_else(|| vec![String::new(); rows.len()]);
    let mut points = Vec::new();
    for (row, ci) in rows.iter().zip(ci) {
        let [episodes, seconds, accuracy] = [0, 1, 2].map(|i| row.values[i].as_str());
        if accuracy.is_empty() {
            continue;
        }
        let number = |name: &str, v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| bad(row.line, format!("{name} `{v}` is not a finite number")))
        };
        points.push(Point {
            train_episodes: episodes.parse().map_err(|_| {
                bad(
                    row.line,
                    format!("train_episodes `{episodes}` is not a count"),
                )
            })?,
            train_seconds: number("train_seconds", seconds)?,
            accuracy: number("val_accuracy", accuracy)?,
            ci95: if ci.is_empty() {
                None
            } else {
                Some(number("val_ci95", &ci)?)
            },
        });
    }
    Ok(points)
}

/// The curves of the algorithms `labels` in the results folder `dir`
/// (`<dir>/<label>/curve.csv`), in that order; an algorithm without a
/// curve, with an unreadable one (logged as a warning) or without
/// validation points is left out.
pub fn collect<'a>(dir: &Path, labels: impl IntoIterator<Item = &'a str>) -> Vec<Curve> {
    labels
        .into_iter()
        .filter_map(|label| {
            let path = dir.join(label).join(layout::CURVE);
            if !path.is_file() {
                return None;
            }
            match read_curve(&path) {
                Ok(points) if !points.is_empty() => Some(Curve {
                    label: label.to_string(),
                    points,
                }),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!("{label} is left out of the curves figure: {e}");
                    None
                }
            }
        })
        .collect()
}

/// The curves of a run's rows (their folders under `dir`).
pub fn of_run(r: &RunResults, dir: &Path) -> Vec<Curve> {
    collect(dir, r.results.iter().map(|x| x.label.as_str()))
}

/// The figure's title for the run `r`.
pub fn title(r: &RunResults) -> String {
    format!(
        "{}: validation accuracy during meta-training ({}-way {}-shot)",
        r.benchmark, r.episode.ways, r.episode.shots
    )
}

/// Which x axis a panel shows.
#[derive(Clone, Copy)]
enum Axis {
    Minutes,
    Episodes,
}

impl Axis {
    fn name(self) -> &'static str {
        match self {
            Axis::Minutes => "(a) against meta-training time",
            Axis::Episodes => "(b) against training episodes",
        }
    }
    fn desc(self) -> &'static str {
        match self {
            Axis::Minutes => "meta-training wall time (minutes, validation excluded)",
            Axis::Episodes => "training episodes (log scale)",
        }
    }
    fn x(self, p: &Point) -> f64 {
        match self {
            Axis::Minutes => p.train_seconds / 60.0,
            Axis::Episodes => p.train_episodes as f64,
        }
    }
}

/// A range from 0 to a little past the largest x (1 when all are 0).
fn x_range(curves: &[Curve], axis: Axis) -> std::ops::Range<f64> {
    let max = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| axis.x(p)))
        .fold(0.0f64, f64::max);
    0.0..if max > 0.0 { max * 1.04 } else { 1.0 }
}

/// The training episodes of every point after the first training episode,
/// from a little below the fewest to a little above the most (a log axis:
/// at least one decade wide).
fn episode_range(curves: &[Curve]) -> std::ops::Range<f64> {
    let xs = curves
        .iter()
        .flat_map(|c| &c.points)
        .filter(|p| p.train_episodes > 0)
        .map(|p| p.train_episodes as f64);
    let (lo, hi) = xs.fold((f64::INFINITY, 0.0f64), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    if !lo.is_finite() {
        return 1.0..10.0;
    }
    let (lo, hi) = (lo / 1.25, hi * 1.25);
    if hi / lo >= 10.0 {
        lo..hi
    } else {
        let mid = (lo * hi).sqrt();
        mid / 10f64.sqrt()..mid * 10f64.sqrt()
    }
}

/// The accuracy range in percent, bands included, padded and kept in
/// [0, 100]; at least 2 points tall.
fn y_range(curves: &[Curve]) -> std::ops::Range<f64> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for p in curves.iter().flat_map(|c| &c.points) {
        let c = p.ci95.unwrap_or(0.0);
        lo = lo.min(100.0 * (p.accuracy - c));
        hi = hi.max(100.0 * (p.accuracy + c));
    }
    if !lo.is_finite() {
        return 0.0..100.0;
    }
    let pad = ((hi - lo) * 0.08).max(1.0);
    (lo - pad).max(0.0)..(hi + pad).min(100.0)
}

/// `20,000` style for episode ticks (only 1, 2 and 5 times a power of ten:
/// the others are empty), `1.5` for minutes.
fn tick(axis: Axis, v: f64) -> String {
    match axis {
        Axis::Minutes => {
            if v.fract().abs() < 1e-9 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        }
        Axis::Episodes => {
            let s = format!("{:.0}", v.max(0.0));
            if !s.starts_with(['1', '2', '5']) || s[1..].chars().any(|c| c != '0') {
                return String::new();
            }
            let mut out = String::new();
            for (i, ch) in s.chars().enumerate() {
                if i > 0 && (s.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(ch);
            }
            out
        }
    }
}

/// Draw the figure on `root`. With `text` false every text is fully
/// transparent (the bitmap backend then skips it, so no font is needed).
fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    curves: &[Curve],
    title: &str,
    text: bool,
) -> DrawResult<DB> {
    let ink = |c: RGBColor| if text { c.to_rgba() } else { TRANSPARENT };
    let font = |size: u32, c: RGBColor| ("sans-serif", size).into_font().color(&ink(c));
    root.fill(&WHITE)?;
    let (w, _) = root.dim_in_pixel();
    root.draw(&Text::new(
        title,
        (w as i32 / 2, 17),
        font(17, BLACK).pos(Pos::new(HPos::Center, VPos::Center)),
    ))?;
    root.draw(&Text::new(
        "mean accuracy on the fixed validation episodes at each validation point; band: its 95% interval",
        (w as i32 / 2, 40),
        font(13, RGBColor(60, 60, 60)).pos(Pos::new(HPos::Center, VPos::Center)),
    ))?;
    let body = root.margin(TITLE_HEIGHT, MARGIN, MARGIN, MARGIN);
    let panels = body.split_evenly((1, 2));
    let y = y_range(curves);
    panel(
        &panels[0],
        curves,
        Axis::Minutes,
        x_range(curves, Axis::Minutes),
        y.clone(),
        text,
    )?;
    panel(
        &panels[1],
        curves,
        Axis::Episodes,
        episode_range(curves).log_scale(),
        y,
        text,
    )?;
    root.present()
}

/// One panel: every curve against `axis` on the x coordinate `x` (linear
/// minutes or logarithmic episodes).
fn panel<DB, X>(
    area: &DrawingArea<DB, Shift>,
    curves: &[Curve],
    axis: Axis,
    x: X,
    y: std::ops::Range<f64>,
    text: bool,
) -> DrawResult<DB>
where
    DB: DrawingBackend,
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let ink = |c: RGBColor| if text { c.to_rgba() } else { TRANSPARENT };
    let font = |size: u32, c: RGBColor| ("sans-serif", size).into_font().color(&ink(c));
    let (pw, _) = area.dim_in_pixel();
    area.draw(&Text::new(
        axis.name(),
        (pw as i32 / 2, 4),
        font(14, BLACK).pos(Pos::new(HPos::Center, VPos::Top)),
    ))?;
    // A log axis has a key point twice at each power of ten (the last
    // multiple of one decade and the first of the next): label it once.
    let labelled = std::cell::RefCell::new(std::collections::HashSet::new());
    let x_label = |v: &f64| {
        let t = tick(axis, *v);
        if labelled.borrow_mut().insert(t.clone()) {
            t
        } else {
            String::new()
        }
    };
    let mut chart = ChartBuilder::on(area)
        .margin(6)
        .margin_top(24)
        .margin_right(18)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        // A log axis puts a key point at every 1..9 multiple of each power
        // of ten; the labels name 1, 2 and 5 (see `tick`).
        .x_labels(match axis {
            Axis::Minutes => 8,
            Axis::Episodes => 40,
        })
        .y_labels(8)
        .x_label_formatter(&x_label)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_desc(axis.desc())
        .y_desc("validation accuracy (%)")
        .label_style(font(11, BLACK))
        .axis_desc_style(font(12, BLACK))
        .max_light_lines(0)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    for (i, c) in curves.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        // A log axis has no 0: a point before any training episode is
        // left out of that panel.
        let points: Vec<&Point> = c
            .points
            .iter()
            .filter(|p| matches!(axis, Axis::Minutes) || p.train_episodes > 0)
            .collect();
        let at = |p: &&Point| (axis.x(p), 100.0 * p.accuracy);
        if points.len() > 1 && points.iter().all(|p| p.ci95.is_some()) {
            let edge = |p: &&Point, sign: f64| {
                (
                    axis.x(p),
                    100.0 * (p.accuracy + sign * p.ci95.unwrap_or(0.0)),
                )
            };
            let band: Vec<(f64, f64)> = points
                .iter()
                .map(|p| edge(p, -1.0))
                .chain(points.iter().rev().map(|p| edge(p, 1.0)))
                .collect();
            chart.draw_series(std::iter::once(Polygon::new(
                band,
                colour.mix(BAND_OPACITY).filled(),
            )))?;
        }
        chart
            .draw_series(LineSeries::new(
                points.iter().map(at),
                colour.stroke_width(2),
            ))?
            .label(c.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        chart.draw_series(
            points
                .iter()
                .map(|p| Circle::new(at(p), 3, colour.filled())),
        )?;
    }
    // The legend measures its labels: only with a font.
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .margin(8)
            .label_font(font(13, BLACK))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .draw()?;
    }
    Ok(())
}

fn draw_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Results {
        path: path.to_path_buf(),
        reason: format!("cannot draw the curves figure: {e}"),
    }
}

/// The figure as SVG text (`<text>` elements, family `sans-serif`).
pub fn svg(curves: &[Curve], title: &str) -> Result<String> {
    figure::svg(FIGURE_SIZE, |root| draw(root, curves, title, true))
        .map_err(|e| draw_error(Path::new(layout::CURVES_SVG), e))
}

/// The figure as an RGB PNG (text only when a font is registered).
pub fn png(curves: &[Curve], title: &str) -> Result<Vec<u8>> {
    render_png(curves, title, figure::font_available())
}

fn render_png(curves: &[Curve], title: &str, text: bool) -> Result<Vec<u8>> {
    figure::png(FIGURE_SIZE, |root| draw(root, curves, title, text))
        .map_err(|e| draw_error(Path::new(layout::CURVES_PNG), e))
}

/// Write [`layout::CURVES_SVG`] and [`layout::CURVES_PNG`] (each
/// atomically) into the results folder `dir` from its algorithms' curves;
/// returns their paths, or `None` (and writes nothing) when no algorithm
/// has a validation point.
pub fn write(r: &RunResults, dir: &Path) -> Result<Option<[PathBuf; 2]>> {
    let curves = of_run(r, dir);
    if curves.is_empty() {
        return Ok(None);
    }
    let title = title(r);
    let paths = [layout::CURVES_SVG, layout::CURVES_PNG].map(|f| dir.join(f));
    crate::util::write_atomic(&paths[0], svg(&curves, &title)?.as_bytes())?;
    crate::util::write_atomic(&paths[1], &png(&curves, &title)?)?;
    tracing::debug!(
        algorithms = curves.len(),
        "wrote {} and {}",
        paths[0].display(),
        paths[1].display()
    );
    Ok(Some(paths))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str =
        "step,train_episodes,train_seconds,train_loss,train_accuracy,val_accuracy,val_ci95\n";

    fn results(dir: &Path, labels: &[&str]) -> RunResults {
        let rows: Vec<serde_json::Value> = labels
            .iter()
            .map(|l| {
                serde_json::to_value(crate::report::results::AlgoResult::scored(l, &[0.4, 0.6]))
                    .unwrap()
            })
            .collect();
        let v = serde_json::json!({
            "benchmark": "tiny", "dataset": "folder",
            "episode": {"ways": 5, "shots": 1, "queries": 15},
            "transductive": false, "run_dir": dir, "results": rows
        });
        serde_json::from_value(v).expect("a RunResults")
    }

    /// The contents of the SVG's `<text>` elements, trimmed.
    fn texts(svg: &str) -> Vec<&str> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = &t[t.find('>')? + 1..];
                Some(body[..body.find("</text>")?].trim())
            })
            .collect()
    }

    fn curve(dir: &Path, label: &str, body: &str) {
        std::fs::create_dir_all(dir.join(label)).unwrap();
        std::fs::write(
            dir.join(label).join(layout::CURVE),
            format!("{HEADER}{body}"),
        )
        .unwrap();
    }

    #[test]
    fn validation_rows_are_read_by_header_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.csv");
        std::fs::write(
            &p,
            "\u{feff}val_accuracy,extra,train_seconds,train_episodes\n0.5,x,30.0,100\n,y,45,150\n0.75,z,90.5,300\n",
        )
        .unwrap();
        let pts = read_curve(&p).unwrap();
        assert_eq!(
            pts,
            vec![
                Point {
                    train_episodes: 100,
                    train_seconds: 30.0,
                    accuracy: 0.5,
                    ci95: None
                },
                Point {
                    train_episodes: 300,
                    train_seconds: 90.5,
                    accuracy: 0.75,
                    ci95: None
                },
            ]
        );
        std::fs::write(&p, format!("{HEADER}1,5,2.0,1.0,0.5,0.6,0.02\n")).unwrap();
        assert_eq!(read_curve(&p).unwrap()[0].ci95, Some(0.02));
        std::fs::write(&p, format!("{HEADER}1,5,2.0,1.0,0.5,nope,0.02\n")).unwrap();
        let e = read_curve(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("nope"), "{e}");
    }

    #[test]
    fn the_figure_is_written_with_every_label_and_missing_curves_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        curve(
            d,
            "fomaml",
            "10,320,30.0,1.2,0.5,0.61,0.02\n20,640,60.0,1.0,0.6,0.72,0.02\n",
        );
        curve(d, "reptile", "5,25,40.5,0.9,0.7,0.55,0.03\n");
        // Training rows only: no validation point.
        curve(d, "meta-lstm", "7,7,12.0,1.5,0.3,,\n");
        // `absent` has no folder at all.
        let r = results(d, &["fomaml", "reptile", "meta-lstm", "absent"]);
        let curves = of_run(&r, d);
        let labels: Vec<&str> = curves.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["fomaml", "reptile"]);

        let paths = write(&r, d).unwrap().expect("a figure");
        assert_eq!(paths[0], d.join(layout::CURVES_SVG));
        let svg = std::fs::read_to_string(&paths[0]).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        let texts = texts(&svg);
        for needle in [
            "fomaml",
            "reptile",
            "(a) against meta-training time",
            "(b) against training episodes",
            "validation accuracy (%)",
        ] {
            assert!(texts.contains(&needle), "the SVG lacks {needle}: {texts:?}");
        }
        assert!(!texts.contains(&"meta-lstm") && !texts.contains(&"absent"));
        let img = image::load_from_memory(&std::fs::read(&paths[1]).unwrap())
            .unwrap()
            .to_rgb8();
        assert_eq!(img.dimensions(), FIGURE_SIZE);
        // The first two palette colours are drawn.
        for c in &PALETTE[..2] {
            assert!(
                img.pixels().any(|p| p.0 == [c.0, c.1, c.2]),
                "no pixel of {c:?}"
            );
        }
    }

    #[test]
    fn no_curve_at_all_writes_no_figure() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        curve(d, "reptile", "7,7,12.0,1.5,0.3,,\n");
        // An unreadable curve is left out with a warning, not an error.
        curve(d, "fomaml", "1,x,2.0,1.0,0.5,0.6,0.02\n");
        let r = results(d, &["reptile", "fomaml", "maml"]);
        assert_eq!(write(&r, d).unwrap(), None);
        assert!(!d.join(layout::CURVES_SVG).exists());
        assert!(!d.join(layout::CURVES_PNG).exists());
    }

    #[test]
    fn png_without_a_font_still_has_lines() {
        let c = vec![Curve {
            label: "a".into(),
            points: vec![Point {
                train_episodes: 0,
                train_seconds: 0.0,
                accuracy: 0.2,
                ci95: None,
            }],
        }];
        let img = image::load_from_memory(&render_png(&c, "t", false).unwrap())
            .unwrap()
            .to_rgb8();
        let c = PALETTE[0];
        assert!(img.pixels().any(|p| p.0 == [c.0, c.1, c.2]));
    }

    #[test]
    fn ticks_read_as_numbers() {
        assert_eq!(tick(Axis::Episodes, 1000000.0), "1,000,000");
        assert_eq!(tick(Axis::Episodes, 20000.0), "20,000");
        assert_eq!(tick(Axis::Episodes, 500.0), "500");
        assert_eq!(tick(Axis::Episodes, 300.0), "");
        assert_eq!(tick(Axis::Episodes, 1500.0), "");
        assert_eq!(tick(Axis::Minutes, 1.5), "1.5");
        assert_eq!(tick(Axis::Minutes, 15.0), "15");
    }
}
