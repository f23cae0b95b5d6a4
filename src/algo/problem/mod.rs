//! Optimisation problems (task kind `optimisation`): a family of functions
//! to minimise from a drawn starting point, the objectives of Andrychowicz
//! et al. 2016 ("Learning to learn by gradient descent by gradient
//! descent"). A benchmark file names the family under `problem:`
//! ([`ProblemSpec`]); problem `i` of a split under a seed is a pure
//! function of the three ([`ProblemSpec::instance`]), so every optimizer
//! meets the same fixed evaluation problems and is compared pair by pair.
//!
//! - [`quadratic`]: random quadratics `1/m sum_j ||W_j x_j - y_j||^2`;
//! - [`mlp`]: an MLP on MNIST minibatches (the data from
//!   [`crate::data::mnist`]).
//!
//! An instance is an [`Objective`] (loss and gradient at given flat
//! parameters, both constants), so every learned rule of
//! [`crate::algo::learned`] and every hand-designed rule of
//! [`crate::model::hand`] runs on it unchanged.
//!
//! Splits: training problems (meta-training, and the learning-rate grid
//! of the hand-designed rules) are drawn under the run seed; validation
//! and test problems under the benchmark's problem seed. For the MNIST
//! MLP, training and validation problems draw their minibatches from the
//! training images and test problems from the test images (the official
//! code's `mode="train"` / `mode="test"`, `util.py` ~118-121).

pub mod mlp;
pub mod quadratic;

use std::ops::Range;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::algo::learned::Objective;
use crate::data::mnist::{Digits, Mnist};
use crate::data::Split;
use crate::error::{Error, Result};
use crate::rng::Rng;

pub use mlp::{Activation, MlpSpec};
pub use quadratic::{Draw, QuadraticSpec};

/// A problem family, as a benchmark file's `problem:` block writes it
/// (`kind:` picks the family; the other fields are the family's, every one
/// with its published default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ProblemSpec {
    /// Random quadratics ([`quadratic`]).
    Quadratic(QuadraticSpec),
    /// An MLP on MNIST ([`mlp`]).
    MnistMlp(MlpSpec),
}

/// The data a problem family needs, opened once per run.
pub enum ProblemData {
    None,
    Mnist(Mnist),
}

impl ProblemSpec {
    /// The family's name (`quadratic`, `mnist-mlp`).
    pub fn name(&self) -> &'static str {
        match self {
            ProblemSpec::Quadratic(_) => "quadratic",
            ProblemSpec::MnistMlp(_) => "mnist-mlp",
        }
    }

    /// Coordinates of every problem of the family.
    pub fn dim(&self) -> usize {
        match self {
            ProblemSpec::Quadratic(q) => q.dims * q.functions,
            ProblemSpec::MnistMlp(m) => m.dim(),
        }
    }

    /// One line for tables and logs.
    pub fn describe(&self) -> String {
        match self {
            ProblemSpec::Quadratic(q) => format!(
                "{} quadratics of {} coordinates ({:?} W, y), {} coordinates",
                q.functions,
                q.dims,
                q.draw,
                self.dim()
            ),
            ProblemSpec::MnistMlp(m) => format!(
                "MNIST MLP 784-{}-10 {:?}, minibatch {}, {} coordinates",
                m.hidden
                    .iter()
                    .map(|h| h.to_string())
                    .collect::<Vec<_>>()
                    .join("-"),
                m.activation,
                m.batch,
                self.dim()
            ),
        }
    }

    /// Check every field; errors name `field.<name>`.
    pub fn check(&self, field: &str) -> Result<()> {
        let bad = |name: &str, reason: &str| Error::Config {
            source_name: format!("{field}.{name}"),
            reason: reason.into(),
        };
        let std_ok = |s: f64| s.is_finite() && s >= 0.0;
        match self {
            ProblemSpec::Quadratic(q) => {
                if q.dims == 0 || q.functions == 0 {
                    return Err(bad("dims", "`dims` and `functions` must be at least 1"));
                }
                if !std_ok(q.init_std) {
                    return Err(bad("init_std", "must be a finite number >= 0"));
                }
            }
            ProblemSpec::MnistMlp(m) => {
                if m.hidden.is_empty() || m.hidden.contains(&0) {
                    return Err(bad("hidden", "give one or more widths, each at least 1"));
                }
                if m.batch == 0 {
                    return Err(bad("batch", "must be at least 1"));
                }
                if !std_ok(m.init_std) {
                    return Err(bad("init_std", "must be a finite number >= 0"));
                }
            }
        }
        Ok(())
    }

    /// Whether the family reads a dataset (`mnist`), and which.
    pub fn dataset(&self) -> Option<&'static str> {
        match self {
            ProblemSpec::Quadratic(_) => None,
            ProblemSpec::MnistMlp(_) => Some("mnist"),
        }
    }

    /// Open the data the family needs from the datasets folder
    /// (`<data_dir>/mnist`), before any training time is spent.
    pub fn open(&self, data_dir: &std::path::Path) -> Result<ProblemData> {
        Ok(match self {
            ProblemSpec::Quadratic(_) => ProblemData::None,
            ProblemSpec::MnistMlp(_) => ProblemData::Mnist(Mnist::open(&data_dir.join("mnist"))?),
        })
    }

    /// Problem `index` of `split` under `seed`: a pure function of the
    /// three (and the data), whatever the thread count.
    pub fn instance<'a>(
        &'a self,
        data: &'a ProblemData,
        seed: u64,
        split: Split,
        index: u64,
    ) -> Result<Problem<'a>> {
        let mut rng = Rng::derive(seed, &[split.tag(), index, 0]);
        let batches = Rng::derive(seed, &[split.tag(), index, 1]);
        let (body, theta0) = match self {
            ProblemSpec::Quadratic(q) => {
                let (quad, x0) = q.draw(&mut rng);
                (Body::Quadratic(quad), x0)
            }
            ProblemSpec::MnistMlp(m) => {
                let ProblemData::Mnist(mnist) = data else {
                    return Err(Error::invalid(
                        "problem data",
                        "none",
                        "the MNIST images (ProblemSpec::open)",
                    ));
                };
                let digits = if split == Split::Test {
                    &mnist.test
                } else {
                    &mnist.train
                };
                let theta0 = (0..m.dim()).map(|_| m.init_std * rng.normal()).collect();
                (Body::Mlp { spec: m, digits }, theta0)
            }
        };
        Ok(Problem {
            theta0,
            body,
            batches,
        })
    }
}

enum Body<'a> {
    Quadratic(quadratic::Quadratic),
    Mlp {
        spec: &'a MlpSpec,
        digits: &'a Digits,
    },
}

/// One drawn problem: its starting point and its objective. Every call of
/// the objective on the MNIST MLP draws the next minibatch of the
/// problem's own stream (the same sequence for every optimizer).
pub struct Problem<'a> {
    /// theta_0, float64.
    pub theta0: Vec<f64>,
    body: Body<'a>,
    batches: Rng,
}

impl Problem<'_> {
    /// Coordinates n.
    pub fn dim(&self) -> usize {
        self.theta0.len()
    }

    /// f(theta) and its gradient in float64 (the next minibatch for the
    /// MLP).
    pub fn eval_f64(&mut self, theta: &[f64]) -> (f64, Vec<f64>) {
        match &self.body {
            Body::Quadratic(q) => q.loss_and_grad(theta),
            Body::Mlp { spec, digits } => {
                let (x, y) = minibatch::<f64>(spec, digits, &mut self.batches);
                spec.loss_and_grad(theta, &x, &y)
            }
        }
    }

    /// f(theta) and its gradient in float32 (the MLP computes in float32;
    /// the quadratic in float64, rounded).
    pub fn eval_f32(&mut self, theta: &[f32]) -> (f64, Vec<f32>) {
        match &self.body {
            Body::Quadratic(q) => {
                let t: Vec<f64> = theta.iter().map(|&v| v as f64).collect();
                let (l, g) = q.loss_and_grad(&t);
                (l, g.into_iter().map(|v| v as f32).collect())
            }
            Body::Mlp { spec, digits } => {
                let (x, y) = minibatch::<f32>(spec, digits, &mut self.batches);
                spec.loss_and_grad(theta, &x, &y)
            }
        }
    }
}

/// The next minibatch: `batch` indices drawn uniformly with replacement.
fn minibatch<T: num_traits::Float>(spec: &MlpSpec, d: &Digits, rng: &mut Rng) -> (Vec<T>, Vec<u8>) {
    let idx: Vec<usize> = (0..spec.batch).map(|_| rng.below(d.n)).collect();
    let x = d
        .features(&idx)
        .into_iter()
        .map(|v| T::from(v).expect("a pixel"))
        .collect();
    let y = idx.iter().map(|&i| d.labels[i]).collect();
    (x, y)
}

impl Objective for Problem<'_> {
    fn dim(&self) -> usize {
        self.theta0.len()
    }

    /// Computed in `theta`'s dtype (float32 or float64); the gradient
    /// comes back `[1, n]` in that dtype.
    fn loss_and_grad(&mut self, theta: &Tensor) -> Result<(Tensor, f64)> {
        let dev = theta.device().clone();
        let n = self.theta0.len();
        let flat = theta.detach().flatten_all()?;
        match flat.dtype() {
            DType::F64 => {
                let (l, g) = self.eval_f64(&flat.to_vec1::<f64>()?);
                Ok((Tensor::from_vec(g, (1, n), &dev)?, l))
            }
            _ => {
                let t = flat.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                let (l, g) = self.eval_f32(&t);
                Ok((
                    Tensor::from_vec(g, (1, n), &dev)?.to_dtype(flat.dtype())?,
                    l,
                ))
            }
        }
    }

    fn groups(&self) -> Vec<(String, Range<usize>)> {
        match &self.body {
            Body::Quadratic(_) => vec![("x".into(), 0..self.theta0.len())],
            Body::Mlp { spec, .. } => spec.groups(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_is_a_pure_function_of_seed_split_and_index() {
        let spec = ProblemSpec::Quadratic(QuadraticSpec::default());
        let d = ProblemData::None;
        let a = spec.instance(&d, 3, Split::Test, 5).unwrap();
        let b = spec.instance(&d, 3, Split::Test, 5).unwrap();
        let c = spec.instance(&d, 3, Split::Test, 6).unwrap();
        let v = spec.instance(&d, 3, Split::Val, 5).unwrap();
        assert_eq!(a.theta0, b.theta0);
        assert_ne!(a.theta0, c.theta0);
        assert_ne!(a.theta0, v.theta0);
        assert_eq!(a.dim(), 1280);
    }

    #[test]
    fn problem_blocks_parse_strictly_with_published_defaults() {
        let q: ProblemSpec = crate::yaml::from_str("kind: quadratic", "t").unwrap();
        assert_eq!(q, ProblemSpec::Quadratic(QuadraticSpec::default()));
        let m: ProblemSpec =
            crate::yaml::from_str("kind: mnist-mlp\nhidden: [40]\nactivation: relu", "t").unwrap();
        let ProblemSpec::MnistMlp(m) = m else {
            panic!()
        };
        assert_eq!(
            (m.hidden.clone(), m.activation, m.batch),
            (vec![40], Activation::Relu, 128)
        );
        assert!(crate::yaml::from_str::<ProblemSpec>("kind: quadratic\ndim: 3", "t").is_err());
        assert!(crate::yaml::from_str::<ProblemSpec>("kind: cubic", "t").is_err());
    }
}
