//! The two-level rule: Andrychowicz et al.'s LSTM proposes a step, and
//! Ravi & Larochelle's gated cell, whose state is the parameters, decides
//! how much of it to take and how much of theta to keep. Per coordinate k
//! and step t:
//!
//! ```text
//! x_t  = preprocess(g_t[, L_t])                                  [I]
//! h_t  = top hidden state of the LSTM stack on x_t               [H]   (andrychowicz.rs)
//! z_t  = scale * (W_out h_t + b_out)          candidate: learned       (networks.py:213)
//!      | -g_t                                 candidate: gradient
//! f~_t = W_f [h_t, theta_{t-1}, f~_{t-1}] + b_f;   f_t = sigma(f~_t)   (ravi.rs)
//! i~_t = W_i [h_t, theta_{t-1}, i~_{t-1}] + b_i;   i_t = sigma(i~_t)   (ravi.rs)
//! theta_t = f_t * theta_{t-1} + i_t * z_t
//! ```
//!
//! The first level is an [`AndrychowiczRule`]'s LSTM stack and read-out
//! (its [`AndrychowiczConfig`]: layers, hidden units, inputs,
//! preprocessing, scale); the gates are the meta-cell of
//! [`super::ravi`] ([`MetaCell`], its weights `[1, H + 2]` over the top
//! hidden state, theta_{t-1} and the previous pre-sigmoid gate, which is
//! zero before the first step), computed with the operations of
//! `RaviRule::step` in the same order.
//!
//! Two options make the reductions exact:
//!
//! - [`Candidate::Gradient`] (z_t = -g_t) with the first level one layer
//!   reading [`Inputs::GradientAndLoss`](super::preprocess::Inputs::GradientAndLoss) with p = 10 and no log epsilon, and
//!   the gate weights of a [`super::ravi::RaviRule`]: theta_t = f_t
//!   theta_{t-1} + i_t (-g_t) is that rule's `f_t theta_{t-1} - i_t g_t`
//!   bit for bit (IEEE `a + (-b)` is `a - b`, and `i (-g)` is `-(i g)`).
//! - [`Gates::Fixed`] `{ forget: 1, input: 1 }` (the identity gates):
//!   theta_t = theta_{t-1} + z_t, the [`AndrychowiczRule`] with the same
//!   LSTM and read-out weights bit for bit (multiplying by 1 is exact).
//!   Other fixed gates give `f theta + i z`; with the gradient candidate,
//!   `Fixed { forget: 1, input: lr }` is gradient descent.
//!
//! Weights are saved by name: the first level's (`l1.*`, `l2.*`, ...,
//! `out.w`, `out.b`, see [`super::andrychowicz`]), then the cell's
//! (`cell.w_f`, `cell.w_i`, `cell.b_f`, `cell.b_i`, as [`super::ravi`]
//! saves them). Weights a setting does not use (the read-out with the
//! gradient candidate, the cell with fixed gates) stay in the set and get
//! a zero meta-gradient. The rule records `forget`, `input` (the gates
//! after the sigmoid; the constants with fixed gates) and `update` (the
//! candidate z_t).

use candle_core::Tensor;

use super::andrychowicz::{
    AndrychowiczConfig, AndrychowiczRule, AndrychowiczState, AndrychowiczWeights,
};
use super::fused::{Cell, Spec};
use super::ravi::{CellState, Gates, MetaCell};
use super::rule::{Rule, StateParts, Step};
use crate::error::{Error, Result};
use crate::model::params::Params;
use crate::rng::Rng;

/// Names of the series the rule records, in order.
pub const SERIES: [&str; 3] = ["forget", "input", "update"];

/// Where the candidate step z_t comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidate {
    /// The first level's read-out, `scale * (W_out h_t + b_out)`.
    Learned,
    /// The negative gradient, `-g_t` (Ravi & Larochelle's cell input).
    Gradient,
}

/// The rule's options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TwoLevelConfig {
    /// The first level (see [`AndrychowiczConfig`]).
    pub lstm: AndrychowiczConfig,
    /// Where z_t comes from (default: learned).
    pub candidate: Candidate,
    /// Learned gates, or constants ([`Gates::Fixed`] `{ forget: 1, input:
    /// 1 }`: the identity, Andrychowicz et al.'s rule); default: learned.
    pub gates: Gates,
}

impl Default for TwoLevelConfig {
    /// The reference code's first level ([`AndrychowiczConfig::code`]), a
    /// learned candidate and learned gates.
    fn default() -> Self {
        TwoLevelConfig {
            lstm: AndrychowiczConfig::code(),
            candidate: Candidate::Learned,
            gates: Gates::Learned,
        }
    }
}

/// The rule's weights.
#[derive(Debug, Clone)]
pub struct TwoLevelWeights {
    /// The first level: LSTM stack and read-out (`l*`, `out.*`).
    pub lstm: AndrychowiczWeights,
    /// The gated cell (`cell.*`), `[1, H + 2]` weights over the top
    /// hidden state, theta_{t-1} and the previous gate.
    pub cell: MetaCell,
}

impl TwoLevelWeights {
    /// Fresh float32 weights: the first level as
    /// [`AndrychowiczWeights::init`], then the cell as Ravi & Larochelle
    /// initialise it ([`MetaCell::init`]: weights U(-0.01, 0.01), b_f ~
    /// U(4, 5), b_i ~ U(-5, -4); a fresh cell keeps theta and takes a
    /// small part of z).
    pub fn init(config: &TwoLevelConfig, rng: &mut Rng, dev: &candle_core::Device) -> Result<Self> {
        let lstm = AndrychowiczWeights::init(&config.lstm, rng, dev)?;
        let cell = MetaCell::init(config.lstm.top(), rng, dev)?;
        Ok(TwoLevelWeights { lstm, cell })
    }

    /// The weights saved in `p` by name.
    pub fn from_params(p: &Params) -> Result<Self> {
        Ok(TwoLevelWeights {
            lstm: AndrychowiczWeights::from_params(p)?,
            cell: MetaCell::from_params(p, "cell")?,
        })
    }

    /// The weights as `Params`, in the saved order.
    pub fn to_params(&self) -> Params {
        let (names, tensors) = self
            .lstm
            .named()
            .into_iter()
            .chain(self.cell.named("cell"))
            .unzip();
        Params::new(names, tensors)
    }
}

/// The rule's state per coordinate.
#[derive(Debug, Clone)]
pub struct TwoLevelState {
    /// The first level's LSTM states.
    pub lstm: AndrychowiczState,
    /// The fed-back pre-sigmoid gates f~_{t-1}, i~_{t-1} (zero at first).
    pub cell: CellState,
}

impl StateParts for TwoLevelState {
    /// The first level's h, c of every layer, then f~, i~.
    fn parts(&self) -> Vec<Tensor> {
        let mut v = self.lstm.parts();
        v.extend([self.cell.f_prev.clone(), self.cell.i_prev.clone()]);
        v
    }

    fn from_parts(mut parts: Vec<Tensor>) -> Result<Self> {
        let (i_prev, f_prev) = match (parts.pop(), parts.pop()) {
            (Some(i), Some(f)) => (i, f),
            _ => {
                return Err(Error::invalid(
                    "two-level state parts",
                    parts.len(),
                    "at least 2",
                ))
            }
        };
        Ok(TwoLevelState {
            lstm: AndrychowiczState::from_layer_parts(&parts)?,
            cell: CellState { f_prev, i_prev },
        })
    }
}

/// One gate's weight row split by what it multiplies: h, theta, the
/// previous gate (as `RaviRule` splits it).
#[derive(Debug, Clone)]
struct GateRow {
    h: Tensor,
    theta: Tensor,
    prev: Tensor,
    bias: Tensor,
}

impl GateRow {
    fn new(w: &Tensor, bias: &Tensor, hidden: usize) -> Result<Self> {
        Ok(GateRow {
            h: w.narrow(1, 0, hidden)?,
            theta: w.narrow(1, hidden, 1)?,
            prev: w.narrow(1, hidden + 1, 1)?,
            bias: bias.clone(),
        })
    }

    /// `W [h_t, theta_{t-1}, prev] + b`, the operations of `RaviRule::step`
    /// in its order.
    fn pre(&self, h: &Tensor, theta: &Tensor, prev: &Tensor) -> Result<Tensor> {
        Ok(self
            .h
            .matmul(h)?
            .add(&theta.broadcast_mul(&self.theta)?)?
            .add(&prev.broadcast_mul(&self.prev)?)?
            .broadcast_add(&self.bias)?)
    }
}

/// The two-level rule: its weights and options.
#[derive(Debug, Clone)]
pub struct TwoLevelRule {
    /// The first level as a rule of its own (its weights and config).
    pub first: AndrychowiczRule,
    pub cell: MetaCell,
    pub candidate: Candidate,
    pub gates: Gates,
    rows: (GateRow, GateRow),
}

impl TwoLevelRule {
    /// The rule with `weights`, checked against `config`.
    pub fn new(weights: TwoLevelWeights, config: TwoLevelConfig) -> Result<Self> {
        let first = AndrychowiczRule::new(weights.lstm, config.lstm)?;
        let top = config.lstm.top();
        let cell = weights.cell;
        for (name, w) in [("cell.w_f", &cell.weight_f), ("cell.w_i", &cell.weight_i)] {
            if w.dims() != [1, top + 2] {
                return Err(Error::invalid(
                    name,
                    format!("{:?}", w.dims()),
                    format!("[1, {}] (H + 2)", top + 2),
                ));
            }
        }
        let rows = (
            GateRow::new(&cell.weight_f, &cell.bias_f, top)?,
            GateRow::new(&cell.weight_i, &cell.bias_i, top)?,
        );
        Ok(TwoLevelRule {
            first,
            cell,
            candidate: config.candidate,
            gates: config.gates,
            rows,
        })
    }

    /// The weights as `Params` (see the module docs).
    pub fn to_params(&self) -> Params {
        TwoLevelWeights {
            lstm: self.first.weights.clone(),
            cell: self.cell.clone(),
        }
        .to_params()
    }
}

impl Rule for TwoLevelRule {
    type State = TwoLevelState;

    fn series(&self) -> &'static [&'static str] {
        &SERIES
    }

    fn start(&self, theta0: &Tensor) -> Result<TwoLevelState> {
        let z = || Tensor::zeros(theta0.dims(), theta0.dtype(), theta0.device());
        Ok(TwoLevelState {
            lstm: self.first.zero_state(theta0)?,
            cell: CellState {
                f_prev: z()?,
                i_prev: z()?,
            },
        })
    }

    fn step(
        &self,
        s: &mut TwoLevelState,
        theta: &Tensor,
        grad: &Tensor,
        loss: f64,
        record: bool,
    ) -> Result<Step> {
        // h_t: the first level's LSTM stack on x_t.
        let h = self.first.hidden(&mut s.lstm, grad, loss)?;
        // z_t = scale * (W_out h_t + b_out), or -g_t.
        let z = match self.candidate {
            Candidate::Learned => self.first.read_out(&h)?,
            Candidate::Gradient => grad.neg()?,
        };
        let (theta, f, i) = match self.gates {
            Gates::Fixed { forget, input } => {
                // theta_t = f theta_{t-1} + i z_t with constant gates.
                let theta = ((theta * forget)? + (&z * input)?)?;
                let f = record
                    .then(|| z.ones_like()?.affine(0.0, forget))
                    .transpose()?;
                let i = record
                    .then(|| z.ones_like()?.affine(0.0, input))
                    .transpose()?;
                (theta, f, i)
            }
            Gates::Learned => {
                let (rf, ri) = &self.rows;
                // f~_t = W_f [h_t, theta_{t-1}, f~_{t-1}] + b_f
                let f_pre = rf.pre(&h, theta, &s.cell.f_prev)?;
                // i~_t = W_i [h_t, theta_{t-1}, i~_{t-1}] + b_i
                let i_pre = ri.pre(&h, theta, &s.cell.i_prev)?;
                let f = candle_nn::ops::sigmoid(&f_pre)?;
                let i = candle_nn::ops::sigmoid(&i_pre)?;
                // theta_t = f_t * theta_{t-1} + i_t * z_t
                let theta = ((&f * theta)? + (&i * &z)?)?;
                s.cell = CellState {
                    f_prev: f_pre,
                    i_prev: i_pre,
                };
                (theta, Some(f.detach()), Some(i.detach()))
            }
        };
        let series = match (record, f, i) {
            (true, Some(f), Some(i)) => Some(vec![f, i, z.detach()]),
            _ => None,
        };
        Ok(Step { theta, series })
    }

    /// The first level's stack, its read-out or -g_t, and the cell.
    fn fused(&self) -> Option<(Spec, Vec<Tensor>)> {
        let cell = match self.gates {
            Gates::Learned => Cell::Learned,
            Gates::Fixed { forget, input } => Cell::Fixed { forget, input },
        };
        let spec = self
            .first
            .fused_spec(self.candidate == Candidate::Learned, cell)?;
        let weights = self.to_params().tensors;
        Some((spec, weights))
    }

    fn detach(&self, s: &mut TwoLevelState) {
        s.lstm = s.lstm.detach();
        s.cell = CellState {
            f_prev: s.cell.f_prev.detach(),
            i_prev: s.cell.i_prev.detach(),
        };
    }
}
