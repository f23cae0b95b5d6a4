//! The reporting commands: `bench list` and `bench show`.

mod common;

#[test]
fn list_shows_every_shipped_benchmark_and_names_broken_files() {
    let out = common::bench(&["list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for name in std::fs::read_dir("benchmarks").unwrap().filter_map(|e| {
        let p = e.unwrap().path();
        (p.extension()? == "yaml").then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
    }) {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("{name} not listed:\n{text}"));
        let path = format!("benchmarks/{name}.yaml");
        if fewshot::spec::task_of_file(&path).unwrap() == fewshot::data::task::TaskKind::Episodic {
            // Its algorithms and budget, as the file resolves them.
            let (b, _) = fewshot::spec::Benchmark::load(&path).unwrap();
            let labels: Vec<&str> = b.algorithms.iter().map(|a| a.label.as_str()).collect();
            assert!(
                line.contains(&labels.join(",")) && line.contains(&b.describe_budget()),
                "{line}"
            );
        } else {
            assert!(
                line.contains("lstm-optimizer") && line.contains("meta-steps"),
                "{line}"
            );
        }
    }
    assert!(text.contains("mini-imagenet 5w5s15q"), "{text}");
    // A broken file is listed with its error, and the exit status says so.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        "benchmarks/fewshot-5way1shot.yaml",
        dir.path().join("good.yaml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "name: bad\nepisode: {ways: 0}\n",
    )
    .unwrap();
    let d = dir.path().to_string_lossy().into_owned();
    let out = common::bench(&["list", "--dir", &d]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fewshot-5way1shot "), "{text}");
    assert!(
        text.contains("bad.yaml") && text.contains("error:"),
        "{text}"
    );
    common::assert_bench_fails(&out, &["1 benchmark file(s)"]);
}

#[test]
fn show_reprints_a_run_and_names_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("nothing").to_string_lossy().into_owned();
    let out = common::bench(&["show", &d]);
    common::assert_bench_fails(&out, &["results.json"]);
}

#[test]
fn show_report_and_list_print_json_that_agrees_with_their_tables() {
    let acc: Vec<f64> = (0..20).map(|i| (40 + i) as f64 / 75.0).collect();
    let worse: Vec<f64> = acc.iter().map(|a| a - 2.0 / 75.0).collect();
    let run = write_run("b", &[("x", acc), ("y", worse)]);
    let p = run.path().to_string_lossy().into_owned();
    let out = common::bench(&["show", &p, "--format", "json"]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = String::from_utf8_lossy(&common::bench(&["show", &p]).stdout).into_owned();
    for row in j["results"].as_array().unwrap() {
        // The table's accuracy cell is the JSON's, in percent.
        let cell = format!(
            "{:.2} +/- {:.2}",
            100.0 * row["accuracy"].as_f64().unwrap(),
            100.0 * row["ci95"].as_f64().unwrap()
        );
        let label = row["label"].as_str().unwrap();
        let line = text
            .lines()
            .find(|l| l.split_whitespace().any(|w| w == label))
            .unwrap();
        assert!(line.contains(&cell), "{cell} not in {line}");
    }
    let y = &j["results"][1];
    assert!(
        (y["vs_best"]["mean"].as_f64().unwrap() + 2.0 / 75.0).abs() < 1e-12,
        "{y}"
    );
    assert_eq!(y["episode_accuracy"].as_array().unwrap().len(), 20);
    // `report --format json`: one object per run given.
    let out = common::bench(&["report", &p, &p, "--format", "json"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j.as_array().unwrap().len(), 2);
    assert_eq!(j[0]["results"][0]["label"], "x");
    // `list --format json`: every shipped benchmark, with its algorithms.
    let out = common::bench(&["list", "--format", "json"]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = j
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    let files = std::fs::read_dir("benchmarks")
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "yaml")
        })
        .count();
    assert_eq!(names.len(), files, "{names:?}");
    let main = j
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "fewshot-5way1shot")
        .unwrap();
    assert_eq!(
        main["algorithms"],
        serde_json::json!(["fomaml", "reptile", "meta-lstm"])
    );
    assert!(main["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "protocol"));
}

#[test]
fn tables_stay_aligned_with_labels_longer_than_their_columns() {
    let acc: Vec<f64> = (0..20).map(|i| (40 + i) as f64 / 75.0).collect();
    let long = "a-label-much-longer-than-fourteen";
    let run = write_run("b", &[("x", acc.clone()), (long, acc)]);
    let p = run.path().to_string_lossy().into_owned();
    // Where the accuracy cell ends on each row (the first `+/-` cell) and
    // where the row's `s` of the train seconds is: equal on every row.
    let ends = |text: &str, labels: &[&str], cell: &str| -> Vec<usize> {
        labels
            .iter()
            .map(|l| {
                let line = text
                    .lines()
                    .find(|x| x.split_whitespace().any(|w| w == *l))
                    .unwrap_or_else(|| panic!("{l} missing:\n{text}"));
                let at = line.find(cell).unwrap_or_else(|| panic!("{cell}:\n{text}"));
                line[..at].chars().count()
            })
            .collect()
    };
    let out = common::bench(&["show", &p]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    let e = ends(&text, &["x", long], " +/- ");
    assert_eq!(e[0], e[1], "{text}");
    let out = common::bench(&["compare", &p, &p]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let e = ends(&text, &["x", long], "same");
    assert_eq!(e[0], e[1], "{text}");
}

/// A results.json in a fresh folder: rows `(label, per-episode accuracy)`.
fn write_run(benchmark: &str, rows: &[(&str, Vec<f64>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_run_at(dir.path(), benchmark, rows);
    dir
}

/// A results.json in `dir` (created).
fn write_run_at(dir: &std::path::Path, benchmark: &str, rows: &[(&str, Vec<f64>)]) {
    use fewshot::report::results::{AlgoResult, RunResults};
    std::fs::create_dir_all(dir).unwrap();
    let results = rows
        .iter()
        .map(|(label, acc)| AlgoResult {
            meta_steps: 10,
            train_episodes: 10,
            train_seconds: 1.0,
            test_seconds: 1.0,
            ..AlgoResult::scored(label, acc)
        })
        .collect();
    let r = RunResults {
        schema_version: fewshot::report::results::SCHEMA_VERSION,
        provenance: None,
        benchmark: benchmark.into(),
        dataset: "omniglot".into(),
        episode: fewshot::data::sampler::EpisodeSpec {
            ways: 5,
            shots: 1,
            queries: 15,
        },
        transductive: false,
        batch_norm: Default::default(),
        select: Default::default(),
        seed: Some(0),
        run_seed: Some(0),
        run_seeds: vec![],
        profile: None,
        device: None,
        run_dir: dir.to_path_buf(),
        results,
        notes: vec![],
    };
    std::fs::write(dir.join("results.json"), serde_json::to_string(&r).unwrap()).unwrap();
}

#[test]
fn compare_flags_a_planted_regression_and_ignores_noise() {
    // 200 episodes of accuracies in steps of 1/75; `planted` loses 3 of 75
    // queries on every episode, `noisy` moves by +/-1 query at random.
    let mut rng = fewshot::rng::Rng::new(9);
    let base: Vec<f64> = (0..200)
        .map(|_| (40 + rng.below(30)) as f64 / 75.0)
        .collect();
    let planted: Vec<f64> = base.iter().map(|a| a - 3.0 / 75.0).collect();
    let noisy: Vec<f64> = base
        .iter()
        .map(|a| a + (rng.below(3) as f64 - 1.0) / 75.0)
        .collect();
    let before = write_run("b", &[("x", base.clone()), ("y", base.clone())]);
    let after = write_run("b", &[("x", planted), ("y", noisy)]);
    let p = |d: &tempfile::TempDir| d.path().to_string_lossy().into_owned();
    let out = common::bench(&["compare", &p(&before), &p(&after)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = |l: &str| text.lines().find(|x| x.starts_with(l)).unwrap().to_string();
    assert!(
        line("x ").contains("-4.00 +/- 0.00") && line("x ").ends_with("WORSE"),
        "{text}"
    );
    assert!(line("y ").ends_with("same"), "{text}");
    // The same as JSON, with the same exit status.
    let out = common::bench(&["compare", &p(&before), &p(&after), "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["worse"], true);
    let x = &j["changes"][0];
    assert_eq!(
        (x["label"].as_str(), x["verdict"].as_str()),
        (Some("x"), Some("WORSE"))
    );
    assert!(
        (x["change"]["mean"].as_f64().unwrap() + 0.04).abs() < 1e-12,
        "{j}"
    );
    assert_eq!(j["changes"][1]["verdict"], "same");
    // A run folder that is not one is an error, status 2 (not 1, which
    // scripts read as "got worse").
    let missing = before.path().join("no-such-run");
    let out = common::bench(&["compare", &p(&before), &missing.to_string_lossy()]);
    common::assert_bench_fails(&out, &["no-such-run"]);
    // The other way round nothing got worse: status 0.
    let out = common::bench(&["compare", &p(&after), &p(&before)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Runs of different benchmarks cannot be paired.
    let other = write_run("c", &[("x", base)]);
    let out = common::bench(&["compare", &p(&before), &p(&other)]);
    common::assert_bench_fails(&out, &["same test episodes"]);
}

#[test]
fn report_takes_the_newest_run_of_each_benchmark() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    write_run_at(
        &r.join("fewshot-5way1shot/old"),
        "fewshot-5way1shot",
        &[("fomaml", vec![0.5, 0.6])],
    );
    std::thread::sleep(std::time::Duration::from_millis(50));
    write_run_at(
        &r.join("fewshot-5way1shot/new"),
        "fewshot-5way1shot",
        &[("fomaml", vec![0.7, 0.9])],
    );
    write_run_at(&r.join("other/x"), "other", &[("reptile", vec![0.3, 0.4])]);
    std::fs::create_dir_all(r.join("other/not-a-run")).unwrap();
    let out = common::bench_cmd(&["report", "--root", &r.to_string_lossy()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let text = common::assert_bench_ok(&out);
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("fomaml") || l.contains("reptile"))
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    // The newest fewshot run (80%), with the benchmark file's published number.
    assert!(
        rows[0].contains("80.00 +/- ") && rows[0].contains("98.30 +/- 0.50 T"),
        "{text}"
    );
    assert!(
        rows[1].starts_with("other") && rows[1].contains("35.00"),
        "{text}"
    );
    let md = common::bench(&["report", "--root", &r.to_string_lossy(), "--format", "md"]);
    assert_eq!(
        common::assert_bench_ok(&md)
            .lines()
            .filter(|l| l.starts_with("| "))
            .count(),
        2 + 2
    );
    let empty = tempfile::tempdir().unwrap();
    common::assert_bench_fails(
        &common::bench(&["report", "--root", &empty.path().to_string_lossy()]),
        &["no complete run"],
    );
}

#[test]
fn selftest_passes_on_the_cpu_and_cuda_needs_a_cuda_build() {
    // The gradient checks a GPU is checked with, here on the CPU (CI).
    let out = common::bench(&["selftest"]);
    let text = common::assert_bench_ok(&out);
    for check in [
        "learner gradient, stride-2 form",
        "learner gradient, max-pool form",
        "fused learner blocks",
        "meta-LSTM with f = 1, i = lr is gradient descent (Composed",
        "meta-LSTM with f = 1, i = lr is gradient descent (Fused",
        "meta-LSTM meta-gradient (Composed",
        "meta-LSTM meta-gradient (Fused",
        "second-order MAML meta-gradient",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(check))
            .unwrap_or_else(|| panic!("no check `{check}`:\n{text}"));
        assert!(line.ends_with(" ok"), "{line}");
    }
    assert!(
        text.contains("checks on cpu") && text.contains("all passed"),
        "{text}"
    );
    if !fewshot::device::CUDA_BUILT {
        let out = common::bench(&["--device", "cuda", "selftest"]);
        common::assert_bench_fails(
            &out,
            &["--device", "built without CUDA", "scripts/build-cuda.sh"],
        );
    }
    let out = common::bench(&["--device", "tpu", "selftest"]);
    common::assert_bench_fails(&out, &["--device", "cpu, cuda or cuda:N"]);
}

#[test]
fn an_installed_bench_finds_its_shipped_benchmarks_without_the_source_tree() {
    // Run from a folder without benchmarks/: the embedded files, written
    // once to the cache, are what `list` shows and what names resolve to.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let run = |args: &[&str]| {
        common::bench_cmd(args)
            .current_dir(dir.path())
            .env("XDG_CACHE_HOME", &cache)
            .output()
            .unwrap()
    };
    let listed = common::assert_bench_ok(&run(&["list"]));
    let shipped = cache.join("fewshot");
    assert!(listed.contains(&shipped.display().to_string()), "{listed}");
    assert!(!listed.contains(env!("CARGO_MANIFEST_DIR")), "{listed}");
    for e in std::fs::read_dir("benchmarks").unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            assert!(
                listed.lines().any(|l| l.starts_with(&format!("{name} "))),
                "{name}: {listed}"
            );
        }
    }
    // The copies are the shipped files, byte for byte.
    let copy = std::fs::read_dir(&shipped)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(
        std::fs::read(copy.join("fewshot-5way1shot.yaml")).unwrap(),
        std::fs::read("benchmarks/fewshot-5way1shot.yaml").unwrap()
    );
    // A name resolves to them.
    let r = dir.path().join("r");
    let plan = common::assert_bench_ok(&run(&[
        "plan",
        "fewshot-5way1shot",
        "--seeds",
        "0,1",
        "--run-dir",
        r.to_str().unwrap(),
    ]));
    assert!(
        plan.contains("fewshot-5way1shot (profile budgeted)"),
        "{plan}"
    );
}
