//! Architecture transfer on few-shot episodes: the hand-designed
//! baselines from a fresh initialisation (`algo::hand_fewshot`), the
//! learner's `blocks` option, and `bench eval` applying a run's update
//! rules to a learner of another shape (or its own, `--fresh-init`) from
//! the learner's fresh initialisation, refusing what is only an
//! initialisation.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use fewshot::algo::hand_fewshot::{HandFewShot, HandFewShotConfig};
use fewshot::algo::{self, Algorithm, Context, Progress};
use fewshot::data::sampler::{Batch, EpisodeSpec};
use fewshot::model::learner::{Downsample, Learner};
use fewshot::rng::Rng;
use fewshot::spec::{Benchmark, Overrides};

/// A tiny conv-4: 3-way, 8x8 single-channel images, 2 filters.
fn ctx() -> Context {
    let l = Learner {
        in_channels: 1,
        image_size: 8,
        hidden: 2,
        ways: 3,
        downsample: Downsample::Stride2,
        ..Learner::omniglot(3, 8)
    };
    Context {
        dataset: "omniglot".into(),
        spec: EpisodeSpec {
            ways: 3,
            shots: 2,
            queries: 2,
        },
        learner: l,
        norm: common::both_stats(false),
        run_seed: 3,
        episode_seed: 5,
        device: Device::Cpu,
    }
}

fn episode(seed: u64) -> Batch {
    let mut rng = Rng::new(seed);
    let mut img = |n: usize| {
        let v: Vec<f32> = (0..n * 64).map(|_| rng.normal() as f32).collect();
        Tensor::from_vec(v, (n, 1, 8, 8), &Device::Cpu).unwrap()
    };
    let lab = || {
        Tensor::from_vec(
            (0..6u32).map(|i| i / 2).collect::<Vec<_>>(),
            6,
            &Device::Cpu,
        )
    };
    Batch {
        id: Default::default(),
        support_x: img(6),
        support_y: lab().unwrap(),
        query_x: img(6),
        query_y: lab().unwrap(),
    }
}

fn hand(entry: &str, c: &Context) -> HandFewShot {
    let cfg: HandFewShotConfig = fewshot::yaml::from_str(entry, "test").unwrap();
    HandFewShot::new(cfg.resolve(c).unwrap(), c).unwrap()
}

fn flat(p: &fewshot::model::params::Params) -> Vec<f64> {
    p.flatten()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn sgd_from_a_fresh_initialisation_is_gradient_descent_on_the_support_set() {
    let c = ctx();
    let a = hand("{algorithm: sgd, lr: 0.5, steps: 2}", &c);
    let b = episode(1);
    let got = flat(&a.adapt(&b.support_x, &b.support_y, b.id).unwrap().params);
    // theta_0: the learner's draw every learned rule of the run starts from.
    let mut p = c
        .learner
        .init(&mut Rng::derive(c.run_seed, &[0x1417]), &Device::Cpu)
        .unwrap();
    for _ in 0..2 {
        let (_, g, _) = c
            .learner
            .loss_and_grad(&p, &b.support_x, &b.support_y)
            .unwrap();
        // theta_t = theta_{t-1} - lr * g_t, in float64 as torch.optim's
        // arithmetic is carried out here, then stored as the learner's f32.
        let t: Vec<f64> = flat(&p)
            .iter()
            .zip(flat(&g))
            .map(|(x, gx)| x - 0.5 * gx)
            .collect();
        let t = Tensor::from_vec(t, p.numel(), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        p = p.unflatten_like(&t).unwrap();
    }
    let want = flat(&p);
    let diff = got
        .iter()
        .zip(&want)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(diff < 1e-6, "max |difference| {diff}");
    // A fixed rate is a grid of one: nothing to tune.
    assert_eq!(a.lr(), 0.5);
}

#[test]
fn tuning_keeps_the_rate_with_the_lowest_mean_query_loss_and_checkpoints_its_tallies() {
    let c = ctx();
    let mut a = hand(
        "{algorithm: adam, lr_grid: [0.001, 0.01, 0.1], meta_batch: 2}",
        &c,
    );
    // Before anything is tried: the smallest rate.
    assert_eq!(a.lr(), 0.001);
    let eps: Vec<Batch> = (0..2).map(episode).collect();
    for step in 0..6 {
        a.meta_train_step(
            &eps,
            Progress {
                step,
                fraction: 0.0,
            },
        )
        .unwrap();
    }
    // Every rate tried twice on the same two episodes: the tallies are
    // twice one evaluation each, and the winner is their argmin.
    let tally = a.tally();
    let best = tally
        .iter()
        .filter(|t| t.1.is_finite())
        .min_by(|x, y| x.1.total_cmp(&y.1))
        .unwrap();
    assert_eq!(a.lr(), best.0);
    for (lr, loss) in &tally {
        let b = hand(&format!("{{algorithm: adam, lr: {lr}}}"), &c);
        let mean = eps.iter().map(|e| b.evaluate(e).unwrap().loss).sum::<f64>() / 2.0;
        assert!((mean - loss).abs() < 1e-9, "{lr}: {mean} vs {loss}");
    }
    // The state carries the tallies; another grid is refused.
    let s = a.state().unwrap();
    let mut b = hand("{algorithm: adam, lr_grid: [0.001, 0.01, 0.1]}", &c);
    b.load_state(&s).unwrap();
    assert_eq!(b.lr(), a.lr());
    let mut other = hand("{algorithm: adam, lr_grid: [0.001, 0.01]}", &c);
    let e = other.load_state(&s).unwrap_err().to_string();
    assert!(e.contains("learning rates"), "{e}");
    // A tuned rate is all a hand-designed optimiser learns: it carries to
    // a fresh initialisation whole.
    let mut fresh = hand("{algorithm: adam, lr_grid: [0.001, 0.01, 0.1]}", &c);
    fresh.load_rule(&s).unwrap();
    assert_eq!(fresh.lr(), a.lr());
}

#[test]
fn a_diverged_rate_never_wins_and_ties_go_to_the_smaller_rate() {
    let c = ctx();
    let mut a = hand("{algorithm: sgd, lr_grid: [0.1, 1.0, 3.0]}", &c);
    let base = a.state().unwrap();
    let state = |sums: [f64; 3], counts: [f64; 3]| {
        let mut s = base.clone();
        s.insert(
            "tune.loss_sum".into(),
            Tensor::new(&sums, &Device::Cpu).unwrap(),
        );
        s.insert(
            "tune.count".into(),
            Tensor::new(&counts, &Device::Cpu).unwrap(),
        );
        s
    };
    let s = state([2.0, f64::NAN, 1.0], [1.0, 1.0, 2.0]);
    a.load_state(&s).unwrap();
    assert_eq!(a.lr(), 3.0);
    let s = state([1.0, 1.0, f64::INFINITY], [2.0, 2.0, 1.0]);
    a.load_state(&s).unwrap();
    assert_eq!(a.lr(), 0.1);
    let s = state([f64::NAN, 0.0, 0.0], [1.0, 0.0, 0.0]);
    a.load_state(&s).unwrap();
    assert_eq!(a.lr(), 0.1, "nothing finite tried: the smallest rate");
}

#[test]
fn only_rules_load_into_a_fresh_initialisation() {
    let c = ctx();
    let build = |e: &str| {
        let v: fewshot::yaml::Value = fewshot::yaml::from_str(e, "test").unwrap();
        algo::build(&v, &c, "test").unwrap()
    };
    for e in ["{algorithm: maml}", "{algorithm: reptile}"] {
        let mut a = build(e);
        let s = a.state().unwrap();
        let err = a.load_rule(&s).unwrap_err().to_string();
        assert!(err.contains("initialisation"), "{e}: {err}");
    }
    // A learned rule trained with one learner keeps its weights and takes
    // the other learner's fresh theta_0.
    for e in [
        "{algorithm: meta-lstm}",
        "{algorithm: lstm-optimizer, steps: 2}",
        "{algorithm: two-level, steps: 2}",
    ] {
        let trained = build(e);
        let wide = Context {
            learner: Learner {
                hidden: 3,
                ..c.learner.clone()
            },
            ..c.clone()
        };
        let v: fewshot::yaml::Value = fewshot::yaml::from_str(e, "test").unwrap();
        let mut moved = algo::build(&v, &wide, "test").unwrap();
        // Perturb the trained weights so that loading is visible.
        let mut s = trained.state().unwrap();
        for (k, t) in s.iter_mut() {
            if k.starts_with("meta.") && k != "meta.theta0" {
                *t = (&*t + 0.25).unwrap();
            }
        }
        let fresh_theta0 = moved.meta_params().get("theta0").unwrap().clone();
        moved.load_rule(&s).unwrap();
        let mp = moved.meta_params();
        assert_eq!(
            common::bits(mp.get("theta0").unwrap()),
            common::bits(&fresh_theta0),
            "{e}"
        );
        for (n, t) in mp.names.iter().zip(&mp.tensors) {
            if n != "theta0" {
                assert_eq!(
                    common::bits(t),
                    common::bits(&s[&format!("meta.{n}")]),
                    "{e} {n}"
                );
            }
        }
        // The whole state would not fit the other learner.
        assert!(moved.load_state(&s).is_err(), "{e}");
    }
}

fn shipped(name: &str) -> Benchmark {
    let text = std::fs::read_to_string(common::repo_root().join(format!("benchmarks/{name}.yaml")))
        .unwrap();
    Benchmark::parse_with(&text, &format!("{name}.yaml"), &Overrides::default()).unwrap()
}

#[test]
fn the_wide_and_deep_benchmarks_are_the_headline_episodes_on_other_learners() {
    let head = shipped("fewshot-5way1shot");
    // conv 3x3 with bias, batch-norm scale and shift per block; the head
    // reads h * side^2 features for 5 ways.
    let count = |h: usize, blocks: usize, side: usize| {
        (9 * h + h + 2 * h) + (blocks - 1) * (9 * h * h + h + 2 * h) + (h * side * side * 5 + 5)
    };
    for (name, hidden, blocks, params) in [
        ("fewshot-5way1shot-wide", 128, 4, count(128, 4, 2)),
        ("fewshot-5way1shot-deep", 64, 5, count(64, 5, 1)),
    ] {
        let b = shipped(name);
        assert_eq!(
            (b.learner.hidden, b.learner.blocks),
            (hidden, blocks),
            "{name}"
        );
        let ctx = |x: &Benchmark| {
            let c = x.context(&Device::Cpu);
            format!(
                "{:?} {:?} {:?} {:?}",
                c.spec, c.episode_seed, c.norm, x.data
            )
        };
        assert_eq!(ctx(&b), ctx(&head), "{name}");
        assert_eq!(b.test_episodes, head.test_episodes);
        let p = b
            .learner
            .init(&mut Rng::new(0), &Device::Cpu)
            .unwrap()
            .numel();
        assert_eq!(p, params, "{name}");
        let labels: Vec<&str> = b.algorithms.iter().map(|a| a.label.as_str()).collect();
        assert_eq!(labels, ["sgd", "adam"]);
    }
}

#[test]
fn learner_blocks_are_checked_naming_the_field() {
    let text =
        std::fs::read_to_string(common::repo_root().join("benchmarks/fewshot-5way1shot.yaml"))
            .unwrap();
    for (blocks, needle) in [("0", "1..=9"), ("10", "1..=9")] {
        let t = format!("{text}\nlearner: {{blocks: {blocks}}}\n");
        let e = Benchmark::parse_with(&t, "b.yaml", &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("learner.blocks") && e.contains(needle), "{e}");
    }
    // mini-ImageNet's max-pool halves 84 pixels to nothing after 7 blocks.
    let mi = std::fs::read_to_string(
        common::repo_root().join("benchmarks/mini-imagenet-5way1shot.yaml"),
    )
    .unwrap();
    let ok = format!("{mi}\nlearner: {{blocks: 6}}\n");
    Benchmark::parse_with(&ok, "b.yaml", &Overrides::default()).unwrap();
    let bad = format!("{mi}\nlearner: {{blocks: 7}}\n");
    let e = Benchmark::parse_with(&bad, "b.yaml", &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("learner.blocks") && e.contains("84x84"), "{e}");
}

fn results(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap()
}

fn row<'a>(r: &'a serde_json::Value, label: &str) -> &'a serde_json::Value {
    r["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["label"] == label)
        .unwrap_or_else(|| panic!("no row {label}: {r}"))
}

#[test]
fn eval_applies_a_runs_rules_to_other_learners_from_fresh_initialisations() {
    // A short run on real Omniglot: Reptile, the meta-LSTM and tuned SGD,
    // on the headline episodes.
    let tmp = common::tempdir();
    let data = common::shared_datasets();
    let yaml = common::headline_variant(
        tmp.path(),
        "  - {algorithm: reptile}\n  - {algorithm: meta-lstm}\n  - {algorithm: sgd, lr_grid: [0.1, 1.0], meta_batch: 2}\n",
        &[],
    );
    let run = tmp.path().join("run");
    let args = |extra: &[&str]| {
        let mut v = vec!["--data-dir", data.to_str().unwrap()];
        v.extend_from_slice(extra);
        v.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let a = args(&[
        "run",
        yaml.to_str().unwrap(),
        "--smoke",
        "--meta-steps",
        "4",
        "--test-episodes",
        "12",
        "--run-dir",
        run.to_str().unwrap(),
    ]);
    common::assert_bench_ok(&common::bench(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    let own = results(&run);

    // The wide learner: rules from its fresh initialisation, Reptile not;
    // in two passes, the second adding its row to the first's (`--only`).
    let wide_eval = |only: &str| {
        let a = args(&[
            "eval",
            run.to_str().unwrap(),
            "--on",
            "fewshot-5way1shot-wide",
            "--test-episodes",
            "12",
            "--only",
            only,
        ]);
        common::bench(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let out = common::assert_bench_ok(&wide_eval("reptile,meta-lstm"));
    assert!(out.contains("not evaluated: reptile"), "{out}");
    let out = common::assert_bench_ok(&wide_eval("sgd"));
    assert!(out.contains("not evaluated: reptile"), "{out}");
    // A row it has already is not replaced without --force.
    common::assert_bench_fails(&wide_eval("sgd"), &["--force", "--only"]);
    let wide = results(&run.join("eval/fewshot-5way1shot-wide"));
    let labels: Vec<&str> = wide["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["meta-lstm", "sgd"]);
    for l in labels {
        assert!(
            row(&wide, l)["selected"]
                .as_str()
                .unwrap()
                .ends_with("fresh init"),
            "{wide}"
        );
    }
    let notes = wide["notes"].to_string();
    assert!(
        notes.contains("128 filters, 4 blocks") && notes.contains("64 filters, 4 blocks"),
        "{notes}"
    );
    let md =
        std::fs::read_to_string(run.join("eval/fewshot-5way1shot-wide/leaderboard.md")).unwrap();
    assert!(md.contains("not evaluated: reptile"), "{md}");

    // The run's own learner, --fresh-init: SGD always starts fresh, so its
    // scores are the run's own; the meta-LSTM's are not (its theta_0 was
    // learned), and Reptile is not evaluated.
    let a = args(&[
        "eval",
        run.to_str().unwrap(),
        "--on",
        yaml.to_str().unwrap(),
        "--fresh-init",
        "--test-episodes",
        "12",
    ]);
    common::assert_bench_ok(&common::bench(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    let fresh = results(&run.join("eval/small-fresh-init"));
    assert_eq!(
        row(&fresh, "sgd")["episode_accuracy"],
        row(&own, "sgd")["episode_accuracy"]
    );
    assert_ne!(
        row(&fresh, "meta-lstm")["episode_accuracy"],
        row(&own, "meta-lstm")["episode_accuracy"]
    );
    assert!(fresh["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["label"] != "reptile"));
}

#[test]
fn eval_evaluates_what_was_trained_never_overwrites_and_waits_for_the_run() {
    // A run of `--only sgd`: the other entries were never trained.
    let tmp = common::tempdir();
    let data = common::shared_datasets();
    let yaml = common::headline_variant(
        tmp.path(),
        "  - {algorithm: reptile}\n  - {algorithm: sgd, lr_grid: [0.1, 1.0], meta_batch: 2}\n",
        &[],
    );
    let run = tmp.path().join("run");
    let (d, r, y) = (
        data.to_str().unwrap(),
        run.to_str().unwrap(),
        yaml.to_str().unwrap(),
    );
    common::assert_bench_ok(&common::bench(&[
        "--data-dir",
        d,
        "run",
        y,
        "--smoke",
        "--meta-steps",
        "2",
        "--test-episodes",
        "6",
        "--only",
        "sgd",
        "--run-dir",
        r,
    ]));
    let eval = |extra: &[&str]| {
        let mut v = vec![
            "--data-dir",
            d,
            "eval",
            r,
            "--on",
            y,
            "--test-episodes",
            "6",
        ];
        v.extend_from_slice(extra);
        common::bench(&v)
    };
    let out = common::assert_bench_ok(&eval(&[]));
    assert!(
        out.contains("not trained in this run (not evaluated): reptile"),
        "{out}"
    );
    let first = results(&run.join("eval/small"));
    assert_eq!(first["results"].as_array().unwrap().len(), 1);
    // Asking for it by name is an error that says why.
    common::assert_bench_fails(&eval(&["--only", "reptile"]), &["reptile", "--only"]);
    // The same evaluation again: refused, the first kept; --force replaces.
    common::assert_bench_fails(&eval(&[]), &["eval/small", "--force"]);
    assert_eq!(results(&run.join("eval/small")), first);
    common::assert_bench_ok(&eval(&["--force"]));
    // `show` says what is missing.
    let shown = common::assert_bench_ok(&common::bench(&["show", r]));
    assert!(
        shown.contains("note: incomplete: no results yet for reptile"),
        "{shown}"
    );
    // While a run holds the folder, nothing is evaluated or written, and
    // `show` says the run is going.
    let held = fewshot::run::rundir::lock(&run).unwrap();
    common::assert_bench_fails(&eval(&["--force", "--fresh-init"]), &["still", "lock"]);
    assert!(!run.join("eval/small-fresh-init").exists());
    let shown = common::assert_bench_ok(&common::bench(&["show", r]));
    assert!(shown.contains("still going"), "{shown}");
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    let _going = fewshot::run::rundir::lock(&fresh).unwrap();
    common::assert_bench_fails(
        &common::bench(&["show", fresh.to_str().unwrap()]),
        &["still going"],
    );
    drop(held);
    // A multi-seed run with one of its two units done.
    let seeds = tmp.path().join("seeds");
    common::assert_bench_ok(&common::bench(&[
        "--data-dir",
        d,
        "run",
        y,
        "--smoke",
        "--meta-steps",
        "2",
        "--test-episodes",
        "6",
        "--only",
        "sgd",
        "--seeds",
        "0,1",
        "--unit",
        "0",
        "--run-dir",
        seeds.to_str().unwrap(),
    ]));
    let shown = common::assert_bench_ok(&common::bench(&["show", seeds.to_str().unwrap()]));
    assert!(
        shown.contains("incomplete: 1 of 2 units have no results yet: sgd (seed 1)"),
        "{shown}"
    );
}
