//! The fused kernel of Andrychowicz et al.'s optimizer and the two-level
//! rule (`fewshot::algo::learned::fused`) against the composed candle
//! graph it replaces: the same theta_T, losses, recorded series and
//! meta-gradients (to the weights, and to theta_0 and the carried state),
//! tight in float64 and to float tolerance in float32, for full
//! backpropagation through time (`unroll`) and truncated segments with the
//! state carried (`unroll_segment`); the same bits whatever the number of
//! threads, and in the AVX2 and baseline builds.
//!
//! The objective is a separable quadratic over 600 coordinates (three
//! blocks of the kernel, the last one ending in a partial tile) whose
//! curvatures span six orders of magnitude, so that the log-sign
//! preprocessing takes both of its branches.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use fewshot::algo::learned::andrychowicz::{
    AndrychowiczConfig, AndrychowiczRule, AndrychowiczWeights,
};
use fewshot::algo::learned::ravi::Gates;
use fewshot::algo::learned::two_level::{Candidate, TwoLevelConfig, TwoLevelRule, TwoLevelWeights};
use fewshot::algo::learned::{unroll, unroll_segment, Objective, Rule, StateParts, UnrollOptions};
use fewshot::error::Result;
use fewshot::model::kernels::Kernels;
use fewshot::model::params::Params;
use fewshot::rng::Rng;

const N: usize = 600;

/// f(theta) = sum_k a_k (theta_k - b_k)^2 / 2 + (sum_k theta_k)^2 / (2 N),
/// computed in float64 from the given theta's values.
struct Quad {
    a: Vec<f64>,
    b: Vec<f64>,
}

impl Quad {
    fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        // Curvatures from 1e-6 to 1: gradients below e^-10 and above.
        let a = (0..N).map(|_| 10f64.powf(-6.0 * rng.uniform())).collect();
        let b = (0..N).map(|_| rng.normal()).collect();
        Quad { a, b }
    }

    fn theta0(&self, seed: u64, dtype: DType) -> Tensor {
        let mut rng = Rng::new(seed);
        let v: Vec<f64> = (0..N).map(|_| 0.5 * rng.normal()).collect();
        Tensor::from_vec(v, (1, N), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }
}

impl Objective for Quad {
    fn dim(&self) -> usize {
        N
    }

    fn loss_and_grad(&mut self, theta: &Tensor) -> Result<(Tensor, f64)> {
        let x = common::values(&theta.detach());
        let s: f64 = x.iter().sum();
        let mut f = s * s / (2.0 * N as f64);
        let mut g = vec![0f64; N];
        for k in 0..N {
            let r = x[k] - self.b[k];
            f += self.a[k] * r * r / 2.0;
            g[k] = self.a[k] * r + s / N as f64;
        }
        let g = Tensor::from_vec(g, theta.dims(), theta.device())?.to_dtype(theta.dtype())?;
        Ok((g, f))
    }
}

/// The shipped shape (2 layers of 20) with `preprocess` and `log_eps`.
fn lstm(layers: usize, preprocess: Option<f64>, log_eps: f64) -> AndrychowiczConfig {
    AndrychowiczConfig {
        layers,
        preprocess,
        log_eps,
        scale: 0.1,
        ..AndrychowiczConfig::code()
    }
}

/// The configurations checked: the paper's preprocessing, the code's
/// (float32 epsilon), no preprocessing (1 feature), and one layer.
fn lstm_configs() -> Vec<(AndrychowiczConfig, &'static str)> {
    vec![
        (lstm(2, Some(10.0), 0.0), "paper preprocessing"),
        (lstm(2, Some(5.0), f32::EPSILON as f64), "code's LogAndSign"),
        (lstm(2, None, 0.0), "raw gradient"),
        (lstm(1, Some(10.0), 0.0), "one layer"),
    ]
}

/// The two-level configurations checked: learned candidate, gradient
/// candidate, fixed gates.
fn two_level_configs() -> Vec<(TwoLevelConfig, &'static str)> {
    let base = TwoLevelConfig {
        lstm: lstm(2, Some(10.0), 0.0),
        candidate: Candidate::Learned,
        gates: Gates::Learned,
    };
    vec![
        (base, "two-level, learned candidate"),
        (
            TwoLevelConfig {
                candidate: Candidate::Gradient,
                lstm: lstm(2, Some(5.0), f32::EPSILON as f64),
                ..base
            },
            "two-level, gradient candidate",
        ),
        (
            TwoLevelConfig {
                gates: Gates::Fixed {
                    forget: 0.9,
                    input: 0.5,
                },
                lstm: lstm(2, None, 0.0),
                ..base
            },
            "two-level, fixed gates",
        ),
    ]
}

/// Fresh weights of `dtype`, moved off their initialisation.
fn andrychowicz_params(c: &AndrychowiczConfig, seed: u64, dtype: DType) -> Params {
    let w = AndrychowiczWeights::init(c, &mut Rng::new(seed), &Device::Cpu).unwrap();
    common::jitter(&w.to_params().to_dtype(dtype).unwrap(), 0.2, seed + 1)
}

/// Fresh two-level weights of `dtype`, moved off their initialisation,
/// with gates away from saturation (b_f ~ 1, b_i ~ -1).
fn two_level_params(c: &TwoLevelConfig, seed: u64, dtype: DType) -> Params {
    let w = TwoLevelWeights::init(c, &mut Rng::new(seed), &Device::Cpu).unwrap();
    let mut p = common::jitter(&w.to_params().to_dtype(dtype).unwrap(), 0.2, seed + 1);
    for (name, v) in [("cell.b_f", 1.0), ("cell.b_i", -1.0)] {
        let i = p.names.iter().position(|n| n == name).unwrap();
        p.tensors[i] = Tensor::new(&[[v]], &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
    }
    p
}

/// Either rule, built from weights.
enum Any {
    A(AndrychowiczRule),
    T(TwoLevelRule),
}

#[derive(Clone, Copy)]
enum Which {
    A(AndrychowiczConfig),
    T(TwoLevelConfig),
}

impl Which {
    fn params(self, seed: u64, dtype: DType) -> Params {
        match self {
            Which::A(c) => andrychowicz_params(&c, seed, dtype),
            Which::T(c) => two_level_params(&c, seed, dtype),
        }
    }

    fn rule(self, p: &Params) -> Any {
        match self {
            Which::A(c) => Any::A(
                AndrychowiczRule::new(AndrychowiczWeights::from_params(p).unwrap(), c).unwrap(),
            ),
            Which::T(c) => {
                Any::T(TwoLevelRule::new(TwoLevelWeights::from_params(p).unwrap(), c).unwrap())
            }
        }
    }
}

fn all() -> Vec<(Which, &'static str)> {
    let mut v: Vec<_> = lstm_configs()
        .into_iter()
        .map(|(c, w)| (Which::A(c), w))
        .collect();
    v.extend(
        two_level_configs()
            .into_iter()
            .map(|(c, w)| (Which::T(c), w)),
    );
    v
}

macro_rules! with_rule {
    ($any:expr, $r:ident => $body:expr) => {
        match $any {
            Any::A($r) => $body,
            Any::T($r) => $body,
        }
    };
}

fn opts(steps: usize, kernels: Kernels, record: bool) -> UnrollOptions {
    UnrollOptions {
        kernels,
        record,
        ..UnrollOptions::new(steps)
    }
}

/// A fixed weighting of theta_T's coordinates: the meta-loss `<c, theta_T>`.
fn weighting(dtype: DType) -> Tensor {
    let c: Vec<f64> = (0..N).map(|k| 1.0 + ((k * 37) % 11) as f64 / 7.0).collect();
    Tensor::from_vec(c, (1, N), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// What a full unroll gives: theta_T, the losses fed, the recorded series
/// and the meta-gradient of `<c, theta_T>` to the weights and theta_0.
struct Full {
    theta: Tensor,
    losses: Vec<f64>,
    series: Vec<Tensor>,
    grads: Vec<Tensor>,
}

fn full(w: Which, p: &Params, theta0: &Tensor, steps: usize, kernels: Kernels) -> Full {
    let vars = p.to_vars().unwrap();
    let pv = Params::from_vars(&p.names, &vars);
    let th = Var::from_tensor(theta0).unwrap();
    let mut q = Quad::new(1);
    let u = with_rule!(&w.rule(&pv), r => unroll(r, th.as_tensor(), &mut q, &opts(steps, kernels, true)).unwrap());
    let l = (&u.theta * weighting(theta0.dtype()))
        .unwrap()
        .sum_all()
        .unwrap();
    let store = l.backward().unwrap();
    let mut grads = pv.grads(&store).unwrap().tensors;
    grads.push(store.get(th.as_tensor()).unwrap().clone());
    Full {
        theta: u.theta,
        losses: u.inputs.iter().map(|(_, l)| *l).collect(),
        series: u.recorded.into_iter().flatten().collect(),
        grads,
    }
}

/// Largest |a - b| relative to the largest |a| of each pair, over pairs.
fn rel(a: &[Tensor], b: &[Tensor]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| common::max_rel_diff(std::slice::from_ref(x), std::slice::from_ref(y)))
        .fold(0.0, f64::max)
}

fn rel_losses(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / x.abs().max(1e-300))
        .fold(0.0, f64::max)
}

#[test]
fn full_unrolls_agree_with_the_composed_graph_in_float64_and_float32() {
    for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 2e-4)] {
        for (w, what) in all() {
            let p = w.params(3, dtype);
            let theta0 = Quad::new(1).theta0(4, dtype);
            let f = full(w, &p, &theta0, 10, Kernels::Fused);
            let c = full(w, &p, &theta0, 10, Kernels::Composed);
            let what = format!("{what} ({dtype:?})");
            assert!(
                common::max_rel_diff(
                    std::slice::from_ref(&c.theta),
                    std::slice::from_ref(&f.theta)
                ) < tol,
                "{what}: theta_T"
            );
            assert!(rel_losses(&c.losses, &f.losses) < tol, "{what}: losses");
            assert_eq!(c.series.len(), f.series.len(), "{what}");
            assert!(
                rel(&c.series, &f.series) < tol,
                "{what}: series {}",
                rel(&c.series, &f.series)
            );
            let d = rel(&c.grads, &f.grads);
            assert!(d < tol, "{what}: meta-gradient {d}");
            // The meta-gradient reaches every weight the rule uses.
            for (name, g) in p.names.iter().zip(&f.grads) {
                let size = common::values(g).iter().map(|x| x * x).sum::<f64>();
                let unused = (name.starts_with("out.") && what.contains("gradient candidate"))
                    || (name.starts_with("cell.") && what.contains("fixed gates"));
                assert_eq!(size == 0.0, unused, "{what}: {name}");
            }
            // theta moved: the unroll is not a trivial one.
            let moved = common::max_rel_diff(
                std::slice::from_ref(&theta0),
                std::slice::from_ref(&f.theta),
            );
            assert!(moved > 1e-3, "{what}: theta moved by {moved}");
        }
    }
}

/// Two segments of `steps` with theta and the state carried; the
/// surrogate's meta-gradients, to the weights, to theta_0 and the
/// starting state through both segments when `cut` is false, or of each
/// segment alone (truncated BPTT, the optimizer's schedule) when true.
fn segments(
    w: Which,
    p: &Params,
    theta0: &Tensor,
    steps: usize,
    kernels: Kernels,
    cut: bool,
) -> (Vec<Tensor>, Vec<f64>, Vec<Tensor>) {
    let vars = p.to_vars().unwrap();
    let pv = Params::from_vars(&p.names, &vars);
    let th = Var::from_tensor(theta0).unwrap();
    let mut q = Quad::new(2);
    let rule = w.rule(&pv);
    let mut out = vec![];
    let mut losses = vec![];
    let mut series = vec![];
    with_rule!(&rule, r => {
        let mut state = r.start(theta0).unwrap();
        // A non-zero starting state in the graph: the gradient to it is checked.
        let s0: Vec<Var> = state
            .parts()
            .iter()
            .enumerate()
            .map(|(i, t)| Var::from_tensor(&(t.ones_like().unwrap() * (0.1 * (i as f64 + 1.0))).unwrap()).unwrap())
            .collect();
        state = StateParts::from_parts(s0.iter().map(|v| v.as_tensor().clone()).collect()).unwrap();
        let mut theta = th.as_tensor().clone();
        let mut total: Option<Tensor> = None;
        for _ in 0..2 {
            let seg = unroll_segment(r, &mut state, &theta, &mut q, &opts(steps, kernels, true)).unwrap();
            losses.extend(seg.losses.iter().copied());
            series.extend(seg.recorded.into_iter().flatten());
            if cut {
                let store = seg.surrogate.backward().unwrap();
                out.extend(pv.grads(&store).unwrap().tensors);
                r.detach(&mut state);
                theta = seg.theta.detach();
            } else {
                total = Some(match total {
                    None => seg.surrogate,
                    Some(t) => (t + seg.surrogate).unwrap(),
                });
                theta = seg.theta;
            }
        }
        // The final theta and state themselves, as values.
        out.push(theta.detach());
        out.extend(state.parts().iter().map(|t| t.detach()));
        if let Some(t) = total {
            // Plus a function of the final state, so its seed is checked too.
            let extra = state.parts().iter().map(|s| s.sum_all().unwrap()).reduce(|a, b| (a + b).unwrap()).unwrap();
            let l = (t + (extra * 0.3).unwrap()).unwrap();
            let store = l.backward().unwrap();
            out.extend(pv.grads(&store).unwrap().tensors);
            out.push(store.get(th.as_tensor()).unwrap().clone());
            for v in &s0 {
                out.push(store.get(v.as_tensor()).unwrap().clone());
            }
        }
    });
    (out, losses, series)
}

#[test]
fn segments_with_the_state_carried_agree_with_the_composed_graph() {
    for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 3e-4)] {
        for (w, what) in all() {
            let p = w.params(5, dtype);
            let theta0 = Quad::new(2).theta0(6, dtype);
            for cut in [true, false] {
                let (gf, lf, sf) = segments(w, &p, &theta0, 6, Kernels::Fused, cut);
                let (gc, lc, sc) = segments(w, &p, &theta0, 6, Kernels::Composed, cut);
                let what = format!("{what} ({dtype:?}, cut {cut})");
                assert_eq!(lf.len(), 2 * 7, "{what}");
                assert!(rel_losses(&lc, &lf) < tol, "{what}: losses");
                assert!(rel(&sc, &sf) < tol, "{what}: series");
                assert_eq!(gf.len(), gc.len(), "{what}");
                for (k, (a, b)) in gc.iter().zip(&gf).enumerate() {
                    let d = common::max_rel_diff(std::slice::from_ref(a), std::slice::from_ref(b));
                    assert!(d < tol, "{what}: output {k}: {d}");
                }
            }
        }
    }
}

#[test]
fn fused_unrolls_give_the_same_bits_with_one_and_two_threads_and_without_avx2() {
    let run = |threads: usize, w: Which| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let p = w.params(7, DType::F32);
            let theta0 = Quad::new(1).theta0(8, DType::F32);
            let f = full(w, &p, &theta0, 8, Kernels::Fused);
            let (g, _, _) = segments(w, &p, &theta0, 4, Kernels::Fused, false);
            let mut v = vec![f.theta];
            v.extend(f.grads);
            v.extend(g);
            v.iter().map(common::bits).collect::<Vec<_>>()
        })
    };
    for (w, what) in all() {
        let one = run(1, w);
        assert_eq!(one, run(2, w), "{what}: 1 and 2 threads");
        fewshot::model::kernels::simd::set_simd(false);
        let baseline = run(2, w);
        fewshot::model::kernels::simd::set_simd(true);
        assert_eq!(one, baseline, "{what}: AVX2 and baseline builds");
    }
}

#[test]
fn shapes_the_kernel_does_not_run_fall_back_to_the_composed_graph() {
    // 8 hidden units: the composed graph, bit for bit whatever is asked.
    let c = AndrychowiczConfig {
        hidden: 8,
        ..lstm(2, Some(10.0), 0.0)
    };
    let w = Which::A(c);
    let p = w.params(9, DType::F64);
    let theta0 = Quad::new(1).theta0(10, DType::F64);
    let f = full(w, &p, &theta0, 5, Kernels::Fused);
    let g = full(w, &p, &theta0, 5, Kernels::Composed);
    assert_eq!(common::bits(&f.theta), common::bits(&g.theta));
    with_rule!(&w.rule(&p), r => assert!(r.fused().is_none()));
    // Evaluation (nothing in a graph) keeps no tape and gives the same values.
    let w = Which::A(lstm(2, Some(10.0), 0.0));
    let p = w.params(9, DType::F64);
    let plain = with_rule!(&w.rule(&p), r => unroll(r, &theta0, &mut Quad::new(1), &opts(5, Kernels::Fused, false)).unwrap());
    let graph = full(w, &p, &theta0, 5, Kernels::Fused);
    assert_eq!(common::bits(&plain.theta), common::bits(&graph.theta));
}
