//! Andrychowicz et al.'s LSTM optimizer and the two-level rule on few-shot
//! episodes, each with a learned initialisation (`algo::learned_fewshot`):
//! the episodic meta-gradient against finite differences, meta-training
//! on one episode, checkpoints, observation, entry checks, and the
//! benchmark file that lists them beside the headline algorithms.

mod common;

use candle_core::{DType, Device, Tensor};
use fewshot::algo::learned_fewshot::{LearnedFewShot, RuleKind, THETA0};
use fewshot::algo::{self, Algorithm, Context, Observer, Progress};
use fewshot::data::sampler::{Batch, EpisodeSpec};
use fewshot::model::learner::{Downsample, Learner};
use fewshot::model::params::Params;
use fewshot::rng::Rng;
use fewshot::spec::{Benchmark, Budget, Overrides};

const RULES: [&str; 2] = ["lstm-optimizer", "two-level"];

/// The tiny conv-4 of tests/meta_lstm.rs: 3-way, 8x8 single-channel
/// images, 2 filters.
fn tiny() -> Learner {
    Learner {
        in_channels: 1,
        image_size: 8,
        hidden: 2,
        ways: 3,
        downsample: Downsample::Stride2,
        bn_eps: 1e-5,
        blocks: 4,
        ..Learner::omniglot(3, 8)
    }
}

fn ctx(transductive: bool, run_seed: u64) -> Context {
    let l = tiny();
    Context {
        dataset: "omniglot".into(),
        spec: EpisodeSpec {
            ways: l.ways,
            shots: 2,
            queries: 2,
        },
        learner: l,
        norm: common::both_stats(transductive),
        run_seed,
        episode_seed: 5,
        device: Device::Cpu,
    }
}

/// A random 3-way episode, 2 shots and 2 queries per class.
fn episode(seed: u64, dtype: DType) -> Batch {
    let l = tiny();
    let mut rng = Rng::new(seed);
    let (s, ways, k) = (l.image_size, l.ways, 2);
    let mut img = |n: usize| {
        let v: Vec<f64> = (0..n * s * s).map(|_| rng.normal()).collect();
        Tensor::from_vec(v, (n, 1, s, s), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    let lab = || {
        Tensor::from_vec(
            (0..ways * k).map(|i| (i / k) as u32).collect::<Vec<_>>(),
            ways * k,
            &Device::Cpu,
        )
        .unwrap()
    };
    Batch {
        id: Default::default(),
        support_x: img(ways * k),
        support_y: lab(),
        query_x: img(ways * k),
        query_y: lab(),
    }
}

fn yaml(text: &str) -> fewshot::yaml::Value {
    fewshot::yaml::from_str(text, "test").unwrap()
}

/// The algorithm an entry builds through the registry (as a benchmark
/// does), or the error naming what is wrong.
fn build(entry: &str, c: &Context) -> fewshot::error::Result<Box<dyn Algorithm>> {
    algo::build(&yaml(entry), c, "algorithms[0]")
}

/// The concrete algorithm of `rule` with `steps` updates.
fn concrete(rule: &str, c: &Context, steps: usize) -> LearnedFewShot {
    let cfg: fewshot::algo::learned_fewshot::LearnedFewShotConfig =
        fewshot::yaml::from_str(&format!("{{algorithm: {rule}, steps: {steps}}}"), "t").unwrap();
    LearnedFewShot::new(cfg.resolve(c).unwrap(), c).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn episodic_meta_gradient_matches_finite_differences_with_the_support_gradients_replayed() {
    // The meta-gradient treats the support set's gradients and losses as
    // inputs (no second derivatives): the finite differences replay the
    // unperturbed unroll's inputs and check the backpropagation through
    // the rule, the three steps, the query pass and theta_0.
    for rule in RULES {
        for transductive in [false, true] {
            let mut m = concrete(rule, &ctx(transductive, 5), 3);
            m.to_dtype(DType::F64).unwrap();
            let b = episode(8, DType::F64);
            let base = m
                .unroll(
                    &m.params,
                    &mut m.support(&b.support_x, &b.support_y, None),
                    3,
                    false,
                )
                .unwrap();
            let frozen = base.inputs.clone();
            assert_eq!(frozen.len(), 3);
            let f = |q: &Params| scalar(&m.meta_loss(q, &b, Some(&frozen)).unwrap().0);
            // Replayed or computed inputs: the same value at the base point.
            let free = scalar(&m.meta_loss(&m.params, &b, None).unwrap().0);
            assert!((free - f(&m.params)).abs() < 1e-12, "{rule}");
            let (loss, _, g) = m.meta_gradient(&m.params, &b, Some(&frozen)).unwrap();
            assert!((loss - free).abs() < 1e-12);
            let what = format!("{rule} (transductive {transductive})");
            let checked = common::check_gradient_fd(&m.params, &g, 3, f, &what);
            assert!(checked >= 3 * (m.params.len() - 1), "{what}: {checked}");
            // The gradient reaches the bottom LSTM layer, the read-out,
            // the gates and theta_0.
            let mut reached = vec!["l1.w_ih", "l2.w_hh", "out.w", THETA0];
            if rule == "two-level" {
                reached.extend(["cell.w_f", "cell.b_i"]);
            }
            for name in reached {
                let size = scalar(&g.get(name).unwrap().sqr().unwrap().sum_all().unwrap());
                assert!(size > 0.0, "{what}: {name}");
            }
        }
    }
}

#[test]
fn a_few_meta_steps_on_a_fixed_episode_lower_its_query_loss() {
    for rule in RULES {
        let c = ctx(false, 2);
        let mut a = build(&format!("{{algorithm: {rule}, steps: 5}}"), &c).unwrap();
        let b = episode(3, DType::F32);
        let progress = Progress {
            step: 0,
            fraction: 0.0,
        };
        // Each step's score is the query loss at theta_T before its update.
        let mut losses = vec![];
        for _ in 0..30 {
            losses.push(
                a.meta_train_step(std::slice::from_ref(&b), progress)
                    .unwrap()
                    .loss,
            );
        }
        let (first, last) = (losses[0], *losses.last().unwrap());
        assert!(
            losses.iter().all(|l| l.is_finite()) && last < first - 0.05,
            "{rule}: query loss {first} -> {last} ({losses:?})"
        );
        assert!(a.meta_params().all_finite().unwrap(), "{rule}");
    }
}

#[test]
fn checkpoint_state_round_trips_to_the_same_adaptation_and_meta_step() {
    for rule in RULES {
        let entry = format!("{{algorithm: {rule}, steps: 3}}");
        let progress = Progress {
            step: 0,
            fraction: 0.0,
        };
        let mut a = build(&entry, &ctx(false, 1)).unwrap();
        for seed in [10, 11] {
            a.meta_train_step(&[episode(seed, DType::F32)], progress)
                .unwrap();
        }
        let state = a.state().unwrap();
        for key in ["meta.l1.w_ih", "meta.out.b", "meta.theta0", "adam.m.theta0"] {
            assert!(
                state.keys().any(|k| k.starts_with(key)),
                "{rule}: {key} not in {:?}",
                state.keys().collect::<Vec<_>>()
            );
        }
        // Another run seed: other fresh meta-parameters, until loaded.
        let mut b = build(&entry, &ctx(false, 9)).unwrap();
        let e = episode(12, DType::F32);
        let adapted = |x: &dyn Algorithm| {
            x.adapt(&e.support_x, &e.support_y, e.id)
                .unwrap()
                .params
                .tensors
                .iter()
                .flat_map(common::bits)
                .collect::<Vec<_>>()
        };
        assert_ne!(adapted(&*a), adapted(&*b), "{rule}");
        b.load_state(&state).unwrap();
        assert_eq!(adapted(&*a), adapted(&*b), "{rule}");
        assert_eq!(
            a.evaluate(&e).unwrap(),
            b.evaluate(&e).unwrap(),
            "{rule}: scores"
        );
        // Adam's moments came back too: the next meta-step is the same.
        let next = episode(13, DType::F32);
        a.meta_train_step(std::slice::from_ref(&next), progress)
            .unwrap();
        b.meta_train_step(std::slice::from_ref(&next), progress)
            .unwrap();
        for (x, y) in a.meta_params().tensors.iter().zip(&b.meta_params().tensors) {
            assert_eq!(common::bits(x), common::bits(y), "{rule}");
        }
    }
}

#[test]
fn meta_parameters_are_the_rules_weights_by_name_then_theta0() {
    let c = ctx(false, 5);
    let m = concrete("lstm-optimizer", &c, 3);
    let lstm = [
        "l1.w_ih", "l1.w_hh", "l1.b", "l2.w_ih", "l2.w_hh", "l2.b", "out.w", "out.b",
    ];
    assert_eq!(m.params.names[..lstm.len()], lstm);
    assert_eq!(m.params.names[lstm.len()..], [THETA0]);
    assert_eq!(m.rule_kind(), RuleKind::LstmOptimizer);
    let t = concrete("two-level", &c, 3);
    let cell = ["cell.w_f", "cell.w_i", "cell.b_f", "cell.b_i"];
    assert_eq!(t.params.names[..lstm.len()], lstm);
    assert_eq!(t.params.names[lstm.len()..lstm.len() + 4], cell);
    assert_eq!(t.params.names[lstm.len() + 4..], [THETA0]);
    // theta_0 is the learner's initialisation the meta-LSTM starts from
    // under the same run seed, one coordinate per learner parameter.
    let meta_lstm = build("{algorithm: meta-lstm}", &c).unwrap();
    let theta0 = |p: &Params| common::bits(p.get(THETA0).unwrap());
    assert_eq!(theta0(&m.params), theta0(meta_lstm.meta_params()));
    assert_eq!(theta0(&t.params), theta0(meta_lstm.meta_params()));
    assert_eq!(
        m.params.get(THETA0).unwrap().dims()[1],
        m.layer_ranges()[4].1.end
    );
    // The fresh rule is the one the optimisation side draws under the
    // same run seed (the paper preset's shape on any problem).
    use fewshot::algo::learned_optimizer::{LearnedEntry, LearnedOptimizer};
    use fewshot::algo::optimizer::OptContext;
    let oc = OptContext {
        problem: fewshot::algo::problem::ProblemSpec::Quadratic(Default::default()),
        steps: 20,
        run_seed: c.run_seed,
        kernels: Default::default(),
    };
    let entry = LearnedEntry {
        algorithm: "two-level".into(),
        ..Default::default()
    };
    let opt = LearnedOptimizer::new(entry.resolve(&oc).unwrap(), &oc).unwrap();
    for (name, w) in opt.params.names.iter().zip(&opt.params.tensors) {
        assert_eq!(
            common::bits(t.params.get(name).unwrap()),
            common::bits(w),
            "{name}"
        );
    }
}

#[test]
fn observe_reports_the_rules_series_per_step_and_layer() {
    struct Seen(Vec<(String, usize, String, usize)>);
    impl Observer for Seen {
        fn record(&mut self, series: &str, step: usize, layer: &str, values: &[f32]) {
            self.0
                .push((series.into(), step, layer.into(), values.len()));
        }
    }
    let c = ctx(false, 5);
    let b = episode(4, DType::F32);
    for (rule, series) in [
        ("lstm-optimizer", &["update"][..]),
        ("two-level", &["forget", "input", "update"][..]),
    ] {
        let a = build(
            &format!("{{algorithm: {rule}, steps: 2, steps_test: 4}}"),
            &c,
        )
        .unwrap();
        assert_eq!(a.series(), series);
        assert_eq!(
            fewshot::report::trace::traceable(a.series()),
            rule == "two-level"
        );
        let mut seen = Seen(vec![]);
        a.observe(&b, &mut seen).unwrap();
        let m = concrete(rule, &c, 2);
        let layers = m.layer_ranges();
        assert_eq!(seen.0.len(), 4 * series.len() * layers.len(), "{rule}");
        let mut it = seen.0.iter();
        for step in 1..=4 {
            for name in series {
                for (layer, r) in &layers {
                    let (s, t, l, n) = it.next().unwrap();
                    assert_eq!((s.as_str(), *t, l, *n), (*name, step, layer, r.len()));
                }
            }
        }
    }
}

#[test]
fn entries_are_resolved_with_defaults_and_mistakes_name_the_field() {
    let c = ctx(false, 5);
    let resolved = |entry: &str| algo::resolve(&yaml(entry), &c, "algorithms[3]");
    let r = resolved("{algorithm: lstm-optimizer}").unwrap();
    assert_eq!(r.label, "lstm-optimizer");
    let v = &r.config;
    for (field, value) in [
        ("hidden", 20.0),
        ("layers", 2.0),
        ("preprocess", 10.0),
        ("scale", 0.1),
        ("steps", 10.0),
        ("steps_test", 10.0),
        ("meta_lr", 1e-3),
        ("clip", 0.25),
    ] {
        assert_eq!(v[field].as_f64(), Some(value), "{field}");
    }
    assert_eq!(v["preset"].as_str(), Some("paper"));
    assert_eq!(v["grad_div_batch"].as_bool(), Some(true));
    assert!(v.get("candidate").is_none());
    let code = resolved("{algorithm: two-level, preset: code, steps: 4, label: tl}").unwrap();
    assert_eq!(code.label, "tl");
    assert_eq!(code.config["preprocess"].as_f64(), Some(5.0));
    assert_eq!(code.config["scale"].as_f64(), Some(0.01));
    assert_eq!(code.config["steps_test"].as_f64(), Some(4.0));
    assert_eq!(code.config["candidate"].as_str(), Some("learned"));
    // The resolved entry builds the same algorithm again.
    assert!(algo::build(&code.config, &c, "x").is_ok());
    for (entry, field) in [
        ("{algorithm: lstm-optimizer, stepz: 3}", "stepz"),
        (
            "{algorithm: lstm-optimizer, candidate: gradient}",
            "candidate",
        ),
        ("{algorithm: two-level, candidate: sgd}", "candidate"),
        ("{algorithm: two-level, preprocess: -1}", "preprocess"),
        ("{algorithm: two-level, scale: 0}", "scale"),
        ("{algorithm: two-level, steps: 0}", "steps"),
        ("{algorithm: two-level, steps_test: 0}", "steps_test"),
        ("{algorithm: two-level, hidden: 0}", "hidden"),
        ("{algorithm: two-level, layers: 0}", "layers"),
        ("{algorithm: two-level, meta_lr: .nan}", "meta_lr"),
        ("{algorithm: two-level, clip: -1}", "clip"),
        ("{algorithm: two-level, preset: book}", "preset"),
    ] {
        let e = resolved(entry).unwrap_err().to_string();
        assert!(
            e.contains("algorithms[3]") && e.contains(field),
            "{entry}: {e}"
        );
    }
    // No preprocessing: the raw gradient, one feature per coordinate.
    let raw = build("{algorithm: lstm-optimizer, preprocess: 0, steps: 2}", &c).unwrap();
    assert_eq!(raw.meta_params().get("l1.w_ih").unwrap().dims(), [80, 1]);
}

fn shipped(name: &str, profile: Option<&str>) -> Benchmark {
    let text = std::fs::read_to_string(common::repo_root().join(format!("benchmarks/{name}.yaml")))
        .unwrap();
    let o = Overrides {
        profile: profile.map(String::from),
        ..Default::default()
    };
    Benchmark::parse_with(&text, &format!("{name}.yaml"), &o).unwrap()
}

#[test]
fn the_learned_benchmark_has_the_headline_test_episodes_and_a_protocol_profile() {
    for profile in [None, Some("protocol")] {
        let head = shipped("fewshot-5way1shot", profile);
        let b = shipped("fewshot-5way1shot-learned", profile);
        // Everything that decides the episodes and how they are scored.
        let same = |x: &Benchmark| {
            fewshot::yaml::to_string(&(
                &x.dataset,
                &x.data,
                &x.episode,
                x.seed,
                x.run_seed,
                x.test_episodes,
                x.val_episodes,
                x.transductive,
                &x.batch_norm,
                &x.select,
                &x.budget,
                x.validate_every,
                x.validate_every_minutes,
                &x.kernels,
                &x.learner,
            ))
            .unwrap()
        };
        assert_eq!(same(&b), same(&head), "{profile:?}");
        // The headline rows with the same hyperparameters, then the two
        // learned rules and the hand-designed baselines (2,000 tuning
        // episodes each, in every profile).
        let labels: Vec<&str> = b.algorithms.iter().map(|a| a.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "fomaml",
                "reptile",
                "meta-lstm",
                "lstm-optimizer",
                "two-level",
                "sgd",
                "adam"
            ]
        );
        for (a, h) in b.algorithms.iter().zip(&head.algorithms) {
            assert_eq!(a.config, h.config, "{}", a.label);
            assert_eq!(b.budget_of(a), head.budget_of(h), "{}", a.label);
        }
        for a in &b.algorithms[3..] {
            assert_eq!(a.config["steps"].as_u64(), Some(10), "{}", a.label);
        }
        let tuning = Budget {
            minutes: None,
            meta_steps: None,
            episodes: Some(2_000),
        };
        for label in ["sgd", "adam"] {
            let (_, a) = b.algorithm(label).unwrap();
            assert_eq!(b.budget_of(a), tuning, "{label}");
        }
        if profile.is_some() {
            let episodes = Budget {
                minutes: None,
                meta_steps: None,
                episodes: Some(75_000),
            };
            for label in ["meta-lstm", "lstm-optimizer", "two-level"] {
                let (_, a) = b.algorithm(label).unwrap();
                assert_eq!(b.budget_of(a), episodes, "{label}");
            }
        } else {
            assert_eq!(
                b.describe_budget(),
                "fomaml: 15 min; reptile: 15 min; meta-lstm: 15 min; lstm-optimizer: 15 min; \
                 two-level: 15 min; sgd: 2000 episodes; adam: 2000 episodes"
            );
        }
    }
    // The test episodes themselves: the same sampler seeds and shapes give
    // the same episodes, so one context fits both files.
    let ctx = |name: &str| {
        let c = shipped(name, None).context(&Device::Cpu);
        (c.spec, c.episode_seed, c.norm)
    };
    assert_eq!(
        format!("{:?}", ctx("fewshot-5way1shot-learned")),
        format!("{:?}", ctx("fewshot-5way1shot"))
    );
}
