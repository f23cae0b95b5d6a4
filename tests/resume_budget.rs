//! A resumed run whose budget changes (issue: "growing the budget on
//! --resume silently gives a different result"): refused when the run
//! would not be the one it claims, recorded when it is.

mod common;

fn bench_file(dir: &std::path::Path, algorithms: &str) -> std::path::PathBuf {
    common::headline_variant(
        dir,
        algorithms,
        &[
            ("budget: {minutes: 15}", "budget: {meta_steps: 3}"),
            ("validate_every_minutes: 1.5", "validate_every: 1"),
            ("test_episodes: 600", "test_episodes: 4"),
            ("val_episodes: 100", "val_episodes: 2"),
        ],
    )
}

fn run(data: &str, yaml: &str, dir: &str, extra: &[&str]) -> std::process::Output {
    let mut v = vec!["--data-dir", data, "run", yaml, "--run-dir", dir];
    v.extend_from_slice(extra);
    common::bench(&v)
}

#[test]
fn a_budget_change_on_resume_is_refused_or_recorded() {
    let tmp = common::tempdir();
    let data = common::shared_datasets();
    let d = data.to_str().unwrap();
    // Reptile anneals its outer step over the budget: 2 steps of a 2-step
    // schedule are not 2 steps of a 3-step one.
    let yaml = bench_file(tmp.path(), "  - {algorithm: reptile}\n");
    let y = yaml.to_str().unwrap();
    let r = tmp.path().join("r");
    let rd = r.to_str().unwrap();
    common::assert_bench_ok(&run(d, y, rd, &["--meta-steps", "2"]));
    common::assert_bench_fails(
        &run(d, y, rd, &["--resume"]),
        &[
            "2 meta-steps",
            "3 meta-steps",
            "reptile",
            "schedule",
            "--force",
        ],
    );
    // With the budget it was started with, resuming is fine (nothing to do).
    common::assert_bench_ok(&run(d, y, rd, &["--resume", "--meta-steps", "2"]));

    // First-order MAML has no such schedule: the budget may grow, and the
    // results record both budgets.
    let yaml = bench_file(
        tmp.path(),
        "  - {algorithm: maml, first_order: true, meta_batch: 2}\n",
    );
    let y = yaml.to_str().unwrap();
    let m = tmp.path().join("m");
    let md = m.to_str().unwrap();
    common::assert_bench_ok(&run(d, y, md, &["--meta-steps", "2"]));
    let out = common::assert_bench_ok(&run(d, y, md, &["--resume"]));
    assert!(
        out.contains("fomaml was meta-trained under 2 budgets: 2 meta-steps (from step 0), then 3 meta-steps (from step 2)"),
        "{out}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(m.join("results.json")).unwrap()).unwrap();
    let row = &r["results"][0];
    assert_eq!(row["meta_steps"], 3);
    assert_eq!(row["budgets"].as_array().unwrap().len(), 2, "{row}");
    assert_eq!(row["budgets"][1]["from_step"], 2);
    // A smaller budget than the steps taken is refused.
    common::assert_bench_fails(
        &run(d, y, md, &["--resume", "--meta-steps", "1"]),
        &["3 meta-steps", "more steps than the budget"],
    );
}
