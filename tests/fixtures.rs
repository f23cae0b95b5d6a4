//! Cross-framework numeric fixtures: fewshot against PyTorch on the same
//! inputs and parameters.
//!
//! `benchmarks/reference/fixtures.py` (run by hand with PyTorch, never in
//! CI) wrote `tests/fixtures/*.safetensors`: inputs and parameters rounded
//! to float32, PyTorch's float64 results stored as float32. Each test runs
//! fewshot's computation in float64 and in float32 and requires every
//! output tensor to match PyTorch's within 1e-5 of that tensor's largest
//! magnitude. This proves the computation (not only its self-consistency,
//! which the finite-difference tests cover).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use fewshot::algo::learned::UnrollOptions;
use fewshot::algo::maml::{LossScale, Maml, MamlConfig};
use fewshot::algo::meta_lstm::{MetaLstm, MetaLstmConfig};
use fewshot::algo::reptile::{InnerLoss, Reptile, ReptileConfig};
use fewshot::algo::{sgd_adapt, Adapted, Algorithm, Context, Progress};
use fewshot::data::sampler::{Batch, EpisodeSpec};
use fewshot::model::kernels::Kernels;
use fewshot::model::learner::{cross_entropy, Downsample, Head, Learner, Padding, PoolPadding};
use fewshot::model::norm::{EvalStats, NormProtocol, RunningStats, TrainStats};
use fewshot::model::params::Params;

/// Float64 runs: PyTorch's results are stored as float32, so 1e-6 is the
/// rounding of the stored values with margin.
const TOL_F64: f64 = 1e-6;
/// Float32 runs: our own float32 rounding (and the meta-LSTM's fast exp).
const TOL_F32: f64 = 1e-5;

fn max_abs(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}
const DTYPES: [DType; 2] = [DType::F64, DType::F32];

fn load(name: &str) -> HashMap<String, Tensor> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

struct Fixture {
    t: HashMap<String, Tensor>,
    dtype: DType,
}

impl Fixture {
    fn new(name: &str, dtype: DType) -> Self {
        Fixture {
            t: load(name),
            dtype,
        }
    }
    /// A float tensor in the run's dtype.
    fn f(&self, key: &str) -> Tensor {
        self.t
            .get(key)
            .unwrap_or_else(|| panic!("fixture has no `{key}`"))
            .to_dtype(self.dtype)
            .unwrap()
    }
    /// Labels as u32.
    fn labels(&self, key: &str) -> Tensor {
        self.t[key].to_dtype(DType::U32).unwrap()
    }
    fn params(&self, prefix: &str, names: &[String]) -> Params {
        Params::new(
            names.to_vec(),
            names
                .iter()
                .map(|n| self.f(&format!("{prefix}{n}")))
                .collect(),
        )
    }
    fn batch(&self, prefix: &str) -> Batch {
        let q = |k: &str| format!("{prefix}{k}");
        let has_query = self.t.get(&q("query_x")).map(|t| t.dim(0).unwrap() > 0);
        let (qx, qy) = if has_query == Some(true) {
            (self.f(&q("query_x")), self.labels(&q("query_y")))
        } else {
            (self.f(&q("support_x")), self.labels(&q("support_y")))
        };
        Batch {
            id: Default::default(),
            support_x: self.f(&q("support_x")),
            support_y: self.labels(&q("support_y")),
            query_x: qx,
            query_y: qy,
        }
    }
    /// `got` matches the fixture's `key` within the tolerance times its
    /// largest magnitude.
    fn check(&self, what: &str, got: &Tensor, key: &str) {
        self.check_scaled(what, got, key, 0.0)
    }

    /// As [`Fixture::check`], the scale at least `floor`.
    fn check_scaled(&self, what: &str, got: &Tensor, key: &str, floor: f64) {
        let want = self.t[key].to_dtype(DType::F64).unwrap();
        let got = got.to_dtype(DType::F64).unwrap();
        assert_eq!(
            got.elem_count(),
            want.elem_count(),
            "{what}: {key} has {} elements, we have {}",
            want.elem_count(),
            got.elem_count()
        );
        let got = got.reshape(want.shape()).unwrap();
        let scale = max_abs(&want).max(floor);
        let err = (got - &want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let tol = match self.dtype {
            DType::F64 => TOL_F64,
            _ => TOL_F32,
        };
        if std::env::var_os("FIXTURE_VERBOSE").is_some() {
            eprintln!(
                "{what} ({:?}) {key}: {:.2e}",
                self.dtype,
                err / scale.max(1e-300)
            );
        }
        assert!(
            err <= tol * scale.max(1e-300),
            "{what} ({:?}): {key} differs from PyTorch by {err:.3e} (scale {scale:.3e})",
            self.dtype
        );
    }
    /// As [`Fixture::check`] on the flat coordinates `idx` only.
    fn check_at(&self, what: &str, got: &Tensor, key: &str, idx: Option<&Tensor>) {
        match idx {
            None => self.check(what, got, key),
            Some(idx) => {
                let sub = Fixture {
                    t: HashMap::from([(key.to_string(), select(&self.t[key], idx))]),
                    dtype: self.dtype,
                };
                sub.check(what, &select(got, idx), key)
            }
        }
    }

    fn check_scalar(&self, what: &str, got: f64, key: &str) {
        self.check(what, &Tensor::new(&[got], &Device::Cpu).unwrap(), key);
    }
    /// Every tensor of `got` against `prefix + name`, relative to the
    /// largest magnitude over the whole set (the gradients of conv biases
    /// followed by batch norm are zero up to rounding, so their own scale
    /// is noise).
    fn check_params(&self, what: &str, got: &Params, prefix: &str) {
        self.check_params_except(what, got, prefix, &[])
    }

    fn check_params_except(&self, what: &str, got: &Params, prefix: &str, skip: &[&str]) {
        let floor = got
            .names
            .iter()
            .map(|n| {
                max_abs(
                    &self.t[&format!("{prefix}{n}")]
                        .to_dtype(DType::F64)
                        .unwrap(),
                )
            })
            .fold(0.0, f64::max);
        for (n, t) in got.names.iter().zip(&got.tensors) {
            if skip.iter().any(|s| n.ends_with(s)) {
                continue;
            }
            self.check_scaled(&format!("{what} {n}"), t, &format!("{prefix}{n}"), floor);
        }
    }
}

/// Flat coordinates outside the conv biases (which batch norm cancels).
fn not_conv_bias(l: &Learner) -> Tensor {
    let p = l
        .init(&mut fewshot::rng::Rng::new(0), &Device::Cpu)
        .unwrap();
    let mut idx = Vec::new();
    let mut off = 0u32;
    for (n, t) in p.names.iter().zip(&p.tensors) {
        let k = t.elem_count() as u32;
        if !(n.starts_with("conv") && n.ends_with(".bias")) {
            idx.extend(off..off + k);
        }
        off += k;
    }
    Tensor::new(idx, &Device::Cpu).unwrap()
}

fn select(t: &Tensor, idx: &Tensor) -> Tensor {
    t.flatten_all().unwrap().index_select(idx, 0).unwrap()
}

fn protocol(meta_train: TrainStats, eval: EvalStats, momentum: f64) -> NormProtocol {
    NormProtocol {
        meta_train,
        eval,
        momentum,
    }
}

fn ctx(learner: Learner, ways: usize, shots: usize, queries: usize, norm: NormProtocol) -> Context {
    Context {
        dataset: "omniglot".into(),
        spec: EpisodeSpec {
            ways,
            shots,
            queries,
        },
        learner,
        norm,
        run_seed: 0,
        episode_seed: 0,
        device: Device::Cpu,
    }
}

fn omniglot(hidden: usize) -> Learner {
    Learner {
        hidden,
        ..Learner::omniglot(5, 28)
    }
}

fn mini(size: usize, hidden: usize, ways: usize) -> Learner {
    Learner {
        hidden,
        ..Learner::mini_imagenet(ways, size)
    }
}

fn learner_case(name: &str, l: &Learner) {
    for dtype in DTYPES {
        let fx = Fixture::new(name, dtype);
        let p = fx.params("param.", &l.param_names());
        let x = fx.f("x");
        let y = fx.labels("y");
        let q = fx.f("q");
        fx.check("logits", &l.forward(&p, &x).unwrap(), "logits");
        let (loss, g, stats) = l.loss_and_grad(&p, &x, &y).unwrap();
        fx.check_scalar("loss", loss, "loss");
        fx.check_params("gradient", &g, "grad.");
        // Non-transductive prediction with the support set's statistics.
        let c = ctx(
            l.clone(),
            5,
            1,
            1,
            protocol(TrainStats::Query, EvalStats::Support, 0.9),
        );
        let a = Adapted {
            params: p.clone(),
            running: None,
        };
        fx.check(
            "support-statistics prediction",
            &c.predict_eval(&a, &x, &q).unwrap(),
            "pred_support_stats",
        );
        // Running statistics over two train-mode passes, then eval mode.
        let m = fx.t["momentum"].to_vec1::<f32>().unwrap()[0] as f64;
        let mut r = RunningStats::new(m);
        r.update(&stats).unwrap();
        let (_, _, stats2) = l
            .loss_and_grad(
                &p,
                &x.narrow(0, 0, x.dim(0).unwrap() - 1).unwrap(),
                &y.narrow(0, 0, y.dim(0).unwrap() - 1).unwrap(),
            )
            .unwrap();
        r.update(&stats2).unwrap();
        for (i, s) in r.get().unwrap().iter().enumerate() {
            fx.check("running mean", &s.mean, &format!("running.{i}.mean"));
            fx.check("running var", &s.var, &format!("running.{i}.var"));
        }
        let c = ctx(
            l.clone(),
            5,
            1,
            1,
            protocol(TrainStats::Query, EvalStats::Running, m),
        );
        let a = Adapted {
            params: p.clone(),
            running: Some(r),
        };
        fx.check(
            "running-statistics prediction",
            &c.predict_eval(&a, &x, &q).unwrap(),
            "pred_running",
        );
    }
}

#[test]
fn shared_learner_stride2_matches_pytorch() {
    learner_case("learner-omniglot", &omniglot(8));
}

#[test]
fn maml_reference_network_matches_pytorch() {
    let l = Learner {
        bn_eps: 1e-3,
        head: Head::MeanPool,
        bn_scale: false,
        padding: Padding::TfSame,
        ..omniglot(8)
    };
    assert_eq!(l.downsample, Downsample::Stride2);
    learner_case("learner-omniglot-maml", &l);
}

#[test]
fn shared_learner_maxpool_matches_pytorch() {
    learner_case("learner-miniimagenet", &mini(22, 8, 5));
}

#[test]
fn reptile_miniimagenet_same_pooling_matches_pytorch() {
    let l = Learner {
        bn_eps: 1e-3,
        pool_padding: PoolPadding::Same,
        ..mini(22, 8, 5)
    };
    learner_case("learner-miniimagenet-reptile", &l);
}

#[test]
fn maml_inner_step_and_meta_gradients_match_pytorch() {
    let l = Learner {
        bn_eps: 1e-3,
        head: Head::MeanPool,
        bn_scale: false,
        padding: Padding::TfSame,
        ..omniglot(8)
    };
    let c = ctx(
        l.clone(),
        5,
        1,
        1,
        protocol(TrainStats::Query, EvalStats::Query, 0.9),
    );
    for dtype in DTYPES {
        let fx = Fixture::new("maml", dtype);
        let b = fx.batch("");
        for (order, first_order) in [("first", true), ("second", false)] {
            let cfg = MamlConfig {
                first_order: Some(first_order),
                inner_lr: Some(0.4),
                inner_steps: Some(1),
                loss: Some(LossScale::PerShot),
                adapt_bn: Some(false),
                ..Default::default()
            };
            let mut m = Maml::new(cfg.resolve(&c).unwrap(), &c).unwrap();
            m.theta = fx.params("param.", &l.param_names());
            let (g, score) = m.task_gradient(&m.theta, &b).unwrap();
            fx.check_params(
                &format!("{order}-order meta-gradient"),
                &g,
                &format!("{order}.grad."),
            );
            // The reference's loss is sum(CE)/K = (N*Q/K) x mean CE.
            fx.check_scalar(
                "query loss",
                score.loss * m.loss_scale(b.query_x.dim(0).unwrap()),
                &format!("{order}.query_loss"),
            );
            if first_order {
                let step = m.inner_step(b.support_x.dim(0).unwrap());
                let adapted =
                    sgd_adapt(&l, &m.theta, &b.support_x, &b.support_y, &step, 1, None).unwrap();
                fx.check_params("adapted parameters", &adapted, "adapted.");
            }
        }
    }
}

#[test]
fn meta_lstm_updates_and_meta_gradient_match_pytorch() {
    let l = Learner {
        bn_eps: 1e-3,
        ..mini(16, 4, 3)
    };
    let c = ctx(
        l.clone(),
        3,
        2,
        2,
        protocol(TrainStats::Query, EvalStats::Support, 0.9),
    );
    for dtype in DTYPES {
        let fx = Fixture::new("meta_lstm", dtype);
        let b = fx.batch("");
        let cfg = MetaLstmConfig {
            steps: Some(3),
            grad_div_batch: Some(true),
            ..Default::default()
        };
        let mut m = MetaLstm::new(cfg.resolve(&c).unwrap(), &c).unwrap();
        m.to_dtype(dtype).unwrap();
        m.params = fx.params("meta.", &m.params.names.clone());
        let rule = m.rule(&m.params).unwrap();
        let opts = UnrollOptions {
            kernels: Kernels::Composed,
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
        let keep_idx = not_conv_bias(&l);
        for t in 0..3 {
            let s = format!("step{}", t + 1);
            fx.check(
                &format!("{s} learner gradient / B"),
                &u.inputs[t].0,
                &format!("{s}.grad"),
            );
            fx.check_scalar(
                &format!("{s} learner loss"),
                u.inputs[t].1,
                &format!("{s}.loss"),
            );
            // In float32 the gradients of conv biases followed by batch
            // norm are rounding noise (their exact value is 0), and the
            // preprocessing maps noise x to e^10 x: their gates are
            // noise-driven in any float32 implementation (the Lua
            // reference included), so float32 compares the other gates.
            let idx = (dtype == DType::F32).then_some(&keep_idx);
            fx.check_at(
                &format!("{s} forget gate"),
                &u.gates[t].0,
                &format!("{s}.forget"),
                idx,
            );
            fx.check_at(
                &format!("{s} input gate"),
                &u.gates[t].1,
                &format!("{s}.input"),
                idx,
            );
        }
        fx.check("theta_3", &u.theta, "step3.theta");
        let vars = m.params.to_vars().unwrap();
        let mp = Params::from_vars(&m.params.names, &vars);
        let (loss, _) = m.meta_loss(&mp, &b, None).unwrap();
        fx.check_scalar(
            "query loss",
            loss.to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap(),
            "query_loss",
        );
        let g = mp.grads(&loss.backward().unwrap()).unwrap();
        fx.check_params("meta-gradient", &g, "metagrad.");
    }
}

#[test]
fn reptile_outer_step_with_inner_adam_matches_pytorch() {
    let l = omniglot(8);
    let c = ctx(
        l.clone(),
        5,
        2,
        1,
        protocol(TrainStats::Query, EvalStats::Support, 0.9),
    );
    for dtype in DTYPES {
        let fx = Fixture::new("reptile", dtype);
        let meta_step = fx.t["meta_step"].to_vec1::<f32>().unwrap()[0] as f64;
        let cfg = ReptileConfig {
            inner_lr: Some(1e-3),
            inner_batch: Some(10),
            inner_iters: Some(3),
            meta_batch: Some(2),
            meta_step: Some(meta_step),
            meta_step_final: Some(meta_step),
            inner_loss: Some(InnerLoss::Sum),
            ..Default::default()
        };
        let mut r = Reptile::new(cfg.resolve(&c).unwrap(), &c).unwrap();
        r.set_theta(fx.params("param.", &l.param_names())).unwrap();
        let tasks = [fx.batch("task0."), fx.batch("task1.")];
        let mut adam = r.inner_adam().clone();
        let first = r
            .inner_loop(
                &r.theta,
                &mut adam,
                &tasks[0].support_x,
                &tasks[0].support_y,
                10,
                3,
                &mut r.task_rng(0, 0),
                None,
            )
            .unwrap()
            .0;
        // Conv biases followed by batch norm have a zero gradient up to
        // rounding; Adam normalises that noise into steps of size ~lr in
        // float32 (in any framework), so float32 compares the rest.
        let skip: &[&str] = match dtype {
            DType::F64 => &[],
            _ => &["conv1.bias", "conv2.bias", "conv3.bias", "conv4.bias"],
        };
        fx.check_params_except("task 0 adapted", &first, "task0.adapted.", skip);
        r.meta_train_step(
            &tasks,
            Progress {
                step: 0,
                fraction: 0.0,
            },
        )
        .unwrap();
        fx.check_params_except("outer step", &r.theta, "new.", skip);
        fx.check_params_except(
            "inner Adam second moments",
            &r.inner_adam().v,
            "adam.v.",
            skip,
        );
        // Sanity: the step moved the parameters.
        let before = fx.params("param.", &l.param_names());
        let moved = before
            .zip_map(&r.theta, |a, b| a - b)
            .unwrap()
            .sum_sq()
            .unwrap();
        assert!(moved > 1e-10);
        let _ = cross_entropy;
    }
}
