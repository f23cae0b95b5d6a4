//! Integration tests of gate traces (`fewshot::report::trace`) on synthetic gates:
//! the per-layer statistics against a hand computation, the JSON-lines
//! round trip and its version check, the CSV, and the Figure-2-style plot
//! (SVG structure, PNG size and content).

use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;

use fewshot::report::trace::{self, GateRecord, TRACE_VERSION};
use fewshot::Error;

// ---------------------------------------------------------------- helpers

const LAYERS: [&str; 5] = ["conv1", "conv2", "conv3", "conv4", "head"];

/// Layer ranges of a tiny learner: layer `k` has `sizes[k]` coordinates.
fn layer_ranges(names: &[&str], sizes: &[usize]) -> Vec<(String, Range<usize>)> {
    let mut start = 0;
    names
        .iter()
        .zip(sizes)
        .map(|(n, &s)| {
            let r = start..start + s;
            start += s;
            (n.to_string(), r)
        })
        .collect()
}

/// xorshift64 in (0, 1): deterministic pseudo-random gate values.
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }
}

/// Records of `episodes` episodes of `steps` steps on the five conv-4
/// layers: forget gates near 1, input gates decaying with the step, plus
/// per-coordinate noise, so every value has a full f32 mantissa.
fn synthetic(episodes: u64, steps: usize) -> Vec<GateRecord> {
    let layers = layer_ranges(&LAYERS, &[7, 5, 5, 5, 3]);
    let n = layers.last().unwrap().1.end;
    let mut g = Gen(0x9E37_79B9_7F4A_7C15);
    (0..episodes)
        .flat_map(|e| {
            let gates: Vec<(Vec<f32>, Vec<f32>)> = (1..=steps)
                .map(|t| {
                    let f = (0..n).map(|_| 0.99 + 0.01 * g.next()).collect();
                    let i = (0..n)
                        .map(|k| {
                            let scale = 0.05 * (1.0 + k as f32 / n as f32);
                            scale / t as f32 * (1.0 + 0.1 * e as f32) + 0.001 * g.next()
                        })
                        .collect();
                    (f, i)
                })
                .collect();
            trace::summarize_episode("omniglot-5w1s", "meta-lstm", e, &layers, &gates, 3)
        })
        .collect()
}

fn assert_close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-12, "{what}: {a} vs {b}");
}

// ------------------------------------------------------------- summarize

#[test]
fn summarize_matches_a_hand_computation() {
    // Dyadic values, exact in f32, so the statistics are known exactly.
    let layers = layer_ranges(&["conv1", "head"], &[4, 2]);
    let forget = [1.0, 0.5, 0.75, 0.25, 0.875, 0.625];
    let input = [0.125, 0.25, 0.375, 0.5, 0.0625, 0.1875];
    let r = trace::summarize("b", "meta-lstm", 7, 3, &layers, &forget, &input, 2);
    assert_eq!(r.len(), 2);

    let c = &r[0];
    assert_eq!(c.version, TRACE_VERSION);
    assert_eq!(
        (c.benchmark.as_str(), c.algorithm.as_str()),
        ("b", "meta-lstm")
    );
    assert_eq!((c.episode, c.step, c.layer.as_str()), (7, 3, "conv1"));
    assert_eq!(c.coordinates, 4);
    // forget: mean 2.5/4; deviations +-0.375, +-0.125 -> var 0.3125/4.
    assert_eq!(c.forget_mean, 0.625);
    assert_close(c.forget_std, 0.078125f64.sqrt(), "conv1 forget std");
    assert_eq!((c.forget_min, c.forget_max), (0.25, 1.0));
    // input: mean 1.25/4; deviations +-0.1875, +-0.0625 -> var 0.078125/4.
    assert_eq!(c.input_mean, 0.3125);
    assert_close(c.input_std, 0.01953125f64.sqrt(), "conv1 input std");
    assert_eq!((c.input_min, c.input_max), (0.125, 0.5));
    // Two evenly spaced samples of four coordinates: bin centres 1 and 3.
    assert_eq!(c.sample_index, vec![1, 3]);
    assert_eq!(c.forget_samples, vec![0.5, 0.25]);
    assert_eq!(c.input_samples, vec![0.25, 0.5]);
    // Percentiles of 0.25, 0.5, 0.75, 1.0 at ranks p/100 * 3, interpolated
    // (numpy.percentile gives the same).
    let expected = [0.325, 0.4375, 0.625, 0.8125, 0.925];
    for (got, want) in c.forget_percentiles.iter().zip(expected) {
        assert_close(*got, want, "conv1 forget percentile");
    }
    assert_eq!(c.forget_percentiles.len(), trace::PERCENTILES.len());
    assert_eq!(c.input_percentiles[2], 0.3125);

    let h = &r[1];
    assert_eq!((h.layer.as_str(), h.coordinates), ("head", 2));
    assert_eq!((h.forget_mean, h.forget_std), (0.75, 0.125));
    assert_eq!((h.forget_min, h.forget_max), (0.625, 0.875));
    assert_eq!((h.input_mean, h.input_std), (0.125, 0.0625));
    assert_eq!((h.input_min, h.input_max), (0.0625, 0.1875));
    // Indices are within the layer, not global.
    assert_eq!(h.sample_index, vec![0, 1]);
    assert_eq!(h.forget_samples, vec![0.875, 0.625]);
}

#[test]
fn a_constant_layer_has_zero_spread() {
    let layers = layer_ranges(&["conv1"], &[5]);
    let r = trace::summarize("b", "a", 0, 1, &layers, &[0.5; 5], &[0.25; 5], 10);
    assert_eq!((r[0].forget_mean, r[0].forget_std), (0.5, 0.0));
    assert_eq!((r[0].input_min, r[0].input_max), (0.25, 0.25));
    // More samples than coordinates: every coordinate once.
    assert_eq!(r[0].sample_index, vec![0, 1, 2, 3, 4]);
}

#[test]
fn empty_layers_give_no_record() {
    let layers = vec![("conv1".to_string(), 0..2), ("empty".to_string(), 2..2)];
    let r = trace::summarize("b", "a", 0, 1, &layers, &[0.5; 2], &[0.5; 2], 1);
    assert_eq!(r.len(), 1);
}

#[test]
fn sample_indices_are_the_same_for_every_episode_and_step() {
    let records = synthetic(3, 4);
    for layer in LAYERS {
        let sets: HashSet<&Vec<usize>> = records
            .iter()
            .filter(|r| r.layer == layer)
            .map(|r| &r.sample_index)
            .collect();
        assert_eq!(sets.len(), 1, "{layer}: {sets:?}");
    }
    let conv1 = records.iter().find(|r| r.layer == "conv1").unwrap();
    assert_eq!(conv1.sample_index, trace::sample_indices(7, 3));
    assert_eq!(conv1.sample_index, vec![1, 3, 5]);
}

#[test]
fn summarize_episode_numbers_steps_from_one() {
    let records = synthetic(1, 10);
    assert_eq!(records.len(), 10 * LAYERS.len());
    let steps: Vec<usize> = records.iter().map(|r| r.step).collect();
    assert_eq!(steps.first(), Some(&1));
    assert_eq!(steps.last(), Some(&10));
    for r in &records {
        assert!(r.forget_min <= r.forget_mean && r.forget_mean <= r.forget_max);
        assert!(r.input_min <= r.input_mean && r.input_mean <= r.input_max);
    }
}

// ----------------------------------------------------------------- JSONL

#[test]
fn jsonl_round_trips_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/meta-lstm/gates.jsonl");
    let mut records = synthetic(4, 10);
    // Awkward strings and floats survive too.
    records[0].benchmark = "mini, \"imagenet\" \u{e9}\n".into();
    records[1].forget_std = 0.1 + 0.2;
    records[2].input_mean = 1.0 / 3.0;
    records[3].input_min = 5e-324;
    trace::write_jsonl(&path, &records).unwrap();

    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), records.len());
    assert!(text.lines().all(|l| l.starts_with("{\"version\":2,")));

    let back = trace::read_jsonl(&path).unwrap();
    assert_eq!(back, records);
    // Bit-exact, not merely equal up to == on floats.
    for (a, b) in back.iter().zip(&records) {
        assert_eq!(a.forget_std.to_bits(), b.forget_std.to_bits());
        assert_eq!(a.input_mean.to_bits(), b.input_mean.to_bits());
    }
    // No temp file left beside it.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("gates.jsonl")]);
}

#[test]
fn version_1_traces_without_percentiles_still_read_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gates.jsonl");
    trace::write_jsonl(&path, &synthetic(2, 3)).unwrap();
    let old: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let m = v.as_object_mut().unwrap();
            m.remove("forget_percentiles");
            m.remove("input_percentiles");
            m.insert("version".into(), 1.into());
            v.to_string()
        })
        .collect();
    std::fs::write(&path, old.join("\n")).unwrap();
    let back = trace::read_jsonl(&path).unwrap();
    assert!(back
        .iter()
        .all(|r| r.version == 1 && r.forget_percentiles.is_empty()));
    let (svg, png) = (dir.path().join("g.svg"), dir.path().join("g.png"));
    trace::plot(&back, "old", &svg, &png).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.contains("mean over each layer"),
        "version-1 figures show means"
    );
}

#[test]
fn blank_lines_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gates.jsonl");
    let records = synthetic(1, 2);
    trace::write_jsonl(&path, &records).unwrap();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace('\n', "\n\n");
    std::fs::write(&path, text).unwrap();
    assert_eq!(trace::read_jsonl(&path).unwrap(), records);
}

/// Write a trace into `dir`, apply `edit` to line `line` (1-based) and read
/// it back; returns the file and the error.
fn read_edited(
    dir: &Path,
    line: usize,
    edit: impl Fn(&str) -> String,
) -> (std::path::PathBuf, Error) {
    let path = dir.join(format!("gates{line}.jsonl"));
    trace::write_jsonl(&path, &synthetic(1, 2)).unwrap();
    let text: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, l)| if i + 1 == line { edit(l) } else { l.into() })
        .collect();
    std::fs::write(&path, text.join("\n")).unwrap();
    let err = trace::read_jsonl(&path).unwrap_err();
    (path, err)
}

#[test]
fn an_unknown_version_is_rejected_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (path, err) = read_edited(dir.path(), 3, |l| {
        l.replacen("\"version\":2", "\"version\":3", 1)
    });
    let msg = err.to_string();
    match &err {
        Error::Config {
            source_name,
            reason,
        } => {
            assert_eq!(source_name, &format!("{}:3", path.display()));
            assert!(reason.contains("version 3"), "{reason}");
            assert!(
                reason.contains(&format!("writes {TRACE_VERSION}")),
                "{reason}"
            );
        }
        other => panic!("expected Error::Config, got {other:?}"),
    }
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[test]
fn a_missing_version_or_a_broken_line_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (path, err) = read_edited(dir.path(), 2, |l| l.replacen("\"version\":2,", "", 1));
    assert!(
        matches!(&err, Error::Config { source_name, reason }
            if *source_name == format!("{}:2", path.display()) && reason.contains("version")),
        "{err}"
    );
    let (path, err) = read_edited(dir.path(), 1, |l| l[..l.len() / 2].to_string());
    assert!(
        matches!(&err, Error::Config { source_name, .. }
            if *source_name == format!("{}:1", path.display())),
        "{err}"
    );
    // A wrong field type is named as such.
    let (_, err) = read_edited(dir.path(), 1, |l| {
        l.replacen("\"step\":1", "\"step\":\"one\"", 1)
    });
    assert!(err.to_string().contains("gate record"), "{err}");
}

#[test]
fn a_missing_file_is_an_io_error() {
    let err = trace::read_jsonl(Path::new("/nonexistent/gates.jsonl")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

// ------------------------------------------------------------------- CSV

#[test]
fn csv_has_one_row_per_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gates.csv");
    let mut records = synthetic(2, 3);
    records[0].benchmark = "a,b".into();
    trace::write_csv(&path, &records).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), records.len() + 1);
    assert_eq!(lines[0], trace::CSV_HEADER.join(","));
    assert!(lines[0].starts_with("version,benchmark,algorithm,episode,step,layer,"));
    assert!(
        lines[1].starts_with("2,\"a,b\",meta-lstm,0,1,conv1,7,"),
        "{}",
        lines[1]
    );

    let r = &records[1];
    let cols: Vec<&str> = lines[2].split(',').collect();
    assert_eq!(cols.len(), trace::CSV_HEADER.len());
    assert_eq!(cols[7].parse::<f64>().unwrap(), r.forget_mean);
    assert_eq!(cols[15], "0;2;4"); // conv2: 3 of 5 coordinates
    let fs: Vec<f64> = cols[16].split(';').map(|x| x.parse().unwrap()).collect();
    assert_eq!(fs, r.forget_samples);
    let ps: Vec<f64> = cols[18].split(';').map(|x| x.parse().unwrap()).collect();
    assert_eq!(ps, r.forget_percentiles);
}

// ------------------------------------------------------------------ plot

#[test]
fn plot_writes_an_svg_and_a_png_with_every_series() {
    let dir = tempfile::tempdir().unwrap();
    let (svg, png) = (dir.path().join("gates.svg"), dir.path().join("gates.png"));
    let (episodes, steps) = (6u64, 10usize);
    let records = synthetic(episodes, steps);
    trace::plot(&records, "omniglot-5w1s / meta-lstm", &svg, &png).unwrap();

    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.starts_with("<svg") || text.starts_with("<?xml"),
        "{}",
        &text[..60]
    );
    assert!(text.trim_end().ends_with("</svg>"));
    // Sampled coordinates are the semi-transparent polylines: three per
    // episode per panel (two rows by five layers).
    let series = text
        .split("<polyline")
        .skip(1)
        .filter(|rest| rest.split("/>").next().unwrap().contains("opacity=\"0.6\""))
        .count();
    assert_eq!(series, 3 * episodes as usize * 2 * LAYERS.len());
    // Per panel: two percentile bands and one median line.
    assert_eq!(text.matches("<polygon").count(), 2 * 2 * LAYERS.len());
    let medians = text
        .split("<polyline")
        .skip(1)
        .filter(|rest| {
            rest.split("/>")
                .next()
                .unwrap()
                .contains("stroke-width=\"2\"")
        })
        .count();
    assert_eq!(medians, 2 * LAYERS.len());
    assert!(text.contains("25-75th percentile"));
    // Text is written as <text> elements: title, panel titles, axis names.
    assert!(text.contains("omniglot-5w1s / meta-lstm"));
    assert!(text.contains("update step"));
    let titles: Vec<usize> = ["forget", "input"]
        .iter()
        .flat_map(|g| LAYERS.iter().map(move |l| format!("{l}: {g} gate")))
        .map(|t| {
            text.find(&t)
                .unwrap_or_else(|| panic!("no panel title {t}"))
        })
        .collect();
    assert!(
        titles.windows(2).all(|w| w[0] < w[1]),
        "panel order {titles:?}"
    );

    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), trace::figure_size(LAYERS.len()));
    assert_eq!(img.dimensions(), (1520, 584));
    let colours: HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(colours.len() > 1, "blank PNG");
    // White background, mostly.
    assert_eq!(img.get_pixel(0, 0).0, [255, 255, 255]);
}

#[test]
fn layers_are_drawn_in_order_of_first_appearance() {
    let dir = tempfile::tempdir().unwrap();
    let (svg, png) = (dir.path().join("g.svg"), dir.path().join("g.png"));
    let layers = layer_ranges(&["head", "conv1"], &[2, 3]);
    let gates = vec![(vec![0.9f32; 5], vec![0.1f32; 5]); 3];
    let records = trace::summarize_episode("b", "meta-lstm", 0, &layers, &gates, 1);
    trace::plot(&records, "order", &svg, &png).unwrap();
    let text = std::fs::read_to_string(&svg).unwrap();
    let head = text.find("head: forget gate").unwrap();
    let conv1 = text.find("conv1: forget gate").unwrap();
    assert!(head < conv1);
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), trace::figure_size(2));
}

#[test]
fn plotting_nothing_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = trace::plot(
        &[],
        "t",
        &dir.path().join("a.svg"),
        &dir.path().join("a.png"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no gate records"), "{err}");
}

#[test]
fn write_all_writes_the_four_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("meta-lstm");
    let paths = trace::write_all(&out, &synthetic(2, 4), "t").unwrap();
    for (p, name) in paths
        .iter()
        .zip(["gates.jsonl", "gates.csv", "gates.svg", "gates.png"])
    {
        assert_eq!(p, &out.join(name));
        assert!(std::fs::metadata(p).unwrap().len() > 0, "{}", p.display());
    }
}

// -------------------------------------------------------------- observer

#[test]
fn the_gate_collector_observes_what_summarize_episode_summarises() {
    use fewshot::algo::Observer;
    // What an algorithm reports through `Algorithm::observe`: per step,
    // each series over each layer (an empty one included), and a series
    // the trace does not read.
    let layers = layer_ranges(&["conv1", "empty", "conv2", "head"], &[7, 0, 5, 3]);
    let n = layers.last().unwrap().1.end;
    let mut g = Gen(0x5EED);
    let gates: Vec<(Vec<f32>, Vec<f32>)> = (0..4)
        .map(|_| {
            let f = (0..n).map(|_| 0.9 + 0.1 * g.next()).collect();
            let i = (0..n).map(|_| 0.05 * g.next()).collect();
            (f, i)
        })
        .collect();
    let mut collector = trace::GateCollector::new("b", "meta-lstm", 3, 2);
    for (t, (f, i)) in gates.iter().enumerate() {
        for (series, values) in [("forget", f), ("input", i), ("update", f)] {
            for (layer, r) in &layers {
                collector.record(series, t + 1, layer, &values[r.clone()]);
            }
        }
    }
    let expected = trace::summarize_episode("b", "meta-lstm", 3, &layers, &gates, 2);
    assert_eq!(expected.len(), 4 * 3);
    assert_eq!(collector.records(), expected);
    assert!(trace::traceable(&["forget", "input"]));
    assert!(trace::traceable(&["update", "input", "forget"]));
    assert!(!trace::traceable(&["forget"]));
    assert!(!trace::traceable(&[]));
}
