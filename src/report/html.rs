//! `bench report --format html`: one self-contained page for a set of runs,
//! to open in any browser, offline, or to send as a single file.
//!
//! Per run: the leaderboard as [`crate::report::Table`] has it (accuracy
//! with its 95% interval, the paired difference to the best, the published
//! number and its source), the validation curves ([`crate::report::curves`],
//! drawn from the run's `curve.csv` files and inlined as SVG), each
//! algorithm's gate figure where its folder has one
//! ([`crate::layout::GATES_SVG`], inlined as an image), and the run's
//! provenance: every top-level field of its `results.json` but the rows and
//! the folder, whatever fields the results carry.
//!
//! Nothing on the page refers outside it: the style is inline, figures are
//! inline SVG or `data:` images, and a Content-Security-Policy forbids any
//! other load. Every text from a run is HTML-escaped; a gate figure is read
//! from disk and shown as an `<img>` (an SVG image runs no script and loads
//! nothing), never spliced into the page.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::layout;
use crate::report::curves::{self, Curve};
use crate::report::results::RunResults;
use crate::report::{plus_minus, sources, Table, LEGEND};

/// The page's style: plain, readable, printable.
const STYLE: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', 'DejaVu Sans', sans-serif; margin: 2em auto; max-width: 1240px; padding: 0 1em; color: #1a1a1a; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; margin-top: 2.2em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
h3 { font-size: 1.05em; margin-top: 1.6em; }
.muted { color: #555; font-size: 0.92em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
.wide { overflow-x: auto; }
tr.best td { font-weight: 600; background: #f0f6ff; }
td.published { color: #555; font-style: italic; }
code { font-family: ui-monospace, 'DejaVu Sans Mono', monospace; font-size: 0.9em; overflow-wrap: anywhere; }
figure { margin: 1em 0; }
figure svg, figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
ul.notes { margin: 0.3em 0; padding-left: 1.2em; }
nav ul { padding-left: 1.2em; }
";

/// Escape `s` for HTML text and double-quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `bytes` as a `data:` URI of type `mime`, percent-encoded (no base64):
/// every byte but ASCII letters, digits and `-._~` is escaped, so the URI
/// is safe inside a quoted attribute.
pub fn data_uri(mime: &str, bytes: &[u8]) -> String {
    let mut s = format!("data:{mime},");
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    s
}

/// The folders holding a run's algorithm folders, one per figure caption:
/// `(caption, label, folder)`, the algorithm folder being `folder/label`.
/// A multi-seed run's are in its unit folders, one per (seed, label).
fn algorithm_folders(r: &RunResults) -> Vec<(String, String, PathBuf)> {
    let labels = r.results.iter().map(|x| x.label.clone());
    if r.run_seeds.is_empty() {
        return labels.map(|l| (l.clone(), l, r.run_dir.clone())).collect();
    }
    labels
        .flat_map(|l| {
            r.run_seeds.iter().map(move |&s| {
                (
                    format!("{l}, seed {s}"),
                    l.clone(),
                    layout::unit_dir(&r.run_dir, s, &l),
                )
            })
        })
        .collect()
}

/// The run's validation curves, captioned per algorithm (and seed).
fn run_curves(r: &RunResults) -> Vec<Curve> {
    algorithm_folders(r)
        .into_iter()
        .flat_map(|(caption, label, dir)| {
            curves::collect(&dir, [label.as_str()])
                .into_iter()
                .map(move |c| Curve {
                    label: caption.clone(),
                    ..c
                })
        })
        .collect()
}

/// The figure's SVG ready to sit in HTML: without the XML namespace
/// attribute (HTML's parser gives `<svg>` its namespace; the page then
/// names no URL at all).
fn inline_svg(svg: &str) -> String {
    svg.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1)
}

/// The leaderboard of one run as an HTML table.
fn leaderboard(r: &RunResults, out: &mut String) {
    let t = Table::of(r);
    out.push_str(
        "<div class=\"wide\"><table class=\"leaderboard\">\n<thead><tr><th></th><th>algorithm</th>\
         <th class=\"num\">accuracy (%)</th><th class=\"num\">run seeds</th>\
         <th class=\"num\">vs best (pp)</th><th class=\"num\">test episodes</th>\
         <th class=\"num\">meta-steps</th><th class=\"num\">train episodes</th>\
         <th class=\"num\">train (s)</th><th class=\"num\">test (s)</th><th>tested</th>\
         <th class=\"num\">published (%)</th></tr></thead>\n<tbody>\n",
    );
    let pm_html = |s: &str| escape(&plus_minus(s));
    for x in &t.rows {
        let c = x.cells();
        let _ = writeln!(
            out,
            "<tr{}><td>{}</td><td class=\"label\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td>{}</td><td class=\"num published\"{}>{}</td></tr>",
            if x.mark == "*" { " class=\"best\"" } else { "" },
            escape(x.mark),
            escape(&x.label),
            pm_html(&c.accuracy),
            escape(&c.seeds),
            pm_html(&c.vs_best),
            x.test_episodes,
            c.steps,
            c.episodes,
            c.train,
            c.test,
            escape(&x.tested),
            x.published
                .as_ref()
                .map(|p| format!(" title=\"published: {}\"", escape(&p.source)))
                .unwrap_or_default(),
            pm_html(&c.published),
        );
    }
    out.push_str("</tbody>\n</table></div>\n");
    let notes: Vec<String> = sources(&t, r)
        .lines()
        .map(str::to_string)
        .chain(r.notes.iter().map(|n| format!("note: {n}")))
        .collect();
    if !notes.is_empty() {
        out.push_str("<ul class=\"notes\">\n");
        for n in notes {
            let _ = writeln!(out, "<li>{}</li>", escape(&n));
        }
        out.push_str("</ul>\n");
    }
    let _ = writeln!(
        out,
        "<p class=\"muted\">{}; published numbers are the papers' (T: transductive), after their own training lengths, not ours.</p>",
        escape(LEGEND)
    );
}

/// Every top-level field of the run's results but the rows and the folder,
/// as a key/value table (nested values as compact JSON).
fn provenance(r: &RunResults, out: &mut String) -> Result<()> {
    let path = r.run_dir.join(layout::RESULTS);
    let v = serde_json::to_value(r).map_err(|e| crate::error::Error::Results {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let Some(fields) = v.as_object() else {
        return Ok(());
    };
    out.push_str("<table class=\"provenance\">\n<thead><tr><th>field</th><th>value</th></tr></thead>\n<tbody>\n");
    for (k, v) in fields {
        if k == "results" || k == "run_dir" {
            continue;
        }
        let cell = match v {
            serde_json::Value::String(s) => escape(s),
            serde_json::Value::Null => "<span class=\"muted\">none</span>".into(),
            serde_json::Value::Bool(_) | serde_json::Value::Number(_) => escape(&v.to_string()),
            _ => format!("<code>{}</code>", escape(&v.to_string())),
        };
        let _ = writeln!(out, "<tr><th>{}</th><td>{cell}</td></tr>", escape(k));
    }
    out.push_str("</tbody>\n</table>\n");
    Ok(())
}

/// One run's section.
fn section(r: &RunResults, id: usize, out: &mut String) -> Result<()> {
    let t = Table::of(r);
    let _ = writeln!(
        out,
        "<section class=\"run\" id=\"run-{id}\">\n<h2>{}</h2>\n<p class=\"muted\">run folder <code>{}</code></p>",
        escape(&t.title),
        escape(&r.run_dir.display().to_string())
    );
    out.push_str("<h3>Leaderboard</h3>\n");
    leaderboard(r, out);

    let curves = run_curves(r);
    if !curves.is_empty() {
        let svg = curves::svg(&curves, &curves::title(r))?;
        let _ = writeln!(
            out,
            "<h3>Validation curves</h3>\n<figure class=\"curves\">\n{}\n<figcaption>Validation accuracy of every algorithm against (a) meta-training wall time and (b) training episodes; dots: validation points, band: 95% interval (as the run's <code>{}</code> draws them).</figcaption>\n</figure>",
            inline_svg(&svg),
            layout::CURVES_SVG
        );
    }

    let gates: Vec<(String, PathBuf)> = algorithm_folders(r)
        .into_iter()
        .map(|(caption, label, dir)| (caption, dir.join(label).join(layout::GATES_SVG)))
        .filter(|(_, p)| p.is_file())
        .collect();
    if !gates.is_empty() {
        out.push_str("<h3>Gate traces</h3>\n");
    }
    for (caption, path) in gates {
        match std::fs::read(&path) {
            Ok(bytes) => {
                let _ = writeln!(
                    out,
                    "<figure class=\"gates\">\n<img alt=\"gate traces of {c}\" src=\"{}\">\n<figcaption>{c}: forget and input gates of the learned optimizer on test episodes (<code>{}</code>; docs/traces.md tells how to read it).</figcaption>\n</figure>",
                    data_uri("image/svg+xml", &bytes),
                    escape(&path.display().to_string()),
                    c = escape(&caption),
                );
            }
            Err(e) => tracing::warn!("{} is left out of the page: {e}", path.display()),
        }
    }

    out.push_str("<h3>Provenance</h3>\n");
    provenance(r, out)?;
    out.push_str("</section>\n");
    Ok(())
}

/// The whole page for `runs` (their published numbers filled by the
/// caller, [`crate::report::fill_published`]).
pub fn page(runs: &[RunResults]) -> Result<String> {
    let mut out = String::new();
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    // Nothing but this page's own style and data: images may load.
    out.push_str(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\n",
    );
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let names: Vec<&str> = runs.iter().map(|r| r.benchmark.as_str()).collect();
    let _ = writeln!(
        out,
        "<title>fewshot report: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>fewshot report</h1>",
        escape(&names.join(", "))
    );
    let _ = writeln!(
        out,
        "<p class=\"muted\">{} run(s), written by <code>bench report --format html</code> (fewshot {}). Accuracy: mean over the fixed test episodes with its 95% interval; vs best: the paired difference to the best row over the same episodes.</p>",
        runs.len(),
        env!("CARGO_PKG_VERSION")
    );
    if runs.len() > 1 {
        out.push_str("<nav><ul>\n");
        for (i, r) in runs.iter().enumerate() {
            let _ = writeln!(
                out,
                "<li><a href=\"#run-{i}\">{}</a> <span class=\"muted\">{}</span></li>",
                escape(&r.benchmark),
                escape(&r.run_dir.display().to_string())
            );
        }
        out.push_str("</ul></nav>\n");
    }
    for (i, r) in runs.iter().enumerate() {
        section(r, i, &mut out)?;
    }
    out.push_str("</body>\n</html>\n");
    Ok(out)
}

/// Write the page for `runs` to `path` atomically.
pub fn write(runs: &[RunResults], path: &Path) -> Result<()> {
    crate::util::write_atomic(path, page(runs)?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::results::AlgoResult;

    fn run(dir: &Path) -> RunResults {
        let rows: Vec<serde_json::Value> = [("fomaml", 0.8), ("re<ptile>&", 0.6)]
            .iter()
            .map(|(l, a)| {
                serde_json::to_value(AlgoResult::scored(l, &[*a, a - 0.1, a + 0.1, *a])).unwrap()
            })
            .collect();
        let v = serde_json::json!({
            "benchmark": "tiny", "dataset": "folder",
            "episode": {"ways": 2, "shots": 1, "queries": 1},
            "transductive": false, "run_dir": dir, "results": rows,
            "notes": ["a <b>note</b>"]
        });
        let mut r: RunResults = serde_json::from_value(v).unwrap();
        r.results[0].published = Some(crate::spec::Published {
            accuracy: 98.3,
            ci95: Some(0.5),
            source: "Finn et al. 2017".into(),
            transductive: true,
        });
        crate::report::results::pair_with_best(&mut r.results);
        r
    }

    #[test]
    fn escaping_covers_text_and_attributes() {
        assert_eq!(escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;");
        assert_eq!(
            data_uri("image/svg+xml", b"<a b=\"#\">%"),
            "data:image/svg+xml,%3Ca%20b%3D%22%23%22%3E%25"
        );
    }

    #[test]
    fn the_page_has_rows_figures_and_provenance_and_names_no_url() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let r = run(d);
        std::fs::create_dir_all(d.join("fomaml")).unwrap();
        std::fs::write(
            d.join("fomaml").join(layout::CURVE),
            "train_episodes,train_seconds,val_accuracy\n10,30,0.5\n20,60,0.7\n",
        )
        .unwrap();
        std::fs::write(
            d.join("fomaml").join(layout::GATES_SVG),
            "<svg xmlns=\"http://www.w3.org/2000/svg\"><text>g</text></svg>",
        )
        .unwrap();
        let page = page(&[r]).unwrap();
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert_eq!(page.matches("<tr class=\"best\">").count(), 1);
        assert!(page.contains("<td class=\"label\">fomaml</td>"));
        assert!(page.contains("<td class=\"label\">re&lt;ptile&gt;&amp;</td>"));
        assert!(page.contains(
            "<td class=\"num published\" title=\"published: Finn et al. 2017\">98.30 ± 0.50 T</td>"
        ));
        assert!(page.contains("published fomaml: Finn et al. 2017 (transductive)"));
        assert!(page.contains("note: a &lt;b&gt;note&lt;/b&gt;"));
        // vs best of the second row: -20 points.
        assert!(page.contains("-20.00 ±"), "{page}");
        // The curves figure inline, the gate figure as a data: image.
        assert_eq!(page.matches("<svg").count(), 1);
        assert!(page.contains("<img alt=\"gate traces of fomaml\" src=\"data:image/svg+xml,"));
        // Provenance: top-level fields but the rows and the folder.
        assert!(page.contains("<tr><th>benchmark</th><td>tiny</td></tr>"));
        assert!(page.contains("<tr><th>episode</th><td><code>{"));
        assert!(!page.contains("<th>results</th>") && !page.contains("<th>run_dir</th>"));
        assert!(!page.contains("http:") && !page.contains("https:"));
    }
}
