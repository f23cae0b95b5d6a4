//! Researchers' interop on real Omniglot: a run's fixed test episodes
//! exported (`bench episodes <benchmark> --export`), scored again from the
//! export (`bench eval --episodes`), and scores from elsewhere put on the
//! leaderboard (`bench import`) with the same paired intervals, or refused.

mod common;

use std::path::{Path, PathBuf};

use fewshot::report::results::RunResults;
use sha2::{Digest, Sha256};

const BENCH: &str = "name: interop
dataset: omniglot
episode: {ways: 5, shots: 1, queries: 3}
test_episodes: 6
val_episodes: 2
budget: {meta_steps: 4}
validate_every: 2
learner: {hidden: 8}
algorithms:
  - {algorithm: reptile, inner_iters: 2, eval_inner_iters: 3}
  - {algorithm: maml, first_order: true, inner_steps: 1, inner_steps_test: 2, meta_batch: 2}
";

fn data_dir() -> String {
    common::shared_datasets().to_str().unwrap().to_string()
}

fn bench_in(args: &[&str]) -> std::process::Output {
    let data = data_dir();
    let mut all = vec!["--data-dir", data.as_str()];
    all.extend_from_slice(args);
    common::bench(&all)
}

/// A scores file of per-episode accuracies.
fn accuracy_file(path: &Path, acc: &[f64], fingerprint: &str) {
    let mut s = String::from("episode,accuracy,fingerprint\n");
    for (e, a) in acc.iter().enumerate() {
        s.push_str(&format!("{e},{a:?},{fingerprint}\n"));
    }
    std::fs::write(path, s).unwrap();
}

#[test]
fn exported_episodes_score_as_the_run_and_imported_scores_join_its_leaderboard() {
    let tmp = common::tempdir();
    let yaml = tmp.path().join("interop.yaml");
    std::fs::write(&yaml, BENCH).unwrap();
    let yaml = yaml.to_str().unwrap();
    let run: PathBuf = tmp.path().join("run");
    common::assert_bench_ok(&bench_in(&[
        "run",
        yaml,
        "--run-dir",
        run.to_str().unwrap(),
    ]));
    let results = RunResults::read(&run).unwrap();
    assert_eq!(results.schema_version, 2);
    let prov = results.provenance.clone().expect("provenance");
    let fp = prov.episodes_fingerprint.clone().unwrap();
    assert!(fp.starts_with("sha256:") && fp.len() == 7 + 64, "{fp}");
    assert!(prov.data_fingerprint.unwrap().starts_with("sha256:"));
    assert_eq!(prov.fewshot_version, env!("CARGO_PKG_VERSION"));
    assert!(prov.threads >= 1 && !prov.kernels.is_empty());

    // Export: the CSV, the images, the tensors, the same fingerprint.
    let export = tmp.path().join("export");
    let shown = common::assert_bench_ok(&bench_in(&[
        "episodes",
        yaml,
        "--split",
        "test",
        "--export",
        export.to_str().unwrap(),
    ]));
    assert!(shown.contains(&fp), "{shown}");
    let csv = std::fs::read_to_string(export.join("episodes.csv")).unwrap();
    assert!(csv.starts_with("episode,role,label,image,class,source\n"));
    assert_eq!(csv.lines().count(), 1 + 6 * 5 * (1 + 3));
    let bytes = std::fs::read(export.join("episodes.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["fingerprint"], fp);
    assert_eq!(meta["benchmark"], "interop");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let shape = |n: &str| st.tensor(n).unwrap().shape().to_vec();
    assert_eq!(shape("support_x"), [6, 5, 1, 28, 28]);
    assert_eq!(shape("query_x"), [6, 15, 1, 28, 28]);
    assert_eq!(shape("query_y"), [6, 15]);
    // The fingerprint as documented, from the file's own bytes.
    let mut digests = vec![];
    let part = |n: &str, e: usize| {
        let t = st.tensor(n).unwrap();
        let per = t.data().len() / 6;
        t.data()[e * per..(e + 1) * per].to_vec()
    };
    for e in 0..6 {
        let mut h = Sha256::new();
        for n in ["support_x", "support_y", "query_x", "query_y"] {
            h.update(part(n, e));
        }
        digests.extend(h.finalize());
    }
    assert_eq!(
        format!(
            "sha256:{}",
            fewshot::data::fingerprint::hex(&Sha256::digest(&digests))
        ),
        fp
    );
    // Query q of an episode has label q / queries.
    let qy: Vec<i64> = part("query_y", 3)
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(qy, (0..15).map(|q| q / 3).collect::<Vec<i64>>());
    // An export never writes into an existing folder.
    common::assert_bench_fails(
        &bench_in(&["episodes", yaml, "--export", export.to_str().unwrap()]),
        &["already exists"],
    );

    // The export, evaluated as a file, scores every episode as the run did.
    common::assert_bench_ok(&bench_in(&[
        "eval",
        run.to_str().unwrap(),
        "--on",
        yaml,
        "--episodes",
        export.join("episodes.csv").to_str().unwrap(),
    ]));
    let again = RunResults::read(&run.join("eval").join("episodes")).unwrap();
    assert_eq!(
        again.provenance.unwrap().episodes_fingerprint.as_deref(),
        Some(fp.as_str())
    );
    for row in &results.results {
        let other = again.results.iter().find(|r| r.label == row.label).unwrap();
        assert_eq!(
            other.episode_accuracy, row.episode_accuracy,
            "{}",
            row.label
        );
    }

    // A planted copy of the weaker row, imported, has its interval and its
    // paired difference to the best.
    let weak = results
        .results
        .iter()
        .min_by(|a, b| a.accuracy.total_cmp(&b.accuracy))
        .unwrap()
        .clone();
    let planted = tmp.path().join("planted.csv");
    accuracy_file(&planted, &weak.episode_accuracy, &fp);
    let import = |label: &str, file: &Path| {
        bench_in(&[
            "import",
            run.to_str().unwrap(),
            "--label",
            label,
            "--scores",
            file.to_str().unwrap(),
        ])
    };
    let shown = common::assert_bench_ok(&import("planted", &planted));
    assert!(
        shown.contains("planted") && shown.contains("imported"),
        "{shown}"
    );
    let now = RunResults::read(&run).unwrap();
    let row = now.results.iter().find(|r| r.label == "planted").unwrap();
    assert_eq!(row.accuracy, weak.accuracy);
    assert_eq!(row.ci95, weak.ci95);
    if weak.vs_best.is_some() {
        assert_eq!(row.vs_best, weak.vs_best);
    }
    let from = row.imported.as_ref().unwrap();
    assert_eq!(from.scores, "episode accuracy");
    assert_eq!(from.fingerprint, fp);
    let md = std::fs::read_to_string(run.join("leaderboard.md")).unwrap();
    assert!(md.contains("| - | - | - | - | imported |"), "{md}");

    // Per-query predictions, against the exported labels: every even
    // query right, every odd one wrong.
    let preds = tmp.path().join("preds.csv");
    let mut s = String::from("\u{feff},episode,query,prediction,fingerprint\r\n");
    let mut i = 0;
    for e in 0..6 {
        for q in 0..15 {
            let label = q / 3;
            let p = if q % 2 == 0 { label } else { (label + 1) % 5 };
            s.push_str(&format!("{i},{e},{q},{p},{fp}\r\n"));
            i += 1;
        }
    }
    std::fs::write(&preds, s).unwrap();
    common::assert_bench_ok(&import("preds", &preds));
    let now = RunResults::read(&run).unwrap();
    let row = now.results.iter().find(|r| r.label == "preds").unwrap();
    assert!(row
        .episode_accuracy
        .iter()
        .all(|&a| (a - 8.0 / 15.0).abs() < 1e-12));

    // Refused, with the file and the line, and the results untouched.
    let before = std::fs::read(run.join("results.json")).unwrap();
    let bad = tmp.path().join("bad.csv");
    let other = format!("{}0", &fp[..fp.len() - 1]);
    let mut acc = weak.episode_accuracy.clone();
    accuracy_file(&bad, &acc, &fp);
    let text = std::fs::read_to_string(&bad).unwrap();
    std::fs::write(&bad, text.replacen(&fp, &other, 1)).unwrap();
    common::assert_bench_fails(&import("x", &bad), &["bad.csv", "line 2", "fingerprint"]);
    acc.pop();
    accuracy_file(&bad, &acc, &fp);
    common::assert_bench_fails(&import("x", &bad), &["bad.csv", "episode 5 has no score"]);
    accuracy_file(&bad, &weak.episode_accuracy, &fp);
    let text = std::fs::read_to_string(&bad).unwrap();
    std::fs::write(&bad, format!("{text}3,0.5,{fp}\n")).unwrap();
    common::assert_bench_fails(
        &import("x", &bad),
        &["bad.csv", "line 8", "twice", "line 5"],
    );
    common::assert_bench_fails(&import("planted", &planted), &["planted", "imported row"]);
    common::assert_bench_fails(&import("reptile", &planted), &["reptile", "algorithm"]);
    assert_eq!(std::fs::read(run.join("results.json")).unwrap(), before);

    // An evaluation folder: the run's algorithms' labels are refused
    // there too, and rows of other episodes are never merged into it.
    let evals = run.join("eval").join("episodes");
    common::assert_bench_fails(
        &bench_in(&[
            "import",
            evals.to_str().unwrap(),
            "--label",
            "fomaml",
            "--scores",
            planted.to_str().unwrap(),
        ]),
        &["fomaml", "algorithm"],
    );
    let val = tmp.path().join("val").join("episodes");
    std::fs::create_dir(tmp.path().join("val")).unwrap();
    common::assert_bench_ok(&bench_in(&[
        "episodes",
        yaml,
        "--split",
        "val",
        "--count",
        "6",
        "--export",
        val.to_str().unwrap(),
    ]));
    // As if only reptile had been evaluated: fomaml could be added.
    let mut r = RunResults::read(&evals).unwrap();
    r.results.retain(|x| x.label != "fomaml");
    r.write_json(&evals).unwrap();
    let before_eval = std::fs::read(evals.join("results.json")).unwrap();
    common::assert_bench_fails(
        &bench_in(&[
            "eval",
            run.to_str().unwrap(),
            "--on",
            yaml,
            "--episodes",
            val.join("episodes.csv").to_str().unwrap(),
            "--only",
            "fomaml",
        ]),
        &["other episodes", "--force"],
    );
    assert_eq!(
        std::fs::read(evals.join("results.json")).unwrap(),
        before_eval
    );

    // A later `--resume` keeps the imported rows.
    common::assert_bench_ok(&bench_in(&[
        "run",
        yaml,
        "--run-dir",
        run.to_str().unwrap(),
        "--resume",
    ]));
    let now = RunResults::read(&run).unwrap();
    assert!(now
        .results
        .iter()
        .any(|r| r.label == "planted" && r.imported.is_some()));
}

#[test]
fn results_of_schema_1_still_read_and_a_newer_schema_is_refused() {
    let tmp = common::tempdir();
    let v1 = r#"{"benchmark":"b","dataset":"omniglot","episode":{"ways":5,"shots":1,"queries":15},
"transductive":false,"run_dir":"x","results":[{"label":"a","algorithm":"reptile","accuracy":0.5,
"ci95":null,"test_episodes":2,"meta_steps":1,"train_episodes":1,"train_seconds":1.0,
"test_seconds":1.0,"selected":"final","best_val_accuracy":null,"episode_accuracy":[0.5,0.5]}]}"#;
    std::fs::write(tmp.path().join("results.json"), v1).unwrap();
    let r = RunResults::read(tmp.path()).unwrap();
    assert_eq!(r.schema_version, 1);
    assert!(r.provenance.is_none() && r.results[0].imported.is_none());
    let v9 = v1.replacen('{', r#"{"schema_version":9,"#, 1);
    std::fs::write(tmp.path().join("results.json"), v9).unwrap();
    let e = RunResults::read(tmp.path()).unwrap_err().to_string();
    assert!(
        e.contains("schema 9") && e.contains("update fewshot"),
        "{e}"
    );
}

#[test]
fn episodes_of_a_benchmark_refuse_what_would_change_them_and_optimisation_benchmarks() {
    common::assert_bench_fails(
        &bench_in(&["episodes", "fewshot-5way1shot", "--ways", "3"]),
        &["--ways", "fewshot-5way1shot fixes it"],
    );
    common::assert_bench_fails(
        &bench_in(&["episodes", "quadratic-10d"]),
        &["optimisation benchmark", "no episodes"],
    );
    common::assert_bench_fails(
        &bench_in(&["episodes", "nonsense"]),
        &["neither a dataset", "nor a benchmark"],
    );
    let tmp = common::tempdir();
    let out = tmp.path().join("x");
    common::assert_bench_fails(
        &bench_in(&[
            "episodes",
            "fewshot-5way1shot",
            "--split",
            "train",
            "--export",
            out.to_str().unwrap(),
        ]),
        &["give --count"],
    );
    assert!(!out.exists());
}
