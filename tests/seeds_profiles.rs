//! Benchmark profiles (budgeted / protocol, per-algorithm budgets), the two
//! seeds (episode seed, run seed), and multi-seed runs split into units:
//! the job-array units run as separate processes give the table of one
//! `bench run --seeds`.

mod common;

use fewshot::spec::{Benchmark, Budget, Overrides, DEFAULT_PROFILE};

fn shipped(name: &str) -> String {
    std::fs::read_to_string(common::repo_root().join(format!("benchmarks/{name}.yaml"))).unwrap()
}

fn with(profile: Option<&str>) -> Overrides {
    Overrides {
        profile: profile.map(String::from),
        ..Default::default()
    }
}

fn steps(n: u64) -> Budget {
    Budget {
        minutes: None,
        meta_steps: Some(n),
        episodes: None,
    }
}

#[test]
fn every_profile_of_every_shipped_benchmark_resolves() {
    let dir = common::repo_root().join("benchmarks");
    let mut protocols = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        // Optimisation benchmarks have their own shape (tests/optimisation.rs).
        if fewshot::spec::task_of_file(&p.display().to_string()).unwrap()
            != fewshot::data::task::TaskKind::Episodic
        {
            continue;
        }
        for (name, _) in Benchmark::profiles(&p).unwrap() {
            let (b, _) = Benchmark::load_with(&p.display().to_string(), &with(Some(&name)))
                .unwrap_or_else(|e| panic!("{} --profile {name}: {e}", p.display()));
            assert_eq!(b.profile, name);
            if name == "protocol" {
                protocols += 1;
                // Every algorithm has its own published length, none a clock;
                // the hand-designed optimisers only tune a learning rate, in
                // the episodes their entry gives.
                for a in &b.algorithms {
                    let budget = b.budget_of(a);
                    assert!(budget.minutes.is_none(), "{}: {}", b.name, a.label);
                    let least = if ["sgd", "adam"].contains(&a.algorithm.as_str()) {
                        1_000
                    } else {
                        40_000
                    };
                    assert!(
                        budget.meta_steps.or(budget.episodes).unwrap() >= least,
                        "{}: {}",
                        b.name,
                        a.label
                    );
                }
            }
        }
    }
    assert!(
        protocols >= 6,
        "{protocols} benchmarks have a protocol profile"
    );
}

#[test]
fn a_profile_replaces_fields_and_gives_each_algorithm_its_budget() {
    let text = shipped("fewshot-5way1shot");
    let budgeted = Benchmark::parse_with(&text, "f.yaml", &with(None)).unwrap();
    assert_eq!(budgeted.profile, DEFAULT_PROFILE);
    assert!(budgeted.algorithms.iter().all(|a| a.budget.is_none()));
    assert_eq!(budgeted.describe_budget(), "15 min");
    let protocol = Benchmark::parse_with(&text, "f.yaml", &with(Some("protocol"))).unwrap();
    assert_eq!(protocol.select, fewshot::spec::Select::Final);
    let budget = |label: &str| {
        let (_, a) = protocol.algorithm(label).unwrap();
        protocol.budget_of(a)
    };
    assert_eq!(budget("fomaml"), steps(40_000));
    assert_eq!(budget("reptile"), steps(100_000));
    assert_eq!(budget("meta-lstm").episodes, Some(75_000));
    assert_eq!(
        protocol.describe_budget(),
        "fomaml: 40000 meta-steps; reptile: 100000 meta-steps; meta-lstm: 75000 episodes"
    );
    // Hyperparameters are those of the default profile: only the budget
    // and the model selection changed.
    for (a, b) in budgeted.algorithms.iter().zip(&protocol.algorithms) {
        assert_eq!(a.config, b.config);
    }
    // One budget on the command line replaces every per-algorithm budget.
    let o = Overrides {
        profile: Some("protocol".into()),
        budget: Some(steps(7)),
        ..Default::default()
    };
    let b = Benchmark::parse_with(&text, "f.yaml", &o).unwrap();
    assert!(b.algorithms.iter().all(|a| b.budget_of(a) == steps(7)));
}

#[test]
fn profile_mistakes_are_refused_naming_the_field() {
    let text = shipped("fewshot-5way1shot");
    // The error of `text` resolved with `profile`.
    let err = |text: &str, profile: Option<&str>| {
        Benchmark::parse_with(text, "f.yaml", &with(profile))
            .unwrap_err()
            .to_string()
    };
    let e = err(&text, Some("fast"));
    assert!(
        e.contains("no profile `fast`") && e.contains("budgeted, protocol"),
        "{e}"
    );
    let bad_label = text.replace("      fomaml: {budget", "      maml2: {budget");
    let e = err(&bad_label, Some("protocol"));
    assert!(
        e.contains("profiles.protocol.algorithms.maml2") && e.contains("fomaml"),
        "{e}"
    );
    let bad_field = text.replace("    select: final\n", "    selct: final\n");
    let e = err(&bad_field, None);
    assert!(e.contains("selct"), "{e}");
    let bad_budget = text.replace("{meta_steps: 40000}", "{meta_steps: 0}");
    let e = err(&bad_budget, Some("protocol"));
    assert!(
        e.contains("algorithms[0]") && e.contains("budget.meta_steps"),
        "{e}"
    );
    let relabel = text.replace("{budget: {meta_steps: 40000}}", "{label: x}");
    let e = err(&relabel, Some("protocol"));
    assert!(e.contains("not `label`"), "{e}");
    let named_default = text.replace("  protocol:\n", "  budgeted:\n");
    let e = err(&named_default, None);
    assert!(e.contains("profiles.budgeted"), "{e}");
}

#[test]
fn an_algorithm_entry_may_carry_its_own_budget() {
    let text = shipped("fewshot-5way1shot").replace(
        "  - algorithm: reptile\n",
        "  - algorithm: reptile\n    budget: {meta_steps: 12}\n",
    );
    let b = Benchmark::parse(&text, "f.yaml").unwrap();
    let (_, r) = b.algorithm("reptile").unwrap();
    assert_eq!(b.budget_of(r), steps(12));
    let (_, f) = b.algorithm("fomaml").unwrap();
    assert_eq!(b.budget_of(f), b.budget);
    // The resolved file keeps it, and reads back the same.
    let yaml = fewshot::spec::to_string(&b).unwrap();
    let back: Benchmark = fewshot::spec::from_str(&yaml, "resolved.yaml").unwrap();
    assert_eq!(
        back.budget_of(back.algorithm("reptile").unwrap().1),
        steps(12)
    );
}

#[test]
fn the_run_seed_changes_initialisation_but_never_the_test_episodes() {
    let text = shipped("fewshot-5way1shot");
    let ctx = |run_seed: u64| {
        let o = Overrides {
            run_seed: Some(run_seed),
            ..Default::default()
        };
        let b = Benchmark::parse_with(&text, "f.yaml", &o).unwrap();
        (b.context(&candle_core::Device::Cpu), b)
    };
    let (c0, b0) = ctx(0);
    let (c1, b1) = ctx(1);
    assert_eq!((c0.episode_seed, c1.episode_seed), (0, 0));
    assert_eq!((c0.run_seed, c1.run_seed), (0, 1));
    let init = |c: &fewshot::algo::Context, b: &Benchmark| {
        let a = fewshot::algo::build(&b.algorithms[0].config, c, "a").unwrap();
        common::values(&a.meta_params().flatten().unwrap())
    };
    assert_ne!(init(&c0, &b0), init(&c1, &b1));
    assert_eq!(init(&c1, &b1), init(&ctx(1).0, &b1));
    // Runs with seed 0 keep their old fingerprint (and so resume); other
    // run seeds are part of it.
    let f0 = fewshot::run::rundir::run_fingerprint(&b0).to_string();
    assert!(!f0.contains("run_seed"));
    assert!(fewshot::run::rundir::run_fingerprint(&b1)
        .to_string()
        .contains("\"run_seed\":1"));
}

/// `bench show --format csv` without the timing columns (they differ
/// between any two runs).
fn table_without_times(run: &std::path::Path) -> Vec<String> {
    let out = common::bench(&["show", run.to_str().unwrap(), "--format", "csv"]);
    let text = common::assert_bench_ok(&out);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let skip: Vec<usize> = header
        .iter()
        .enumerate()
        .filter(|(_, h)| h.ends_with("_seconds"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(skip.len(), 2, "{header:?}");
    lines
        .map(|l| {
            l.split(',')
                .enumerate()
                .filter(|(i, _)| !skip.contains(i))
                .map(|(_, c)| c)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

#[test]
fn job_array_units_as_separate_processes_give_the_table_of_one_run() {
    let tmp = common::tempdir();
    let data = common::shared_datasets();
    let data = data.to_str().unwrap();
    let options = [
        "fewshot-5way1shot",
        "--smoke",
        "--meta-steps",
        "3",
        "--test-episodes",
        "12",
        "--only",
        "fomaml,reptile",
        "--seeds",
        "0,1",
    ];
    // One process, every unit.
    let single = tmp.path().join("single");
    let mut args = vec!["--data-dir", data, "run"];
    args.extend(options);
    args.extend(["--run-dir", single.to_str().unwrap()]);
    let table = common::assert_bench_ok(&common::bench(&args));
    assert!(table.contains("run seeds 0,1"), "{table}");
    assert!(single.join("leaderboard.md").is_file());
    // The same plan as a Slurm job-array script, each task index run as its
    // own process.
    let array = tmp.path().join("array");
    let mut args = vec!["--data-dir", data, "plan"];
    args.extend(options);
    args.extend(["--run-dir", array.to_str().unwrap(), "--emit", "slurm"]);
    let script = common::assert_bench_ok(&common::bench(&args));
    assert!(script.contains("#SBATCH --array=0-3"), "{script}");
    let script_path = tmp.path().join("job.sh");
    std::fs::write(&script_path, &script).unwrap();
    // Before any unit ran, the folder has no results to show.
    let out = common::bench(&["show", array.to_str().unwrap()]);
    common::assert_bench_fails(&out, &["none of its 4 units has results yet"]);
    for task in 0..4 {
        let out = std::process::Command::new("bash")
            .arg(&script_path)
            .env("SLURM_ARRAY_TASK_ID", task.to_string())
            .env("BENCH", env!("CARGO_BIN_EXE_bench"))
            .output()
            .unwrap();
        common::assert_bench_ok(&out);
    }
    assert!(array.join("seed-1/reptile/results.json").is_file());
    assert_eq!(
        table_without_times(&single)[1..],
        table_without_times(&array)[1..]
    );
    // Two run seeds are two different trainings on the same test episodes.
    let r = fewshot::run::catalogue::load(&array).unwrap();
    for row in &r.results {
        assert_eq!(row.seeds, vec![0, 1]);
        assert_eq!(row.episode_accuracy.len(), 12);
        assert!(row.seed_sd.is_some());
    }
    // A task index past the plan is refused; a rerun task continues (its
    // unit is finished, so nothing is trained again).
    let out = std::process::Command::new("bash")
        .arg(&script_path)
        .env("SLURM_ARRAY_TASK_ID", "4")
        .env("BENCH", env!("CARGO_BIN_EXE_bench"))
        .output()
        .unwrap();
    common::assert_bench_fails(&out, &["--unit", "4 units"]);
    let out = std::process::Command::new("bash")
        .arg(&script_path)
        .env("SLURM_ARRAY_TASK_ID", "0")
        .env("BENCH", env!("CARGO_BIN_EXE_bench"))
        .output()
        .unwrap();
    common::assert_bench_ok(&out);
    assert_eq!(
        table_without_times(&single)[1..],
        table_without_times(&array)[1..]
    );
    // The plain list: one command per unit.
    let mut args = vec!["--data-dir", data, "plan"];
    args.extend(options);
    args.extend(["--run-dir", array.to_str().unwrap(), "--emit", "list"]);
    let list = common::assert_bench_ok(&common::bench(&args));
    assert_eq!(list.lines().count(), 4, "{list}");
    assert!(list.lines().last().unwrap().ends_with("--unit 3"), "{list}");
    // Another plan in the same folder is refused.
    let mut args = vec!["--data-dir", data, "plan"];
    args.extend(&options[..options.len() - 1]);
    args.extend(["0,1,2", "--run-dir", array.to_str().unwrap()]);
    common::assert_bench_fails(&common::bench(&args), &["holds another multi-seed run"]);
    // `bench report` takes the merged run as the benchmark's newest.
    let root = tmp.path().join("runs");
    std::fs::create_dir_all(root.join("fewshot-5way1shot")).unwrap();
    std::fs::rename(&array, root.join("fewshot-5way1shot/array")).unwrap();
    let out = common::bench(&["report", "--root", root.to_str().unwrap()]);
    let report = common::assert_bench_ok(&out);
    assert!(
        report.contains("fewshot-5way1shot") && report.contains("2 (sd"),
        "{report}"
    );
}
