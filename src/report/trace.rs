//! Gate traces of the meta-learner LSTM: records, files and the figure.
//!
//! The Ravi & Larochelle (ICLR 2017) meta-learner updates a learner's
//! parameters with a learned forget gate `f_t` and input gate `i_t` per
//! coordinate and step,
//!
//! ```text
//! theta_t = f_t * theta_{t-1} - i_t * grad_t,   t = 1..=T
//! ```
//!
//! Figure 2 of the paper shows, for each learner layer, the forget and input
//! gate values against the update step, one line per test episode. An
//! algorithm reports its gates as the series [`FORGET`] and [`INPUT`]
//! (one value per learner coordinate, layer by layer and step by step)
//! through [`crate::algo::Algorithm::observe`]. This module turns them into
//! one [`GateRecord`] per layer and step ([`GateCollector`], the observer;
//! [`summarize`] does the same from whole gate vectors), writes and reads
//! them as JSON lines ([`write_jsonl`], [`read_jsonl`]) and as a flat
//! CSV ([`write_csv`]), and draws the Figure-2-style panels as SVG and PNG
//! ([`plot`]). `docs/traces.md` describes the files and how to read the
//! figure.
//!
//! Text in the figures: [`crate::report::figure`] (never a system font).

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::report::figure::{self, font_available, DrawResult};

/// Format version written in every record.
///
/// Bumped on any incompatible change of [`GateRecord`]; [`read_jsonl`]
/// rejects records of any other version.
pub const TRACE_VERSION: u32 = 2;

/// Versions [`read_jsonl`] reads: version 1 records lack the percentiles
/// (their figure shows layer means).
pub const READABLE_VERSIONS: [u32; 2] = [1, 2];

/// Percentiles over a layer's coordinates kept in every record (the bands
/// of the figure: 10-90 and 25-75, and the median).
pub const PERCENTILES: [f64; 5] = [10.0, 25.0, 50.0, 75.0, 90.0];

/// Gate statistics of one learner layer at one update step of one episode.
///
/// Gate values are after the sigmoid, so every value lies in (0, 1) and is
/// dimensionless. Statistics are over the layer's coordinates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateRecord {
    /// [`TRACE_VERSION`].
    pub version: u32,
    /// Benchmark name.
    pub benchmark: String,
    /// Algorithm label, e.g. `"meta-lstm"`.
    pub algorithm: String,
    /// Test-episode index.
    pub episode: u64,
    /// Update step, `1..=T`.
    pub step: usize,
    /// Learner layer: `"conv1"`..`"conv4"`, `"head"`.
    pub layer: String,
    /// Number of learner coordinates (parameters) in this layer.
    pub coordinates: usize,
    /// Mean of the forget gate over the layer's coordinates.
    pub forget_mean: f64,
    /// Population standard deviation of the forget gate.
    pub forget_std: f64,
    /// Smallest forget gate value.
    pub forget_min: f64,
    /// Largest forget gate value.
    pub forget_max: f64,
    /// Mean of the input gate over the layer's coordinates.
    pub input_mean: f64,
    /// Population standard deviation of the input gate.
    pub input_std: f64,
    /// Smallest input gate value.
    pub input_min: f64,
    /// Largest input gate value.
    pub input_max: f64,
    /// A few fixed coordinate indices within the layer (0-based, relative to
    /// the layer's first coordinate); see [`sample_indices`].
    pub sample_index: Vec<usize>,
    /// Forget gate values at `sample_index`.
    pub forget_samples: Vec<f64>,
    /// Input gate values at `sample_index`.
    pub input_samples: Vec<f64>,
    /// Forget gate at the [`PERCENTILES`] over the layer's coordinates
    /// (linear interpolation between order statistics; empty in version 1).
    #[serde(default)]
    pub forget_percentiles: Vec<f64>,
    /// Input gate at the [`PERCENTILES`].
    #[serde(default)]
    pub input_percentiles: Vec<f64>,
}

/// `xs` at each of [`PERCENTILES`]: linear interpolation between the order
/// statistics at rank `p / 100 * (n - 1)` (numpy's default).
pub fn percentiles(xs: &[f32]) -> Vec<f64> {
    let mut v: Vec<f64> = xs.iter().map(|&x| x as f64).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    PERCENTILES
        .iter()
        .map(|p| {
            let rank = p / 100.0 * (n - 1) as f64;
            let (lo, frac) = (rank.floor() as usize, rank.fract());
            let hi = (lo + 1).min(n - 1);
            v[lo] + frac * (v[hi] - v[lo])
        })
        .collect()
}

/// `samples` coordinate indices spread evenly over `0..coordinates`: the
/// centres of `samples` equal bins, so they are distinct and increasing, and
/// the same for every episode and step. At most `coordinates` indices.
pub fn sample_indices(coordinates: usize, samples: usize) -> Vec<usize> {
    let s = samples.min(coordinates);
    (0..s)
        .map(|k| (2 * k + 1) * coordinates / (2 * s))
        .collect()
}

/// Mean, population std, min and max of `xs` (non-empty), in f64.
fn stats(xs: &[f32]) -> (f64, f64, f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    let min = xs.iter().map(|&x| x as f64).fold(f64::INFINITY, f64::min);
    let max = xs
        .iter()
        .map(|&x| x as f64)
        .fold(f64::NEG_INFINITY, f64::max);
    (mean, var.sqrt(), min, max)
}

/// What every record of one episode shares.
struct Origin<'a> {
    benchmark: &'a str,
    algorithm: &'a str,
    episode: u64,
    samples_per_layer: usize,
}

impl Origin<'_> {
    /// The record of one layer (non-empty) at step `step`.
    fn record(&self, step: usize, layer: &str, f: &[f32], i: &[f32]) -> GateRecord {
        let (forget_mean, forget_std, forget_min, forget_max) = stats(f);
        let (input_mean, input_std, input_min, input_max) = stats(i);
        let sample_index = sample_indices(f.len(), self.samples_per_layer);
        GateRecord {
            version: TRACE_VERSION,
            benchmark: self.benchmark.to_string(),
            algorithm: self.algorithm.to_string(),
            episode: self.episode,
            step,
            layer: layer.to_string(),
            coordinates: f.len(),
            forget_mean,
            forget_std,
            forget_min,
            forget_max,
            input_mean,
            input_std,
            input_min,
            input_max,
            forget_samples: sample_index.iter().map(|&k| f[k] as f64).collect(),
            input_samples: sample_index.iter().map(|&k| i[k] as f64).collect(),
            sample_index,
            forget_percentiles: percentiles(f),
            input_percentiles: percentiles(i),
        }
    }
}

/// One record per layer for the gates of one update step.
///
/// `forget` and `input` hold the gate values of all learner coordinates at
/// step `step`, flattened in parameter order; `layers` maps each layer name
/// to its coordinate range in that order (as the meta-learner's
/// `layer_ranges()` gives it). A layer with an empty range gives no record.
///
/// # Panics
///
/// If `forget` and `input` differ in length or a range ends past them: both
/// come from the same meta-learner, so a mismatch is a bug, not bad input.
#[allow(clippy::too_many_arguments)] // the record's origin, step and values, each distinct
pub fn summarize(
    benchmark: &str,
    algorithm: &str,
    episode: u64,
    step: usize,
    layers: &[(String, Range<usize>)],
    forget: &[f32],
    input: &[f32],
    samples_per_layer: usize,
) -> Vec<GateRecord> {
    assert_eq!(
        forget.len(),
        input.len(),
        "forget and input gates must cover the same coordinates"
    );
    let origin = Origin {
        benchmark,
        algorithm,
        episode,
        samples_per_layer,
    };
    layers
        .iter()
        .filter(|(_, r)| !r.is_empty())
        .map(|(name, r)| {
            assert!(
                r.end <= forget.len(),
                "layer {name} spans {r:?} but only {} gate values were given",
                forget.len()
            );
            origin.record(step, name, &forget[r.clone()], &input[r.clone()])
        })
        .collect()
}

/// Records of one whole episode: `gates[t - 1]` holds the `(forget, input)`
/// vectors of update step `t`. Records are ordered by step, then layer.
pub fn summarize_episode(
    benchmark: &str,
    algorithm: &str,
    episode: u64,
    layers: &[(String, Range<usize>)],
    gates: &[(Vec<f32>, Vec<f32>)],
    samples_per_layer: usize,
) -> Vec<GateRecord> {
    gates
        .iter()
        .enumerate()
        .flat_map(|(t, (f, i))| {
            summarize(
                benchmark,
                algorithm,
                episode,
                t + 1,
                layers,
                f,
                i,
                samples_per_layer,
            )
        })
        .collect()
}

/// The name of the forget-gate series a trace reads
/// ([`crate::algo::Algorithm::series`]).
pub const FORGET: &str = "forget";
/// The name of the input-gate series a trace reads.
pub const INPUT: &str = "input";

/// Whether an algorithm reporting `series` has the gates a trace records
/// (both [`FORGET`] and [`INPUT`]).
pub fn traceable(series: &[&str]) -> bool {
    [FORGET, INPUT].iter().all(|g| series.contains(g))
}

/// An observer ([`crate::algo::Observer`]) that collects one episode's
/// [`FORGET`] and [`INPUT`] series and summarises them per layer and step,
/// as [`summarize_episode`] does (other series are ignored).
pub struct GateCollector {
    benchmark: String,
    algorithm: String,
    episode: u64,
    samples_per_layer: usize,
    /// Per (step, layer), in order of first report.
    cells: Vec<Cell>,
}

/// The forget and input values of one layer at one step, as reported.
struct Cell {
    step: usize,
    layer: String,
    gates: [Option<Vec<f32>>; 2],
}

impl GateCollector {
    pub fn new(benchmark: &str, algorithm: &str, episode: u64, samples_per_layer: usize) -> Self {
        GateCollector {
            benchmark: benchmark.to_string(),
            algorithm: algorithm.to_string(),
            episode,
            samples_per_layer,
            cells: Vec::new(),
        }
    }

    /// One record per reported (step, layer), in the order they were first
    /// reported (an algorithm reports step by step, layers in order); a
    /// layer without coordinates gives none.
    ///
    /// # Panics
    ///
    /// If a layer's forget and input values are not both reported, or
    /// differ in length: a bug of the reporting algorithm.
    pub fn records(&self) -> Vec<GateRecord> {
        let origin = Origin {
            benchmark: &self.benchmark,
            algorithm: &self.algorithm,
            episode: self.episode,
            samples_per_layer: self.samples_per_layer,
        };
        self.cells
            .iter()
            .filter_map(|Cell { step, layer, gates }| {
                let [Some(f), Some(i)] = gates else {
                    panic!("step {step}, layer {layer}: forget and input must both be reported");
                };
                assert_eq!(
                    f.len(),
                    i.len(),
                    "forget and input gates must cover the same coordinates"
                );
                (!f.is_empty()).then(|| origin.record(*step, layer, f, i))
            })
            .collect()
    }
}

impl crate::algo::Observer for GateCollector {
    fn record(&mut self, series: &str, step: usize, layer: &str, values: &[f32]) {
        let slot = match series {
            FORGET => 0,
            INPUT => 1,
            _ => return,
        };
        let at = match self
            .cells
            .iter()
            .rposition(|c| c.step == step && c.layer == layer)
        {
            Some(at) => at,
            None => {
                self.cells.push(Cell {
                    step,
                    layer: layer.to_string(),
                    gates: [None, None],
                });
                self.cells.len() - 1
            }
        };
        self.cells[at].gates[slot] = Some(values.to_vec());
    }
}

/// Write `records` as JSON lines (one record per line), atomically.
pub fn write_jsonl(path: &Path, records: &[GateRecord]) -> Result<()> {
    let mut out = String::new();
    for r in records {
        let line = serde_json::to_string(r).map_err(|e| Error::Config {
            source_name: path.display().to_string(),
            reason: format!(
                "cannot encode the record of episode {} step {} layer {}: {e}",
                r.episode, r.step, r.layer
            ),
        })?;
        out.push_str(&line);
        out.push('\n');
    }
    crate::util::write_atomic(path, out.as_bytes())?;
    tracing::info!(records = records.len(), "wrote {}", path.display());
    Ok(())
}

/// Read a JSON-lines gate trace. Blank lines are skipped; a record whose
/// `version` is not one of [`READABLE_VERSIONS`], or that does not parse,
/// is an [`Error::Config`] naming the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<GateRecord>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut records = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| Error::Config {
            source_name: format!("{}:{}", path.display(), n + 1),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not a JSON record: {e}")))?;
        match value.get("version").and_then(serde_json::Value::as_u64) {
            Some(v) if READABLE_VERSIONS.contains(&(v as u32)) => {}
            Some(v) => {
                return Err(bad(format!(
                    "gate trace version {v} is not supported (this build reads versions \
                     {READABLE_VERSIONS:?}, writes {TRACE_VERSION}); regenerate the trace with this build"
                )))
            }
            None => {
                return Err(bad(format!(
                    "no numeric `version` field (expected {TRACE_VERSION}); not a gate trace?"
                )))
            }
        }
        let record: GateRecord =
            serde_json::from_value(value).map_err(|e| bad(format!("not a gate record: {e}")))?;
        records.push(record);
    }
    Ok(records)
}

/// Column names of [`write_csv`], in order.
pub const CSV_HEADER: &[&str] = &[
    "version",
    "benchmark",
    "algorithm",
    "episode",
    "step",
    "layer",
    "coordinates",
    "forget_mean",
    "forget_std",
    "forget_min",
    "forget_max",
    "input_mean",
    "input_std",
    "input_min",
    "input_max",
    "sample_index",
    "forget_samples",
    "input_samples",
    "forget_percentiles",
    "input_percentiles",
];

fn joined<T: ToString>(xs: &[T]) -> String {
    xs.iter().map(T::to_string).collect::<Vec<_>>().join(";")
}

/// Write `records` as a flat CSV, one row per record (columns
/// [`CSV_HEADER`]; the sample and percentile lists joined with `;`),
/// atomically.
pub fn write_csv(path: &Path, records: &[GateRecord]) -> Result<()> {
    let rows = records.iter().map(|r| {
        [
            r.version.to_string(),
            r.benchmark.clone(),
            r.algorithm.clone(),
            r.episode.to_string(),
            r.step.to_string(),
            r.layer.clone(),
            r.coordinates.to_string(),
            r.forget_mean.to_string(),
            r.forget_std.to_string(),
            r.forget_min.to_string(),
            r.forget_max.to_string(),
            r.input_mean.to_string(),
            r.input_std.to_string(),
            r.input_min.to_string(),
            r.input_max.to_string(),
            joined(&r.sample_index),
            joined(&r.forget_samples),
            joined(&r.input_samples),
            joined(&r.forget_percentiles),
            joined(&r.input_percentiles),
        ]
    });
    let out = crate::util::csv_text(CSV_HEADER, rows);
    crate::util::write_atomic(path, out.as_bytes())?;
    tracing::info!(records = records.len(), "wrote {}", path.display());
    Ok(())
}

/// Write all four trace files ([`crate::layout::GATES_JSONL`], [`crate::layout::GATES_CSV`], [`crate::layout::GATES_SVG`],
/// [`crate::layout::GATES_PNG`]) into `dir`; returns their paths in that order.
pub fn write_all(dir: &Path, records: &[GateRecord], title: &str) -> Result<[PathBuf; 4]> {
    let paths = [
        crate::layout::GATES_JSONL,
        crate::layout::GATES_CSV,
        crate::layout::GATES_SVG,
        crate::layout::GATES_PNG,
    ]
    .map(|f| dir.join(f));
    write_jsonl(&paths[0], records)?;
    write_csv(&paths[1], records)?;
    plot(records, title, &paths[2], &paths[3])?;
    Ok(paths)
}

// ---------------------------------------------------------------- figure --

/// Width of one panel of the figure, in pixels.
pub const PANEL_WIDTH: u32 = 300;
/// Height of one panel of the figure, in pixels.
pub const PANEL_HEIGHT: u32 = 260;
/// Height of the title band above the panels, in pixels.
pub const TITLE_HEIGHT: u32 = 54;
/// Margin left and right of the panels and below them, in pixels.
pub const FIGURE_MARGIN: u32 = 10;

/// Size in pixels of the figure for `layers` learner layers (columns): two
/// rows of panels below a title band.
pub fn figure_size(layers: usize) -> (u32, u32) {
    let cols = layers.max(1) as u32;
    (
        2 * FIGURE_MARGIN + cols * PANEL_WIDTH,
        TITLE_HEIGHT + 2 * PANEL_HEIGHT + FIGURE_MARGIN,
    )
}

/// Which gate a panel row shows.
#[derive(Clone, Copy)]
enum Gate {
    Forget,
    Input,
}

impl Gate {
    fn name(self) -> &'static str {
        match self {
            Gate::Forget => "forget gate",
            Gate::Input => "input gate",
        }
    }
    fn mean(self, r: &GateRecord) -> f64 {
        match self {
            Gate::Forget => r.forget_mean,
            Gate::Input => r.input_mean,
        }
    }
    fn samples(self, r: &GateRecord) -> &[f64] {
        match self {
            Gate::Forget => &r.forget_samples,
            Gate::Input => &r.input_samples,
        }
    }
    fn percentiles(self, r: &GateRecord) -> &[f64] {
        match self {
            Gate::Forget => &r.forget_percentiles,
            Gate::Input => &r.input_percentiles,
        }
    }
}

/// The records arranged for drawing: layers in order of first appearance,
/// and for each layer the episodes in order of first appearance, each with
/// its records sorted by step.
struct Figure<'a> {
    layers: Vec<(&'a str, Vec<Vec<&'a GateRecord>>)>,
    episodes: usize,
    steps: Range<usize>,
}

impl<'a> Figure<'a> {
    fn new(records: &'a [GateRecord]) -> Self {
        let mut layers: Vec<(&str, Vec<Vec<&GateRecord>>)> = Vec::new();
        let mut episode_slot: HashMap<u64, usize> = HashMap::new();
        for r in records {
            let li = match layers.iter().position(|(n, _)| *n == r.layer) {
                Some(i) => i,
                None => {
                    layers.push((&r.layer, Vec::new()));
                    layers.len() - 1
                }
            };
            let next = episode_slot.len();
            let e = *episode_slot.entry(r.episode).or_insert(next);
            let lines = &mut layers[li].1;
            if lines.len() <= e {
                lines.resize(e + 1, Vec::new());
            }
            lines[e].push(r);
        }
        for (_, lines) in &mut layers {
            for line in lines.iter_mut() {
                line.sort_by_key(|r| r.step);
            }
        }
        let lo = records.iter().map(|r| r.step).min().unwrap_or(1);
        let hi = records.iter().map(|r| r.step).max().unwrap_or(1);
        Figure {
            layers,
            episodes: episode_slot.len(),
            steps: lo..hi + 1,
        }
    }

    /// Per step of one panel, the [`PERCENTILES`] averaged over the
    /// episodes (records without percentiles, version 1, are left out).
    fn bands(&self, layer: usize, gate: Gate) -> Vec<(f64, Vec<f64>)> {
        let mut out = vec![];
        for step in self.steps.clone() {
            let rows: Vec<&[f64]> = self.layers[layer]
                .1
                .iter()
                .flatten()
                .filter(|r| r.step == step)
                .map(|r| gate.percentiles(r))
                .filter(|p| p.len() == PERCENTILES.len())
                .collect();
            if !rows.is_empty() {
                let n = rows.len() as f64;
                let mean = (0..PERCENTILES.len())
                    .map(|k| rows.iter().map(|p| p[k]).sum::<f64>() / n)
                    .collect();
                out.push((step as f64, mean));
            }
        }
        out
    }

    /// Value range of one panel (means, percentiles and sampled
    /// coordinates), padded so that lines never touch the frame and a
    /// constant gate still gets a visible span.
    fn y_range(&self, layer: usize, gate: Gate) -> Range<f64> {
        let values = self.layers[layer]
            .1
            .iter()
            .flatten()
            .flat_map(|r| {
                std::iter::once(gate.mean(r))
                    .chain(gate.samples(r).iter().copied())
                    .chain(gate.percentiles(r).iter().copied())
            })
            .filter(|v| v.is_finite());
        let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
        if lo > hi {
            return 0.0..1.0;
        }
        let pad = ((hi - lo) * 0.08).max(5e-4);
        (lo - pad)..(hi + pad)
    }
}

/// Opacity of one episode's line.
const LINE_OPACITY: f64 = 0.6;

/// Colour of the percentile bands and the median line.
const BAND_COLOUR: RGBColor = RGBColor(40, 70, 150);

/// A line through `points`, or marks when there is a single step (a
/// one-point line draws nothing).
fn draw_line<DB: DrawingBackend>(
    chart: &mut ChartContext<
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    points: Vec<(f64, f64)>,
    colour: RGBAColor,
    width: u32,
    steps: usize,
) -> DrawResult<DB> {
    if steps == 1 {
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, colour.filled())),
        )?;
    } else {
        chart.draw_series(LineSeries::new(points, colour.stroke_width(width)))?;
    }
    Ok(())
}

/// A dark, saturated colour for episode `e`: hues spaced by the golden
/// ratio, so neighbouring episodes differ and any number of them is covered.
fn episode_colour(e: usize) -> HSLColor {
    let hue = (e as f64 * 0.618_033_988_749_895).fract();
    HSLColor(hue, 0.75, 0.40)
}

/// Label formatter with as many decimals as the span needs (1 to 6).
fn decimals_for(span: f64) -> usize {
    if span.is_nan() || span <= 0.0 {
        return 3;
    }
    ((-span.log10()).ceil() as i64 + 1).clamp(1, 6) as usize
}

/// Draw the figure on `root`. With `text` false every text is fully
/// transparent (the bitmap backend then skips it, so no font is needed).
fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    fig: &Figure,
    title: &str,
    text: bool,
) -> DrawResult<DB> {
    let ink = |c: RGBColor| if text { c.to_rgba() } else { TRANSPARENT };
    let font = |size: u32, c: RGBColor| ("sans-serif", size).into_font().color(&ink(c));
    root.fill(&WHITE)?;
    let (w, _) = root.dim_in_pixel();
    let banded = (0..fig.layers.len()).any(|l| !fig.bands(l, Gate::Forget).is_empty());
    // Two lines: the title, then how to read the panels (one line was
    // wider than a five-layer figure and was cut at both ends).
    // The caller's title names the benchmark and the episodes traced.
    let legend = if banded {
        "bands: 10-90th and 25-75th percentile over each layer's coordinates; line: median; thin lines: sampled coordinates"
    } else {
        "mean over each layer's coordinates"
    };
    root.draw(&Text::new(
        title,
        (w as i32 / 2, 17),
        font(17, BLACK).pos(Pos::new(HPos::Center, VPos::Center)),
    ))?;
    root.draw(&Text::new(
        legend,
        (w as i32 / 2, 40),
        font(13, RGBColor(60, 60, 60)).pos(Pos::new(HPos::Center, VPos::Center)),
    ))?;
    let body = root.margin(TITLE_HEIGHT, FIGURE_MARGIN, FIGURE_MARGIN, FIGURE_MARGIN);
    let cols = fig.layers.len().max(1);
    let panels = body.split_evenly((2, cols));
    let x = fig.steps.start as f64 - 0.3..(fig.steps.end - 1) as f64 + 0.3;
    for (row, gate) in [Gate::Forget, Gate::Input].into_iter().enumerate() {
        for (col, (layer, lines)) in fig.layers.iter().enumerate() {
            let area = &panels[row * cols + col];
            let (pw, _) = area.dim_in_pixel();
            area.draw(&Text::new(
                format!("{layer}: {}", gate.name()),
                (pw as i32 / 2, 4),
                font(14, BLACK).pos(Pos::new(HPos::Center, VPos::Top)),
            ))?;
            let y = fig.y_range(col, gate);
            let digits = decimals_for(y.end - y.start);
            let mut chart = ChartBuilder::on(area)
                .margin(6)
                .margin_top(24)
                .margin_right(10)
                .x_label_area_size(34)
                .y_label_area_size(60)
                .build_cartesian_2d(x.clone(), y)?;
            let steps = fig.steps.len();
            chart
                .configure_mesh()
                .x_labels(steps.min(10))
                .y_labels(6)
                .x_label_formatter(&|v| format!("{}", v.round() as i64))
                .y_label_formatter(&|v| format!("{v:.digits$}"))
                .x_desc("update step")
                .y_desc(gate.name())
                .label_style(font(11, BLACK))
                .axis_desc_style(font(12, BLACK))
                .max_light_lines(0)
                .bold_line_style(RGBColor(225, 225, 225))
                .draw()?;
            // The spread over coordinates (Ravi & Larochelle's Figure 2
            // shows single coordinates; a layer mean hides the spread).
            let bands = fig.bands(col, gate);
            if !bands.is_empty() {
                for ((lo, hi), alpha) in [((0, 4), 0.14), ((1, 3), 0.28)] {
                    let outline: Vec<(f64, f64)> = bands
                        .iter()
                        .map(|(s, p)| (*s, p[lo]))
                        .chain(bands.iter().rev().map(|(s, p)| (*s, p[hi])))
                        .collect();
                    chart.draw_series(std::iter::once(Polygon::new(
                        outline,
                        BAND_COLOUR.mix(alpha).filled(),
                    )))?;
                }
            }
            // Each episode: its sampled coordinates (or, for version-1
            // records without percentiles, its layer mean).
            for (e, line) in lines.iter().enumerate() {
                if line.is_empty() {
                    continue;
                }
                let colour = episode_colour(e).mix(LINE_OPACITY);
                let series: Vec<Vec<(f64, f64)>> = if bands.is_empty() {
                    vec![line.iter().map(|r| (r.step as f64, gate.mean(r))).collect()]
                } else {
                    let k = line
                        .iter()
                        .map(|r| gate.samples(r).len())
                        .min()
                        .unwrap_or(0);
                    (0..k)
                        .map(|j| {
                            line.iter()
                                .map(|r| (r.step as f64, gate.samples(r)[j]))
                                .collect()
                        })
                        .collect()
                };
                for points in series {
                    draw_line(&mut chart, points, colour, 1, steps)?;
                }
            }
            if !bands.is_empty() {
                let median = bands.iter().map(|(s, p)| (*s, p[2])).collect();
                draw_line(&mut chart, median, BAND_COLOUR.to_rgba(), 2, steps)?;
            }
        }
    }
    root.present()
}

fn draw_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Config {
        source_name: path.display().to_string(),
        reason: format!("cannot draw the gate figure: {e}"),
    }
}

/// Render the figure into an RGB PNG held in memory.
fn render_png(fig: &Figure, title: &str, text: bool, path: &Path) -> Result<Vec<u8>> {
    figure::png(figure_size(fig.layers.len()), |root| {
        draw(root, fig, title, text)
    })
    .map_err(|e| draw_error(path, e))
}

/// Draw Figure-2-style panels of `records` and write them to `svg` and `png`.
///
/// Two rows (forget gate mean, input gate mean) by one column per layer, in
/// the order layers first appear in `records`; x is the update step, y the
/// gate value, one thin semi-transparent line per episode. The size is
/// [`figure_size`]. See the module docs for fonts.
pub fn plot(records: &[GateRecord], title: &str, svg: &Path, png: &Path) -> Result<()> {
    if records.is_empty() {
        return Err(Error::Config {
            source_name: svg.display().to_string(),
            reason: "no gate records to plot".into(),
        });
    }
    let fig = Figure::new(records);
    let svg_text = figure::svg(figure_size(fig.layers.len()), |root| {
        draw(root, &fig, title, true)
    })
    .map_err(|e| draw_error(svg, e))?;
    crate::util::write_atomic(svg, svg_text.as_bytes())?;

    let png_bytes = render_png(&fig, title, font_available(), png)?;
    crate::util::write_atomic(png, &png_bytes)?;
    tracing::info!(
        layers = fig.layers.len(),
        episodes = fig.episodes,
        "wrote {} and {}",
        svg.display(),
        png.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<GateRecord> {
        let layers = vec![("conv1".to_string(), 0..4), ("head".to_string(), 4..6)];
        (0..3u64)
            .flat_map(|e| {
                let gates: Vec<(Vec<f32>, Vec<f32>)> = (1..=5)
                    .map(|t| {
                        let f = vec![1.0 - 0.001 * t as f32 * (e + 1) as f32; 6];
                        let i = vec![0.1 / t as f32 + 0.01 * e as f32; 6];
                        (f, i)
                    })
                    .collect();
                summarize_episode("b", "meta-lstm", e, &layers, &gates, 2)
            })
            .collect()
    }

    #[test]
    fn sample_indices_are_distinct_and_in_range() {
        assert_eq!(sample_indices(10, 4), vec![1, 3, 6, 8]);
        assert_eq!(sample_indices(3, 5), vec![0, 1, 2]);
        assert_eq!(sample_indices(0, 3), Vec::<usize>::new());
        for n in 1..40 {
            for s in 0..12 {
                let ix = sample_indices(n, s);
                assert_eq!(ix.len(), s.min(n));
                assert!(ix.windows(2).all(|w| w[0] < w[1]));
                assert!(ix.iter().all(|&k| k < n));
            }
        }
    }

    #[test]
    fn episode_records_are_ordered_by_step_then_layer() {
        let r = records();
        assert_eq!(r.len(), 3 * 5 * 2);
        assert_eq!((r[0].step, r[0].layer.as_str()), (1, "conv1"));
        assert_eq!((r[1].step, r[1].layer.as_str()), (1, "head"));
        assert_eq!((r[2].step, r[2].layer.as_str()), (2, "conv1"));
    }

    #[test]
    fn png_without_a_font_still_has_lines() {
        let r = records();
        let fig = Figure::new(&r);
        let png = render_png(&fig, "no text", false, Path::new("x.png")).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), figure_size(2));
        let colours: std::collections::HashSet<_> = img.pixels().map(|p| p.0).collect();
        assert!(colours.len() > 2, "only {} colours", colours.len());
    }

    #[test]
    fn png_text_is_drawn_with_the_embedded_font_whatever_the_system_has() {
        // No system font is consulted: the embedded DejaVu Sans is
        // registered (unless $FEWSHOT_FONT names another usable font).
        assert!(font_available());
        let r = records();
        let fig = Figure::new(&r);
        let dark = |text: bool| {
            let png = render_png(&fig, "a title", text, Path::new("x.png")).unwrap();
            let img = image::load_from_memory(&png).unwrap().to_rgb8();
            img.pixels()
                .filter(|p| p.0.iter().all(|&c| c < 128))
                .count()
        };
        // Title, axis labels and tick numbers add many dark pixels.
        let (with, without) = (dark(true), dark(false));
        assert!(
            with > without + 500,
            "{with} dark pixels with text, {without} without"
        );
    }

    #[test]
    fn decimals_follow_the_span() {
        assert_eq!(decimals_for(1.0), 1);
        assert_eq!(decimals_for(0.01), 3);
        assert_eq!(decimals_for(1e-9), 6);
        assert_eq!(decimals_for(100.0), 1);
    }
}
