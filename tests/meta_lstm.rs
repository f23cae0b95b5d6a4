//! The Ravi & Larochelle meta-learner LSTM: gradient descent as a special
//! case, initialisation, preprocessing, and its meta-gradient.

mod common;

use candle_core::{DType, Device, Tensor};
use fewshot::algo::learned::ravi::{RaviRule, RaviWeights};
use fewshot::algo::learned::{self, preprocess, Inputs, Preprocess, UnrollOptions};
use fewshot::algo::meta_lstm::{Gates, MetaLstm, MetaLstmConfig, Unrolled};
use fewshot::algo::{sgd_adapt, Algorithm, Context, InnerSgd, Observer};
use fewshot::data::sampler::{Batch, EpisodeSpec};
use fewshot::model::kernels::Kernels;
use fewshot::model::learner::{Downsample, Learner};
use fewshot::model::params::Params;
use fewshot::rng::Rng;

fn ctx(l: Learner, transductive: bool) -> Context {
    Context {
        dataset: "omniglot".into(),
        spec: EpisodeSpec {
            ways: l.ways,
            shots: 2,
            queries: 2,
        },
        learner: l,
        norm: common::both_stats(transductive),
        run_seed: 5,
        episode_seed: 5,
        device: Device::Cpu,
    }
}

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

fn batch(l: &Learner, seed: u64, dtype: DType) -> Batch {
    episode(l, seed, dtype, 2, 2)
}

/// A random `l.ways`-way episode of single-channel images.
fn episode(l: &Learner, seed: u64, dtype: DType, shots: usize, queries: usize) -> Batch {
    let mut rng = Rng::new(seed);
    let (s, ways) = (l.image_size, l.ways);
    let mut img = |n: usize| {
        let v: Vec<f64> = (0..n * s * s).map(|_| rng.normal()).collect();
        Tensor::from_vec(v, (n, 1, s, s), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    let lab = |k: usize| {
        Tensor::from_vec(
            (0..ways * k).map(|i| (i / k) as u32).collect::<Vec<_>>(),
            ways * k,
            &Device::Cpu,
        )
        .unwrap()
    };
    Batch {
        id: Default::default(),
        support_x: img(ways * shots),
        support_y: lab(shots),
        query_x: img(ways * queries),
        query_y: lab(queries),
    }
}

fn meta(l: Learner, transductive: bool, steps: usize) -> MetaLstm {
    let c = ctx(l, transductive);
    let cfg = MetaLstmConfig {
        steps: Some(steps),
        ..Default::default()
    };
    MetaLstm::new(cfg.resolve(&c).unwrap(), &c).unwrap()
}

#[test]
fn gradient_descent_is_a_special_case() {
    // With f = 1 and i = lr, ten meta-LSTM updates are ten SGD steps: with
    // step lr on the mean loss, or lr / B when the gradient is divided by
    // the batch size B as in the reference.
    for (l, div) in [
        (tiny(), false),
        (tiny(), true),
        (Learner::omniglot(5, 28), false),
        (Learner::omniglot(5, 28), true),
    ] {
        let mut m = meta(l.clone(), false, 10);
        m.config.grad_div_batch = div;
        m.to_dtype(DType::F64).unwrap();
        let ways = l.ways;
        let b = {
            let mut rng = Rng::new(2);
            let s = l.image_size;
            let v: Vec<f64> = (0..2 * ways * s * s).map(|_| rng.normal()).collect();
            let x = Tensor::from_vec(v, (2 * ways, 1, s, s), &Device::Cpu).unwrap();
            let y = Tensor::from_vec(
                (0..2 * ways).map(|i| (i / 2) as u32).collect::<Vec<_>>(),
                2 * ways,
                &Device::Cpu,
            )
            .unwrap();
            (x, y)
        };
        let lr = if div { 0.1 * (2 * ways) as f64 } else { 0.1 };
        let sgd_lr = 0.1;
        for kernels in [Kernels::Composed, Kernels::Fused] {
            let rule = m.rule(&m.params).unwrap().with_gates(Gates::Fixed {
                forget: 1.0,
                input: lr,
            });
            let opts = UnrollOptions {
                kernels,
                ..UnrollOptions::new(10)
            };
            let u = m
                .unroll(&rule, &mut m.support(&b.0, &b.1, None), &opts)
                .unwrap();
            let lstm = m.learner_params(&u.theta).unwrap();
            let theta0 = m.learner_params(m.params.get("theta0").unwrap()).unwrap();
            let step = InnerSgd::plain(sgd_lr, &theta0);
            let sgd = sgd_adapt(&l, &theta0, &b.0, &b.1, &step, 10, None).unwrap();
            let diff = lstm
                .zip_map(&sgd, |a, b| a - b)
                .unwrap()
                .sum_sq()
                .unwrap()
                .sqrt();
            let moved = theta0
                .zip_map(&sgd, |a, b| a - b)
                .unwrap()
                .sum_sq()
                .unwrap()
                .sqrt();
            assert!(moved > 1e-2, "SGD did not move ({moved})");
            assert!(
                diff < 1e-10 * (1.0 + moved),
                "meta-LSTM ({kernels:?}) with f=1, i=lr differs from SGD by {diff}"
            );
        }
    }
}

#[test]
fn a_fresh_meta_learner_starts_near_gradient_descent_with_a_small_step() {
    let m = meta(Learner::omniglot(5, 28), false, 10);
    let p = &m.params;
    let sig = |t: &Tensor| {
        1.0 / (1.0 + (-t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as f64).exp())
    };
    let f = sig(p.get("cell.b_f").unwrap());
    let i = sig(p.get("cell.b_i").unwrap());
    assert!((0.98..=0.994).contains(&f), "sigmoid(b_f) = {f}");
    assert!((0.006..=0.019).contains(&i), "sigmoid(b_i) = {i}");
    for name in ["lstm.w_ih", "lstm.w_hh", "lstm.b", "cell.w_f", "cell.w_i"] {
        let v = p
            .get(name)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            v.iter().all(|x| x.abs() <= 0.01),
            "{name} outside U(-0.01, 0.01)"
        );
    }
    // theta_0 is a fresh learner's initialisation, one coordinate per parameter.
    let learner = Learner::omniglot(5, 28);
    let fresh = learner
        .init(&mut Rng::derive(5, &[0x1417]), &Device::Cpu)
        .unwrap();
    assert_eq!(p.get("theta0").unwrap().elem_count(), fresh.numel());
    let a = p
        .get("theta0")
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = fresh.flatten().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a, b);
    // Its layers cover every coordinate, in order.
    let ranges = m.layer_ranges();
    let names: Vec<&str> = ranges.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(names, ["conv1", "conv2", "conv3", "conv4", "head"]);
    assert_eq!(ranges.last().unwrap().1.end, fresh.numel());
}

#[test]
fn preprocessing_matches_the_formula_at_the_boundaries() {
    let p = 10.0f64;
    let b = (-p).exp();
    // At |x| = e^-p the reference's strict `torch.gt` picks the second
    // branch, (-1, e^p x); both branches give (-1, +-1) there.
    let (a, s) = preprocess(b, p);
    assert!(a == -1.0 && (s - 1.0).abs() < 1e-12);
    let (a, s) = preprocess(-b, p);
    assert!(a == -1.0 && (s + 1.0).abs() < 1e-12);
    // Just above: the first branch, (log|x| / p, sign x).
    let (a, s) = preprocess(1.5 * b, p);
    assert!((a - (1.5 * b).ln() / p).abs() < 1e-12 && s == 1.0);
    // Just below: (-1, e^p x), continuous with the first branch's sign.
    let (a, s) = preprocess(0.5 * b, p);
    assert!(a == -1.0 && (s - 0.5).abs() < 1e-12);
    let (a, s) = preprocess(-0.5 * b, p);
    assert!(a == -1.0 && (s + 0.5).abs() < 1e-12);
    // Zero.
    assert_eq!(preprocess(0.0, p), (-1.0, 0.0));
    // Ordinary and huge values.
    let (a, s) = preprocess(-0.25, p);
    assert!((a - 0.25f64.ln() / p).abs() < 1e-15 && s == -1.0);
    let (a, s) = preprocess(1e30, p);
    assert!((a - 1e30f64.ln() / 10.0).abs() < 1e-12 && s == 1.0);
}

#[test]
fn meta_gradient_matches_finite_differences() {
    // The meta-gradient treats the learner's gradients and losses as inputs
    // (no second derivatives), so the finite differences hold those inputs
    // fixed at the values of the unperturbed unroll and check the
    // backpropagation through time of everything else.
    for transductive in [true, false] {
        let mut m = meta(tiny(), transductive, 3);
        m.to_dtype(DType::F64).unwrap();
        let b = batch(&tiny(), 8, DType::F64);
        let base = unroll(&m, &b, Kernels::Composed, 3, false);
        let frozen = base.inputs.clone();
        let f = |q: &Params| {
            m.meta_loss(q, &b, Some(&frozen))
                .unwrap()
                .0
                .to_scalar::<f64>()
                .unwrap()
        };
        // Same value with computed or frozen inputs at the base point.
        let free = m
            .meta_loss(&m.params, &b, None)
            .unwrap()
            .0
            .to_scalar::<f64>()
            .unwrap();
        assert!((free - f(&m.params)).abs() < 1e-12);
        let vars = m.params.to_vars().unwrap();
        let pv = Params::from_vars(&m.params.names, &vars);
        let (loss, _) = m.meta_loss(&pv, &b, Some(&frozen)).unwrap();
        let g = pv.grads(&loss.backward().unwrap()).unwrap();
        let checked = common::check_gradient_fd(
            &m.params,
            &g,
            6,
            f,
            &format!("composed meta-gradient (transductive {transductive})"),
        );
        assert!(checked > 40);
        // The gradient reaches the LSTM weights and theta_0.
        for name in ["lstm.w_ih", "cell.w_f", "cell.b_i", "theta0"] {
            assert!(
                g.get(name)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
                    > 0.0,
                "{name}"
            );
        }
    }
}

/// A 10-step meta-learner in `dtype` with weights moved off their
/// initialisation (larger recurrent and cell weights exercise every path
/// of the backward), and an episode for it: the tiny learner's, or a
/// 5-way 1-shot one with 3 queries.
fn ten_step_case(l: &Learner, dtype: DType) -> (MetaLstm, Batch) {
    let mut m = meta(l.clone(), false, 10);
    if dtype == DType::F64 {
        m.to_dtype(DType::F64).unwrap();
    }
    m.params = common::jitter(&m.params, 0.05, 11);
    let b = if l.image_size == 8 {
        batch(l, 4, dtype)
    } else {
        episode(l, 3, dtype, 1, 3)
    };
    (m, b)
}

/// `steps` learned-gate steps on the support set with kernels `k`, gates
/// recorded when `record`.
fn unroll(m: &MetaLstm, b: &Batch, k: Kernels, steps: usize, record: bool) -> Unrolled {
    let rule = m.rule(&m.params).unwrap();
    let opts = UnrollOptions {
        kernels: k,
        record,
        ..UnrollOptions::new(steps)
    };
    m.unroll(
        &rule,
        &mut m.support(&b.support_x, &b.support_y, None),
        &opts,
    )
    .unwrap()
}

/// Ten learned-gate steps on the support set, gates recorded.
fn ten_steps(m: &MetaLstm, b: &Batch, k: Kernels) -> Unrolled {
    unroll(m, b, k, 10, true)
}

#[test]
fn fused_and_composed_paths_agree_over_ten_steps() {
    // The fused kernel against the composed candle graph: theta_T, the
    // gates at every step, the meta-loss and the whole meta-gradient, for
    // the tiny learner in float64 and the full 113k-coordinate Omniglot
    // learner in float32 (10 steps, 5-way 1-shot, trained-looking weights
    // so that every term matters).
    for (l, dtype, tol) in [
        (tiny(), DType::F64, 1e-12),
        (Learner::omniglot(5, 28), DType::F32, 1e-5),
    ] {
        let (m, b) = ten_step_case(&l, dtype);
        let run = |k: Kernels| ten_steps(&m, &b, k);
        let (c, f) = (run(Kernels::Composed), run(Kernels::Fused));
        let d = common::max_rel_diff(
            std::slice::from_ref(&c.theta),
            std::slice::from_ref(&f.theta),
        );
        assert!(d < tol, "{dtype:?}: theta_T differs by {d}");
        assert_eq!(c.gates.len(), 10);
        for (s, ((cf, ci), (ff, fi))) in c.gates.iter().zip(&f.gates).enumerate() {
            let d = common::max_rel_diff(&[cf.clone(), ci.clone()], &[ff.clone(), fi.clone()]);
            assert!(d < tol, "{dtype:?}: gates of step {} differ by {d}", s + 1);
        }
        let mut composed = meta(l.clone(), false, 10);
        composed.params = m.params.clone();
        let fused_m = &m;
        let gc = {
            let mut cm = meta(l.clone(), false, 10);
            cm.params = m.params.clone();
            let mut ctx = cm.context().clone();
            ctx.learner.kernels = Kernels::Composed;
            let mut cm2 = MetaLstm::new(cm.config.clone(), &ctx).unwrap();
            cm2.params = m.params.clone();
            cm2.meta_gradient(&m.params, &b, None).unwrap()
        };
        let gf = fused_m.meta_gradient(&m.params, &b, None).unwrap();
        drop(composed);
        assert!(
            (gc.0 - gf.0).abs() < tol * (1.0 + gc.0.abs()) * 10.0,
            "{dtype:?}: meta-loss {} vs {}",
            gc.0,
            gf.0
        );
        for (i, name) in m.params.names.iter().enumerate() {
            let d = common::max_rel_diff(&[gc.2.tensors[i].clone()], &[gf.2.tensors[i].clone()]);
            assert!(
                d < 10.0 * tol,
                "{dtype:?}: meta-gradient of {name} differs by {d} (relative)"
            );
        }
    }
}

#[test]
fn fused_meta_gradient_matches_finite_differences() {
    // The hand-written backward through time against central differences
    // in float64, learner gradients and losses frozen as in
    // `meta_gradient_matches_finite_differences`.
    let mut m = meta(tiny(), false, 4);
    m.to_dtype(DType::F64).unwrap();
    m.params = common::jitter(&m.params, 0.1, 21);
    assert_eq!(m.context().learner.kernels, Kernels::Fused);
    let b = batch(&tiny(), 9, DType::F64);
    let base = unroll(&m, &b, Kernels::Fused, 4, false);
    let frozen = base.inputs.clone();
    let f = |q: &Params| m.meta_gradient(q, &b, Some(&frozen)).unwrap().0;
    let (_, _, g) = m.meta_gradient(&m.params, &b, Some(&frozen)).unwrap();
    let checked = common::check_gradient_fd(&m.params, &g, 8, f, "fused backward");
    assert!(checked > 50, "{checked}");
}

#[test]
fn gradient_checkpointing_gives_the_same_meta_gradient_bit_for_bit() {
    // Keeping the state every k steps and recomputing the tape in the
    // backward must reproduce the full tape's meta-gradient exactly, for
    // segments that divide T, that do not, of one step, and longer than T;
    // and an episode after a checkpointed one (recycled buffers) too.
    for (l, dtype) in [(tiny(), DType::F64), (Learner::omniglot(5, 28), DType::F32)] {
        let (mut m, b) = ten_step_case(&l, dtype);
        let bits = |m: &MetaLstm| {
            let (loss, _, g) = m.meta_gradient(&m.params, &b, None).unwrap();
            let mut v = vec![loss.to_bits()];
            for t in &g.tensors {
                v.extend(common::bits(t));
            }
            v
        };
        let full = bits(&m);
        let ks: &[usize] = if dtype == DType::F64 {
            &[1, 3, 4, 10, 12]
        } else {
            &[3]
        };
        for &k in ks {
            m.config.grad_checkpoint_steps = k;
            assert_eq!(bits(&m), full, "{dtype:?}, every {k} steps");
            assert_eq!(bits(&m), full, "{dtype:?}, every {k} steps, second episode");
        }
        m.config.grad_checkpoint_steps = 0;
        assert_eq!(bits(&m), full, "{dtype:?}, back to the full tape");
    }
}

#[test]
fn fused_meta_lstm_avx2_and_baseline_builds_give_the_same_bits() {
    // The fused kernel's AVX2 build (where the CPU has one) and its
    // baseline build: theta_T, every step's gates and the meta-gradient,
    // bit for bit (no fast-math: same operations in the same order).
    for (l, dtype) in [(tiny(), DType::F64), (Learner::omniglot(5, 28), DType::F32)] {
        let (m, b) = ten_step_case(&l, dtype);
        let run = |simd: bool| {
            fewshot::model::kernels::simd::set_simd(simd);
            let u = ten_steps(&m, &b, Kernels::Fused);
            let g = m.meta_gradient(&m.params, &b, None).unwrap();
            fewshot::model::kernels::simd::set_simd(true);
            let mut all = common::bits(&u.theta);
            for (f, i) in &u.gates {
                all.extend(common::bits(f));
                all.extend(common::bits(i));
            }
            all.push(g.0.to_bits());
            for t in &g.2.tensors {
                all.extend(common::bits(t));
            }
            all
        };
        assert_eq!(run(true), run(false), "{dtype:?}");
    }
}

#[test]
fn meta_parameters_keep_their_checkpoint_names_and_round_trip_through_the_rule() {
    // Checkpoints (`meta.<name>`) and tests/fixtures/meta_lstm.safetensors
    // read the meta-parameters by these names, in this order (Adam's
    // moments and the global-norm clip follow it).
    let m = meta(tiny(), false, 3);
    let names = [
        "lstm.w_ih",
        "lstm.w_hh",
        "lstm.b",
        "cell.w_f",
        "cell.w_i",
        "cell.b_f",
        "cell.b_i",
        "theta0",
    ];
    assert_eq!(m.params.names, names);
    let rule = m.rule(&m.params).unwrap();
    assert_eq!(rule.weights.hidden(), 20);
    assert_eq!(rule.weights.lstm.weight_ih.dims(), [80, 4]);
    let back = rule.weights.to_params();
    assert_eq!(back.names, names);
    for (a, b) in back.tensors.iter().zip(&m.params.tensors) {
        assert_eq!(common::bits(a), common::bits(b));
    }
    let state = m.state().unwrap();
    for n in names {
        assert!(state.contains_key(&format!("meta.{n}")), "meta.{n}");
    }
}

#[test]
fn observe_reports_the_test_time_gates_per_step_and_layer() {
    struct Seen(Vec<(String, usize, String, Vec<f32>)>);
    impl Observer for Seen {
        fn record(&mut self, series: &str, step: usize, layer: &str, values: &[f32]) {
            self.0
                .push((series.into(), step, layer.into(), values.to_vec()));
        }
    }
    let (m, b) = ten_step_case(&tiny(), DType::F64);
    assert_eq!(m.series(), ["forget", "input"]);
    let mut seen = Seen(vec![]);
    m.observe(&b, &mut seen).unwrap();
    let u = ten_steps(&m, &b, m.context().learner.kernels);
    let layers = m.layer_ranges();
    assert_eq!(seen.0.len(), 10 * 2 * layers.len());
    let mut it = seen.0.iter();
    for (t, (f, i)) in u.gates.iter().enumerate() {
        for (name, g) in [("forget", f), ("input", i)] {
            let v = g
                .flatten_all()
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for (layer, r) in &layers {
                let (s, step, l, values) = it.next().unwrap();
                assert_eq!((s.as_str(), *step, l), (name, t + 1, layer));
                assert_eq!(values, &v[r.clone()]);
            }
        }
    }
}

#[test]
fn a_rule_of_another_shape_runs_composed_and_truncation_cuts_the_graph() {
    // Hidden size 5 and gradient-only inputs: not the fused kernel's shape,
    // so fused kernels fall back to the composed graph.
    let m = meta(tiny(), false, 3);
    let b = batch(&tiny(), 8, DType::F32);
    let theta0 = m.params.get("theta0").unwrap().clone();
    let w = RaviWeights::init(Inputs::Gradient, 5, theta0, &mut Rng::new(1), &Device::Cpu).unwrap();
    assert_eq!(w.lstm.weight_ih.dims(), [20, 2]);
    let pre = Preprocess { p: 10.0 };
    assert!(RaviRule::new(w.clone(), pre, Inputs::GradientAndLoss).is_err());
    let rule = RaviRule::new(w.clone(), pre, Inputs::Gradient).unwrap();
    let opts = UnrollOptions {
        record: true,
        ..UnrollOptions::new(3)
    };
    let u = m
        .unroll(
            &rule,
            &mut m.support(&b.support_x, &b.support_y, None),
            &opts,
        )
        .unwrap();
    assert_eq!(u.gates.len(), 3);
    assert_eq!(u.theta.dims(), w.theta0.dims());
    // The meta-gradient of theta_3 reaches theta_0 through all three
    // steps, and not at all when the graph is cut before step 3.
    let reach = |truncate: usize| {
        let p = w.to_params();
        let vars = p.to_vars().unwrap();
        let pv = Params::from_vars(&p.names, &vars);
        let rule = RaviRule::new(
            RaviWeights::from_params(&pv).unwrap(),
            pre,
            Inputs::Gradient,
        )
        .unwrap();
        let opts = UnrollOptions {
            truncate,
            ..UnrollOptions::new(3)
        };
        let mut support = m.support(&b.support_x, &b.support_y, None);
        let u = learned::unroll(&rule, &rule.weights.theta0, &mut support, &opts).unwrap();
        let g = pv
            .grads(
                &u.theta
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap(),
            )
            .unwrap();
        let size = |n: &str| g.get(n).unwrap().sqr().unwrap().sum_all().unwrap();
        let size = |n: &str| size(n).to_scalar::<f32>().unwrap();
        (size("theta0"), size("lstm.w_hh"))
    };
    let (theta0, w_hh) = reach(0);
    assert!(theta0 > 0.0 && w_hh > 0.0, "{theta0} {w_hh}");
    let (theta0, w_hh) = reach(2);
    assert!(theta0 == 0.0 && w_hh > 0.0, "{theta0} {w_hh}");
}
