//! Andrychowicz et al.'s LSTM optimizer and the two-level rule on the
//! learned-rule parts: their meta-gradients (autograd of the segment
//! surrogate against finite differences), truncated segments against one
//! unroll, the two-level rule's exact reductions to Ravi & Larochelle's
//! rule and to Andrychowicz et al.'s, and the untrained optimizer's
//! fixed point. Everything in float64 on small quadratics.

mod common;

use candle_core::{DType, Device, Tensor};
use fewshot::algo::learned::andrychowicz::{
    log_and_sign, AndrychowiczConfig, AndrychowiczRule, AndrychowiczWeights, Init,
};
use fewshot::algo::learned::objective::Replay;
use fewshot::algo::learned::ravi::{Gates, RaviRule, RaviWeights};
use fewshot::algo::learned::two_level::{Candidate, TwoLevelConfig, TwoLevelRule, TwoLevelWeights};
use fewshot::algo::learned::{
    preprocess, unroll, unroll_segment, Inputs, Objective, Preprocess, Rule, UnrollOptions,
};
use fewshot::error::Result;
use fewshot::model::params::Params;
use fewshot::rng::Rng;

/// Andrychowicz et al.'s quadratics (`problems.py:71-97`): m functions,
/// each over its own d coordinates, f(theta) = (1/m) sum_j ||W_j theta_j -
/// y_j||^2, with the analytic gradient (2/m) W_j^T (W_j theta_j - y_j).
struct Quadratic {
    m: usize,
    d: usize,
    /// W_j row-major, j after j.
    w: Vec<f64>,
    y: Vec<f64>,
}

impl Quadratic {
    /// W and y from U(0, 1) (`problems.py:85-94`), scaled by `scale`.
    fn new(m: usize, d: usize, scale: f64, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let w = (0..m * d * d).map(|_| scale * rng.uniform()).collect();
        let y = (0..m * d).map(|_| rng.uniform()).collect();
        Quadratic { m, d, w, y }
    }

    /// The residuals W_j theta_j - y_j, `[m * d]`.
    fn residual(&self, theta: &[f64]) -> Vec<f64> {
        let d = self.d;
        (0..self.m * d)
            .map(|jr| {
                let (j, r) = (jr / d, jr % d);
                let row = &self.w[j * d * d + r * d..j * d * d + (r + 1) * d];
                let x = &theta[j * d..(j + 1) * d];
                row.iter().zip(x).map(|(a, b)| a * b).sum::<f64>() - self.y[jr]
            })
            .collect()
    }

    fn f(&self, theta: &[f64]) -> f64 {
        self.residual(theta).iter().map(|r| r * r).sum::<f64>() / self.m as f64
    }

    fn grad(&self, theta: &[f64]) -> Vec<f64> {
        let (d, res) = (self.d, self.residual(theta));
        (0..self.m * d)
            .map(|jc| {
                let (j, c) = (jc / d, jc % d);
                (0..d)
                    .map(|r| self.w[j * d * d + r * d + c] * res[j * d + r])
                    .sum::<f64>()
                    * 2.0
                    / self.m as f64
            })
            .collect()
    }

    /// A starting point from N(0, 1).
    fn theta0(&self, seed: u64) -> Tensor {
        let mut rng = Rng::new(seed);
        let v: Vec<f64> = (0..self.m * self.d).map(|_| rng.normal()).collect();
        Tensor::from_vec(v, (1, self.m * self.d), &Device::Cpu).unwrap()
    }
}

fn host(t: &Tensor) -> Vec<f64> {
    common::values(t)
}

impl Objective for Quadratic {
    fn dim(&self) -> usize {
        self.m * self.d
    }

    fn loss_and_grad(&mut self, theta: &Tensor) -> Result<(Tensor, f64)> {
        let x = host(&theta.detach());
        let g = Tensor::from_vec(self.grad(&x), theta.dims(), theta.device())?;
        Ok((g, self.f(&x)))
    }
}

/// The finite-difference objective: the gradients of the unperturbed run
/// replayed (`Replay`) as the rule's inputs, and f at the perturbed theta
/// evaluated analytically. Its sum of f along a segment, as a function of
/// the weights, is the function whose derivative the surrogate gives: f
/// through theta_t, theta_t through the rule with g_t held constant. (Finite
/// differences of the true sum would recompute g_t at the perturbed theta
/// too, adding the second-order terms f''(theta) dtheta/dphi that the
/// reference drops with `stop_gradient`, `meta.py:317-318`.) The rule's
/// loss input is f here, not the replayed loss: the rules checked read
/// the gradient only.
struct Frozen<'a> {
    replay: Replay<'a>,
    quad: &'a Quadratic,
}

impl Objective for Frozen<'_> {
    fn dim(&self) -> usize {
        self.quad.dim()
    }

    fn loss_and_grad(&mut self, theta: &Tensor) -> Result<(Tensor, f64)> {
        let (g, _) = self.replay.loss_and_grad(theta)?;
        Ok((g, self.quad.f(&host(&theta.detach()))))
    }
}

/// Float64 parameters as autograd variables, and the `Params` over them.
fn vars(p: &Params) -> (Vec<candle_core::Var>, Params) {
    let v = p.to_vars().unwrap();
    let pv = Params::from_vars(&p.names, &v);
    (v, pv)
}

/// A small Andrychowicz config: `layers` layers of 4 units, gradient only,
/// log-sign preprocessing with p = 5, scale 0.1.
fn small(layers: usize, log_eps: f64) -> AndrychowiczConfig {
    AndrychowiczConfig {
        hidden: 4,
        layers,
        preprocess: Some(5.0),
        log_eps,
        scale: 0.1,
        ..AndrychowiczConfig::code()
    }
}

fn andrychowicz(p: &Params, config: AndrychowiczConfig) -> AndrychowiczRule {
    AndrychowiczRule::new(AndrychowiczWeights::from_params(p).unwrap(), config).unwrap()
}

fn two_level(p: &Params, config: TwoLevelConfig) -> TwoLevelRule {
    TwoLevelRule::new(TwoLevelWeights::from_params(p).unwrap(), config).unwrap()
}

/// Fresh Andrychowicz weights in float64, moved off their initialisation.
fn andrychowicz_params(config: &AndrychowiczConfig, seed: u64) -> Params {
    let w = AndrychowiczWeights::init(config, &mut Rng::new(seed), &Device::Cpu).unwrap();
    common::jitter(&w.to_params().to_dtype(DType::F64).unwrap(), 0.3, seed + 1)
}

/// Fresh two-level weights in float64, moved off their initialisation.
fn two_level_params(config: &TwoLevelConfig, seed: u64) -> Params {
    let w = TwoLevelWeights::init(config, &mut Rng::new(seed), &Device::Cpu).unwrap();
    common::jitter(&w.to_params().to_dtype(DType::F64).unwrap(), 0.3, seed + 1)
}

/// The largest |a - b| over the coordinates.
fn moved(a: &Tensor, b: &Tensor) -> f64 {
    host(a)
        .iter()
        .zip(host(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// The squared Euclidean norm.
fn norm(t: &Tensor) -> f64 {
    host(t).iter().map(|x| x * x).sum::<f64>()
}

/// The surrogate's meta-gradient against central differences of the sum
/// of f along the segment with the gradients replayed (see [`Frozen`]).
fn check_meta_gradient<R: Rule>(
    p: &Params,
    build: impl Fn(&Params) -> R,
    quad: &Quadratic,
    steps: usize,
    what: &str,
) -> Params {
    let theta0 = quad.theta0(7);
    let mut q = quad_clone(quad);
    // The unperturbed run: its inputs and the surrogate's gradient.
    let (_v, pv) = vars(p);
    let rule = build(&pv);
    let mut state = rule.start(&theta0).unwrap();
    let base = unroll_segment(
        &rule,
        &mut state,
        &theta0,
        q.as_mut(),
        &UnrollOptions::new(steps),
    )
    .unwrap();
    assert_eq!(
        (base.losses.len(), base.inputs.len()),
        (steps + 1, steps + 1)
    );
    let g = pv.grads(&base.surrogate.backward().unwrap()).unwrap();
    let sum_f = |w: &Params| {
        let rule = build(w);
        let mut state = rule.start(&theta0).unwrap();
        let mut frozen = Frozen {
            replay: Replay::new(&base.inputs),
            quad,
        };
        let seg = unroll_segment(
            &rule,
            &mut state,
            &theta0,
            &mut frozen,
            &UnrollOptions::new(steps),
        )
        .unwrap();
        seg.losses.iter().sum::<f64>()
    };
    // At the base point the frozen run is the run.
    let total: f64 = base.losses.iter().sum();
    assert!((sum_f(p) - total).abs() <= 1e-14 * total.abs(), "{what}");
    let checked = common::check_gradient_fd(p, &g, 6, sum_f, what);
    assert!(checked >= 3 * p.len(), "{what}: {checked}");
    g
}

fn quad_clone(q: &Quadratic) -> Box<Quadratic> {
    Box::new(Quadratic {
        m: q.m,
        d: q.d,
        w: q.w.clone(),
        y: q.y.clone(),
    })
}

#[test]
fn andrychowicz_meta_gradient_matches_finite_differences() {
    let quad = Quadratic::new(2, 3, 0.5, 11);
    for (config, what) in [
        (small(2, 0.0), "two layers, paper preprocessing"),
        (
            small(2, f32::EPSILON as f64),
            "two layers, the code's LogAndSign",
        ),
        (
            AndrychowiczConfig {
                preprocess: None,
                ..small(1, 0.0)
            },
            "one layer, raw gradient",
        ),
    ] {
        let p = andrychowicz_params(&config, 3);
        let g = check_meta_gradient(&p, |w| andrychowicz(w, config), &quad, 6, what);
        for name in ["l1.w_ih", "l1.w_hh", "l1.b", "out.w", "out.b"] {
            assert!(norm(g.get(name).unwrap()) > 0.0, "{what}: {name}");
        }
    }
}

#[test]
fn two_level_meta_gradient_matches_finite_differences() {
    let quad = Quadratic::new(2, 3, 0.5, 12);
    let config = TwoLevelConfig {
        lstm: small(2, 0.0),
        candidate: Candidate::Learned,
        gates: Gates::Learned,
    };
    let mut p = two_level_params(&config, 5);
    // Gates away from saturation: b_f ~ 1, b_i ~ 0.
    for (name, v) in [("cell.b_f", 1.0), ("cell.b_i", 0.0)] {
        let i = p.names.iter().position(|n| n == name).unwrap();
        p.tensors[i] = Tensor::new(&[[v]], &Device::Cpu).unwrap();
    }
    let g = check_meta_gradient(&p, |w| two_level(w, config), &quad, 6, "two-level");
    for name in [
        "l1.w_ih", "l2.w_hh", "out.w", "cell.w_f", "cell.w_i", "cell.b_i",
    ] {
        assert!(norm(g.get(name).unwrap()) > 0.0, "{name}");
    }
    // The gradient candidate: the read-out is unused, the rest is checked.
    let config = TwoLevelConfig {
        candidate: Candidate::Gradient,
        ..config
    };
    let g = check_meta_gradient(&p, |w| two_level(w, config), &quad, 6, "two-level, -grad");
    assert_eq!(norm(g.get("out.w").unwrap()), 0.0);
    assert!(norm(g.get("cell.w_f").unwrap()) > 0.0);
}

/// `steps` updates, recording the rule's series.
fn recording(steps: usize) -> UnrollOptions {
    UnrollOptions {
        record: true,
        ..UnrollOptions::new(steps)
    }
}

/// The meta-gradient of `<c, theta_T>` for a fixed c.
fn grad_of_theta(theta: &Tensor, pv: &Params) -> Params {
    let n = theta.dim(1).unwrap();
    let c: Vec<f64> = (0..n).map(|k| 1.0 + 0.37 * k as f64).collect();
    let c = Tensor::from_vec(c, (1, n), &Device::Cpu).unwrap();
    let l = (theta * c).unwrap().sum_all().unwrap();
    pv.grads(&l.backward().unwrap()).unwrap()
}

fn same_bits(a: &Params, b: &Params, what: &str) {
    assert_eq!(a.names, b.names, "{what}");
    for ((n, x), y) in a.names.iter().zip(&a.tensors).zip(&b.tensors) {
        assert_eq!(common::bits(x), common::bits(y), "{what}: {n}");
    }
}

#[test]
fn one_segment_is_the_unroll_and_two_halves_are_one_segment() {
    let quad = Quadratic::new(3, 2, 0.5, 13);
    let theta0 = quad.theta0(8);
    let t = 10;
    let config = small(2, f32::EPSILON as f64);
    let p = andrychowicz_params(&config, 9);
    // One segment of T against unroll() without truncation: theta_T and
    // the meta-gradient of a function of theta_T, bit for bit.
    let (_v, pv) = vars(&p);
    let rule = andrychowicz(&pv, config);
    let mut state = rule.start(&theta0).unwrap();
    let mut q = quad_clone(&quad);
    let seg = unroll_segment(&rule, &mut state, &theta0, q.as_mut(), &recording(t)).unwrap();
    let g_seg = grad_of_theta(&seg.theta, &pv);
    let (_v2, pv2) = vars(&p);
    let rule2 = andrychowicz(&pv2, config);
    let u = unroll(&rule2, &theta0, q.as_mut(), &UnrollOptions::new(t)).unwrap();
    assert_eq!(common::bits(&seg.theta), common::bits(&u.theta));
    same_bits(&g_seg, &grad_of_theta(&u.theta, &pv2), "meta-gradient");
    // The same gradients were fed, and f is the objective's at each theta.
    for (a, b) in seg.inputs.iter().zip(&u.inputs) {
        assert_eq!(
            (common::bits(&a.0), a.1.to_bits()),
            (common::bits(&b.0), b.1.to_bits())
        );
    }
    assert_eq!(seg.losses[t], quad.f(&host(&seg.theta)));
    assert_eq!(seg.recorded.len(), t);
    // Two halves with the state carried: the same theta_T and the same f
    // at every theta; the boundary's f counted by both halves.
    let mut state = rule.start(&theta0).unwrap();
    let a = unroll_segment(
        &rule,
        &mut state,
        &theta0,
        q.as_mut(),
        &UnrollOptions::new(t / 2),
    )
    .unwrap();
    let b = unroll_segment(
        &rule,
        &mut state,
        &a.theta,
        q.as_mut(),
        &UnrollOptions::new(t / 2),
    )
    .unwrap();
    assert_eq!(common::bits(&b.theta), common::bits(&seg.theta));
    assert_eq!(a.losses.last(), b.losses.first());
    let joined: Vec<f64> = a.losses.iter().chain(&b.losses[1..]).copied().collect();
    assert_eq!(joined, seg.losses);
    let (sa, sb, s): (f64, f64, f64) = (
        a.losses.iter().sum(),
        b.losses.iter().sum(),
        seg.losses.iter().sum(),
    );
    assert!(
        (sa + sb - a.losses[t / 2] - s).abs() <= 1e-15 * s.abs(),
        "{sa} + {sb} vs {s}"
    );
    // Cut between the halves (truncated BPTT): the same values again.
    let mut state = rule.start(&theta0).unwrap();
    let a = unroll_segment(
        &rule,
        &mut state,
        &theta0,
        q.as_mut(),
        &UnrollOptions::new(t / 2),
    )
    .unwrap();
    rule.detach(&mut state);
    let b = unroll_segment(
        &rule,
        &mut state,
        &a.theta.detach(),
        q.as_mut(),
        &UnrollOptions::new(t / 2),
    )
    .unwrap();
    assert_eq!(common::bits(&b.theta), common::bits(&seg.theta));
}

#[test]
fn truncated_bptt_carries_theta_and_state_across_optimizer_updates() {
    // The reference's schedule (`train.py:43-45, 52`) in small: 5 segments
    // of 4 steps over 20, the optimizer updated after each, theta and the
    // state carried and cut. With a zero learning rate it is one unroll.
    let quad = Quadratic::new(2, 2, 0.5, 14);
    let theta0 = quad.theta0(9);
    let config = small(2, 0.0);
    let p0 = andrychowicz_params(&config, 15);
    let run = |lr: f64| {
        let mut p = p0.clone();
        let mut q = quad_clone(&quad);
        let mut state = andrychowicz(&p, config).start(&theta0).unwrap();
        let mut theta = theta0.clone();
        let mut meta_losses = vec![];
        for _ in 0..5 {
            let (_v, pv) = vars(&p);
            let rule = andrychowicz(&pv, config);
            rule.detach(&mut state);
            let seg = unroll_segment(
                &rule,
                &mut state,
                &theta.detach(),
                q.as_mut(),
                &UnrollOptions::new(4),
            )
            .unwrap();
            let g = pv.grads(&seg.surrogate.backward().unwrap()).unwrap();
            assert!(g.all_finite().unwrap() && norm(g.get("l1.w_ih").unwrap()) > 0.0);
            p = p.zip_map(&g, |w, d| w - (d * lr)?).unwrap();
            theta = seg.theta;
            meta_losses.push(seg.losses.iter().sum::<f64>());
        }
        (theta, meta_losses)
    };
    let (theta, _) = run(0.0);
    let u = unroll(
        &andrychowicz(&p0, config),
        &theta0,
        quad_clone(&quad).as_mut(),
        &UnrollOptions::new(20),
    )
    .unwrap();
    assert_eq!(common::bits(&theta), common::bits(&u.theta));
    let (theta, losses) = run(1e-2);
    assert_ne!(common::bits(&theta), common::bits(&u.theta));
    assert!(losses.iter().all(|l| l.is_finite()));
}

#[test]
fn two_level_with_the_negative_gradient_is_ravis_rule_bit_for_bit() {
    let quad = Quadratic::new(2, 3, 0.5, 16);
    let h = 5;
    let theta0 = quad.theta0(10);
    let w = RaviWeights::init(
        Inputs::GradientAndLoss,
        h,
        theta0.to_dtype(DType::F32).unwrap(),
        &mut Rng::new(17),
        &Device::Cpu,
    )
    .unwrap();
    // Jittered so the gates and the LSTM do more than their initial
    // near-constant work; theta_0 is Ravi's learned one.
    let p = common::jitter(&w.to_params().to_dtype(DType::F64).unwrap(), 0.5, 18);
    let (_v, pv) = vars(&p);
    let ravi = RaviRule::new(
        RaviWeights::from_params(&pv).unwrap(),
        Preprocess { p: 10.0 },
        Inputs::GradientAndLoss,
    )
    .unwrap();
    let config = TwoLevelConfig {
        lstm: AndrychowiczConfig {
            hidden: h,
            layers: 1,
            preprocess: Some(10.0),
            log_eps: 0.0,
            inputs: Inputs::GradientAndLoss,
            ..AndrychowiczConfig::code()
        },
        candidate: Candidate::Gradient,
        gates: Gates::Learned,
    };
    // The same variables: Ravi's lstm.* as l1.*, its cell as the cell; an
    // unused read-out.
    let out = AndrychowiczWeights::init(&config.lstm, &mut Rng::new(19), &Device::Cpu).unwrap();
    let weights = TwoLevelWeights {
        lstm: AndrychowiczWeights {
            layers: vec![ravi.weights.lstm.clone()],
            out_w: out.out_w.to_dtype(DType::F64).unwrap(),
            out_b: out.out_b.to_dtype(DType::F64).unwrap(),
        },
        cell: ravi.weights.cell.clone(),
    };
    let two = TwoLevelRule::new(weights, config).unwrap();
    let start = &ravi.weights.theta0;
    let opts = UnrollOptions {
        record: true,
        ..UnrollOptions::new(8)
    };
    let a = unroll(&ravi, start, quad_clone(&quad).as_mut(), &opts).unwrap();
    let b = unroll(&two, start, quad_clone(&quad).as_mut(), &opts).unwrap();
    assert_eq!(common::bits(&a.theta), common::bits(&b.theta));
    assert!(moved(&a.theta, start) > 1e-3);
    for (t, (ra, rb)) in a.recorded.iter().zip(&b.recorded).enumerate() {
        // forget, input; then the two-level's candidate, -g_t.
        for k in 0..2 {
            assert_eq!(
                common::bits(&ra[k]),
                common::bits(&rb[k]),
                "step {t} series {k}"
            );
        }
        assert_eq!(
            common::bits(&rb[2]),
            common::bits(&a.inputs[t].0.neg().unwrap())
        );
    }
    // The meta-gradients to the shared weights and theta_0, bit for bit.
    let ga = grad_of_theta(&a.theta, &pv);
    let gb = grad_of_theta(&b.theta, &pv);
    same_bits(&ga, &gb, "meta-gradient");
    assert!(norm(ga.get("cell.w_i").unwrap()) > 0.0 && norm(ga.get("theta0").unwrap()) > 0.0);
}

#[test]
fn two_level_with_identity_gates_is_andrychowiczs_rule_bit_for_bit() {
    let quad = Quadratic::new(2, 3, 0.5, 20);
    let theta0 = quad.theta0(11);
    for lstm in [
        small(2, 0.0),
        small(2, f32::EPSILON as f64),
        AndrychowiczConfig {
            preprocess: None,
            ..small(1, 0.0)
        },
    ] {
        let config = TwoLevelConfig {
            lstm,
            candidate: Candidate::Learned,
            gates: Gates::Fixed {
                forget: 1.0,
                input: 1.0,
            },
        };
        let p = two_level_params(&config, 21);
        let (_v, pv) = vars(&p);
        let two = two_level(&pv, config);
        let one = andrychowicz(&pv, lstm);
        let opts = UnrollOptions {
            record: true,
            ..UnrollOptions::new(8)
        };
        let a = unroll(&one, &theta0, quad_clone(&quad).as_mut(), &opts).unwrap();
        let b = unroll(&two, &theta0, quad_clone(&quad).as_mut(), &opts).unwrap();
        assert_eq!(common::bits(&a.theta), common::bits(&b.theta));
        assert!(moved(&a.theta, &theta0) > 1e-3);
        for (t, (ra, rb)) in a.recorded.iter().zip(&b.recorded).enumerate() {
            // Andrychowicz's update is the two-level's candidate; the
            // identity gates are recorded as ones.
            assert_eq!(common::bits(&ra[0]), common::bits(&rb[2]), "step {t}");
            assert!(host(&rb[0]).iter().chain(&host(&rb[1])).all(|&x| x == 1.0));
        }
        let ga = grad_of_theta(&a.theta, &pv);
        let gb = grad_of_theta(&b.theta, &pv);
        // The cell is unused by both: zero gradient (absent from `one`'s graph).
        for (n, x) in gb.names.iter().zip(&gb.tensors) {
            if n.starts_with("cell.") {
                assert_eq!(norm(x), 0.0, "{n}");
            } else {
                assert_eq!(common::bits(x), common::bits(ga.get(n).unwrap()), "{n}");
            }
        }
    }
}

#[test]
fn an_untrained_optimizer_with_a_zero_read_out_leaves_theta_unchanged() {
    let quad = Quadratic::new(2, 3, 0.5, 22);
    let theta0 = quad.theta0(12);
    let config = AndrychowiczConfig::code();
    let mut w = AndrychowiczWeights::init(&config, &mut Rng::new(23), &Device::Cpu).unwrap();
    w.out_w = w.out_w.zeros_like().unwrap();
    let p = w.to_params().to_dtype(DType::F64).unwrap();
    let rule = andrychowicz(&p, config);
    let opts = UnrollOptions {
        record: true,
        ..UnrollOptions::new(10)
    };
    let u = unroll(&rule, &theta0, quad_clone(&quad).as_mut(), &opts).unwrap();
    assert_eq!(host(&u.theta), host(&theta0));
    assert!(u
        .recorded
        .iter()
        .all(|s| host(&s[0]).iter().all(|&x| x == 0.0)));
    // The LSTM state did move: only the read-out was zero.
    let mut s = rule.start(&theta0).unwrap();
    let (g, l) = quad_clone(&quad).loss_and_grad(&theta0).unwrap();
    rule.step(&mut s, &theta0, &g, l, false).unwrap();
    assert!(norm(&s.layers[1].h) > 0.0);
}

#[test]
fn weights_keep_their_names_and_round_trip() {
    let dev = Device::Cpu;
    let config = AndrychowiczConfig::code();
    let w = AndrychowiczWeights::init(&config, &mut Rng::new(1), &dev).unwrap();
    let p = w.to_params();
    let names = [
        "l1.w_ih", "l1.w_hh", "l1.b", "l2.w_ih", "l2.w_hh", "l2.b", "out.w", "out.b",
    ];
    assert_eq!(p.names, names);
    let dims: Vec<Vec<usize>> = p.tensors.iter().map(|t| t.dims().to_vec()).collect();
    assert_eq!(
        dims,
        [
            vec![80, 2],
            vec![80, 20],
            vec![80, 1],
            vec![80, 20],
            vec![80, 20],
            vec![80, 1],
            vec![1, 20],
            vec![1, 1]
        ]
    );
    let back = AndrychowiczWeights::from_params(&p).unwrap().to_params();
    same_bits(&back, &p, "andrychowicz round trip");
    // A config of another shape is refused, naming the weights.
    let err = AndrychowiczRule::new(
        w.clone(),
        AndrychowiczConfig {
            layers: 3,
            ..config
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("l1, l2"), "{err}");
    let err = AndrychowiczRule::new(w, AndrychowiczConfig::code_quadratic())
        .unwrap_err()
        .to_string();
    assert!(err.contains("l1.w_ih"), "{err}");
    // The two-level rule: the first level's names, then the cell's.
    let tl = TwoLevelConfig::default();
    let w = TwoLevelWeights::init(&tl, &mut Rng::new(2), &dev).unwrap();
    let p = w.to_params();
    let mut all: Vec<&str> = names.to_vec();
    all.extend(["cell.w_f", "cell.w_i", "cell.b_f", "cell.b_i"]);
    assert_eq!(p.names, all);
    assert_eq!(p.get("cell.w_f").unwrap().dims(), [1, 22]);
    let rule = two_level(&p, tl);
    same_bits(&rule.to_params(), &p, "two-level round trip");
    assert_eq!(rule.series(), ["forget", "input", "update"]);
    assert_eq!(
        andrychowicz(&w.lstm.to_params(), config).series(),
        ["update"]
    );
}

#[test]
fn sonnet_initialisation_and_the_folded_forget_bias() {
    let dev = Device::Cpu;
    let config = AndrychowiczConfig::code();
    let w = AndrychowiczWeights::init(&config, &mut Rng::new(3), &dev).unwrap();
    let h = config.hidden;
    for (k, l) in w.layers.iter().enumerate() {
        let inputs = if k == 0 { 2 } else { h };
        let std = 1.0 / ((inputs + h) as f64).sqrt();
        for t in [&l.weight_ih, &l.weight_hh] {
            assert!(host(t).iter().all(|x| x.abs() <= 2.0 * std + 1e-7));
        }
        // Rows [H, 2H) are the forget gate's: b_gates + forget_bias.
        let b = host(&l.bias);
        for (r, x) in b.iter().enumerate() {
            let centre = if (h..2 * h).contains(&r) { 1.0 } else { 0.0 };
            assert!((x - centre).abs() <= 2.0 * std + 1e-7, "l{} row {r}", k + 1);
        }
        let forget: f64 = b[h..2 * h].iter().sum::<f64>() / h as f64;
        assert!((forget - 1.0).abs() < 0.2, "{forget}");
    }
    let sd = 1.0 / (h as f64).sqrt();
    assert!(host(&w.out_w).iter().all(|x| x.abs() <= 2.0 * sd + 1e-7));
    assert!(host(&w.out_w).iter().any(|&x| x != 0.0));
    assert_eq!(host(&w.out_b), [0.0]);
    // Zeros: everything zero but the forget bias.
    let z = AndrychowiczWeights::init(
        &AndrychowiczConfig {
            init: Init::Zeros,
            ..config
        },
        &mut Rng::new(3),
        &dev,
    )
    .unwrap();
    for (n, t) in z.to_params().names.iter().zip(z.to_params().tensors.iter()) {
        let v = host(t);
        if n.ends_with(".b") && n.starts_with('l') {
            let ones = v
                .iter()
                .enumerate()
                .all(|(r, &x)| x == if (h..2 * h).contains(&r) { 1.0 } else { 0.0 });
            assert!(ones, "{n}");
        } else {
            assert!(v.iter().all(|&x| x == 0.0), "{n}");
        }
    }
    // The presets.
    let q = AndrychowiczConfig::code_quadratic();
    assert_eq!((q.features(), q.scale, q.layers, q.hidden), (1, 1.0, 2, 20));
    let c = AndrychowiczConfig::code();
    assert_eq!((c.features(), c.preprocess, c.scale), (2, Some(5.0), 0.01));
    let p = AndrychowiczConfig::paper();
    assert_eq!((p.preprocess, p.log_eps, p.scale), (Some(10.0), 0.0, 0.1));
}

#[test]
fn the_codes_log_and_sign_is_the_papers_formula_but_for_the_epsilon() {
    let k = 5.0f64;
    let b = (-k).exp();
    let xs = [0.0, b, -b, 0.5 * b, -1.5 * b, -0.25, 3.0, 1e-3, -1e-9];
    let x = Tensor::from_vec(xs.to_vec(), (1, xs.len()), &Device::Cpu).unwrap();
    let eps = f64::EPSILON;
    let rows = log_and_sign(&x, k, eps).unwrap().to_vec2::<f64>().unwrap();
    for (i, &g) in xs.iter().enumerate() {
        // preprocess.py:66-68
        let code = (
            ((g.abs() + eps).ln() / k).max(-1.0),
            (g * k.exp()).clamp(-1.0, 1.0),
        );
        assert_eq!((rows[0][i], rows[1][i]), code, "{g}");
        // The paper's formula: equal up to the epsilon's shift of the log.
        let (a, s) = preprocess(g, k);
        assert!(
            (rows[0][i] - a).abs() <= 1e-12 && (rows[1][i] - s).abs() <= 1e-12,
            "{g}"
        );
    }
    // Through the config: log_eps 0 is the shared Preprocess; > 0 the code.
    let grad = x.clone();
    let paper = small(1, 0.0).input_features(&grad, 0.3).unwrap();
    let shared = Inputs::Gradient
        .features(&Preprocess { p: 5.0 }, &grad, 0.3)
        .unwrap();
    assert_eq!(common::bits(&paper), common::bits(&shared));
    let code = small(1, eps).input_features(&grad, 0.3).unwrap();
    assert_eq!(code.to_vec2::<f64>().unwrap(), rows);
    let both = AndrychowiczConfig {
        inputs: Inputs::GradientAndLoss,
        ..small(1, eps)
    }
    .input_features(&grad, 0.3)
    .unwrap()
    .to_vec2::<f64>()
    .unwrap();
    assert_eq!(both.len(), 4);
    let l = (
        ((0.3f64 + eps).ln() / k).max(-1.0),
        (0.3 * k.exp()).clamp(-1.0, 1.0),
    );
    assert!(both[2].iter().all(|&v| v == l.0) && both[3].iter().all(|&v| v == l.1));
    let raw = AndrychowiczConfig::code_quadratic()
        .input_features(&grad, 0.3)
        .unwrap();
    assert_eq!(common::bits(&raw), common::bits(&grad));
}
