//! Learner, MAML and Reptile: gradients checked against finite differences
//! and hand computations, adaptation, the outer steps, checkpoints.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use fewshot::algo::maml::{Maml, MamlConfig};
use fewshot::algo::reptile::{Reptile, ReptileConfig};
use fewshot::algo::{sgd_adapt, Algorithm, Context, EpisodeScore, InnerSgd, Progress};
use fewshot::data::sampler::{Batch, EpisodeSpec};
use fewshot::model::learner::{cross_entropy, Downsample, Learner};
use fewshot::model::params::Params;
use fewshot::rng::Rng;

fn cpu() -> Device {
    Device::Cpu
}

fn tiny(downsample: Downsample, size: usize, hidden: usize, ways: usize) -> Learner {
    Learner {
        in_channels: 2,
        image_size: size,
        hidden,
        ways,
        downsample,
        bn_eps: 1e-5,
        blocks: 4,
        ..Learner::omniglot(ways, size)
    }
}

fn ctx(learner: Learner, ways: usize, shots: usize, transductive: bool) -> Context {
    Context {
        dataset: "omniglot".into(),
        spec: EpisodeSpec {
            ways,
            shots,
            queries: 2,
        },
        learner,
        norm: common::both_stats(transductive),
        run_seed: 7,
        episode_seed: 7,
        device: cpu(),
    }
}

/// A random episode: `ways * shots` support and `ways * queries` query images.
fn batch(l: &Learner, ways: usize, shots: usize, queries: usize, seed: u64, dtype: DType) -> Batch {
    let mut rng = Rng::new(seed);
    let mut img = |n: usize| {
        let v: Vec<f64> = (0..n * l.in_channels * l.image_size * l.image_size)
            .map(|_| rng.normal())
            .collect();
        Tensor::from_vec(v, (n, l.in_channels, l.image_size, l.image_size), &cpu())
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    let labels = |k: usize| {
        Tensor::from_vec(
            (0..ways * k).map(|i| (i / k) as u32).collect::<Vec<_>>(),
            ways * k,
            &cpu(),
        )
        .unwrap()
    };
    Batch {
        id: Default::default(),
        support_x: img(ways * shots),
        support_y: labels(shots),
        query_x: img(ways * queries),
        query_y: labels(queries),
    }
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// Replace coordinate `k` of tensor `i` of `p` by `v`.
fn with_coord(p: &Params, i: usize, k: usize, delta: f64) -> Params {
    let mut q = p.clone();
    let t = &p.tensors[i];
    let mut flat = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    flat[k] += delta;
    q.tensors[i] = Tensor::from_vec(flat, t.shape(), &cpu()).unwrap();
    q
}

/// Check the analytic gradient of `f` at `p` against central differences on
/// every coordinate (or every `stride`-th).
fn check_gradient(
    p: &Params,
    analytic: &Params,
    f: &dyn Fn(&Params) -> f64,
    stride: usize,
    tol: f64,
) -> usize {
    let h = 1e-6;
    let mut checked = 0;
    for i in 0..p.len() {
        let g = analytic.tensors[i]
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for k in (0..g.len()).step_by(stride) {
            let fd = (f(&with_coord(p, i, k, h)) - f(&with_coord(p, i, k, -h))) / (2.0 * h);
            let err = (fd - g[k]).abs();
            assert!(
                err <= tol * (1.0 + fd.abs()),
                "{}[{k}]: analytic {} vs finite difference {fd} (err {err})",
                p.names[i],
                g[k]
            );
            checked += 1;
        }
    }
    checked
}

fn learner_gradient_check(l: &Learner) {
    let p = l
        .init(&mut Rng::new(3), &cpu())
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    let b = batch(l, l.ways, 2, 1, 11, DType::F64);
    let f = |q: &Params| {
        scalar(&cross_entropy(&l.forward(q, &b.support_x).unwrap(), &b.support_y).unwrap())
    };
    let vars = p.to_vars().unwrap();
    let pv = Params::from_vars(&p.names, &vars);
    let loss = cross_entropy(&l.forward(&pv, &b.support_x).unwrap(), &b.support_y).unwrap();
    let g = pv.grads(&loss.backward().unwrap()).unwrap();
    let n = check_gradient(&p, &g, &f, 1, 1e-6);
    assert!(n == p.numel(), "checked {n} of {}", p.numel());
}

#[test]
fn learner_gradient_matches_finite_differences_stride2_form() {
    // 9 -> 5 -> 3 -> 2 -> 1: odd sizes at every strided conv.
    learner_gradient_check(&tiny(Downsample::Stride2, 9, 3, 3));
}

#[test]
fn learner_gradient_matches_finite_differences_maxpool_form() {
    // 21 -> 10 -> 5 -> 2 -> 1: odd inputs to pooling (21 and 5), as in
    // mini-ImageNet's 84 -> 42 -> 21 -> 10 -> 5.
    learner_gradient_check(&tiny(Downsample::MaxPool, 21, 3, 3));
}

#[test]
fn candles_max_pool2d_gradient_is_wrong_which_is_why_we_do_not_use_it() {
    // Gradient of sum(pool(x) * r) with respect to x: ours (checked by finite
    // differences above) routes r to each window's arg-max; candle 0.11.1's
    // max_pool2d does not. If this starts failing, candle was fixed and
    // pool::max_pool2x2 could be retired.
    let x = Tensor::randn(0f64, 1., (1, 1, 4, 4), &cpu()).unwrap();
    let r = Tensor::randn(0f64, 1., (1, 1, 2, 2), &cpu()).unwrap();
    let v = candle_core::Var::from_tensor(&x).unwrap();
    let ours = fewshot::model::kernels::pool::max_pool2x2(&v.as_tensor().transpose(0, 1).unwrap())
        .unwrap();
    let g_ours = (ours.transpose(0, 1).unwrap() * &r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let theirs = v.as_tensor().max_pool2d(2).unwrap();
    let g_theirs = (theirs * &r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let a = g_ours.get(v.as_tensor()).unwrap();
    let b = g_theirs.get(v.as_tensor()).unwrap();
    // Ours: exactly sum(r) in total, one entry per window.
    assert!((scalar(&a.sum_all().unwrap()) - scalar(&r.sum_all().unwrap())).abs() < 1e-12);
    let diff = scalar(&(a - b).unwrap().abs().unwrap().sum_all().unwrap());
    assert!(diff > 1e-6, "candle's max_pool2d gradient now matches ours");
}

#[test]
fn sgd_adaptation_lowers_the_support_loss() {
    let l = Learner::omniglot(5, 28);
    let p = l.init(&mut Rng::new(1), &cpu()).unwrap();
    let b = batch(&l, 5, 1, 1, 5, DType::F32);
    let loss = |q: &Params| {
        scalar(&cross_entropy(&l.forward(q, &b.support_x).unwrap(), &b.support_y).unwrap())
    };
    let before = loss(&p);
    let step = InnerSgd::plain(0.4, &p);
    let after = loss(&sgd_adapt(&l, &p, &b.support_x, &b.support_y, &step, 3, None).unwrap());
    assert!(after < 0.5 * before, "support loss {before} -> {after}");
}

#[test]
fn reptile_adaptation_lowers_the_support_loss() {
    let l = tiny(Downsample::Stride2, 12, 8, 5);
    let c = ctx(l.clone(), 5, 1, false);
    let r = Reptile::new(ReptileConfig::default().resolve(&c).unwrap(), &c).unwrap();
    let b = batch(&l, 5, 1, 1, 9, DType::F32);
    let loss = |q: &Params| {
        scalar(&cross_entropy(&l.forward(q, &b.support_x).unwrap(), &b.support_y).unwrap())
    };
    let before = loss(&r.theta);
    let after = loss(&r.adapt(&b.support_x, &b.support_y, b.id).unwrap().params);
    assert!(after < 0.75 * before, "support loss {before} -> {after}");
}

/// Softmax-regression gradient by hand: d/dW, d/db of mean CE.
fn softmax_grad(
    w: &[Vec<f64>],
    b: &[f64],
    x: &[Vec<f64>],
    y: &[usize],
) -> (Vec<Vec<f64>>, Vec<f64>) {
    let (k, d, n) = (w.len(), w[0].len(), x.len());
    let mut gw = vec![vec![0.0; d]; k];
    let mut gb = vec![0.0; k];
    for (xi, &yi) in x.iter().zip(y) {
        let z: Vec<f64> = (0..k)
            .map(|c| b[c] + (0..d).map(|j| w[c][j] * xi[j]).sum::<f64>())
            .collect();
        let m = z.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        for c in 0..k {
            let dz = (e[c] / s - if c == yi { 1.0 } else { 0.0 }) / n as f64;
            gb[c] += dz;
            for j in 0..d {
                gw[c][j] += dz * xi[j];
            }
        }
    }
    (gw, gb)
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_from(1)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap()
}

#[test]
fn first_order_maml_meta_gradient_equals_hand_computation_on_a_linear_model() {
    let l = Learner {
        blocks: 0,
        ..tiny(Downsample::Stride2, 2, 1, 3)
    };
    let c = ctx(l.clone(), 3, 1, true);
    let cfg = MamlConfig {
        first_order: Some(true),
        inner_lr: Some(0.5),
        inner_steps: Some(1),
        ..Default::default()
    };
    let maml = Maml::new(cfg.resolve(&c).unwrap(), &c).unwrap();
    let b = batch(&l, 3, 2, 2, 21, DType::F32);
    let (g, _) = maml.task_gradient(&maml.theta, &b).unwrap();

    let w = rows(&maml.theta.tensors[0]);
    let bias = maml.theta.tensors[1]
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let xs = rows(&b.support_x);
    let ys: Vec<usize> = b
        .support_y
        .to_vec1::<u32>()
        .unwrap()
        .iter()
        .map(|&v| v as usize)
        .collect();
    let xq = rows(&b.query_x);
    let yq: Vec<usize> = b
        .query_y
        .to_vec1::<u32>()
        .unwrap()
        .iter()
        .map(|&v| v as usize)
        .collect();
    let (gws, gbs) = softmax_grad(&w, &bias, &xs, &ys);
    let w1: Vec<Vec<f64>> = w
        .iter()
        .zip(&gws)
        .map(|(r, g)| r.iter().zip(g).map(|(a, b)| a - 0.5 * b).collect())
        .collect();
    let b1: Vec<f64> = bias.iter().zip(&gbs).map(|(a, b)| a - 0.5 * b).collect();
    let (gwq, gbq) = softmax_grad(&w1, &b1, &xq, &yq);

    let got_w = rows(&g.tensors[0]);
    let got_b = g.tensors[1]
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    for (r1, r2) in got_w.iter().zip(&gwq) {
        for (a, b) in r1.iter().zip(r2) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
    for (a, b) in got_b.iter().zip(&gbq) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

/// The full MAML objective L_query(adapt(theta)) in float64.
fn maml_objective(c: &Context, theta: &Params, b: &Batch, lr: f64, steps: usize) -> f64 {
    let step = InnerSgd::plain(lr, theta);
    let p = sgd_adapt(
        &c.learner,
        theta,
        &b.support_x,
        &b.support_y,
        &step,
        steps,
        None,
    )
    .unwrap();
    scalar(
        &cross_entropy(
            &c.predict_train(&p, &b.support_x, &b.query_x).unwrap(),
            &b.query_y,
        )
        .unwrap(),
    )
}

#[test]
fn second_order_maml_meta_gradient_matches_finite_differences() {
    // A tiny conv-4 in float64, two inner steps, query statistics or
    // support statistics for the query pass; the stride-2 form and the
    // max-pool form (second derivatives through the pooling, odd sizes
    // 18 -> 9 -> 4), as second-order MAML on mini-ImageNet needs.
    for (transductive, downsample, size) in [
        (true, Downsample::Stride2, 8),
        (false, Downsample::Stride2, 8),
        (true, Downsample::MaxPool, 18),
    ] {
        let l = tiny(downsample, size, 2, 3);
        let c = ctx(l.clone(), 3, 2, transductive);
        let lr = 0.3;
        let mk = |first_order| {
            let cfg = MamlConfig {
                first_order: Some(first_order),
                inner_lr: Some(lr),
                inner_steps: Some(2),
                ..Default::default()
            };
            let mut m = Maml::new(cfg.resolve(&c).unwrap(), &c).unwrap();
            m.theta = m.theta.to_dtype(DType::F64).unwrap();
            m
        };
        let so = mk(false);
        let fo = mk(true);
        let b = batch(&l, 3, 2, 2, 33, DType::F64);
        let (g2, _) = so.task_gradient(&so.theta, &b).unwrap();
        let (g1, _) = fo.task_gradient(&fo.theta, &b).unwrap();
        let f = |q: &Params| maml_objective(&c, q, &b, lr, 2);
        let n = check_gradient(&so.theta, &g2, &f, 7, 1e-5);
        assert!(n > 20);
        // And the first-order gradient is measurably different (so the check
        // above would catch a silently first-order implementation).
        let d = g1
            .zip_map(&g2, |a, b| a - b)
            .unwrap()
            .sum_sq()
            .unwrap()
            .sqrt();
        assert!(
            d > 1e-4,
            "first- and second-order meta-gradients coincide ({d})"
        );
    }
}

#[test]
fn reptile_outer_step_is_the_interpolation_formula() {
    let l = tiny(Downsample::Stride2, 10, 4, 3);
    let c = ctx(l.clone(), 3, 1, false);
    let cfg = ReptileConfig {
        meta_batch: Some(2),
        inner_iters: Some(3),
        inner_batch: Some(4),
        meta_step: Some(0.7),
        meta_step_final: Some(0.1),
        ..Default::default()
    };
    let mut r = Reptile::new(cfg.resolve(&c).unwrap(), &c).unwrap();
    let b1 = batch(&l, 3, 3, 1, 1, DType::F32);
    let b2 = batch(&l, 3, 3, 1, 2, DType::F32);
    let theta0 = r.theta.clone();
    let mut adam = r.inner_adam().clone();
    let (t1, s1) = r
        .inner_loop(
            &theta0,
            &mut adam,
            &b1.support_x,
            &b1.support_y,
            4,
            3,
            &mut r.task_rng(4, 0),
            None,
        )
        .unwrap();
    let (t2, s2) = r
        .inner_loop(
            &theta0,
            &mut adam,
            &b2.support_x,
            &b2.support_y,
            4,
            3,
            &mut r.task_rng(4, 1),
            None,
        )
        .unwrap();
    let eps = 0.5 * 0.7 + 0.5 * 0.1;
    // theta + eps * ((t1 + t2) / 2 - theta)
    let expected = theta0
        .zip_map(&t1.zip_map(&t2, |a, b| (a + b)? / 2.0).unwrap(), |t, m| {
            t + ((m - t)? * eps)?
        })
        .unwrap();
    let score = r
        .meta_train_step(
            &[b1, b2],
            Progress {
                step: 4,
                fraction: 0.5,
            },
        )
        .unwrap();
    // The training score is the mean of the tasks' inner-loop scores.
    assert_eq!(score.loss, (s1.loss + s2.loss) / 2.0);
    assert_eq!(score.accuracy, (s1.accuracy + s2.accuracy) / 2.0);
    let err = r
        .theta
        .zip_map(&expected, |a, b| a - b)
        .unwrap()
        .sum_sq()
        .unwrap()
        .sqrt();
    assert!(err < 1e-6, "outer step differs from the formula by {err}");
    assert!(
        theta0
            .zip_map(&r.theta, |a, b| a - b)
            .unwrap()
            .sum_sq()
            .unwrap()
            > 1e-8
    );
}

#[test]
fn reptile_training_score_is_the_inner_loops_pass_before_its_step() {
    // One full-batch step: the score is the loss and accuracy of theta on
    // the whole set (batch statistics and both means ignore the order the
    // shuffle gives), measured before the step, so not of the result.
    let l = tiny(Downsample::Stride2, 10, 4, 3);
    let c = ctx(l.clone(), 3, 1, false);
    let cfg = ReptileConfig {
        inner_loss: Some(fewshot::algo::reptile::InnerLoss::Mean),
        inner_lr: Some(0.05),
        ..Default::default()
    };
    let r = Reptile::new(cfg.resolve(&c).unwrap(), &c).unwrap();
    let b = batch(&l, 3, 3, 1, 1, DType::F32);
    let n = b.support_x.dim(0).unwrap();
    let mut adam = r.inner_adam().clone();
    let (after, score) = r
        .inner_loop(
            &r.theta,
            &mut adam,
            &b.support_x,
            &b.support_y,
            n,
            1,
            &mut r.task_rng(0, 0),
            None,
        )
        .unwrap();
    let before =
        EpisodeScore::of(&l.forward(&r.theta, &b.support_x).unwrap(), &b.support_y).unwrap();
    let later = EpisodeScore::of(&l.forward(&after, &b.support_x).unwrap(), &b.support_y).unwrap();
    assert!(
        (score.loss - before.loss).abs() < 1e-5,
        "{score:?} vs {before:?}"
    );
    assert_eq!(score.accuracy, before.accuracy);
    assert!(
        (later.loss - before.loss).abs() > 1e-4,
        "the step changed nothing"
    );
}

#[test]
fn algorithm_state_round_trips() {
    let l = tiny(Downsample::Stride2, 10, 4, 3);
    let c = ctx(l.clone(), 3, 1, false);
    let cfg = MamlConfig {
        first_order: Some(true),
        meta_batch: Some(2),
        ..Default::default()
    };
    let mut a = Maml::new(cfg.resolve(&c).unwrap(), &c).unwrap();
    let b = batch(&l, 3, 1, 2, 3, DType::F32);
    a.meta_train_step(
        &[b.clone(), b.clone()],
        Progress {
            step: 0,
            fraction: 0.0,
        },
    )
    .unwrap();
    let s: HashMap<String, Tensor> = a.state().unwrap();
    let mut fresh = Maml::new(cfg.resolve(&c).unwrap(), &c).unwrap();
    fresh.load_state(&s).unwrap();
    a.meta_train_step(
        &[b.clone(), b.clone()],
        Progress {
            step: 1,
            fraction: 0.0,
        },
    )
    .unwrap();
    fresh
        .meta_train_step(
            &[b.clone(), b],
            Progress {
                step: 1,
                fraction: 0.0,
            },
        )
        .unwrap();
    let d = a
        .theta
        .zip_map(&fresh.theta, |x, y| x - y)
        .unwrap()
        .sum_sq()
        .unwrap();
    assert_eq!(d, 0.0);
}
