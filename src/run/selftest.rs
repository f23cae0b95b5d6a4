//! `bench selftest`: the gradient checks on any device, in about a minute.
//!
//! The test suite proves the gradients on the CPU; a new device (a GPU, a
//! new build) needs the same proof without the suite and its data. Each
//! check runs in float64 on small learners, on the device given:
//!
//! - the learner's gradient (both forms: stride 2, max-pool) against
//!   central finite differences on every coordinate;
//! - the fused conv+BN+ReLU(+pool) blocks against the composed candle path
//!   (CPU only: other devices always run the composed path);
//! - the meta-learner LSTM with `f = 1`, `i = lr` against ten steps of
//!   gradient descent (Ravi & Larochelle's special case);
//! - the meta-learner LSTM's meta-gradient against central finite
//!   differences, composed path (and fused on the CPU), with the learner's
//!   gradients and losses held at their unperturbed values as the
//!   reference does (no second derivatives);
//! - second-order MAML's meta-gradient (two inner steps) against central
//!   finite differences.
//!
//! Every check reports its worst error, relative as `|a - b| / (1 + |b|)`,
//! and its tolerance.

use candle_core::{DType, Device, Tensor};

use crate::algo::learned::UnrollOptions;
use crate::algo::maml::{Maml, MamlConfig};
use crate::algo::meta_lstm::{Gates, MetaLstm, MetaLstmConfig};
use crate::algo::{sgd_adapt, Algorithm, Context, InnerSgd};
use crate::data::sampler::{Batch, EpisodeSpec};
use crate::error::Result;
use crate::model::kernels::Kernels;
use crate::model::learner::{cross_entropy, Downsample, Learner};
use crate::model::norm::NormProtocol;
use crate::model::params::Params;
use crate::rng::Rng;

/// The outcome of one check.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    /// Worst relative error over what was compared.
    pub worst: f64,
    pub tolerance: f64,
    /// Coordinates or values compared.
    pub compared: usize,
    /// Why the check did not run on this device (then it passes).
    pub skipped: Option<String>,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.skipped.is_some() || self.worst <= self.tolerance
    }
}

/// Step of the central differences.
const H: f64 = 1e-6;

/// The worst relative error `|analytic - fd| / (1 + |fd|)` of `analytic`
/// (the gradient of `f` at `p`) against central differences, over every
/// `stride`-th coordinate of every tensor, and how many were compared.
pub fn finite_differences(
    p: &Params,
    analytic: &Params,
    stride: usize,
    f: &dyn Fn(&Params) -> Result<f64>,
) -> Result<(f64, usize)> {
    let mut worst = 0f64;
    let mut compared = 0;
    for (i, t) in p.tensors.iter().enumerate() {
        let g = analytic.tensors[i]
            .flatten_all()?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        let base = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        for k in (0..g.len()).step_by(stride.max(1)) {
            let shifted = |d: f64| -> Result<f64> {
                let mut v = base.clone();
                v[k] += d;
                let mut q = p.clone();
                q.tensors[i] = Tensor::from_vec(v, t.shape(), t.device())?.to_dtype(t.dtype())?;
                f(&q)
            };
            let fd = (shifted(H)? - shifted(-H)?) / (2.0 * H);
            worst = worst.max((fd - g[k]).abs() / (1.0 + fd.abs()));
            compared += 1;
        }
    }
    Ok((worst, compared))
}

/// The worst relative error of `a` against `b`, tensor by tensor.
fn params_error(a: &Params, b: &Params) -> Result<(f64, usize)> {
    let mut worst = 0f64;
    let mut n = 0;
    for (x, y) in a.tensors.iter().zip(&b.tensors) {
        let x = x.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let y = y.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        for (u, v) in x.iter().zip(&y) {
            worst = worst.max((u - v).abs() / (1.0 + v.abs()));
        }
        n += x.len();
    }
    Ok((worst, n))
}

/// A tiny conv-4: `channels` input channels, `size` pixels, 2 filters, 3
/// ways.
fn tiny(downsample: Downsample, channels: usize, size: usize) -> Learner {
    Learner {
        in_channels: channels,
        image_size: size,
        hidden: 2,
        ways: 3,
        downsample,
        bn_eps: 1e-5,
        blocks: 4,
        ..Learner::omniglot(3, size)
    }
}

fn context(learner: Learner, device: &Device) -> Context {
    Context {
        dataset: "omniglot".into(),
        spec: EpisodeSpec {
            ways: learner.ways,
            shots: 2,
            queries: 2,
        },
        learner: Learner {
            kernels: learner.kernels.on(device),
            ..learner
        },
        norm: NormProtocol::default(),
        run_seed: 5,
        episode_seed: 5,
        device: device.clone(),
    }
}

/// A random float64 episode for `l` on `device`: 2 support and 2 query
/// images per class.
fn episode(l: &Learner, seed: u64, device: &Device) -> Result<Batch> {
    let mut rng = Rng::new(seed);
    let (c, s, ways) = (l.in_channels, l.image_size, l.ways);
    let mut images = |n: usize| -> Result<Tensor> {
        let v: Vec<f64> = (0..n * c * s * s).map(|_| rng.normal()).collect();
        Ok(Tensor::from_vec(v, (n, c, s, s), device)?)
    };
    let labels = |k: usize| -> Result<Tensor> {
        let v: Vec<u32> = (0..ways * k).map(|i| (i / k) as u32).collect();
        Ok(Tensor::from_vec(v, ways * k, device)?)
    };
    Ok(Batch {
        id: Default::default(),
        support_x: images(2 * ways)?,
        support_y: labels(2)?,
        query_x: images(2 * ways)?,
        query_y: labels(2)?,
    })
}

fn skipped(name: &str, why: &str) -> Check {
    Check {
        name: name.into(),
        worst: 0.0,
        tolerance: 0.0,
        compared: 0,
        skipped: Some(why.into()),
    }
}

const CPU_ONLY: &str = "the fused kernels are CPU-only; this device runs the composed path";

/// The learner's gradient against finite differences, both forms.
pub fn learner_gradient(device: &Device) -> Result<Vec<Check>> {
    let mut out = vec![];
    for (name, l) in [
        (
            "learner gradient, stride-2 form (finite differences)",
            tiny(Downsample::Stride2, 2, 8),
        ),
        (
            "learner gradient, max-pool form, odd sizes (finite differences)",
            tiny(Downsample::MaxPool, 2, 18),
        ),
    ] {
        let l = Learner {
            kernels: Kernels::Composed,
            ..l
        };
        let p = l.init(&mut Rng::new(3), device)?.to_dtype(DType::F64)?;
        let b = episode(&l, 11, device)?;
        let (_, g, _) = l.loss_and_grad(&p, &b.support_x, &b.support_y)?;
        let f = |q: &Params| -> Result<f64> {
            let loss = cross_entropy(&l.forward(q, &b.support_x)?, &b.support_y)?;
            Ok(loss.to_dtype(DType::F64)?.to_scalar::<f64>()?)
        };
        let (worst, compared) = finite_differences(&p, &g, 1, &f)?;
        out.push(Check {
            name: name.into(),
            worst,
            tolerance: 1e-6,
            compared,
            skipped: None,
        });
    }
    Ok(out)
}

/// The fused blocks against the composed path: loss gradients of both
/// forms.
pub fn fused_blocks(device: &Device) -> Result<Vec<Check>> {
    let name = "fused learner blocks against the composed path (gradients)";
    if !device.is_cpu() {
        return Ok(vec![skipped(name, CPU_ONLY)]);
    }
    let mut worst = 0f64;
    let mut compared = 0;
    for l in [
        tiny(Downsample::Stride2, 1, 9),
        tiny(Downsample::MaxPool, 3, 19),
    ] {
        let p = l.init(&mut Rng::new(4), device)?.to_dtype(DType::F64)?;
        let b = episode(&l, 12, device)?;
        let grad = |kernels| -> Result<Params> {
            let l = Learner {
                kernels,
                ..l.clone()
            };
            Ok(l.loss_and_grad(&p, &b.support_x, &b.support_y)?.1)
        };
        let (w, n) = params_error(&grad(Kernels::Fused)?, &grad(Kernels::Composed)?)?;
        worst = worst.max(w);
        compared += n;
    }
    Ok(vec![Check {
        name: name.into(),
        worst,
        tolerance: 1e-10,
        compared,
        skipped: None,
    }])
}

fn meta_lstm(device: &Device, steps: usize) -> Result<(MetaLstm, Batch)> {
    let l = tiny(Downsample::Stride2, 1, 8);
    let c = context(l.clone(), device);
    let cfg = MetaLstmConfig {
        steps: Some(steps),
        ..Default::default()
    };
    let mut m = MetaLstm::new(cfg.resolve(&c)?, &c)?;
    m.to_dtype(DType::F64)?;
    Ok((m, episode(&l, 8, device)?))
}

/// `steps` updates of the learner on `b`'s support set from `m`'s
/// meta-parameters, the gates set by `gates` (nothing recorded).
fn unroll(
    m: &MetaLstm,
    b: &Batch,
    kernels: Kernels,
    steps: usize,
    gates: Gates,
) -> Result<crate::algo::meta_lstm::Unrolled> {
    let rule = m.rule(&m.params)?.with_gates(gates);
    let opts = UnrollOptions {
        kernels,
        ..UnrollOptions::new(steps)
    };
    m.unroll(
        &rule,
        &mut m.support(&b.support_x, &b.support_y, None),
        &opts,
    )
}

/// Ravi & Larochelle's special case: with `f = 1` and `i = lr`, ten
/// meta-LSTM updates are ten steps of gradient descent.
pub fn meta_lstm_sgd(device: &Device) -> Result<Vec<Check>> {
    let (m, b) = meta_lstm(device, 10)?;
    let theta0 = m.learner_params(m.params.get("theta0")?)?;
    let lr = 0.1;
    let sgd = sgd_adapt(
        &m.context().learner,
        &theta0,
        &b.support_x,
        &b.support_y,
        &InnerSgd::plain(lr, &theta0),
        10,
        None,
    )?;
    // The reference divides the learner's gradient by the batch size
    // (`grad_div_batch`), so the input gate that makes lr steps is lr * B.
    let input = if m.config.grad_div_batch {
        lr * b.support_x.dim(0)? as f64
    } else {
        lr
    };
    let mut out = vec![];
    for &kernels in Kernels::available(device) {
        let u = unroll(&m, &b, kernels, 10, Gates::Fixed { forget: 1.0, input })?;
        let (worst, compared) = params_error(&m.learner_params(&u.theta)?, &sgd)?;
        out.push(Check {
            name: format!(
                "meta-LSTM with f = 1, i = lr is gradient descent ({kernels:?}, 10 steps)"
            ),
            worst,
            tolerance: 1e-10,
            compared,
            skipped: None,
        });
    }
    Ok(out)
}

/// The meta-LSTM's meta-gradient against finite differences (learner
/// gradients and losses frozen at the unperturbed unroll).
pub fn meta_lstm_meta_gradient(device: &Device) -> Result<Vec<Check>> {
    let (m, b) = meta_lstm(device, 3)?;
    let mut out = vec![];
    for &kernels in Kernels::available(device) {
        let base = unroll(&m, &b, kernels, 3, Gates::Learned)?;
        let frozen = base.inputs.clone();
        let f = |q: &Params| -> Result<f64> {
            let (l, _) = m.meta_loss(q, &b, Some(&frozen))?;
            Ok(l.to_dtype(DType::F64)?.to_scalar::<f64>()?)
        };
        let g = match kernels {
            Kernels::Fused => m.meta_gradient(&m.params, &b, Some(&frozen))?.2,
            Kernels::Composed => {
                let vars = m.params.to_vars()?;
                let pv = Params::from_vars(&m.params.names, &vars);
                let (loss, _) = m.meta_loss(&pv, &b, Some(&frozen))?;
                pv.grads(&loss.backward()?)?
            }
        };
        let (worst, compared) = finite_differences(&m.params, &g, 7, &f)?;
        out.push(Check {
            name: format!("meta-LSTM meta-gradient ({kernels:?}, finite differences)"),
            worst,
            tolerance: 1e-6,
            compared,
            skipped: None,
        });
    }
    Ok(out)
}

/// Second-order MAML's meta-gradient against finite differences of the
/// query loss after two inner steps.
pub fn maml_second_order(device: &Device) -> Result<Vec<Check>> {
    let l = tiny(Downsample::Stride2, 2, 8);
    let c = context(l.clone(), device);
    let lr = 0.3;
    let cfg = MamlConfig {
        first_order: Some(false),
        inner_lr: Some(lr),
        inner_steps: Some(2),
        ..Default::default()
    };
    let mut m = Maml::new(cfg.resolve(&c)?, &c)?;
    m.theta = m.theta.to_dtype(DType::F64)?;
    let b = episode(&l, 33, device)?;
    let (g, _) = m.task_gradient(&m.theta, &b)?;
    let f = |theta: &Params| -> Result<f64> {
        let p = sgd_adapt(
            &c.learner,
            theta,
            &b.support_x,
            &b.support_y,
            &InnerSgd::plain(lr, theta),
            2,
            None,
        )?;
        let loss = cross_entropy(&c.predict_train(&p, &b.support_x, &b.query_x)?, &b.query_y)?;
        Ok(loss.to_dtype(DType::F64)?.to_scalar::<f64>()?)
    };
    let (worst, compared) = finite_differences(&m.theta, &g, 7, &f)?;
    Ok(vec![Check {
        name: "second-order MAML meta-gradient (finite differences)".into(),
        worst,
        tolerance: 1e-5,
        compared,
        skipped: None,
    }])
}

/// Every check on `device`, in order.
pub fn run_all(device: &Device) -> Result<Vec<Check>> {
    let mut out = vec![];
    for check in [
        learner_gradient,
        fused_blocks,
        meta_lstm_sgd,
        meta_lstm_meta_gradient,
        maml_second_order,
    ] {
        out.extend(check(device)?);
    }
    Ok(out)
}
