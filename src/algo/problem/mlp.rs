//! A multi-layer perceptron on MNIST, Andrychowicz et al. 2016 section
//! 3.2: 784 -> 20 sigmoid -> 10 with softmax cross-entropy on minibatches
//! of 128 drawn with replacement, weights and biases ~ N(0, 0.01^2), as
//! deepmind/learning-to-learn `problems.py` ~141-174 builds it
//! (`snt.nets.MLP(layers + [10], activation, initializers=_nn_initializers)`,
//! `_nn_initializers` ~33-36; `tf.random_uniform([batch_size], 0,
//! num_examples)` indices; `reduce_mean` of the cross-entropy).
//!
//! Per layer l = 1..L with a_0 = x (pixels / 255, `[B, 784]`):
//!
//! ```text
//! z_l = a_{l-1} W_l + b_l          W_l [in, out] (Sonnet's layout), b_l [out]
//! a_l = act(z_l)                   l < L (sigmoid, or ReLU for transfer)
//! f   = 1/B sum_b CE(softmax(z_L)_b, y_b)
//! ```
//!
//! theta is `W_1, b_1, W_2, b_2, ...` flattened in that order. The gradient
//! is written out (no autograd graph: an objective's gradient is a constant
//! for the learned rule), `dz_L = (softmax(z_L) - onehot(y)) / B`,
//! `dW_l = a_{l-1}^T dz_l`, `db_l = sum_b dz_l`,
//! `dz_{l-1} = (dz_l W_l^T) * act'(z_{l-1})`, with the products computed
//! by the fused kernels' gemm.

use serde::{Deserialize, Serialize};

use crate::model::kernels::gemm::{matmul, Mat};

/// The hidden layers' activation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// The logistic sigmoid (the paper's training network) [default].
    #[default]
    Sigmoid,
    /// max(0, z) (the paper's transfer test that breaks the optimizer).
    Relu,
}

/// The MNIST-MLP family, as a benchmark file's `problem:` writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpSpec {
    /// Hidden layer widths [20].
    pub hidden: Vec<usize>,
    /// Hidden activation [sigmoid].
    pub activation: Activation,
    /// Images per minibatch, drawn with replacement [128].
    pub batch: usize,
    /// Standard deviation of every weight and bias at theta_0 [0.01].
    pub init_std: f64,
}

impl Default for MlpSpec {
    fn default() -> Self {
        MlpSpec {
            hidden: vec![20],
            activation: Activation::Sigmoid,
            batch: 128,
            init_std: 0.01,
        }
    }
}

/// Input features and classes (MNIST).
pub const INPUTS: usize = 784;
pub const CLASSES: usize = 10;

impl MlpSpec {
    /// Layer widths, input to output: `[784, hidden.., 10]`.
    pub fn widths(&self) -> Vec<usize> {
        let mut w = vec![INPUTS];
        w.extend(&self.hidden);
        w.push(CLASSES);
        w
    }

    /// Coordinates n: every weight and bias.
    pub fn dim(&self) -> usize {
        self.widths().windows(2).map(|p| p[0] * p[1] + p[1]).sum()
    }

    /// Named groups of coordinates, `w1`, `b1`, `w2`, ...
    pub fn groups(&self) -> Vec<(String, std::ops::Range<usize>)> {
        let mut out = vec![];
        let mut off = 0;
        for (l, p) in self.widths().windows(2).enumerate() {
            out.push((format!("w{}", l + 1), off..off + p[0] * p[1]));
            off += p[0] * p[1];
            out.push((format!("b{}", l + 1), off..off + p[1]));
            off += p[1];
        }
        out
    }

    /// Loss and gradient of the minibatch `x` (`[B, 784]`, row-major) with
    /// labels `y` at `theta`.
    pub fn loss_and_grad<T: num_traits::Float + 'static>(
        &self,
        theta: &[T],
        x: &[T],
        y: &[u8],
    ) -> (f64, Vec<T>) {
        let widths = self.widths();
        let b = y.len();
        let layers = widths.len() - 1;
        // Offsets of W_l and b_l in theta.
        let mut offs = Vec::with_capacity(layers);
        let mut off = 0;
        for p in widths.windows(2) {
            offs.push((off, off + p[0] * p[1]));
            off += p[0] * p[1] + p[1];
        }
        assert_eq!(
            theta.len(),
            off,
            "theta has {} coordinates, the MLP {off}",
            theta.len()
        );
        // Forward: keep every a_l (a_0 = x) and the activations' outputs.
        let mut acts: Vec<Vec<T>> = vec![x.to_vec()];
        for l in 0..layers {
            let (i, o) = (widths[l], widths[l + 1]);
            let (wo, bo) = offs[l];
            let mut z = vec![T::zero(); b * o];
            for row in z.chunks_mut(o) {
                row.copy_from_slice(&theta[bo..bo + o]);
            }
            matmul(
                b,
                o,
                i,
                &mut z,
                true,
                Mat {
                    data: &acts[l],
                    rs: i,
                    cs: 1,
                },
                Mat {
                    data: &theta[wo..wo + i * o],
                    rs: o,
                    cs: 1,
                },
                false,
            );
            if l + 1 < layers {
                for v in z.iter_mut() {
                    *v = match self.activation {
                        Activation::Sigmoid => T::one() / (T::one() + (-*v).exp()),
                        Activation::Relu => v.max(T::zero()),
                    };
                }
            }
            acts.push(z);
        }
        // Softmax cross-entropy, and dz_L = (softmax - onehot) / B.
        let logits = acts.pop().expect("at least one layer");
        let mut dz = vec![T::zero(); b * CLASSES];
        let mut loss = 0.0;
        let inv_b = T::one() / T::from(b).expect("batch size");
        for (r, (row, d)) in logits
            .chunks(CLASSES)
            .zip(dz.chunks_mut(CLASSES))
            .enumerate()
        {
            let max = row.iter().fold(T::neg_infinity(), |m, v| m.max(*v));
            let sum: T = row.iter().fold(T::zero(), |s, v| s + (*v - max).exp());
            let label = y[r] as usize;
            loss += (sum.ln() + max - row[label]).to_f64().expect("finite");
            for (k, (dv, v)) in d.iter_mut().zip(row).enumerate() {
                let p = (*v - max).exp() / sum;
                *dv = (p - if k == label { T::one() } else { T::zero() }) * inv_b;
            }
        }
        // Backward.
        let mut grad = vec![T::zero(); theta.len()];
        for l in (0..layers).rev() {
            let (i, o) = (widths[l], widths[l + 1]);
            let (wo, bo) = offs[l];
            let a = &acts[l];
            // dW_l = a_{l-1}^T dz_l ([i, o]); db_l = column sums of dz_l.
            matmul(
                i,
                o,
                b,
                &mut grad[wo..wo + i * o],
                false,
                Mat {
                    data: a,
                    rs: 1,
                    cs: i,
                },
                Mat {
                    data: &dz,
                    rs: o,
                    cs: 1,
                },
                false,
            );
            for row in dz.chunks(o) {
                for (g, v) in grad[bo..bo + o].iter_mut().zip(row) {
                    *g = *g + *v;
                }
            }
            if l == 0 {
                break;
            }
            // dz_{l-1} = (dz_l W_l^T) * act'(z_{l-1}), from a_{l-1}.
            let mut da = vec![T::zero(); b * i];
            matmul(
                b,
                i,
                o,
                &mut da,
                false,
                Mat {
                    data: &dz,
                    rs: o,
                    cs: 1,
                },
                Mat {
                    data: &theta[wo..wo + i * o],
                    rs: 1,
                    cs: o,
                },
                false,
            );
            for (d, av) in da.iter_mut().zip(a) {
                *d = *d
                    * match self.activation {
                        Activation::Sigmoid => *av * (T::one() - *av),
                        Activation::Relu => {
                            if *av > T::zero() {
                                T::one()
                            } else {
                                T::zero()
                            }
                        }
                    };
            }
            dz = da;
        }
        (loss / b as f64, grad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn check(activation: Activation, hidden: Vec<usize>) {
        let spec = MlpSpec {
            hidden,
            activation,
            batch: 5,
            init_std: 0.01,
        };
        let mut rng = Rng::new(3);
        let theta: Vec<f64> = (0..spec.dim()).map(|_| 0.3 * rng.normal()).collect();
        let x: Vec<f64> = (0..5 * INPUTS).map(|_| rng.uniform()).collect();
        let y: Vec<u8> = vec![0, 3, 9, 3, 7];
        let (_, g) = spec.loss_and_grad(&theta, &x, &y);
        let mut worst: f64 = 0.0;
        // A spread of coordinates in every layer.
        for k in (0..theta.len())
            .step_by(97)
            .chain(theta.len() - 12..theta.len())
        {
            let h = 1e-6;
            let (mut a, mut b) = (theta.clone(), theta.clone());
            a[k] += h;
            b[k] -= h;
            let fd =
                (spec.loss_and_grad(&a, &x, &y).0 - spec.loss_and_grad(&b, &x, &y).0) / (2.0 * h);
            worst = worst.max((fd - g[k]).abs() / (1e-4 + g[k].abs()));
        }
        assert!(worst < 1e-4, "{activation:?}: worst relative error {worst}");
    }

    #[test]
    fn the_gradient_matches_central_differences() {
        check(Activation::Sigmoid, vec![20]);
        check(Activation::Relu, vec![7, 5]);
    }

    #[test]
    fn the_published_network_has_15910_coordinates() {
        let s = MlpSpec::default();
        assert_eq!(s.dim(), 784 * 20 + 20 + 20 * 10 + 10);
        assert_eq!(s.dim(), 15910);
        let g = s.groups();
        assert_eq!(g.last().unwrap().1.end, s.dim());
        assert_eq!(g.len(), 4);
    }

    #[test]
    fn at_zero_the_loss_is_log_10() {
        let s = MlpSpec::default();
        let (loss, _) = s.loss_and_grad(&vec![0f32; s.dim()], &vec![0.5f32; 2 * INPUTS], &[1, 2]);
        assert!((loss - 10f64.ln()).abs() < 1e-6, "{loss}");
    }
}
