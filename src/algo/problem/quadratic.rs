//! Random quadratics, Andrychowicz et al. 2016 section 3.1: each problem
//! holds m functions f_j(x_j) = ||W_j x_j - y_j||^2 over its own
//! coordinates x_j in R^d (d = 10, m = 128 in the paper), and its loss is
//! their mean,
//!
//! ```text
//! f(theta) = 1/m sum_j ||W_j x_j - y_j||^2,      theta = (x_1, ..., x_m)
//! grad_{x_j} f = 2/m W_j^T (W_j x_j - y_j)
//! ```
//!
//! as deepmind/learning-to-learn `problems.py` ~71-99 builds it (`x`
//! `[batch_size, num_dims]`, `reduce_mean(reduce_sum((Wx - y)^2, 1))`).
//! The mean scales every coordinate's gradient by 1/m: kept, since tuned
//! learning rates and a learned rule's output scale are relative to it.
//!
//! W and y are drawn per problem: Gaussian N(0, 1) in the paper (the
//! default, [`Draw::Gaussian`]), uniform on [0, 1) in the official code
//! (`random_uniform_initializer()`, [`Draw::Uniform`]); x_0 ~ N(0, 0.01^2)
//! (`random_normal_initializer(stddev=0.01)`) in both.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// How a quadratic's W and y are drawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Draw {
    /// N(0, 1) entries (the paper, section 3.1) [default].
    #[default]
    Gaussian,
    /// U[0, 1) entries (the official code, `problems.py` ~85-94).
    Uniform,
}

/// The quadratic family, as a benchmark file's `problem:` writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuadraticSpec {
    /// Coordinates per function, d [10].
    pub dims: usize,
    /// Functions per problem, m [128].
    pub functions: usize,
    /// Distribution of W and y [gaussian].
    pub draw: Draw,
    /// Standard deviation of x_0's entries [0.01].
    pub init_std: f64,
}

impl Default for QuadraticSpec {
    fn default() -> Self {
        QuadraticSpec {
            dims: 10,
            functions: 128,
            draw: Draw::Gaussian,
            init_std: 0.01,
        }
    }
}

/// One drawn quadratic: its W (`m` row-major d x d matrices) and y.
#[derive(Debug, Clone)]
pub struct Quadratic {
    pub dims: usize,
    pub functions: usize,
    pub w: Vec<f64>,
    pub y: Vec<f64>,
}

impl QuadraticSpec {
    /// Draw W, y and then x_0 from `rng`, in that order.
    pub fn draw(&self, rng: &mut Rng) -> (Quadratic, Vec<f64>) {
        let (d, m) = (self.dims, self.functions);
        let entry = |rng: &mut Rng| match self.draw {
            Draw::Gaussian => rng.normal(),
            Draw::Uniform => rng.uniform(),
        };
        let w: Vec<f64> = (0..m * d * d).map(|_| entry(rng)).collect();
        let y: Vec<f64> = (0..m * d).map(|_| entry(rng)).collect();
        let x0: Vec<f64> = (0..m * d).map(|_| self.init_std * rng.normal()).collect();
        (
            Quadratic {
                dims: d,
                functions: m,
                w,
                y,
            },
            x0,
        )
    }
}

impl Quadratic {
    /// Coordinates n = m d.
    pub fn dim(&self) -> usize {
        self.dims * self.functions
    }

    /// f(theta) and its gradient, in float64.
    pub fn loss_and_grad(&self, theta: &[f64]) -> (f64, Vec<f64>) {
        let (d, m) = (self.dims, self.functions);
        let mut grad = vec![0.0; m * d];
        let mut total = 0.0;
        let mut r = vec![0.0; d];
        for j in 0..m {
            let w = &self.w[j * d * d..(j + 1) * d * d];
            let x = &theta[j * d..(j + 1) * d];
            // r = W_j x_j - y_j
            for (a, ra) in r.iter_mut().enumerate() {
                let row = &w[a * d..(a + 1) * d];
                *ra = row.iter().zip(x).map(|(w, x)| w * x).sum::<f64>() - self.y[j * d + a];
            }
            total += r.iter().map(|v| v * v).sum::<f64>();
            // grad_{x_j} = 2/m W_j^T r
            let g = &mut grad[j * d..(j + 1) * d];
            for (a, ra) in r.iter().enumerate() {
                let row = &w[a * d..(a + 1) * d];
                for (gb, wab) in g.iter_mut().zip(row) {
                    *gb += 2.0 / m as f64 * wab * ra;
                }
            }
        }
        (total / m as f64, grad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gradient_matches_central_differences() {
        let spec = QuadraticSpec {
            dims: 3,
            functions: 4,
            ..Default::default()
        };
        let (q, x0) = spec.draw(&mut Rng::new(7));
        let x: Vec<f64> = x0
            .iter()
            .enumerate()
            .map(|(i, v)| v + 0.1 * i as f64)
            .collect();
        let (_, g) = q.loss_and_grad(&x);
        for k in 0..x.len() {
            let h = 1e-6;
            let (mut a, mut b) = (x.clone(), x.clone());
            a[k] += h;
            b[k] -= h;
            let fd = (q.loss_and_grad(&a).0 - q.loss_and_grad(&b).0) / (2.0 * h);
            assert!(
                (fd - g[k]).abs() < 1e-6 * (1.0 + g[k].abs()),
                "{k}: {fd} vs {}",
                g[k]
            );
        }
    }

    #[test]
    fn the_loss_is_the_mean_over_functions() {
        // One function with W = I, y = 1: f(0) = d; two copies: still d.
        let one = Quadratic {
            dims: 2,
            functions: 1,
            w: vec![1.0, 0.0, 0.0, 1.0],
            y: vec![1.0, 1.0],
        };
        let two = Quadratic {
            functions: 2,
            w: [one.w.clone(), one.w.clone()].concat(),
            y: [one.y.clone(), one.y.clone()].concat(),
            ..one.clone()
        };
        assert_eq!(one.loss_and_grad(&[0.0; 2]).0, 2.0);
        assert_eq!(two.loss_and_grad(&[0.0; 4]).0, 2.0);
        // The mean halves each coordinate's gradient.
        assert_eq!(one.loss_and_grad(&[0.0; 2]).1, vec![-2.0, -2.0]);
        assert_eq!(two.loss_and_grad(&[0.0; 4]).1, vec![-1.0; 4]);
    }

    #[test]
    fn uniform_draws_lie_in_the_unit_interval() {
        let spec = QuadraticSpec {
            draw: Draw::Uniform,
            ..Default::default()
        };
        let (q, _) = spec.draw(&mut Rng::new(1));
        assert!(q.w.iter().chain(&q.y).all(|v| (0.0..1.0).contains(v)));
        let (g, _) = QuadraticSpec::default().draw(&mut Rng::new(1));
        assert!(g.w.iter().any(|v| *v < 0.0));
    }
}
