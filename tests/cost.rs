//! The cost check before a run (`run::cost`): a benchmark whose memory or
//! meta-step time cannot fit is refused before anything is decoded,
//! trained or written, naming the field; `--dry-run` prints the estimate;
//! and the memory estimate holds against the measured peak.

mod common;

fn small(dir: &std::path::Path, algorithms: &str) -> std::path::PathBuf {
    common::headline_variant(
        dir,
        algorithms,
        &[
            ("test_episodes: 600", "test_episodes: 4"),
            ("val_episodes: 100", "val_episodes: 2"),
        ],
    )
}

#[test]
fn a_benchmark_that_cannot_fit_is_refused_before_anything_runs() {
    let tmp = common::tempdir();
    let data = common::shared_datasets();
    let d = data.to_str().unwrap();
    let run = tmp.path().join("run");
    let r = run.to_str().unwrap();
    // Case 1: 512-pixel Omniglot needs gigabytes; under a 2 GiB limit it is
    // refused naming data.image_size, without decoding a single image.
    let yaml = small(tmp.path(), "  - {algorithm: reptile}\n");
    let text = std::fs::read_to_string(&yaml)
        .unwrap()
        .replace("image_size: 28", "image_size: 512");
    std::fs::write(&yaml, text).unwrap();
    let y = yaml.to_str().unwrap();
    let t = std::time::Instant::now();
    let e = common::assert_bench_fails(
        &common::bench(&[
            "--data-dir",
            d,
            "run",
            y,
            "--run-dir",
            r,
            "--max-memory",
            "2G",
        ]),
        &["data.image_size", "--max-memory", "GiB", "--dry-run"],
    );
    assert!(t.elapsed().as_secs() < 20, "{e}");
    assert!(!run.exists(), "nothing is written");
    // --dry-run prints the estimate and the refusal, and writes nothing.
    let out = common::assert_bench_ok(&common::bench(&[
        "--data-dir",
        d,
        "run",
        y,
        "--run-dir",
        r,
        "--max-memory",
        "2G",
        "--dry-run",
    ]));
    assert!(
        out.contains("peak memory") && out.contains("refused"),
        "{out}"
    );
    assert!(!run.exists());

    // Case 2: a meta-step that would take days, named by its field.
    let yaml = small(
        tmp.path(),
        "  - {algorithm: reptile, inner_iters: 100000000000}\n",
    );
    let y = yaml.to_str().unwrap();
    common::assert_bench_fails(
        &common::bench(&["--data-dir", d, "run", y, "--run-dir", r]),
        &[
            "algorithms[0] (reptile)",
            "inner_iters 100000000000",
            "one meta-step",
            "days",
            "--max-step-minutes",
        ],
    );
    assert!(!run.exists());
    // A meta-step longer than a short time budget is refused too; a budget
    // that buys few steps is only warned about.
    let yaml = small(tmp.path(), "  - {algorithm: reptile, inner_iters: 20000}\n");
    let y = yaml.to_str().unwrap();
    let text = std::fs::read_to_string(&yaml)
        .unwrap()
        .replace("budget: {minutes: 15}", "budget: {minutes: 0.5}");
    std::fs::write(&yaml, &text).unwrap();
    common::assert_bench_fails(
        &common::bench(&["--data-dir", d, "run", y, "--run-dir", r]),
        &["one meta-step", "the whole time budget"],
    );
    let out = common::assert_bench_ok(&common::bench(&[
        "--data-dir",
        d,
        "run",
        y,
        "--run-dir",
        r,
        "--dry-run",
        "--max-step-minutes",
        "600",
    ]));
    assert!(
        out.contains("refused") && out.contains("whole time budget"),
        "{out}"
    );
}

/// Peak and estimate (bytes) from a run's "peak memory X (estimated Y)" log line.
fn peak_and_estimate(log: &str) -> (f64, f64) {
    let line = log
        .lines()
        .find(|l| l.contains("peak memory"))
        .unwrap_or_else(|| panic!("{log}"));
    let nums: Vec<f64> = line
        .split("peak memory ")
        .nth(1)
        .unwrap()
        .split(['(', ')'])
        .flat_map(|p| {
            let p = p.trim().trim_start_matches("estimated ").trim();
            let (v, unit) = p.split_once(' ')?;
            let v: f64 = v.parse().ok()?;
            Some(
                v * if unit.starts_with("GiB") {
                    1024.0 * 1024.0 * 1024.0
                } else {
                    1024.0 * 1024.0
                },
            )
        })
        .collect();
    (nums[0], nums[1])
}

#[test]
fn the_memory_estimate_is_within_a_factor_of_two_of_the_measured_peak() {
    let tmp = common::tempdir();
    let data = common::shared_datasets();
    for (bench, label) in [
        ("fewshot-5way1shot", "fomaml"),
        ("fewshot-5way1shot", "meta-lstm"),
        ("mini-imagenet-5way1shot", "reptile"),
    ] {
        let run = tmp.path().join(format!("{bench}-{label}"));
        let out = common::bench_cmd(&[
            "--data-dir",
            data.to_str().unwrap(),
            "run",
            bench,
            "--only",
            label,
            "--smoke",
            "--meta-steps",
            "2",
            "--test-episodes",
            "4",
            "--run-dir",
            run.to_str().unwrap(),
        ])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
        let log = common::assert_bench_ok(&out);
        let log = format!("{log}{}", String::from_utf8_lossy(&out.stderr));
        let (peak, est) = peak_and_estimate(&log);
        let ratio = est / peak;
        assert!(
            (0.5..=2.0).contains(&ratio),
            "{bench} {label}: estimated {est:.0} bytes, measured {peak:.0} ({ratio:.2}x)"
        );
    }
}
