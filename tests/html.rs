//! `bench report --format html` read by a real browser: a tiny run on a
//! synthetic class-per-folder dataset, its page opened by headless
//! Chromium from the file, and what a reader gets checked: one leaderboard
//! row per algorithm, the figures drawn, nothing requested from outside the
//! page. Also the curves figure every few-shot run writes.
//!
//! Chromium is Debian's `chromium` (`.ci/run` installs it). Without it the
//! test fails when `CI` is set, and otherwise says it skipped and returns.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const BENCHMARK: &str = "name: tiny-folder
dataset: folder
data: {image_size: 16}
episode: {ways: 2, shots: 1, queries: 2}
test_episodes: 6
val_episodes: 4
budget: {meta_steps: 9}
validate_every: 3
learner: {hidden: 8}
algorithms:
  - {algorithm: maml, first_order: true, meta_batch: 2}
  - {algorithm: reptile, inner_iters: 2, eval_inner_iters: 2}
  - {algorithm: meta-lstm, steps: 2}
";

const LABELS: [&str; 3] = ["fomaml", "reptile", "meta-lstm"];

/// The first two colours of the curves figure (one line per algorithm)
/// and the gate figure's median line.
const FOMAML_BLUE: [u8; 3] = [31, 119, 180];
const REPTILE_ORANGE: [u8; 3] = [255, 127, 14];
const GATE_BLUE: [u8; 3] = [40, 70, 150];

/// The Chromium binary, if one is installed.
fn chromium() -> Option<PathBuf> {
    let names = ["chromium", "chromium-browser"];
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .flat_map(|d| names.map(|n| d.join(n)))
        .find(|p| p.is_file())
}

/// Headless Chromium on `page` with a fresh profile in `profile`, every
/// background service off, the network log written to `netlog`, and
/// `extra` arguments; returns stdout.
fn run_chromium(bin: &Path, profile: &Path, netlog: &Path, page: &Path, extra: &[&str]) -> String {
    let url = format!("file://{}", page.display());
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--log-net-log={}", netlog.display()))
        .args(extra)
        .arg(&url)
        .output()
        .expect("start chromium");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "chromium failed with {:?}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The URLs a page asked for, from Chromium's network log (`--log-net-log`):
/// the jobs started for an initiator, which leaves out the browser's own
/// requests (update checks, clock), whose initiator is "not an origin".
fn page_requests(netlog: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(netlog).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", netlog.display()));
    let start_job = &v["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"];
    assert!(
        start_job.is_u64(),
        "no URL_REQUEST_START_JOB in the log's constants"
    );
    let mut urls: Vec<String> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| &e["type"] == start_job)
        .filter(|e| e["params"]["initiator"].as_str() != Some("not an origin"))
        .filter_map(|e| e["params"]["url"].as_str())
        .filter(|u| !u.starts_with("file:") && !u.starts_with("data:"))
        .map(str::to_string)
        .collect();
    urls.dedup();
    urls
}

/// Every value of attribute `name` in `dom` (double-quoted, as Chromium
/// serialises).
fn attribute_values<'a>(dom: &'a str, name: &str) -> Vec<&'a str> {
    let key = format!(" {name}=\"");
    dom.match_indices(&key)
        .filter_map(|(i, _)| {
            let rest = &dom[i + key.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .collect()
}

/// The text of every `<td class="label">` in the leaderboard.
fn row_labels(dom: &str) -> Vec<String> {
    let table = &dom[dom
        .find("<table class=\"leaderboard\"")
        .expect("a leaderboard")..];
    let table = &table[..table.find("</table>").unwrap()];
    table
        .split("<tr")
        .skip(1)
        .filter_map(|row| {
            let cell = &row[row.find("<td class=\"label\">")? + 18..];
            Some(cell[..cell.find("</td>")?].to_string())
        })
        .collect()
}

/// Whether `img` has a pixel within 2 of `rgb` in every channel.
fn has_colour(img: &image::RgbaImage, rgb: [u8; 3]) -> bool {
    img.pixels()
        .any(|p| (0..3).all(|c| p.0[c].abs_diff(rgb[c]) <= 2))
}

#[test]
fn the_html_report_opens_offline_in_a_real_browser() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    common::write_folder_dataset(
        &data,
        &[
            ("train", "a", 20),
            ("train", "b", 20),
            ("train", "c", 20),
            ("val", "d", 6),
            ("val", "e", 6),
            ("test", "f", 6),
            ("test", "g", 6),
        ],
        16,
    );
    let yaml = tmp.path().join("tiny-folder.yaml");
    std::fs::write(&yaml, BENCHMARK).unwrap();
    let run = tmp.path().join("run");
    common::assert_bench_ok(&common::bench(&[
        "--data-dir",
        data.to_str().unwrap(),
        "run",
        yaml.to_str().unwrap(),
        "--trace",
        "2",
        "--run-dir",
        run.to_str().unwrap(),
    ]));

    // Every few-shot run writes the curves figure at the top of its folder.
    let svg = std::fs::read_to_string(run.join("curves.svg")).unwrap();
    for l in LABELS {
        assert!(
            svg.contains(&format!(">\n{l}\n</text>")),
            "curves.svg lacks {l}"
        );
    }
    let png = image::open(run.join("curves.png")).unwrap().to_rgb8();
    assert!(png.pixels().any(|p| p.0 == FOMAML_BLUE));
    assert!(run.join("meta-lstm/gates.svg").is_file());

    let page = tmp.path().join("page.html");
    let out = common::bench(&[
        "report",
        run.to_str().unwrap(),
        "--format",
        "html",
        "--out",
        page.to_str().unwrap(),
    ]);
    assert!(
        common::assert_bench_ok(&out).is_empty(),
        "--out writes the page, not stdout"
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(
        !html.contains("http:") && !html.contains("https:"),
        "the page names a URL"
    );

    let Some(bin) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but Chromium is not installed (.ci/run installs Debian's `chromium`)"
        );
        eprintln!(
            "SKIPPED the_html_report_opens_offline_in_a_real_browser: no `chromium` on PATH \
             (apt-get install chromium to run it)"
        );
        return;
    };

    // What the browser built from the page.
    let netlog = tmp.path().join("net-dom.json");
    let dom = run_chromium(
        &bin,
        &tmp.path().join("profile-dom"),
        &netlog,
        &page,
        &["--dump-dom"],
    );
    assert!(dom.contains("fewshot report"), "{dom}");
    assert_eq!(
        row_labels(&dom),
        LABELS,
        "one leaderboard row per algorithm"
    );
    assert_eq!(dom.matches("<tr class=\"best\">").count(), 1);
    // The curves figure as inline SVG naming every algorithm, the gate
    // figure as an image.
    let curves = &dom[dom
        .find("<figure class=\"curves\">")
        .expect("the curves figure")..];
    let curves = &curves[..curves.find("</figure>").unwrap()];
    assert!(curves.contains("<svg"));
    for l in LABELS {
        assert!(curves.contains(l), "the curves figure lacks {l}");
    }
    assert!(dom.contains("<img alt=\"gate traces of meta-lstm\""));
    assert!(dom.contains("<th>benchmark</th><td>tiny-folder</td>"));
    // Nothing refers outside the page.
    for src in attribute_values(&dom, "src") {
        assert!(src.starts_with("data:"), "src={src:.60}");
    }
    for href in attribute_values(&dom, "href") {
        assert!(href.starts_with('#'), "href={href}");
    }

    // What a reader sees: the figures drawn (the curves' line colours, the
    // gate figure's median line) in a screenshot of the whole page.
    let shot = tmp.path().join("page.png");
    run_chromium(
        &bin,
        &tmp.path().join("profile-shot"),
        &tmp.path().join("net-shot.json"),
        &page,
        &[
            "--window-size=1200,3200",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    let img = image::open(&shot).unwrap().to_rgba8();
    for (what, c) in [
        ("fomaml's curve", FOMAML_BLUE),
        ("reptile's curve", REPTILE_ORANGE),
        ("the gate figure", GATE_BLUE),
    ] {
        assert!(has_colour(&img, c), "the screenshot does not show {what}");
    }

    // The browser's network log: the page requested nothing. The same
    // check on a page with one external image finds it (the log does show
    // a page's requests).
    for log in [netlog, tmp.path().join("net-shot.json")] {
        let urls = page_requests(&log);
        assert!(urls.is_empty(), "the page requested {urls:?}");
    }
    let probe = tmp.path().join("probe.html");
    std::fs::write(
        &probe,
        "<!DOCTYPE html><html><body><img src=\"http://127.0.0.1:9/probe.png\"></body></html>",
    )
    .unwrap();
    let probe_log = tmp.path().join("net-probe.json");
    run_chromium(
        &bin,
        &tmp.path().join("profile-probe"),
        &probe_log,
        &probe,
        &["--dump-dom"],
    );
    assert_eq!(
        page_requests(&probe_log),
        ["http://127.0.0.1:9/probe.png"],
        "the network log check does not see a page's requests"
    );
}
