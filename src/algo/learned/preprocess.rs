//! Gradient and loss preprocessing of Andrychowicz et al., "Learning to
//! learn by gradient descent by gradient descent" (NIPS 2016, appendix A),
//! as Ravi & Larochelle use it (`model/lstm/lstm-helper.lua:6-57` of
//! twitter-research/meta-learning-lstm).
//!
//! Gradients and losses span many orders of magnitude; a coordinate-wise
//! network sees each value x as two features of moderate size:
//!
//! ```text
//! preprocess(x) = (log|x| / p, sign x)   if |x| > e^-p
//!                 (-1,         e^p x)    otherwise
//! ```
//!
//! with p > 0 (10 in both papers). The comparison is strict, as the
//! reference's `torch.gt`. [`Inputs`] says which values a rule reads:
//! the gradient alone (Andrychowicz et al.) or the gradient and the loss
//! (Ravi & Larochelle, the loss pair broadcast to every coordinate).

use candle_core::{DType, Tensor};

use crate::error::Result;

/// Andrychowicz et al.'s preprocessing of one value with constant `p`:
/// `(log|x| / p, sign x)` if `|x| > e^-p`, else `(-1, e^p x)`
/// (`lstm-helper.lua:10-42`: strict `torch.gt`).
pub fn preprocess(x: f64, p: f64) -> (f64, f64) {
    if x.abs() > (-p).exp() {
        (x.abs().ln() / p, x.signum())
    } else {
        (-1.0, p.exp() * x)
    }
}

/// The log-sign preprocessing with its constant p.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    /// The constant p (> 0) [10 in both papers].
    pub p: f64,
}

impl Preprocess {
    /// [`preprocess`] of one value.
    pub fn scalar(&self, x: f64) -> (f64, f64) {
        preprocess(x, self.p)
    }

    /// [`preprocess`] of every coordinate of `x`, as two float64 rows
    /// `[2, n]` (log-magnitude, then sign), computed where `x` lives (no
    /// copy to the host) with the same operations as the scalar formula,
    /// so the CPU gives its exact bits.
    pub fn rows(&self, x: &Tensor) -> Result<Tensor> {
        let p = self.p;
        let g = x.flatten_all()?.to_dtype(DType::F64)?;
        let dev = g.device();
        let abs = g.abs()?;
        // |x| > e^-p: (log|x| / p, sign x); else (-1, e^p x).
        let big = abs.gt((-p).exp())?;
        let a = big.where_cond(
            &abs.log()?.broadcast_div(&Tensor::new(p, dev)?)?,
            &g.ones_like()?.neg()?,
        )?;
        let b = big.where_cond(&g.sign()?, &g.broadcast_mul(&Tensor::new(p.exp(), dev)?)?)?;
        Ok(Tensor::cat(&[&a.unsqueeze(0)?, &b.unsqueeze(0)?], 0)?)
    }

    /// [`preprocess`] of a scalar (a loss) broadcast to `n` coordinates,
    /// `[2, n]` float64.
    pub fn broadcast(&self, x: f64, n: usize, dev: &candle_core::Device) -> Result<Tensor> {
        let (a, b) = self.scalar(x);
        Ok(Tensor::new(&[a, b], dev)?
            .reshape((2, 1))?
            .broadcast_as((2, n))?)
    }
}

/// Which values a coordinate-wise rule reads at each step, each
/// preprocessed into two features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inputs {
    /// The gradient: 2 features per coordinate (Andrychowicz et al.).
    Gradient,
    /// The gradient, then the loss (the same for every coordinate): 4
    /// features (Ravi & Larochelle, whose reference concatenates (loss,
    /// grad); the order is a fixed permutation of the first layer's input
    /// columns, whose initialisation is symmetric).
    GradientAndLoss,
}

impl Inputs {
    /// Features per coordinate.
    pub fn count(self) -> usize {
        match self {
            Inputs::Gradient => 2,
            Inputs::GradientAndLoss => 4,
        }
    }

    /// The features `[count, n]` for a gradient (`n` coordinates) and a
    /// loss, in the gradient's dtype: the preprocessed gradient rows, then
    /// (if read) the preprocessed loss broadcast to every coordinate.
    pub fn features(self, pre: &Preprocess, grad: &Tensor, loss: f64) -> Result<Tensor> {
        let g = pre.rows(grad)?;
        let x = match self {
            Inputs::Gradient => g,
            Inputs::GradientAndLoss => {
                let l = pre.broadcast(loss, g.dim(1)?, g.device())?;
                Tensor::cat(&[&g, &l], 0)?
            }
        };
        Ok(x.to_dtype(grad.dtype())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn features_are_the_scalar_formula_coordinate_by_coordinate() {
        let pre = Preprocess { p: 10.0 };
        let b = (-10f64).exp();
        let g = [0.0, b, -b, 0.5 * b, 1.5 * b, -0.25, 3.0];
        let grad = Tensor::new(&g[..], &Device::Cpu)
            .unwrap()
            .reshape((1, g.len()))
            .unwrap();
        let only = Inputs::Gradient.features(&pre, &grad, 0.7).unwrap();
        let both = Inputs::GradientAndLoss.features(&pre, &grad, 0.7).unwrap();
        assert_eq!(only.dims(), [Inputs::Gradient.count(), g.len()]);
        assert_eq!(both.dims(), [Inputs::GradientAndLoss.count(), g.len()]);
        let (only, both) = (
            only.to_vec2::<f64>().unwrap(),
            both.to_vec2::<f64>().unwrap(),
        );
        let (la, lb) = preprocess(0.7, 10.0);
        for (k, &x) in g.iter().enumerate() {
            let (a, s) = preprocess(x, 10.0);
            assert_eq!((only[0][k], only[1][k]), (a, s), "coordinate {k}");
            assert_eq!((both[0][k], both[1][k]), (a, s), "coordinate {k}");
            assert_eq!((both[2][k], both[3][k]), (la, lb), "coordinate {k}");
        }
    }
}
