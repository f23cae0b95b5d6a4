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

use candle_core::Tensor;

use crate::error::Result;
use crate::params::Params;

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
        let c = self.config;
        self.t += 1;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        let mut out = Vec::with_capacity(params.len());
        for i in 0..params.len() {
            let g = grads.tensors[i].detach();
            let m = ((&self.m.tensors[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((&self.v.tensors[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            // lr_t * m / (sqrt(v) + eps), lr_t = lr * sqrt(bc2) / bc1
            let denom = (v.sqrt()? + c.eps)?;
            let upd = (m.clone() / denom)?;
            let lr_t = c.lr * bc2.sqrt() / bc1;
            out.push((params.tensors[i].detach() - (upd * lr_t)?)?);
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
}
