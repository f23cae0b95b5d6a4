//! Adam over [`Params`], with its state exposed for checkpoints.
//!
//! candle-nn's `AdamW` keeps its moments private, so a killed run could not
//! resume bit for bit; this one is small and saves everything.
//!
//! m_t = b1 m_{t-1} + (1 - b1) g;  v_t = b2 v_{t-1} + (1 - b2) g^2
//! theta_t = theta_{t-1} - lr_t * m_t / (sqrt(v_t) + eps),
//! lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t)
//!
//! This is the "epsilon-hat" form of Kingma & Ba (2015, end of section 2)
//! that all three reference codes use: TensorFlow's `AdamOptimizer` (MAML's
//! meta-optimiser, Reptile's inner optimiser) and Torch7's `optim.adam`
//! (the meta-LSTM). PyTorch's `torch.optim.Adam` adds eps to
//! sqrt(v_t / (1 - b2^t)) instead, an effective epsilon sqrt(1 - b2^t)
//! times smaller; the two agree once eps is negligible.

use std::collections::HashMap;

use candle_core::{CpuStorage, Storage, Tensor};

use crate::error::Result;
use crate::model::params::Params;

/// Adam hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl AdamConfig {
    /// PyTorch/TensorFlow defaults with the given learning rate.
    pub fn with_lr(lr: f64) -> Self {
        AdamConfig {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Adam state: first and second moments and the step count.
#[derive(Debug, Clone)]
pub struct Adam {
    pub config: AdamConfig,
    pub m: Params,
    pub v: Params,
    pub t: u64,
}

impl Adam {
    /// Zero state shaped like `params`.
    pub fn new(config: AdamConfig, params: &Params) -> Result<Self> {
        let zeros = params.map(|t| t.zeros_like())?;
        Ok(Adam {
            config,
            m: zeros.clone(),
            v: zeros,
            t: 0,
        })
    }

    /// One step: returns the updated parameters (detached).
    pub fn step(&mut self, params: &Params, grads: &Params) -> Result<Params> {
        self.step_scaled(params, grads, None)
    }

    /// One step on the gradients multiplied by `scale` (Reptile's summed
    /// inner loss), without materialising the scaled gradients.
    ///
    /// On the CPU each tensor is updated in one pass ([`update_cpu`]); it
    /// computes exactly what the composed path below computes, operation
    /// for operation in the tensor's dtype (candle's `affine` is
    /// `v * mul + add`, so the `+ 0` stays), so the two agree bit for bit
    /// (`fused_step_equals_the_composed_one`). Elsewhere, the composed path.
    pub fn step_scaled(
        &mut self,
        params: &Params,
        grads: &Params,
        scale: Option<f64>,
    ) -> Result<Params> {
        self.t += 1;
        let k = Consts::of(&self.config, self.t, scale);
        let mut out = Vec::with_capacity(params.len());
        for i in 0..params.len() {
            let (p, g) = (&params.tensors[i], &grads.tensors[i]);
            let (m, v) = (&self.m.tensors[i], &self.v.tensors[i]);
            let (p, m, v) = match update_cpu(p, g, m, v, &k)? {
                Some(done) => done,
                None => update_composed(p, g, m, v, &k)?,
            };
            out.push(p);
            self.m.tensors[i] = m;
            self.v.tensors[i] = v;
        }
        Ok(Params::new(params.names.clone(), out))
    }

    /// State as named tensors (`{prefix}m.<name>`, `{prefix}v.<name>`,
    /// `{prefix}t`).
    pub fn to_named(&self, prefix: &str) -> Result<HashMap<String, Tensor>> {
        let mut map = self.m.to_named(&format!("{prefix}m."));
        map.extend(self.v.to_named(&format!("{prefix}v.")));
        let dev = self.m.tensors[0].device();
        map.insert(format!("{prefix}t"), Tensor::new(&[self.t as f64], dev)?);
        Ok(map)
    }

    /// Restore state saved with [`Adam::to_named`].
    pub fn load_named(&mut self, prefix: &str, map: &HashMap<String, Tensor>) -> Result<()> {
        self.m = self.m.from_named_like(&format!("{prefix}m."), map)?;
        self.v = self.v.from_named_like(&format!("{prefix}v."), map)?;
        let key = format!("{prefix}t");
        let t = map.get(&key).ok_or_else(|| crate::Error::Config {
            source_name: "checkpoint".into(),
            reason: format!("tensor {key} missing"),
        })?;
        self.t = t.to_vec1::<f64>()?[0] as u64;
        Ok(())
    }
}

/// The constants of one Adam step.
struct Consts {
    scale: Option<f64>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    lr_t: f64,
}

impl Consts {
    /// Step `t` (from 1) of `c`, gradients scaled by `scale`.
    fn of(c: &AdamConfig, t: u64, scale: Option<f64>) -> Consts {
        let bc1 = 1.0 - c.beta1.powi(t as i32);
        let bc2 = 1.0 - c.beta2.powi(t as i32);
        Consts {
            scale,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            // lr_t * m / (sqrt(v) + eps), lr_t = lr * sqrt(bc2) / bc1
            lr_t: c.lr * bc2.sqrt() / bc1,
        }
    }
}

/// One tensor's step as candle ops: returns (theta, m, v).
fn update_composed(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    k: &Consts,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let mut g = g.detach();
    if let Some(s) = k.scale {
        g = (g * s)?;
    }
    let m = ((m * k.beta1)? + (&g * (1.0 - k.beta1))?)?;
    let v = ((v * k.beta2)? + (g.sqr()? * (1.0 - k.beta2))?)?;
    let denom = (v.sqrt()? + k.eps)?;
    let upd = (m.clone() / denom)?;
    let p = (p.detach() - (upd * k.lr_t)?)?;
    Ok((p, m, v))
}

/// One tensor's step in one pass when all four are contiguous CPU tensors
/// of one float dtype (else `None`): the same operations as
/// [`update_composed`], in the same order and precision.
fn update_cpu(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    k: &Consts,
) -> candle_core::Result<Option<(Tensor, Tensor, Tensor)>> {
    fn data(t: &Tensor) -> Option<(impl std::ops::Deref<Target = Storage> + '_, usize, usize)> {
        let (s, l) = t.storage_and_layout();
        let (a, b) = l.contiguous_offsets()?;
        Some((s, a, b))
    }
    let shape = p.shape();
    if g.shape() != shape || m.shape() != shape || v.shape() != shape {
        return Ok(None);
    }
    let (Some(ps), Some(gs), Some(ms), Some(vs)) = (data(p), data(g), data(m), data(v)) else {
        return Ok(None);
    };
    macro_rules! run {
        ($t:ty, $pv:expr, $gv:expr, $mv:expr, $vv:expr) => {{
            let (pn, mn, vn) = update_slices::<$t>(
                &$pv[ps.1..ps.2],
                &$gv[gs.1..gs.2],
                &$mv[ms.1..ms.2],
                &$vv[vs.1..vs.2],
                k,
            );
            let dev = p.device();
            Some((
                Tensor::from_vec(pn, shape, dev)?,
                Tensor::from_vec(mn, shape, dev)?,
                Tensor::from_vec(vn, shape, dev)?,
            ))
        }};
    }
    use CpuStorage::{F32, F64};
    Ok(match (&*ps.0, &*gs.0, &*ms.0, &*vs.0) {
        (
            Storage::Cpu(F32(pv)),
            Storage::Cpu(F32(gv)),
            Storage::Cpu(F32(mv)),
            Storage::Cpu(F32(vv)),
        ) => run!(f32, pv, gv, mv, vv),
        (
            Storage::Cpu(F64(pv)),
            Storage::Cpu(F64(gv)),
            Storage::Cpu(F64(mv)),
            Storage::Cpu(F64(vv)),
        ) => run!(f64, pv, gv, mv, vv),
        _ => None,
    })
}

/// The loop of [`update_cpu`]. Each line is one op of
/// [`update_composed`]; `x * c + 0` is candle's `affine(c, 0)`. Written as
/// zipped slices over preallocated outputs so that it vectorises.
fn update_slices<T: num_traits::Float + candle_core::WithDType>(
    p: &[T],
    g: &[T],
    m: &[T],
    v: &[T],
    k: &Consts,
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let c = |x: f64| T::from_f64(x);
    let (zero, one) = (T::zero(), T::one());
    let (b1, nb1, b2, nb2) = (c(k.beta1), c(1.0 - k.beta1), c(k.beta2), c(1.0 - k.beta2));
    let (eps, lr_t) = (c(k.eps), c(k.lr_t));
    let n = p.len();
    let (mut pn, mut mn, mut vn) = (vec![zero; n], vec![zero; n], vec![zero; n]);
    let scaled;
    let g = match k.scale {
        Some(s) => {
            let s = c(s);
            scaled = g.iter().map(|&x| x * s + zero).collect::<Vec<T>>();
            &scaled[..]
        }
        None => g,
    };
    for ((mo, vo), (&gi, (&mi, &vi))) in mn
        .iter_mut()
        .zip(vn.iter_mut())
        .zip(g.iter().zip(m.iter().zip(v)))
    {
        // m_t = b1 m_{t-1} + (1 - b1) g
        *mo = (mi * b1 + zero) + (gi * nb1 + zero);
        // v_t = b2 v_{t-1} + (1 - b2) g^2
        *vo = (vi * b2 + zero) + ((gi * gi) * nb2 + zero);
    }
    for (po, (&pi, (&mi, &vi))) in pn.iter_mut().zip(p.iter().zip(mn.iter().zip(&vn))) {
        // theta_t = theta_{t-1} - lr_t m_t / (sqrt(v_t) + eps)
        let upd = mi / (vi.sqrt() * one + eps);
        *po = pi - (upd * lr_t + zero);
    }
    (pn, mn, vn)
}

/// Scale gradients so that their global L2 norm is at most `max_norm`.
/// Returns the clipped gradients and the norm before clipping.
pub fn clip_global_norm(grads: &Params, max_norm: f64) -> Result<(Params, f64)> {
    let norm = grads.sum_sq()?.sqrt();
    if norm.is_finite() && norm > max_norm {
        let s = max_norm / norm;
        Ok((grads.map(|g| g * s)?, norm))
    } else {
        Ok((grads.clone(), norm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adam_first_step_moves_by_lr_in_sign_direction() {
        let d = Device::Cpu;
        let p = Params::new(
            vec!["w".into()],
            vec![Tensor::new(&[1f32, -2.0, 3.0], &d).unwrap()],
        );
        let g = Params::new(
            vec!["w".into()],
            vec![Tensor::new(&[0.5f32, -4.0, 0.0], &d).unwrap()],
        );
        let mut adam = Adam::new(AdamConfig::with_lr(0.1), &p).unwrap();
        let q = adam.step(&p, &g).unwrap();
        let v = q.tensors[0].to_vec1::<f32>().unwrap();
        // Bias-corrected first step: delta = lr * g / (|g| + eps) = lr * sign(g).
        assert!(
            (v[0] - 0.9).abs() < 1e-5 && (v[1] + 1.9).abs() < 1e-5 && (v[2] - 3.0).abs() < 1e-6,
            "{v:?}"
        );
    }

    /// The one-pass CPU step and the composed candle ops give the same
    /// bits, in f32 and f64, with and without a gradient scale, over
    /// several steps (moments carried), on a non-contiguous gradient too
    /// (which takes the composed path).
    #[test]
    fn fused_step_equals_the_composed_one() {
        let d = Device::Cpu;
        for dtype in [candle_core::DType::F32, candle_core::DType::F64] {
            for scale in [None, Some(10.0)] {
                let p = Tensor::randn(0f32, 1.0, (7, 5), &d)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let params = Params::new(vec!["w".into()], vec![p]);
                let mut fused = Adam::new(AdamConfig::with_lr(0.01), &params).unwrap();
                let mut composed = fused.clone();
                let (mut pf, mut pc) = (params.clone(), params.clone());
                for step in 0..4 {
                    let g = Tensor::randn(0f32, 1.0, (7, 5), &d)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap();
                    // Tiny gradients make eps matter on one step.
                    let g = if step == 2 { (g * 1e-9).unwrap() } else { g };
                    let grads = Params::new(vec!["w".into()], vec![g]);
                    pf = fused.step_scaled(&pf, &grads, scale).unwrap();
                    // The reference: candle ops on the same inputs.
                    composed.t += 1;
                    let k = Consts::of(&composed.config, composed.t, scale);
                    let (p, m, v) = update_composed(
                        &pc.tensors[0],
                        &grads.tensors[0],
                        &composed.m.tensors[0],
                        &composed.v.tensors[0],
                        &k,
                    )
                    .unwrap();
                    composed.m.tensors[0] = m;
                    composed.v.tensors[0] = v;
                    pc = Params::new(vec!["w".into()], vec![p]);
                    let bits = |t: &Tensor| -> Vec<u64> {
                        t.to_dtype(candle_core::DType::F64)
                            .unwrap()
                            .flatten_all()
                            .unwrap()
                            .to_vec1::<f64>()
                            .unwrap()
                            .iter()
                            .map(|x| x.to_bits())
                            .collect()
                    };
                    assert_eq!(
                        bits(&pf.tensors[0]),
                        bits(&pc.tensors[0]),
                        "{dtype:?} {scale:?} step {step}"
                    );
                    assert_eq!(bits(&fused.m.tensors[0]), bits(&composed.m.tensors[0]));
                    assert_eq!(bits(&fused.v.tensors[0]), bits(&composed.v.tensors[0]));
                }
            }
        }
        // A transposed (non-contiguous) gradient falls back and still steps.
        let p = Params::new(
            vec!["w".into()],
            vec![Tensor::zeros((3, 2), candle_core::DType::F32, &d).unwrap()],
        );
        let g = Tensor::ones((2, 3), candle_core::DType::F32, &d)
            .unwrap()
            .t()
            .unwrap();
        let mut adam = Adam::new(AdamConfig::with_lr(0.1), &p).unwrap();
        let q = adam
            .step(&p, &Params::new(vec!["w".into()], vec![g]))
            .unwrap();
        let v = q.tensors[0]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(v.iter().all(|&x| (x + 0.1).abs() < 1e-6), "{v:?}");
    }
}
