//! Hand-designed optimizers: the baselines a learned optimizer is compared
//! against, as per-coordinate update rules on flat `f64` slices.
//!
//! Andrychowicz et al. (2016, "Learning to learn by gradient descent by
//! gradient descent") compare their LSTM optimizer with SGD, RMSprop, Adam
//! and Nesterov's accelerated gradient, each at its best learning rate;
//! heavy-ball momentum completes the set. These rules know nothing of
//! tensors or autograd: they run on optimisation problems whose gradient is
//! given, one coordinate at a time.
//!
//! Each [`HandConfig::step`] computes what `torch.optim` computes, bit for
//! bit: the single-tensor paths (`foreach=False`, the CPU default) of torch
//! 2.15.0's `torch/optim/sgd.py`, `rmsprop.py` and `adam.py`, in the same
//! order of floating-point operations as the ATen kernels they call
//! (`aten/src/ATen/native/ufunc/add.h`: `add(self, other, alpha)` is
//! `self + alpha * other`; `aten/src/ATen/native/cpu/PointwiseOpsKernel.cpp`:
//! `addcmul` is `self + value * t1 * t2`, `addcdiv` is
//! `self + value * t1 / t2`, left to right; `aten/src/ATen/native/Lerp.h`:
//! `lerp(a, b, w)` is `a + w * (b - a)` for `|w| < 0.5`, else
//! `b - (b - a) * (1 - w)`). Each `x + y * z` there is one fused
//! multiply-add with a single rounding: explicitly in the vectorised add
//! (`vec::fmadd`), and by the compiler's contraction in the scalar loops of
//! torch's x86-64 build. The rules here therefore use `f64::mul_add` at
//! exactly those places; a product followed by a division or a square root
//! is not fused. Against the fixture that `tests/hand_optim.rs` reads
//! (`benchmarks/reference/hand_fixture.py`, written by torch itself on
//! x86-64) all 840 values are bit-identical; unfused arithmetic matched 698
//! of them, the rest within 3e-14 relative. The test allows 1e-12 relative,
//! for torch builds that do not contract.
//!
//! | kind | state | update at step t = 1, 2, … | torch 2.15.0 source |
//! | --- | --- | --- | --- |
//! | `sgd` | none | θ ← θ − η g | `sgd.py` 379 |
//! | `momentum` | b | b ← g at t = 1, else b ← μ b + g; θ ← θ − η b | `sgd.py` 357–369, 379 |
//! | `nesterov` | b | b as for momentum; θ ← θ − η (g + μ b) | `sgd.py` 357–367, 379 |
//! | `rmsprop` | v = 0 | v ← α v + (1 − α) g²; θ ← θ − η g / (√v + ε) | `rmsprop.py` 317, 326–331, 340 |
//! | `adam` | m = 0, v = 0 | m ← m + (1 − β₁)(g − m); v ← β₂ v + (1 − β₂) g²; c₁ = 1 − β₁ᵗ, c₂ = 1 − β₂ᵗ; θ ← θ − (η / c₁) m / (√v / √c₂ + ε) | `adam.py` 415, 457, 476, 529–536, 545, 547 |
//!
//! Defaults are torch.optim's: learning rate 1e-3 for SGD, momentum,
//! Nesterov and Adam, 1e-2 for RMSprop; μ = 0.9 (torch's SGD defaults to no
//! momentum; 0.9 is the usual choice and what `momentum`/`nesterov` mean
//! here), RMSprop α = 0.99, ε = 1e-8, Adam (β₁, β₂) = (0.9, 0.999),
//! ε = 1e-8. Weight decay, dampening, centring, AMSGrad and `maximize` stay
//! at torch's off.
//!
//! Torch's Nesterov is the Sutskever et al. (2013) reformulation: the step
//! uses the gradient plus the momentum of the updated buffer, not a gradient
//! taken at a look-ahead point. Its Adam adds ε to √v / √c₂ (not to √v as in
//! the "epsilon-hat" form of [`crate::model::optim`]).
//!
//! Learning rates are tuned on [`lr_grid`]: half-decades from 1e-4 to 3
//! (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1, 3).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Which hand-designed rule. Serialised in kebab-case: `sgd`, `momentum`,
/// `nesterov`, `rmsprop`, `adam`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HandKind {
    /// Plain gradient descent: `torch.optim.SGD(lr)`.
    Sgd,
    /// Heavy-ball momentum: `torch.optim.SGD(lr, momentum)`.
    Momentum,
    /// Nesterov's accelerated gradient:
    /// `torch.optim.SGD(lr, momentum, nesterov=True)`.
    Nesterov,
    /// `torch.optim.RMSprop(lr, alpha, eps)`.
    #[serde(rename = "rmsprop")]
    RmsProp,
    /// `torch.optim.Adam(lr, betas, eps)`.
    Adam,
}

impl HandKind {
    /// Every kind, in the order of the module's table.
    pub const ALL: [HandKind; 5] = [
        HandKind::Sgd,
        HandKind::Momentum,
        HandKind::Nesterov,
        HandKind::RmsProp,
        HandKind::Adam,
    ];

    /// The serialised name (`sgd`, `momentum`, `nesterov`, `rmsprop`, `adam`).
    pub fn name(self) -> &'static str {
        match self {
            HandKind::Sgd => "sgd",
            HandKind::Momentum => "momentum",
            HandKind::Nesterov => "nesterov",
            HandKind::RmsProp => "rmsprop",
            HandKind::Adam => "adam",
        }
    }

    /// torch.optim's default learning rate for this kind: 1e-3 for
    /// `torch.optim.SGD` (`sgd.py` 33) and `torch.optim.Adam` (`adam.py` 39),
    /// 1e-2 for `torch.optim.RMSprop` (`rmsprop.py` 35).
    pub fn default_lr(self) -> f64 {
        match self {
            HandKind::RmsProp => 1e-2,
            HandKind::Sgd | HandKind::Momentum | HandKind::Nesterov | HandKind::Adam => 1e-3,
        }
    }
}

impl fmt::Display for HandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A hand-designed rule and its hyperparameters. A kind reads only its own
/// fields (see the module table); the others keep their defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HandConfig {
    /// Which rule.
    pub kind: HandKind,
    /// Learning rate η.
    pub lr: f64,
    /// Momentum μ of `momentum` and `nesterov` (default 0.9).
    pub momentum: f64,
    /// RMSprop's smoothing constant α (default 0.99).
    pub alpha: f64,
    /// Adam's β₁ (default 0.9).
    pub beta1: f64,
    /// Adam's β₂ (default 0.999).
    pub beta2: f64,
    /// ε of RMSprop and Adam (default 1e-8).
    pub eps: f64,
}

impl HandConfig {
    /// torch.optim's defaults for `kind`, its default learning rate included
    /// (`momentum` and `nesterov` with μ = 0.9).
    pub fn new(kind: HandKind) -> Self {
        HandConfig {
            kind,
            lr: kind.default_lr(),
            momentum: 0.9,
            alpha: 0.99,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// The same configuration with learning rate `lr`.
    pub fn with_lr(self, lr: f64) -> Self {
        HandConfig { lr, ..self }
    }

    /// The zero state for `n` coordinates: no step taken, buffers only where
    /// the kind keeps them.
    pub fn start(&self, n: usize) -> HandState {
        let (first, second) = match self.kind {
            HandKind::Sgd => (0, 0),
            // torch creates the momentum buffer at the first step; it is
            // allocated here and overwritten then.
            HandKind::Momentum | HandKind::Nesterov => (n, 0),
            HandKind::RmsProp => (0, n),
            HandKind::Adam => (n, n),
        };
        HandState {
            len: n,
            steps: 0,
            first: vec![0.0; first],
            second: vec![0.0; second],
        }
    }

    /// One step: updates `theta` in place from `grad` and advances `state`.
    ///
    /// # Panics
    ///
    /// If `theta`, `grad` and `state` do not have the same length.
    pub fn step(&self, state: &mut HandState, theta: &mut [f64], grad: &[f64]) {
        assert!(
            theta.len() == state.len && grad.len() == state.len,
            "hand optimizer {}: theta has {} coordinates, grad {}, state {}",
            self.kind,
            theta.len(),
            grad.len(),
            state.len
        );
        let first_step = state.steps == 0;
        state.steps += 1;
        let lr = self.lr;
        match self.kind {
            // sgd.py 379: `param.add_(grad, alpha=-lr)`.
            HandKind::Sgd => {
                for (p, &g) in theta.iter_mut().zip(grad) {
                    *p = (-lr).mul_add(g, *p);
                }
            }
            // sgd.py 357-369: the buffer is a copy of the gradient at the
            // first step (360-362), then `buf.mul_(momentum).add_(grad)`
            // (364, dampening 0); the step uses `buf` (369), or for Nesterov
            // `grad.add(buf, alpha=momentum)` (367); 379 as for SGD.
            HandKind::Momentum | HandKind::Nesterov => {
                let mu = self.momentum;
                let nesterov = self.kind == HandKind::Nesterov;
                for ((p, &g), b) in theta.iter_mut().zip(grad).zip(&mut state.first) {
                    // `add_(grad)` with alpha 1: the product by 1 is exact.
                    *b = if first_step { g } else { *b * mu + g };
                    let d = if nesterov { mu.mul_add(*b, g) } else { *b };
                    *p = (-lr).mul_add(d, *p);
                }
            }
            // rmsprop.py 317: `square_avg.mul_(alpha).addcmul_(grad, grad,
            // value=1 - alpha)`; 326-331: `avg = square_avg.sqrt().add_(eps)`;
            // 340: `param.addcdiv_(grad, avg, value=-lr)`.
            HandKind::RmsProp => {
                let (alpha, c) = (self.alpha, 1.0 - self.alpha);
                for ((p, &g), v) in theta.iter_mut().zip(grad).zip(&mut state.second) {
                    *v = (c * g).mul_add(g, *v * alpha);
                    let avg = v.sqrt() + self.eps;
                    *p += -lr * g / avg;
                }
            }
            // adam.py 415: `step_t += 1`; 457: `exp_avg.lerp_(grad,
            // 1 - beta1)`; 476: `exp_avg_sq.mul_(beta2).addcmul_(grad, grad,
            // value=1 - beta2)`; 529-536: `bias_correction1 = 1 -
            // beta1**step`, `bias_correction2 = 1 - beta2**step`, `step_size
            // = lr / bias_correction1`, `bias_correction2_sqrt =
            // bias_correction2**0.5`; 545: `denom = (exp_avg_sq.sqrt() /
            // bias_correction2_sqrt).add_(eps)`; 547:
            // `param.addcdiv_(exp_avg, denom, value=-step_size)`.
            HandKind::Adam => {
                let (b1, b2) = (self.beta1, self.beta2);
                // Python's float `**` is C's pow, as is f64::powf.
                let t = state.steps as f64;
                let bias_correction1 = 1.0 - b1.powf(t);
                let bias_correction2 = 1.0 - b2.powf(t);
                let step_size = lr / bias_correction1;
                let bias_correction2_sqrt = bias_correction2.powf(0.5);
                let (w, c) = (1.0 - b1, 1.0 - b2);
                let iter = theta
                    .iter_mut()
                    .zip(grad)
                    .zip(state.first.iter_mut().zip(&mut state.second));
                for ((p, &g), (m, v)) in iter {
                    *m = lerp(*m, g, w);
                    *v = (c * g).mul_add(g, *v * b2);
                    let denom = v.sqrt() / bias_correction2_sqrt + self.eps;
                    *p += -step_size * *m / denom;
                }
            }
        }
    }
}

impl Default for HandConfig {
    /// Adam with `torch.optim.Adam()`'s defaults (lr 1e-3).
    fn default() -> Self {
        HandConfig::new(HandKind::Adam)
    }
}

/// ATen's `lerp` (`aten/src/ATen/native/Lerp.h`): `a + w (b - a)` for small
/// weights, `b - (b - a)(1 - w)` otherwise, for accuracy near either end,
/// each a fused multiply-add as compiled. The fixture covers the first
/// branch only (Adam's `1 - beta1` is below 0.5 unless `beta1 <= 0.5`).
fn lerp(a: f64, b: f64, w: f64) -> f64 {
    if w.abs() < 0.5 {
        w.mul_add(b - a, a)
    } else {
        (-(b - a)).mul_add(1.0 - w, b)
    }
}

/// A hand-designed rule's state over `len` coordinates: the steps taken and
/// the per-coordinate buffers (empty where the kind keeps none).
#[derive(Debug, Clone, PartialEq)]
pub struct HandState {
    len: usize,
    steps: u64,
    first: Vec<f64>,
    second: Vec<f64>,
}

impl HandState {
    /// The number of coordinates.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the state has no coordinates.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The first-order buffer: the momentum buffer b (`momentum`,
    /// `nesterov`) or Adam's m; empty for `sgd` and `rmsprop`.
    pub fn first(&self) -> &[f64] {
        &self.first
    }

    /// The second-moment buffer v (`rmsprop`, `adam`); empty otherwise.
    pub fn second(&self) -> &[f64] {
        &self.second
    }
}

/// The learning rates a hand-designed rule is tuned over: half-decades from
/// 1e-4 to 3, i.e. 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1, 3
/// (ascending, as literals, so each is the nearest `f64` to its decimal).
pub fn lr_grid() -> Vec<f64> {
    vec![1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serde_names() {
        for kind in HandKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.name()));
            let back: HandKind = serde_json::from_str(&json).unwrap();
            assert_eq!(back, kind);
        }
        assert!(serde_json::from_str::<HandKind>("\"rms-prop\"").is_err());
    }

    #[test]
    fn sgd_is_one_gradient_step() {
        let config = HandConfig::new(HandKind::Sgd).with_lr(0.5);
        let mut state = config.start(2);
        let mut theta = [1.0, -2.0];
        config.step(&mut state, &mut theta, &[2.0, 4.0]);
        assert_eq!(theta, [0.0, -4.0]);
        assert_eq!(state.steps(), 1);
        assert!(state.first().is_empty() && state.second().is_empty());
    }

    #[test]
    fn adam_first_step_moves_each_coordinate_by_about_lr() {
        // At t = 1, m / c1 = g and sqrt(v / c2) = |g|: the step is
        // lr * sign(g) up to eps, whatever the gradient's scale.
        let config = HandConfig::new(HandKind::Adam).with_lr(0.1);
        let mut state = config.start(3);
        let mut theta = [0.0; 3];
        config.step(&mut state, &mut theta, &[1e-3, -5.0, 1e3]);
        for (p, s) in theta.iter().zip([-1.0, 1.0, -1.0]) {
            assert!((p - 0.1 * s).abs() < 1e-5 * 0.1, "{theta:?}");
        }
    }

    #[test]
    #[should_panic(expected = "theta has 3 coordinates")]
    fn lengths_must_agree() {
        let config = HandConfig::new(HandKind::RmsProp);
        let mut state = config.start(2);
        config.step(&mut state, &mut [0.0; 3], &[0.0; 3]);
    }
}
