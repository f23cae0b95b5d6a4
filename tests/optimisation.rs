//! Optimisation benchmarks end to end: the shipped files parse and list,
//! pairings across task kinds are refused, a run writes its files and a
//! killed run resumes to the same bits, meta-training improves a learned
//! optimiser on held-out problems, a trained optimiser transfers to other
//! problems, and the MNIST MLP learns from the real digits.

mod common;

use std::path::Path;

use fewshot::algo::optimizer::{self, OptContext, Problems};
use fewshot::algo::problem::{ProblemData, ProblemSpec, QuadraticSpec};
use fewshot::data::Split;
use fewshot::report::optimisation::OptResults;
use fewshot::run::optimise::{self, OptRunOptions};
use fewshot::run::rundir::Mode;
use fewshot::spec::optimisation::OptBenchmark;
use fewshot::spec::{Benchmark, Overrides};

const TINY: &str = "
name: tiny-quadratic
task: optimisation
problem: {kind: quadratic, dims: 3, functions: 4}
steps: 10
test_problems: 6
val_problems: 3
budget: {meta_steps: 6}
validate_every: 3
checkpoint_every: 2
algorithms:
  - {algorithm: adam, lr_grid: [0.01, 0.1, 1.0], tune_problems: 2}
  - {algorithm: lstm-optimizer, unroll: 5}
  - {algorithm: two-level, unroll: 5}
";

fn tiny() -> OptBenchmark {
    OptBenchmark::parse_with(TINY, "tiny.yaml", &Overrides::default()).unwrap()
}

fn opts(dir: &Path, mode: Mode, stop: Option<u64>) -> OptRunOptions {
    OptRunOptions {
        run_dir: dir.to_path_buf(),
        mode,
        only: vec![],
        show_progress: false,
        stop_after_steps: stop,
    }
}

#[test]
fn every_shipped_optimisation_benchmark_and_profile_resolves_and_is_listed() {
    let dir = common::repo_root().join("benchmarks");
    let mut found = vec![];
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        let path = p.display().to_string();
        if fewshot::spec::task_of_file(&path).unwrap()
            != fewshot::data::task::TaskKind::Optimisation
        {
            continue;
        }
        for profile in [None, Some("protocol")] {
            let o = Overrides {
                profile: profile.map(String::from),
                ..Default::default()
            };
            let (b, _) = OptBenchmark::load_with(&path, &o)
                .unwrap_or_else(|e| panic!("{path} {profile:?}: {e}"));
            assert!(b.algorithms.len() >= 8, "{}", b.name);
            assert_eq!(
                Some(b.name.as_str()),
                p.file_stem().and_then(|s| s.to_str())
            );
            if profile.is_some() {
                assert_eq!(b.budget.meta_steps, Some(10_000), "{}", b.name);
            }
        }
        found.push(p.file_stem().unwrap().to_string_lossy().into_owned());
    }
    found.sort();
    for name in [
        "quadratic-10d",
        "quadratic-10d-code",
        "mnist-mlp",
        "mnist-mlp-40",
        "mnist-mlp-2layer",
        "mnist-mlp-relu",
        "mnist-mlp-200steps",
    ] {
        assert!(
            found.iter().any(|f| f == name),
            "{name} not shipped: {found:?}"
        );
    }
    let out = common::bench(&["list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for name in &found {
        assert!(
            text.contains(name.as_str()),
            "`bench list` lacks {name}:\n{text}"
        );
    }
    assert!(!text.contains("error"), "{text}");
}

#[test]
fn pairings_across_task_kinds_are_refused_naming_both() {
    let e = OptBenchmark::parse_with(
        &TINY.replace("{algorithm: adam,", "{algorithm: maml,"),
        "t.yaml",
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("algorithms[0].algorithm")
            && e.contains("`maml` cannot run `optimisation` tasks"),
        "{e}"
    );
    let fewshot =
        std::fs::read_to_string(common::repo_root().join("benchmarks/fewshot-5way1shot.yaml"))
            .unwrap();
    let with_adam = fewshot.replacen("algorithms:\n", "algorithms:\n  - algorithm: adam\n", 1);
    assert_ne!(with_adam, fewshot);
    // Every optimiser now runs few-shot episodes too (the hand-designed
    // ones from a fresh initialisation, algo/hand_fewshot.rs): `adam` in a
    // few-shot file is that baseline. The refusal of a kind an entry does
    // not list is the unit test `an_algorithm_runs_only_the_task_kinds_its_entry_lists`.
    let b = Benchmark::parse(&with_adam, "f.yaml").unwrap();
    assert_eq!(b.algorithms[0].algorithm, "adam");
    assert_eq!(
        b.algorithms[0].config["lr_grid"]
            .as_sequence()
            .unwrap()
            .len(),
        10
    );
    // Mistakes in the problem block name the field.
    let e = OptBenchmark::parse_with(
        &TINY.replace("dims: 3", "dims: 3, dim: 4"),
        "t.yaml",
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("t.yaml") && e.contains("dim"), "{e}");
    let e = OptBenchmark::parse_with(
        &TINY.replace("unroll: 5}", "unroll: 4}"),
        "t.yaml",
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("algorithms[1].unroll") && e.contains("divide"),
        "{e}"
    );
}

#[test]
fn a_run_writes_its_files_and_a_killed_run_resumes_to_the_same_bits() {
    let bench = tiny();
    let data = Path::new("/nonexistent");
    let whole = common::tempdir();
    let a = optimise::run(&bench, data, &opts(whole.path(), Mode::New, None)).unwrap();
    for f in [
        "resolved.yaml",
        "results.json",
        "leaderboard.md",
        "leaderboard.csv",
        "run.log",
        "loss_curves.csv",
        "loss_curves.svg",
        "adam/test_problems.csv",
        "lstm-optimizer/curve.csv",
        "lstm-optimizer/test_problems.csv",
        "two-level/checkpoints",
    ] {
        assert!(whole.path().join(f).exists(), "{f} missing");
    }
    assert_eq!(a.results.len(), 3);
    let adam = &a.results[0];
    assert!(adam.tuning.as_ref().unwrap().chosen.starts_with("lr = "));
    assert_eq!(adam.final_loss.len(), 6);
    assert_eq!(adam.curve_mean.len(), 11);
    // The same folder again is refused; results.json reads back.
    let again = optimise::run(&bench, data, &opts(whole.path(), Mode::New, None)).unwrap_err();
    assert!(again.to_string().contains("--resume"), "{again}");
    let back = OptResults::read(whole.path()).unwrap();
    assert_eq!(back.results[1].final_loss, a.results[1].final_loss);

    // The trained optimisers on other problems (more coordinates, a longer
    // horizon) without retraining: one column of the transfer matrix.
    let other = OptBenchmark::parse_with(
        &TINY
            .replace("name: tiny-quadratic", "name: tiny-wider")
            .replace("dims: 3", "dims: 6")
            .replace("steps: 10", "steps: 20"),
        "wider.yaml",
        &Overrides::default(),
    )
    .unwrap();
    let t = optimise::evaluate_on(whole.path(), &other, data, &[], false).unwrap();
    assert_eq!(t.results.len(), 3);
    assert_eq!(t.results[1].curve_mean.len(), 21);
    assert_eq!(t.results[1].selected, a.results[1].selected);
    assert!(t.results[0].tuning.is_some());
    assert!(whole.path().join("eval/tiny-wider/results.json").is_file());
    assert!(t.results.iter().all(|r| r.log10_loss.is_finite()));

    // Killed after two meta-steps of the first learned optimiser, then
    // resumed (twice: the second learned optimiser is killed too).
    let split = common::tempdir();
    let e = optimise::run(&bench, data, &opts(split.path(), Mode::New, Some(2))).unwrap_err();
    assert!(e.to_string().contains("--resume"), "{e}");
    let e = optimise::run(&bench, data, &opts(split.path(), Mode::Resume, Some(5))).unwrap_err();
    assert!(e.to_string().contains("--resume"), "{e}");
    let b = optimise::run(&bench, data, &opts(split.path(), Mode::Resume, None)).unwrap();
    for (x, y) in a.results.iter().zip(&b.results) {
        assert_eq!(x.label, y.label);
        assert_eq!(x.final_loss, y.final_loss, "{}", x.label);
        assert_eq!(x.meta_steps, y.meta_steps, "{}", x.label);
        assert_eq!(x.selected, y.selected, "{}", x.label);
    }
    // A different configuration is not resumed.
    let other = OptBenchmark::parse_with(
        &TINY.replace("steps: 10", "steps: 20"),
        "tiny.yaml",
        &Overrides::default(),
    )
    .unwrap();
    let e = optimise::run(&other, data, &opts(split.path(), Mode::Resume, None)).unwrap_err();
    assert!(e.to_string().contains("different configuration"), "{e}");
}

fn mean_final(opt: &dyn optimizer::Optimizer, problems: &Problems, n: usize, steps: usize) -> f64 {
    let curves = optimise::optimise_all(opt, problems, n, steps).unwrap();
    curves.iter().map(|c| c[steps]).sum::<f64>() / n as f64
}

#[test]
fn meta_training_improves_a_learned_optimiser_on_held_out_problems_and_it_transfers() {
    let spec = ProblemSpec::Quadratic(QuadraticSpec {
        functions: 16,
        ..Default::default()
    });
    let ctx = OptContext {
        problem: spec.clone(),
        steps: 40,
        run_seed: 1,
        kernels: Default::default(),
    };
    let data = ProblemData::None;
    let (train, test) = (
        Problems {
            spec: &spec,
            data: &data,
            seed: 1,
            split: Split::Train,
        },
        Problems {
            spec: &spec,
            data: &data,
            seed: 9,
            split: Split::Test,
        },
    );
    for name in ["lstm-optimizer", "two-level"] {
        let entry: fewshot::yaml::Value =
            fewshot::yaml::from_str(&format!("{{algorithm: {name}}}"), "t").unwrap();
        let mut opt = optimizer::build(&entry, &ctx, "t").unwrap();
        let before = mean_final(&*opt, &test, 10, 40);
        for i in 0..40 {
            opt.meta_train_step(&mut train.get(i).unwrap()).unwrap();
        }
        let after = mean_final(&*opt, &test, 10, 40);
        assert!(
            after < 0.8 * before,
            "{name}: untrained {before}, trained {after}"
        );
        // Coordinate-wise: the same weights run a problem of another size
        // and a longer horizon.
        let other = ProblemSpec::Quadratic(QuadraticSpec {
            dims: 5,
            functions: 7,
            ..Default::default()
        });
        let p = Problems {
            spec: &other,
            data: &data,
            seed: 3,
            split: Split::Test,
        };
        let l = mean_final(&*opt, &p, 3, 80);
        assert!(l.is_finite(), "{name}: {l}");
    }
}

#[test]
fn the_mnist_mlp_reads_the_real_digits_and_adam_lowers_its_loss() {
    let dir = common::repo_root().join("../shared/datasets");
    let spec: ProblemSpec = fewshot::yaml::from_str("kind: mnist-mlp", "t").unwrap();
    let data = spec.open(&dir).unwrap();
    let ctx = OptContext {
        problem: spec.clone(),
        steps: 100,
        run_seed: 0,
        kernels: Default::default(),
    };
    let entry: fewshot::yaml::Value =
        fewshot::yaml::from_str("{algorithm: adam, lr: 0.01}", "t").unwrap();
    let mut opt = optimizer::build(&entry, &ctx, "t").unwrap();
    let test = Problems {
        spec: &spec,
        data: &data,
        seed: 0,
        split: Split::Test,
    };
    opt.tune(&test, 100).unwrap();
    let curves = optimise::optimise_all(&*opt, &test, 3, 100).unwrap();
    for c in &curves {
        // theta_0 ~ N(0, 0.01^2): the outputs are nearly uniform.
        assert!((c[0] - 10f64.ln()).abs() < 0.05, "{}", c[0]);
        assert!(c[100] < 1.0, "{:?}", &c[90..]);
    }
}

#[test]
fn a_dry_run_of_an_optimisation_benchmark_checks_it_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = common::bench(&[
        "run",
        "quadratic-10d",
        "--profile",
        "protocol",
        "--dry-run",
        "--run-dir",
        &run.to_string_lossy(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("nothing run") && text.contains("lstm-optimizer"),
        "{text}"
    );
    assert!(!run.exists(), "a dry run created {}", run.display());
    // A bad --only is still an error before anything would run.
    let out = common::bench(&["run", "quadratic-10d", "--dry-run", "--only", "nope"]);
    common::assert_bench_fails(&out, &["nope"]);
}
