//! Andrychowicz et al.'s coordinate-wise LSTM optimizer ("Learning to
//! learn by gradient descent by gradient descent", NIPS 2016): a stack of
//! LSTMs shared by every coordinate reads the (preprocessed) gradient and
//! proposes the step. Per coordinate k and step t, as the reference code
//! computes it (deepmind/learning-to-learn at f3c1a8d, `networks.py`,
//! `meta.py`, `preprocess.py`; Sonnet v1's `snt.LSTM`, `snt.Linear`):
//!
//! ```text
//! g_t  = grad f(theta_{t-1})          a constant             meta.py:311, 317-318
//! x_t  = preprocess(g_t)              [I], I = 1 or 2         networks.py:209-211
//! (h1_t, c1_t) = LSTM_1(x_t,  (h1_{t-1}, c1_{t-1}))           networks.py:186-192
//! (h2_t, c2_t) = LSTM_2(h1_t, (h2_{t-1}, c2_{t-1}))           networks.py:192-193
//! u_t  = scale * (W_out h2_t + b_out)                         networks.py:195-196, 213
//! theta_t = theta_{t-1} + u_t                                 meta.py:340-341
//! ```
//!
//! - **Inputs.** The gradient only (`meta.py:321`, `net(g, s)`). Each
//!   coordinate's gradient gets a trailing feature axis (`expand_dims(-1)`,
//!   `networks.py:209`), is preprocessed, and the features become the LSTM
//!   input (`reshape [N, -1]`, `networks.py:211`): no preprocessing
//!   (`tf.identity`, `networks.py:157, 183`) gives 1 feature, the raw
//!   gradient; `LogAndSign(k)` gives 2, log-magnitude then sign
//!   (`preprocess.py:70`, `concat([clamped_log, sign])`), the order of
//!   [`Preprocess::rows`].
//! - **Preprocessing.** The code's `LogAndSign(k)` (`preprocess.py:63-70`)
//!   is `(max(log(|g| + eps) / k, -1), clamp(e^k g, -1, 1))` with `eps` the
//!   machine epsilon of the dtype; that is the paper's formula (appendix A,
//!   [`super::preprocess()`]: `(log|g| / p, sign g)` if `|g| > e^-p`, else
//!   `(-1, e^p g)`) but for the `+ eps` inside the log (|g| = 1e-3 in
//!   float32: the first feature moves by ~2e-5). [`AndrychowiczConfig::log_eps`]
//!   selects: 0 is the paper's formula (the shared [`Preprocess`]), > 0 the
//!   code's clamps with that epsilon.
//! - **The LSTM** (Sonnet v1 `snt.LSTM`, `gated_rnn.py`): one weight matrix
//!   over `[x, h_{t-1}]` (our `W_ih`, `W_hh`), **one learned bias**
//!   `b_gates`, plus a constant `forget_bias = 1.0` added to the forget
//!   gate's pre-activation (`forget_mask = sigmoid(f + forget_bias)`); no
//!   peepholes, no clipping; zero initial state (`networks.py:215-217`,
//!   `initial_state`, not trainable). The constant is folded into the forget
//!   rows of `l*.b` at initialisation ([`AndrychowiczConfig::forget_bias`]):
//!   the same function and the same gradients, one bias vector as
//!   [`LstmLayer`] has. To load the reference's weights: transpose
//!   `w_gates` `[I + H, 4H]` into `[W_ih | W_hh]`, permute Sonnet's gate
//!   blocks (i, j, f, o) into ours (i, f, g = j, o), and add `forget_bias`
//!   to the forget rows of `b_gates`.
//! - **Stacking.** `snt.DeepRNN(skip_connections=False)`
//!   (`networks.py:192-193`): layer k reads layer k-1's h; the read-out
//!   reads the top layer's h only.
//! - **Initialisation** ([`Init::Sonnet`]: the code passes `initializer =
//!   None` for every problem but `simple`, `util.py:50-60, 87-94`, so
//!   Sonnet's defaults apply): `w_gates` and `b_gates` both
//!   `truncated_normal(stddev = 1 / sqrt(I + H))` (`create_linear_initializer`
//!   of `equiv_input_size = H + I`, `gated_rnn.py` `_create_gate_variables`;
//!   TensorFlow's truncated normal redraws beyond 2 standard deviations);
//!   the read-out `w` `truncated_normal(stddev = 1 / sqrt(H))` and `b` zero
//!   (`snt.Linear`, `basic.py` `create_linear_initializer`,
//!   `create_bias_initializer`). [`Init::Zeros`] is the `simple` problem's
//!   `initializer: "zeros"` (`util.py:69`).
//!
//! Defaults differ between the paper and the code; [`AndrychowiczConfig`]
//! names each field's source and has one constructor per setting
//! ([`AndrychowiczConfig::code`], the default; [`AndrychowiczConfig::code_quadratic`];
//! [`AndrychowiczConfig::paper`]).
//!
//! Weights are saved by name: `l1.w_ih [4H, I]`, `l1.w_hh [4H, H]`, `l1.b
//! [4H, 1]`, `l2.w_ih [4H, H]`, `l2.w_hh`, `l2.b`, ..., `out.w [1, H]`,
//! `out.b [1, 1]`, in that order. The rule records one series, `update`:
//! u_t per coordinate.

use candle_core::{DType, Tensor};

use super::fused::{self, Cell, Features, Spec};
use super::lstm::{LstmLayer, LstmState};
use super::preprocess::{Inputs, Preprocess};
use super::rule::{Rule, StateParts, Step};
use crate::error::{Error, Result};
use crate::model::params::Params;
use crate::rng::Rng;

/// Names of the series the rule records: the step u_t it proposes.
pub const SERIES: [&str; 1] = ["update"];

/// How fresh weights are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// Sonnet v1's defaults, which the reference code uses (`initializer =
    /// None`, `util.py:87-94` quadratic, `util.py:50-60` MNIST/CIFAR): LSTM
    /// weights and bias truncated normal with stddev `1 / sqrt(I + H)`,
    /// read-out weight truncated normal with stddev `1 / sqrt(H)`, read-out
    /// bias zero.
    Sonnet,
    /// Every weight zero (`initializer: "zeros"`, the `simple` problem,
    /// `util.py:69`); the forget bias is still added.
    Zeros,
}

/// The optimizer's shape and options. Each field names its source: the
/// paper (NIPS 2016) or the reference code (deepmind/learning-to-learn).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AndrychowiczConfig {
    /// Hidden units per LSTM layer [20: the paper ("two-layer LSTMs with 20
    /// hidden units") and the code, `layers: (20, 20)`, `meta.py:239`,
    /// `util.py:54, 91`].
    pub hidden: usize,
    /// LSTM layers [2, paper and code]. 0 is the code's `simple` problem
    /// (`layers: ()`, `util.py:69`): the read-out applied to the features.
    pub layers: usize,
    /// The preprocessing constant: `Some(p)`, log-magnitude and sign with
    /// constant p (2 features per value); `None`, the raw gradient (1
    /// feature). [code default `LogAndSign(k = 5)`, `meta.py:240-241`,
    /// `util.py:55-56` (MNIST, CIFAR); code on quadratics: none,
    /// `util.py:87-94` (`preprocess_name` defaults to `identity`,
    /// `networks.py:157`); paper: p = 10, appendix A.]
    pub preprocess: Option<f64>,
    /// Epsilon inside the log of the code's `LogAndSign`
    /// (`log(|g| + eps)`, `preprocess.py:63-66`): 0 is the paper's formula
    /// (the shared [`Preprocess`]); > 0, the code's clamped form with this
    /// epsilon [code: `np.finfo(float32).eps` = 2^-23 (its problems are
    /// float32); paper: no epsilon]. Unused without preprocessing.
    pub log_eps: f64,
    /// Which values the LSTM reads, each preprocessed [the reference:
    /// the gradient only, `meta.py:321`]. [`Inputs::GradientAndLoss`] is
    /// Ravi & Larochelle's reading (the two-level rule's reduction to
    /// their meta-LSTM).
    pub inputs: Inputs,
    /// The read-out's output scale: `u = scale * (W_out h + b_out)`
    /// (`networks.py:213`) [code default 0.01, `meta.py:242`,
    /// `util.py:57` (MNIST, CIFAR); code on quadratics 1.0, the
    /// `StandardDeepLSTM` default, `networks.py:158`, as `util.py:87-94`
    /// sets none; paper: 0.1 is the value attributed to the paper, not
    /// located in its text here].
    pub scale: f64,
    /// Sonnet's constant forget-gate bias (`snt.LSTM(forget_bias = 1.0)`,
    /// `gated_rnn.py`), folded into the forget rows of each layer's bias at
    /// initialisation [1.0, code; the paper does not say].
    pub forget_bias: f64,
    /// How fresh weights are drawn [`Init::Sonnet`, code].
    pub init: Init,
}

impl Default for AndrychowiczConfig {
    /// [`AndrychowiczConfig::code`].
    fn default() -> Self {
        Self::code()
    }
}

impl AndrychowiczConfig {
    /// The reference code's default optimizer (`MetaOptimizer()` with no
    /// arguments, `meta.py:235-243`; `get_default_net_config`,
    /// `util.py:50-60`, used for MNIST and CIFAR-10): two layers of 20,
    /// `LogAndSign(k = 5)` with float32 epsilon, scale 0.01, Sonnet's
    /// initialisation.
    pub fn code() -> Self {
        AndrychowiczConfig {
            hidden: 20,
            layers: 2,
            preprocess: Some(5.0),
            log_eps: f32::EPSILON as f64,
            inputs: Inputs::Gradient,
            scale: 0.01,
            forget_bias: 1.0,
            init: Init::Sonnet,
        }
    }

    /// The reference code on its quadratics (`util.py:87-94`: `layers:
    /// (20, 20)` and nothing else): no preprocessing (1 feature, the raw
    /// gradient) and scale 1.0 (`networks.py:157-158` defaults).
    pub fn code_quadratic() -> Self {
        AndrychowiczConfig {
            preprocess: None,
            scale: 1.0,
            ..Self::code()
        }
    }

    /// The paper's setting as far as it states one: two layers of 20,
    /// the appendix A preprocessing with p = 10 (no epsilon), scale 0.1
    /// (see [`AndrychowiczConfig::scale`]); the rest as the code.
    pub fn paper() -> Self {
        AndrychowiczConfig {
            preprocess: Some(10.0),
            log_eps: 0.0,
            scale: 0.1,
            ..Self::code()
        }
    }

    /// Features per coordinate the first layer reads.
    pub fn features(&self) -> usize {
        let values = self.inputs.count() / 2;
        match self.preprocess {
            Some(_) => 2 * values,
            None => values,
        }
    }

    /// Width of the top layer's output (the read-out's input): `hidden`,
    /// or the features without layers.
    pub fn top(&self) -> usize {
        if self.layers == 0 {
            self.features()
        } else {
            self.hidden
        }
    }

    /// The features `[I, n]` of a gradient (`[1, n]`) and loss, in the
    /// gradient's dtype: the preprocessed values (log-magnitude rows, then
    /// sign rows, gradient then loss) or the raw values.
    pub fn input_features(&self, grad: &Tensor, loss: f64) -> Result<Tensor> {
        let p = match self.preprocess {
            None => {
                return Ok(match self.inputs {
                    Inputs::Gradient => grad.clone(),
                    Inputs::GradientAndLoss => {
                        let l = grad.ones_like()?.affine(0.0, loss)?;
                        Tensor::cat(&[grad, &l], 0)?
                    }
                });
            }
            Some(p) => p,
        };
        if self.log_eps == 0.0 {
            // The paper's formula, as every rule here computes it.
            return self.inputs.features(&Preprocess { p }, grad, loss);
        }
        let g = log_and_sign(grad, p, self.log_eps)?;
        Ok(match self.inputs {
            Inputs::Gradient => g,
            Inputs::GradientAndLoss => {
                let l = grad.ones_like()?.affine(0.0, loss)?;
                Tensor::cat(&[&g, &log_and_sign(&l, p, self.log_eps)?], 0)?
            }
        })
    }

    fn check(&self) -> Result<()> {
        if self.layers > 0 && self.hidden == 0 {
            return Err(Error::invalid("hidden", 0, "at least 1"));
        }
        if let Some(p) = self.preprocess {
            if !(p > 0.0 && p.is_finite()) {
                return Err(Error::invalid("preprocess", p, "p > 0"));
            }
        }
        if !(self.log_eps >= 0.0 && self.log_eps.is_finite()) {
            return Err(Error::invalid("log_eps", self.log_eps, ">= 0"));
        }
        if !self.scale.is_finite() {
            return Err(Error::invalid("scale", self.scale, "a finite number"));
        }
        Ok(())
    }
}

/// The reference's `LogAndSign(k)` of every coordinate of `x` (`[1, n]`),
/// `[2, n]` in `x`'s dtype (`preprocess.py:63-70`):
/// `(max(log(|x| + eps) / k, -1), clamp(e^k x, -1, 1))`.
pub fn log_and_sign(x: &Tensor, k: f64, eps: f64) -> Result<Tensor> {
    let x = x.flatten_all()?;
    let dev = x.device();
    let kt = Tensor::new(k, dev)?.to_dtype(x.dtype())?;
    let ek = Tensor::new(k.exp(), dev)?.to_dtype(x.dtype())?;
    // log = log(|g| + eps); clamped_log = max(log / k, -1)
    let log = x.abs()?.affine(1.0, eps)?.log()?;
    let a = log.broadcast_div(&kt)?.maximum(-1.0)?;
    // sign = clamp(g * e^k, -1, 1)
    let b = x.broadcast_mul(&ek)?.clamp(-1.0, 1.0)?;
    Ok(Tensor::stack(&[&a, &b], 0)?)
}

/// A float32 tensor of `shape` from TensorFlow's truncated normal (values
/// beyond two standard deviations redrawn) with standard deviation `std`,
/// row-major.
pub fn truncated_normal(
    shape: &[usize],
    std: f64,
    rng: &mut Rng,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    let len: usize = shape.iter().product();
    let v: Vec<f32> = (0..len)
        .map(|_| loop {
            let z = rng.normal();
            if z.abs() <= 2.0 {
                break (std * z) as f32;
            }
        })
        .collect();
    Ok(Tensor::from_vec(v, shape, dev)?)
}

/// The optimizer's weights, by name (see the module docs).
#[derive(Debug, Clone)]
pub struct AndrychowiczWeights {
    /// The LSTM layers, bottom first, saved as `l1`, `l2`, ...
    pub layers: Vec<LstmLayer>,
    /// `W_out`, `[1, H]` (`[1, I]` without layers), saved as `out.w`.
    pub out_w: Tensor,
    /// `b_out`, `[1, 1]`, saved as `out.b`.
    pub out_b: Tensor,
}

impl AndrychowiczWeights {
    /// Fresh float32 weights for `config` (drawn layer by layer, each
    /// `W_ih`, `W_hh`, then `b`, then the read-out `w`), with
    /// `config.forget_bias` added to every layer's forget rows.
    pub fn init(
        config: &AndrychowiczConfig,
        rng: &mut Rng,
        dev: &candle_core::Device,
    ) -> Result<Self> {
        config.check()?;
        let h = config.hidden;
        let mut layers = Vec::with_capacity(config.layers);
        let mut inputs = config.features();
        for _ in 0..config.layers {
            // Sonnet: one [I + H, 4H] matrix and the bias, both
            // truncated_normal(1 / sqrt(I + H)).
            let std = 1.0 / ((inputs + h) as f64).sqrt();
            let draw = |shape: &[usize], rng: &mut Rng| match config.init {
                Init::Sonnet => truncated_normal(shape, std, rng, dev),
                Init::Zeros => Ok(Tensor::zeros(shape, DType::F32, dev)?),
            };
            let weight_ih = draw(&[4 * h, inputs], rng)?;
            let weight_hh = draw(&[4 * h, h], rng)?;
            let bias = draw(&[4 * h, 1], rng)?;
            // Rows [H, 2H) are the forget gate's (blocks i, f, g, o).
            let fb: Vec<f32> = (0..4 * h)
                .map(|r| {
                    if (h..2 * h).contains(&r) {
                        config.forget_bias as f32
                    } else {
                        0.0
                    }
                })
                .collect();
            let bias = (bias + Tensor::from_vec(fb, (4 * h, 1), dev)?)?;
            layers.push(LstmLayer {
                hidden: h,
                weight_ih,
                weight_hh,
                bias,
            });
            inputs = h;
        }
        let top = config.top();
        let out_w = match config.init {
            Init::Sonnet => truncated_normal(&[1, top], 1.0 / (top as f64).sqrt(), rng, dev)?,
            Init::Zeros => Tensor::zeros((1, top), DType::F32, dev)?,
        };
        Ok(AndrychowiczWeights {
            layers,
            out_w,
            out_b: Tensor::zeros((1, 1), DType::F32, dev)?,
        })
    }

    /// The weights saved in `p` by name: layers `l1`, `l2`, ... as long as
    /// `l<k>.w_ih` exists, then `out.w` and `out.b`.
    pub fn from_params(p: &Params) -> Result<Self> {
        let mut layers = Vec::new();
        while p
            .names
            .iter()
            .any(|n| *n == format!("l{}.w_ih", layers.len() + 1))
        {
            layers.push(LstmLayer::from_params(
                p,
                &format!("l{}", layers.len() + 1),
            )?);
        }
        Ok(AndrychowiczWeights {
            layers,
            out_w: p.get("out.w")?.clone(),
            out_b: p.get("out.b")?.clone(),
        })
    }

    /// The weights by name, in the saved order.
    pub fn named(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = Vec::new();
        for (k, l) in self.layers.iter().enumerate() {
            v.extend(l.named(&format!("l{}", k + 1)));
        }
        v.push(("out.w".into(), self.out_w.clone()));
        v.push(("out.b".into(), self.out_b.clone()));
        v
    }

    /// The weights as `Params`, in the saved order.
    pub fn to_params(&self) -> Params {
        let (names, tensors) = self.named().into_iter().unzip();
        Params::new(names, tensors)
    }

    /// Check the shapes against `config` (layers, hidden units, features).
    pub fn check(&self, config: &AndrychowiczConfig) -> Result<()> {
        config.check()?;
        if self.layers.len() != config.layers {
            return Err(Error::invalid(
                "LSTM layers (l1, l2, ...)",
                self.layers.len(),
                format!("{} (config.layers)", config.layers),
            ));
        }
        let mut inputs = config.features();
        for (k, l) in self.layers.iter().enumerate() {
            if l.hidden != config.hidden || l.inputs()? != inputs {
                return Err(Error::invalid(
                    format!("l{}.w_ih", k + 1),
                    format!("{:?}", l.weight_ih.dims()),
                    format!("[{}, {inputs}] (4H, inputs)", 4 * config.hidden),
                ));
            }
            inputs = l.hidden;
        }
        let top = config.top();
        if self.out_w.dims() != [1, top] || self.out_b.dims() != [1, 1] {
            return Err(Error::invalid(
                "out.w, out.b",
                format!("{:?}, {:?}", self.out_w.dims(), self.out_b.dims()),
                format!("[1, {top}], [1, 1]"),
            ));
        }
        Ok(())
    }
}

/// The rule's state per coordinate: each layer's (h, c), bottom first.
#[derive(Debug, Clone)]
pub struct AndrychowiczState {
    pub layers: Vec<LstmState>,
}

impl AndrychowiczState {
    /// The same values cut from any autograd graph.
    pub fn detach(&self) -> Self {
        AndrychowiczState {
            layers: self.layers.iter().map(LstmState::detach).collect(),
        }
    }
}

impl AndrychowiczState {
    /// The layers' (h, c), bottom first: the first `2 * layers` of `parts`.
    pub fn from_layer_parts(parts: &[Tensor]) -> Result<Self> {
        if !parts.len().is_multiple_of(2) {
            return Err(Error::invalid(
                "LSTM state parts",
                parts.len(),
                "h and c per layer",
            ));
        }
        Ok(AndrychowiczState {
            layers: parts
                .chunks(2)
                .map(|hc| LstmState {
                    h: hc[0].clone(),
                    c: hc[1].clone(),
                })
                .collect(),
        })
    }
}

impl StateParts for AndrychowiczState {
    /// h, c of every layer, bottom first.
    fn parts(&self) -> Vec<Tensor> {
        self.layers
            .iter()
            .flat_map(|s| [s.h.clone(), s.c.clone()])
            .collect()
    }

    fn from_parts(parts: Vec<Tensor>) -> Result<Self> {
        Self::from_layer_parts(&parts)
    }
}

/// Andrychowicz et al.'s rule: its weights and options.
#[derive(Debug, Clone)]
pub struct AndrychowiczRule {
    pub weights: AndrychowiczWeights,
    pub config: AndrychowiczConfig,
}

impl AndrychowiczRule {
    /// The rule with `weights`, checked against `config`.
    pub fn new(weights: AndrychowiczWeights, config: AndrychowiczConfig) -> Result<Self> {
        weights.check(&config)?;
        Ok(AndrychowiczRule { weights, config })
    }

    /// The zero state (`networks.py:215-217`) for `theta`'s coordinates.
    pub fn zero_state(&self, theta: &Tensor) -> Result<AndrychowiczState> {
        Ok(AndrychowiczState {
            layers: self
                .weights
                .layers
                .iter()
                .map(|l| l.zero_state(theta))
                .collect::<Result<_>>()?,
        })
    }

    /// The LSTM stack on the features of `(grad, loss)`: updates `s` and
    /// returns the top layer's h_t (`[H, n]`; the features without layers).
    pub fn hidden(&self, s: &mut AndrychowiczState, grad: &Tensor, loss: f64) -> Result<Tensor> {
        // x_t = preprocess(g_t)   (networks.py:209-211)
        let mut x = self.config.input_features(grad, loss)?;
        // DeepRNN, no skip connections (networks.py:192-193)
        for (layer, state) in self.weights.layers.iter().zip(s.layers.iter_mut()) {
            *state = layer.step(&x, state)?;
            x = state.h.clone();
        }
        Ok(x)
    }

    /// The fused kernel's description of the LSTM stack and read-out with
    /// `cell`, when it can run them: [`fused::H`] hidden units, at least
    /// one layer, the gradient as the only input.
    pub fn fused_spec(&self, read_out: bool, cell: Cell) -> Option<Spec> {
        let c = &self.config;
        let features = match c.preprocess {
            None => Features::Raw,
            Some(p) => Features::LogSign { p, eps: c.log_eps },
        };
        (c.hidden == fused::H && c.layers >= 1 && c.inputs == Inputs::Gradient).then_some(Spec {
            layers: c.layers,
            features,
            scale: c.scale,
            read_out,
            cell,
        })
    }

    /// The read-out of the top hidden state: `scale * (W_out h + b_out)`,
    /// `[1, n]` (`networks.py:213`, `self._linear(output) * self._scale`).
    pub fn read_out(&self, h: &Tensor) -> Result<Tensor> {
        let w = &self.weights;
        Ok((w.out_w.matmul(h)?.broadcast_add(&w.out_b)? * self.config.scale)?)
    }
}

impl Rule for AndrychowiczRule {
    type State = AndrychowiczState;

    fn series(&self) -> &'static [&'static str] {
        &SERIES
    }

    fn start(&self, theta0: &Tensor) -> Result<AndrychowiczState> {
        self.zero_state(theta0)
    }

    fn step(
        &self,
        s: &mut AndrychowiczState,
        theta: &Tensor,
        grad: &Tensor,
        loss: f64,
        record: bool,
    ) -> Result<Step> {
        let h = self.hidden(s, grad, loss)?;
        // u_t = scale * (W_out h2_t + b_out)
        let u = self.read_out(&h)?;
        // theta_t = theta_{t-1} + u_t   (meta.py:341)
        let theta = (theta + &u)?;
        Ok(Step {
            theta,
            series: record.then(|| vec![u.detach()]),
        })
    }

    fn detach(&self, s: &mut AndrychowiczState) {
        *s = s.detach();
    }

    /// The stack and read-out, θ_t = θ_{t-1} + u_t.
    fn fused(&self) -> Option<(Spec, Vec<Tensor>)> {
        let spec = self.fused_spec(true, Cell::None)?;
        Some((
            spec,
            self.weights.named().into_iter().map(|(_, t)| t).collect(),
        ))
    }
}
