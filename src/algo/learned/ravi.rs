//! Ravi & Larochelle's update rule ("Optimization as a Model for Few-Shot
//! Learning", ICLR 2017): gradient descent, theta_t = theta_{t-1} - alpha
//! grad_t, as the cell update of an LSTM whose cell state is the learner's
//! parameters, with learned forget and input gates per coordinate and
//! step, and a learned initial state theta_0. Per coordinate k, step t
//! (`lstm-helper.lua:106-131`, `meta-learner-lstm.lua:98` of
//! twitter-research/meta-learning-lstm):
//!
//! ```text
//! x_t  = (preprocess(grad_t), preprocess(L_t))                   [4]
//! (h_t, c_t) = LSTM(x_t, (h_{t-1}, c_{t-1}))                     [H] each
//! f~_t = W_f [h_t, theta_{t-1}, f~_{t-1}] + b_f;   f_t = sigma(f~_t)
//! i~_t = W_i [h_t, theta_{t-1}, i~_{t-1}] + b_i;   i_t = sigma(i~_t)
//! theta_t = f_t * theta_{t-1} - i_t * grad_t
//! ```
//!
//! Layer 1 is an [`LstmLayer`] (4 inputs -> H = 20 hidden, its state
//! carried across the steps); layer 2 the [`MetaCell`], whose fed-back
//! f~_{t-1}, i~_{t-1} are pre-sigmoid values (zero at t = 0). The raw
//! gradient (not preprocessed) enters only the cell update. With
//! [`Gates::Fixed`] `{ forget: 1, input: alpha }` the rule is gradient
//! descent with step alpha.
//!
//! Weights are saved under the names the project's checkpoints and
//! fixtures use: `lstm.w_ih [4H, 4]`, `lstm.w_hh [4H, H]`, `lstm.b
//! [4H, 1]`, `cell.w_f [1, H + 2]`, `cell.w_i [1, H + 2]`, `cell.b_f [1, 1]`,
//! `cell.b_i [1, 1]`, `theta0 [1, n]`, in that order.

use candle_core::Tensor;

use super::lstm::{uniform, LstmLayer, LstmState};
use super::preprocess::{Inputs, Preprocess};
use super::rule::{Rule, StateParts, Step};
use crate::error::{Error, Result};
use crate::model::params::Params;
use crate::rng::Rng;

/// Names of the series the rule records: the gates after the sigmoid.
pub const SERIES: [&str; 2] = ["forget", "input"];

/// How the meta-cell sets its gates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gates {
    /// Computed by the meta-learner.
    Learned,
    /// Forced to constants: `Fixed { forget: 1.0, input: lr }` is SGD.
    Fixed { forget: f64, input: f64 },
}

/// Layer 2: the meta-cell's gate weights (shared by all coordinates).
#[derive(Debug, Clone)]
pub struct MetaCell {
    /// `W_f`, `[1, H + 2]`: H for h_t, then theta_{t-1}, then f~_{t-1}.
    pub weight_f: Tensor,
    /// `W_i`, `[1, H + 2]`: H for h_t, then theta_{t-1}, then i~_{t-1}.
    pub weight_i: Tensor,
    /// `b_f`, `[1, 1]`.
    pub bias_f: Tensor,
    /// `b_i`, `[1, 1]`.
    pub bias_i: Tensor,
}

/// Saved names under the cell's prefix, in the order of [`MetaCell`]'s
/// fields.
const CELL_NAMES: [&str; 4] = ["w_f", "w_i", "b_f", "b_i"];

impl MetaCell {
    /// Ravi & Larochelle's initialisation (`meta-learner-lstm.lua:119-136`),
    /// drawn in the order `W_f`, `W_i`, `b_f`, `b_i`: weights U(-0.01,
    /// 0.01), b_f ~ U(4, 5), b_i ~ U(-5, -4) (a fresh cell is close to
    /// gradient descent with a small step).
    pub fn init(hidden: usize, rng: &mut Rng, dev: &candle_core::Device) -> Result<Self> {
        Ok(MetaCell {
            weight_f: uniform(&[1, hidden + 2], -0.01, 0.01, rng, dev)?,
            weight_i: uniform(&[1, hidden + 2], -0.01, 0.01, rng, dev)?,
            bias_f: uniform(&[1, 1], 4.0, 5.0, rng, dev)?,
            bias_i: uniform(&[1, 1], -5.0, -4.0, rng, dev)?,
        })
    }

    /// The cell saved in `p` under `prefix` (`cell.w_f`, ...).
    pub fn from_params(p: &Params, prefix: &str) -> Result<Self> {
        let get = |n: &str| p.get(&format!("{prefix}.{n}")).cloned();
        Ok(MetaCell {
            weight_f: get(CELL_NAMES[0])?,
            weight_i: get(CELL_NAMES[1])?,
            bias_f: get(CELL_NAMES[2])?,
            bias_i: get(CELL_NAMES[3])?,
        })
    }

    /// The weights by name under `prefix`, in field order.
    pub fn named(&self, prefix: &str) -> Vec<(String, Tensor)> {
        [&self.weight_f, &self.weight_i, &self.bias_f, &self.bias_i]
            .into_iter()
            .zip(CELL_NAMES)
            .map(|(t, n)| (format!("{prefix}.{n}"), t.clone()))
            .collect()
    }
}

/// The per-coordinate state of the meta-cell: the pre-sigmoid gate values
/// of the previous step, fed back (zero before the first).
#[derive(Debug, Clone)]
pub struct CellState {
    /// f~_{t-1}, `[1, n]`.
    pub f_prev: Tensor,
    /// i~_{t-1}, `[1, n]`.
    pub i_prev: Tensor,
}

/// The rule's whole state per coordinate.
#[derive(Debug, Clone)]
pub struct RaviState {
    /// Layer 1's (h, c).
    pub lstm: LstmState,
    /// Layer 2's fed-back gates.
    pub cell: CellState,
}

impl StateParts for RaviState {
    /// h, c, f~, i~.
    fn parts(&self) -> Vec<Tensor> {
        vec![
            self.lstm.h.clone(),
            self.lstm.c.clone(),
            self.cell.f_prev.clone(),
            self.cell.i_prev.clone(),
        ]
    }

    fn from_parts(parts: Vec<Tensor>) -> Result<Self> {
        let [h, c, f_prev, i_prev] = <[Tensor; 4]>::try_from(parts)
            .map_err(|p| Error::invalid("meta-LSTM state parts", p.len(), "4"))?;
        Ok(RaviState {
            lstm: LstmState { h, c },
            cell: CellState { f_prev, i_prev },
        })
    }
}

/// All of the rule's meta-parameters, by name.
#[derive(Debug, Clone)]
pub struct RaviWeights {
    /// Layer 1, saved under `lstm`.
    pub lstm: LstmLayer,
    /// Layer 2, saved under `cell`.
    pub cell: MetaCell,
    /// The learned initial state theta_0, `[1, n]`, saved as `theta0`.
    pub theta0: Tensor,
}

impl RaviWeights {
    /// Fresh weights as the reference initialises them (drawn in the order
    /// layer 1, then the cell), reading `inputs` with `hidden` units, from
    /// the initial state `theta0` (`[1, n]`).
    pub fn init(
        inputs: Inputs,
        hidden: usize,
        theta0: Tensor,
        rng: &mut Rng,
        dev: &candle_core::Device,
    ) -> Result<Self> {
        Ok(RaviWeights {
            lstm: LstmLayer::uniform(inputs.count(), hidden, (-0.01, 0.01), rng, dev)?,
            cell: MetaCell::init(hidden, rng, dev)?,
            theta0,
        })
    }

    /// The weights saved in `p` by name.
    pub fn from_params(p: &Params) -> Result<Self> {
        Ok(RaviWeights {
            lstm: LstmLayer::from_params(p, "lstm")?,
            cell: MetaCell::from_params(p, "cell")?,
            theta0: p.get("theta0")?.clone(),
        })
    }

    /// The weights as `Params`, in the saved order (see the module docs).
    pub fn to_params(&self) -> Params {
        let (names, tensors) = self
            .lstm
            .named("lstm")
            .into_iter()
            .chain(self.cell.named("cell"))
            .chain([("theta0".to_string(), self.theta0.clone())])
            .unzip();
        Params::new(names, tensors)
    }

    /// Hidden units of layer 1.
    pub fn hidden(&self) -> usize {
        self.lstm.hidden
    }
}

/// The cell's weight rows split by what they multiply (once per rule, so
/// the graph has one view of each).
#[derive(Debug, Clone)]
struct Split {
    /// `W_f`'s h, theta and f~ parts.
    f: (Tensor, Tensor, Tensor),
    /// `W_i`'s h, theta and i~ parts.
    i: (Tensor, Tensor, Tensor),
}

/// Ravi & Larochelle's rule: its weights and options.
#[derive(Debug, Clone)]
pub struct RaviRule {
    pub weights: RaviWeights,
    /// The preprocessing of its inputs (p = 10 in the paper).
    pub preprocess: Preprocess,
    /// What layer 1 reads (the paper: gradient and loss).
    pub inputs: Inputs,
    /// Learned gates, or constants (the gradient-descent special case).
    pub gates: Gates,
    split: Split,
}

impl RaviRule {
    /// The rule with `weights`, reading `inputs` preprocessed by
    /// `preprocess`, learned gates.
    pub fn new(weights: RaviWeights, preprocess: Preprocess, inputs: Inputs) -> Result<Self> {
        let (h, read) = (weights.hidden(), weights.lstm.inputs()?);
        if read != inputs.count() {
            return Err(Error::invalid(
                "lstm.w_ih columns",
                read,
                format!("{} for {inputs:?}", inputs.count()),
            ));
        }
        for (name, w) in [
            ("cell.w_f", &weights.cell.weight_f),
            ("cell.w_i", &weights.cell.weight_i),
        ] {
            if w.dims() != [1, h + 2] {
                return Err(Error::invalid(
                    name,
                    format!("{:?}", w.dims()),
                    format!("[1, {}] (H + 2)", h + 2),
                ));
            }
        }
        let split = |w: &Tensor| -> Result<(Tensor, Tensor, Tensor)> {
            Ok((
                w.narrow(1, 0, h)?,
                w.narrow(1, h, 1)?,
                w.narrow(1, h + 1, 1)?,
            ))
        };
        let split = Split {
            f: split(&weights.cell.weight_f)?,
            i: split(&weights.cell.weight_i)?,
        };
        Ok(RaviRule {
            weights,
            preprocess,
            inputs,
            gates: Gates::Learned,
            split,
        })
    }

    /// The same rule with its gates set by `gates`.
    pub fn with_gates(mut self, gates: Gates) -> Self {
        self.gates = gates;
        self
    }
}

impl Rule for RaviRule {
    type State = RaviState;

    fn series(&self) -> &'static [&'static str] {
        &SERIES
    }

    fn start(&self, theta0: &Tensor) -> Result<RaviState> {
        let n = theta0.dim(1)?;
        let z = || Tensor::zeros((1, n), theta0.dtype(), theta0.device());
        Ok(RaviState {
            lstm: self.weights.lstm.zero_state(theta0)?,
            cell: CellState {
                f_prev: z()?,
                i_prev: z()?,
            },
        })
    }

    fn step(
        &self,
        s: &mut RaviState,
        theta: &Tensor,
        grad: &Tensor,
        loss: f64,
        record: bool,
    ) -> Result<Step> {
        let (forget, input) = match self.gates {
            Gates::Fixed { forget, input } => {
                // theta_t = f * theta_{t-1} - i * grad_t with constant gates.
                let theta = ((theta * forget)? - (grad * input)?)?;
                return Ok(Step {
                    theta,
                    series: None,
                });
            }
            Gates::Learned => (&self.split.f, &self.split.i),
        };
        // Layer 1 on x_t = (preprocess(grad_t), preprocess(L_t)).
        let x = self.inputs.features(&self.preprocess, grad, loss)?;
        s.lstm = self.weights.lstm.step(&x, &s.lstm)?;
        let (h, cell) = (&s.lstm.h, &self.weights.cell);
        // Layer 2: f~_t = W_f [h_t, theta_{t-1}, f~_{t-1}] + b_f
        let f_pre = forget
            .0
            .matmul(h)?
            .add(&theta.broadcast_mul(&forget.1)?)?
            .add(&s.cell.f_prev.broadcast_mul(&forget.2)?)?
            .broadcast_add(&cell.bias_f)?;
        // i~_t = W_i [h_t, theta_{t-1}, i~_{t-1}] + b_i
        let i_pre = input
            .0
            .matmul(h)?
            .add(&theta.broadcast_mul(&input.1)?)?
            .add(&s.cell.i_prev.broadcast_mul(&input.2)?)?
            .broadcast_add(&cell.bias_i)?;
        let f = candle_nn::ops::sigmoid(&f_pre)?;
        let i = candle_nn::ops::sigmoid(&i_pre)?;
        // theta_t = f_t * theta_{t-1} - i_t * grad_t
        let theta = ((&f * theta)? - (&i * grad)?)?;
        let series = record.then(|| vec![f.detach(), i.detach()]);
        s.cell = CellState {
            f_prev: f_pre,
            i_prev: i_pre,
        };
        Ok(Step { theta, series })
    }

    fn detach(&self, s: &mut RaviState) {
        s.lstm = s.lstm.detach();
        s.cell = CellState {
            f_prev: s.cell.f_prev.detach(),
            i_prev: s.cell.i_prev.detach(),
        };
    }
}
