//! The learner: the standard conv-4 of few-shot learning, written
//! functionally over its parameters.
//!
//! Two forms, as the reference code has them:
//! - Omniglot (MAML, Reptile): 4 x [conv 3x3 stride 2 padding 1, 64
//!   filters, batch norm, ReLU], flatten (64 x 2 x 2 on 28x28), linear.
//! - mini-ImageNet (Ravi & Larochelle, MAML, Reptile): 4 x [conv 3x3
//!   padding 1, 32 filters, batch norm, ReLU, max-pool 2x2], flatten
//!   (32 x 5 x 5 on 84x84), linear: 32,901 parameters for 5 ways.
//!
//! The comparison benchmarks give every algorithm this one shared network
//! (a comparison needs one network). The reference networks differ in
//! details that [`Learner`]'s options reproduce (docs/fidelity.md):
//! - `head: mean-pool`: MAML's Omniglot head averages the final 2x2 map to
//!   64 features (cbfinn/maml `maml.py`, `reduce_mean(hidden4, [1, 2])`).
//! - `bn_scale: false`: `tf.contrib.layers.batch_norm` has no scale gamma by
//!   default (MAML); `tf.layers.batch_normalization` has one (Reptile).
//! - `bn_eps`: 1e-3 in both TensorFlow references, 1e-5 in PyTorch.
//! - `padding: tf-same`: TensorFlow's `SAME` padding, which for a stride-2
//!   convolution of an even-sized input pads only at the bottom and right
//!   (PyTorch's `padding=1` pads every side; the two grids differ by one
//!   pixel on 28x28 and 14x14 inputs).
//! - `init`: PyTorch's default, Xavier/Glorot as TensorFlow's layers.
//!
//! Batch norm always normalises with batch statistics unless the caller
//! passes statistics ([`Learner::forward_with`]): the support set's
//! (non-transductive prediction), or running statistics accumulated over
//! the adaptation (the meta-LSTM reference's `evaluate` mode, see
//! [`crate::model::norm`]). No state is kept across episodes.
//!
//! Initialisation follows PyTorch's defaults unless `init` says otherwise:
//! weights and biases of conv and linear layers U(-1/sqrt(fan_in),
//! 1/sqrt(fan_in)); batch-norm gamma = 1, beta = 0.

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::kernels::batch_norm::{batch_norm, BnStats};
use crate::model::kernels::conv::conv3x3;
use crate::model::kernels::pool::max_pool2x2;
use crate::model::params::Params;
use crate::rng::Rng;

/// Largest `learner.hidden` accepted (conv-4 with 1024 channels is
/// already ~28M parameters; the references use 32 and 64).
pub const MAX_HIDDEN: usize = 1024;
/// Most conv blocks a benchmark may ask for (each halves the image side:
/// 512 pixels become one after nine).
pub const MAX_BLOCKS: usize = 9;

/// How each conv block halves the resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Downsample {
    /// Convolution with stride 2 (Omniglot).
    Stride2,
    /// Stride-1 convolution followed by 2x2 max pooling (mini-ImageNet).
    MaxPool,
}

/// What the linear head reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Head {
    /// The whole final map, flattened in PyTorch's `[C, H, W]` order.
    Flatten,
    /// The mean over the final map's positions: one feature per channel
    /// (MAML's Omniglot network).
    MeanPool,
}

/// Convolution padding convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Padding {
    /// One pixel on every side (PyTorch `Conv2d(3, padding=1)`).
    Torch,
    /// TensorFlow `SAME`: total padding `max((out - 1) * s + 3 - in, 0)`,
    /// the odd pixel at the bottom/right (both TensorFlow references).
    TfSame,
}

/// Initialisation scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Init {
    /// PyTorch defaults: U(+-1/sqrt(fan_in)) for weights and biases.
    Torch,
    /// Torch7 (Lua `nn`) defaults, as the meta-LSTM reference's learner:
    /// conv and linear as PyTorch, batch-norm scale gamma ~ U(0, 1)
    /// (`BatchNormalization:reset`, `self.weight:uniform()`).
    Torch7,
    /// TensorFlow Glorot/Xavier uniform for every weight, zero biases
    /// (`tf.layers` defaults: Reptile; MAML's conv layers).
    Glorot,
    /// MAML's: Glorot uniform conv weights, zero biases; the head Glorot
    /// uniform after a flatten, N(0, 1) after the mean-pool
    /// (`tf.random_normal`, cbfinn/maml `maml.py` `construct_conv_weights`).
    Maml,
}

/// Shape of a conv-4 learner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Learner {
    pub in_channels: usize,
    pub image_size: usize,
    /// Filters per conv layer (64 Omniglot, 32 mini-ImageNet).
    pub hidden: usize,
    pub ways: usize,
    pub downsample: Downsample,
    /// Batch-norm epsilon (PyTorch default 1e-5; 1e-3 in the TensorFlow
    /// references).
    pub bn_eps: f64,
    /// Conv blocks before the linear head (4 for conv-4; 0 gives a linear
    /// classifier on raw pixels, used by tests with hand-computed gradients).
    #[serde(default = "default_blocks")]
    pub blocks: usize,
    /// Classifier input [default: flatten].
    #[serde(default = "default_head")]
    pub head: Head,
    /// Batch norm has a learned scale gamma [default: true].
    #[serde(default = "default_true")]
    pub bn_scale: bool,
    /// Padding convention [default: torch].
    #[serde(default = "default_padding")]
    pub padding: Padding,
    /// Initialisation [default: torch].
    #[serde(default = "default_init")]
    pub init: Init,
    /// Max-pool padding of odd-sized maps: `valid` drops the last row and
    /// column (PyTorch, MAML, meta-LSTM: 84 -> 42 -> 21 -> 10 -> 5), `same`
    /// pads them (Reptile's `max_pooling2d(padding='same')`: ... 21 -> 11
    /// -> 6) [default: valid].
    #[serde(default = "default_pool_padding")]
    pub pool_padding: PoolPadding,
    /// Fused conv+BN+ReLU(+pool) blocks where they apply ([`Learner::fusable`])
    /// or the composed candle path [default: fused; the benchmark's
    /// `kernels`].
    #[serde(default)]
    pub kernels: crate::model::kernels::Kernels,
}

/// Max-pool treatment of an odd last row/column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoolPadding {
    Valid,
    Same,
}

fn default_blocks() -> usize {
    BLOCKS
}
fn default_head() -> Head {
    Head::Flatten
}
fn default_true() -> bool {
    true
}
fn default_padding() -> Padding {
    Padding::Torch
}
fn default_init() -> Init {
    Init::Torch
}
fn default_pool_padding() -> PoolPadding {
    PoolPadding::Valid
}

/// Number of conv blocks of the standard learner.
pub const BLOCKS: usize = 4;

/// Overrides of the dataset's standard learner, as a benchmark's `learner:`
/// block writes them (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnerOptions {
    pub hidden: Option<usize>,
    /// Conv blocks before the head [default: 4]; each halves the feature
    /// map, which must keep at least one pixel.
    pub blocks: Option<usize>,
    pub bn_eps: Option<f64>,
    pub head: Option<Head>,
    pub bn_scale: Option<bool>,
    pub padding: Option<Padding>,
    pub init: Option<Init>,
    pub pool_padding: Option<PoolPadding>,
}

impl Learner {
    /// The Omniglot conv-4 (stride 2, 64 filters, 1x28x28).
    pub fn omniglot(ways: usize, image_size: usize) -> Self {
        Learner {
            in_channels: 1,
            image_size,
            hidden: 64,
            ways,
            downsample: Downsample::Stride2,
            bn_eps: 1e-5,
            blocks: BLOCKS,
            head: Head::Flatten,
            bn_scale: true,
            padding: Padding::Torch,
            init: Init::Torch,
            pool_padding: PoolPadding::Valid,
            kernels: crate::model::kernels::Kernels::Fused,
        }
    }

    /// The mini-ImageNet conv-4 (max-pool, 32 filters, 3x84x84).
    pub fn mini_imagenet(ways: usize, image_size: usize) -> Self {
        Learner {
            in_channels: 3,
            hidden: 32,
            downsample: Downsample::MaxPool,
            ..Learner::omniglot(ways, image_size)
        }
    }

    /// The standard learner for a dataset's images.
    pub fn for_dataset(dataset: &str, channels: usize, image_size: usize, ways: usize) -> Self {
        match dataset {
            "omniglot" => Learner::omniglot(ways, image_size),
            _ => Learner {
                in_channels: channels,
                ..Learner::mini_imagenet(ways, image_size)
            },
        }
    }

    /// Whether passes with the batch's own statistics run as fused blocks
    /// ([`crate::model::kernels::block`]): the `fused` kernels and the shared learner's
    /// options (PyTorch padding, a batch-norm scale, floor pooling); the
    /// reference variants use the composed path.
    pub fn fusable(&self) -> bool {
        self.kernels == crate::model::kernels::Kernels::Fused
            && self.padding == Padding::Torch
            && self.bn_scale
            && self.pool_padding == PoolPadding::Valid
    }

    /// This learner on the composed path (for passes whose backward is
    /// itself differentiated, or whose statistics are).
    pub fn composed(&self) -> Learner {
        Learner {
            kernels: crate::model::kernels::Kernels::Composed,
            ..self.clone()
        }
    }

    /// This learner with `o`'s overrides applied and checked (sizes are
    /// bounded so that a typo cannot allocate gigabytes at parse time).
    pub fn with_options(mut self, o: &LearnerOptions) -> Result<Self> {
        if let Some(h) = o.hidden {
            if !(1..=MAX_HIDDEN).contains(&h) {
                return Err(Error::invalid(
                    "learner.hidden",
                    h,
                    format!("1..={MAX_HIDDEN} channels"),
                ));
            }
            self.hidden = h;
        }
        if let Some(b) = o.blocks {
            if !(1..=MAX_BLOCKS).contains(&b) {
                return Err(Error::invalid(
                    "learner.blocks",
                    b,
                    format!("1..={MAX_BLOCKS} conv blocks"),
                ));
            }
            self.blocks = b;
        }
        if let Some(e) = o.bn_eps {
            if !(e.is_finite() && e > 0.0) {
                return Err(Error::invalid("learner.bn_eps", e, "a positive number"));
            }
            self.bn_eps = e;
        }
        if let Some(h) = o.head {
            self.head = h;
        }
        if let Some(s) = o.bn_scale {
            self.bn_scale = s;
        }
        if let Some(p) = o.padding {
            self.padding = p;
        }
        if let Some(i) = o.init {
            self.init = i;
        }
        if let Some(p) = o.pool_padding {
            self.pool_padding = p;
        }
        if self.blocks > 0 && self.feature_side() == 0 {
            return Err(Error::invalid(
                "learner.blocks",
                self.blocks,
                format!(
                    "at most as many blocks as keep a {0}x{0} image at least one pixel wide",
                    self.image_size
                ),
            ));
        }
        Ok(self)
    }

    /// Sides of each block's input and output (before pooling) maps.
    fn block_sides(&self) -> Vec<(usize, usize)> {
        let mut s = self.image_size;
        let mut v = Vec::with_capacity(self.blocks);
        for _ in 0..self.blocks {
            let (conv, next) = match self.downsample {
                Downsample::Stride2 => (s.div_ceil(2), s.div_ceil(2)),
                Downsample::MaxPool => (
                    s,
                    match self.pool_padding {
                        PoolPadding::Valid => s / 2,
                        PoolPadding::Same => s.div_ceil(2),
                    },
                ),
            };
            v.push((s, conv));
            s = next;
        }
        v
    }

    /// Multiply-adds of one image's forward pass, times two (FLOPs): the
    /// 3x3 convolutions and the head (cost estimates, `run::cost`).
    pub fn forward_flops(&self) -> f64 {
        let mut c_in = self.in_channels as f64;
        let mut f = 0.0;
        for (_, conv) in self.block_sides() {
            f += 2.0 * c_in * self.hidden as f64 * 9.0 * (conv * conv) as f64;
            c_in = self.hidden as f64;
        }
        f + 2.0 * (self.features() * self.ways) as f64
    }

    /// Bytes one image's forward pass keeps for its backward (float32): the
    /// input, and per block the convolution's output, the normalised and
    /// rectified maps and the pooled one (cost estimates, `run::cost`).
    pub fn activation_bytes(&self) -> f64 {
        let mut b = (self.in_channels * self.image_size * self.image_size) as f64;
        for (_, conv) in self.block_sides() {
            b += 4.0 * (self.hidden * conv * conv) as f64;
        }
        4.0 * b
    }

    /// Side of the feature map after the four blocks.
    pub fn feature_side(&self) -> usize {
        let mut s = self.image_size;
        for _ in 0..self.blocks {
            s = match self.downsample {
                // (s - 1) / 2 + 1 outputs for s >= 1 (padding 1), 0 for 0.
                Downsample::Stride2 => s.div_ceil(2),
                Downsample::MaxPool => match self.pool_padding {
                    PoolPadding::Valid => s / 2,
                    PoolPadding::Same => s.div_ceil(2),
                },
            };
        }
        s
    }

    /// Channels of the final feature map.
    pub fn feature_channels(&self) -> usize {
        if self.blocks == 0 {
            self.in_channels
        } else {
            self.hidden
        }
    }

    /// Inputs of the linear head.
    pub fn features(&self) -> usize {
        match self.head {
            Head::Flatten => self
                .feature_channels()
                .saturating_mul(self.feature_side())
                .saturating_mul(self.feature_side()),
            Head::MeanPool => self.feature_channels(),
        }
    }

    /// Parameter tensors per conv block (3 without a batch-norm scale).
    pub fn per_block(&self) -> usize {
        if self.bn_scale {
            4
        } else {
            3
        }
    }

    /// Parameter names in order: `conv{i}.weight`, `conv{i}.bias`,
    /// `bn{i}.gamma` (when `bn_scale`), `bn{i}.beta` for i in 1..=4, then
    /// `head.weight`, `head.bias`.
    pub fn param_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for i in 1..=self.blocks {
            for n in ["conv{}.weight", "conv{}.bias", "bn{}.gamma", "bn{}.beta"] {
                if n.contains("gamma") && !self.bn_scale {
                    continue;
                }
                names.push(n.replace("{}", &i.to_string()));
            }
        }
        names.push("head.weight".into());
        names.push("head.bias".into());
        names
    }

    /// Whether a parameter is a batch-norm parameter (`bn{i}.gamma`/`beta`).
    pub fn is_bn_param(name: &str) -> bool {
        name.starts_with("bn")
    }

    /// Layer a parameter belongs to (`conv1`..`conv4` with its batch norm,
    /// `head`), for per-layer reports such as gate traces.
    pub fn layer_of(name: &str) -> String {
        let prefix = name.split('.').next().unwrap_or(name);
        prefix.replace("bn", "conv")
    }

    /// Fresh parameters (initialisation per [`Learner::init`]) from `rng`.
    pub fn init(&self, rng: &mut Rng, device: &Device) -> Result<Params> {
        if self.feature_side() == 0 {
            return Err(Error::invalid(
                "image_size",
                self.image_size,
                "large enough to survive four halvings (>= 16)",
            ));
        }
        let mut tensors = Vec::new();
        let uniform = |rng: &mut Rng, n: usize, bound: f64, shape: &[usize]| -> Result<Tensor> {
            let v: Vec<f32> = (0..n)
                .map(|_| rng.uniform_range(-bound, bound) as f32)
                .collect();
            Ok(Tensor::from_vec(v, shape, device)?)
        };
        let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, device);
        let mut cin = self.in_channels;
        for _ in 0..self.blocks {
            let h = self.hidden;
            let (fan_in, fan_out) = (cin * 9, h * 9);
            match self.init {
                Init::Torch | Init::Torch7 => {
                    let bound = 1.0 / (fan_in as f64).sqrt();
                    tensors.push(uniform(rng, h * fan_in, bound, &[h, cin, 3, 3])?);
                    tensors.push(uniform(rng, h, bound, &[h])?);
                }
                Init::Glorot | Init::Maml => {
                    // Glorot uniform: limit sqrt(6 / (fan_in + fan_out)).
                    let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
                    tensors.push(uniform(rng, h * fan_in, bound, &[h, cin, 3, 3])?);
                    tensors.push(zeros(&[h])?);
                }
            }
            if self.bn_scale {
                tensors.push(match self.init {
                    Init::Torch7 => uniform(rng, h, 0.5, &[h])?.affine(1.0, 0.5)?,
                    _ => Tensor::ones(h, DType::F32, device)?,
                });
            }
            tensors.push(zeros(&[h])?);
            cin = h;
        }
        let feat = self.features();
        let n = self.ways * feat;
        match (self.init, self.head) {
            (Init::Torch | Init::Torch7, _) => {
                let bound = 1.0 / (feat as f64).sqrt();
                tensors.push(uniform(rng, n, bound, &[self.ways, feat])?);
                tensors.push(uniform(rng, self.ways, bound, &[self.ways])?);
            }
            (Init::Maml, Head::MeanPool) => {
                let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
                tensors.push(Tensor::from_vec(v, &[self.ways, feat], device)?);
                tensors.push(zeros(&[self.ways])?);
            }
            (Init::Glorot | Init::Maml, _) => {
                let bound = (6.0 / (feat + self.ways) as f64).sqrt();
                tensors.push(uniform(rng, n, bound, &[self.ways, feat])?);
                tensors.push(zeros(&[self.ways])?);
            }
        }
        Ok(Params::new(self.param_names(), tensors))
    }

    /// Logits `[B, ways]` for images `x` `[B, C, H, W]`, batch norm with
    /// this batch's statistics.
    pub fn forward(&self, p: &Params, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with(p, x, None)?.0)
    }

    /// Logits and the batch-norm statistics used. With `stats = Some(s)`,
    /// every layer normalises with `s` (e.g. the support set's statistics)
    /// instead of the batch's own.
    pub fn forward_with(
        &self,
        p: &Params,
        x: &Tensor,
        stats: Option<&[BnStats]>,
    ) -> Result<(Tensor, Vec<BnStats>)> {
        let b = x.dim(0)?;
        let k = self.per_block();
        if stats.is_none() && self.fusable() && x.device().is_cpu() {
            return self.forward_fused(p, x);
        }
        // [B, C, H, W] -> channel-major [C, B, H, W] (see model/kernels/mod.rs).
        let mut h = x.transpose(0, 1)?.contiguous()?;
        let mut used = Vec::with_capacity(self.blocks);
        for i in 0..self.blocks {
            let t = &p.tensors[k * i..k * i + k];
            let (gamma, beta) = if self.bn_scale {
                (Some(&t[2]), &t[3])
            } else {
                (None, &t[2])
            };
            h = self.conv(&h, &t[0], &t[1])?;
            let (y, st) = batch_norm(&h, gamma, beta, self.bn_eps, stats.map(|s| &s[i]))?;
            used.push(st);
            h = y.relu()?;
            if self.downsample == Downsample::MaxPool {
                let (_, _, hh, ww) = h.dims4()?;
                if self.pool_padding == PoolPadding::Same && (hh % 2 == 1 || ww % 2 == 1) {
                    // After the ReLU every value is >= 0, so a zero pad
                    // gives the same maxima as TensorFlow's -inf pad
                    // (max and ReLU commute).
                    h = h
                        .pad_with_zeros(2, 0, hh % 2)?
                        .pad_with_zeros(3, 0, ww % 2)?;
                }
                h = max_pool2x2(&h)?;
            }
        }
        let feat = match self.head {
            // Back to [B, C*H*W] in PyTorch's flatten order.
            Head::Flatten => h.transpose(0, 1)?.reshape((b, ()))?,
            // mean over positions: [C, B, H*W] -> [B, C]
            Head::MeanPool => {
                let c = h.dim(0)?;
                h.reshape((c, b, ()))?.mean(2)?.t()?
            }
        };
        Ok((self.head(p, &feat)?, used))
    }

    /// [`Learner::forward_with`] with the batch's own statistics through
    /// the fused blocks ([`crate::model::kernels::block`]), which work channels-last.
    fn forward_fused(&self, p: &Params, x: &Tensor) -> Result<(Tensor, Vec<BnStats>)> {
        let b = x.dim(0)?;
        let k = self.per_block();
        // [B, C, H, W] -> channels-last [B, H, W, C].
        let h = x.permute((0, 2, 3, 1))?.contiguous()?;
        let stride = if self.downsample == Downsample::Stride2 {
            2
        } else {
            1
        };
        // One op for all blocks; no input gradient for the images.
        let blocks = (0..self.blocks)
            .map(|i| crate::model::kernels::block::ConvBnRelu {
                stride,
                pool: self.downsample == Downsample::MaxPool,
                eps: self.bn_eps,
                out: self.hidden,
                need_dx: i > 0,
            })
            .collect();
        // (No blocks: a linear model on the pixels.)
        let (h, used) = if self.blocks == 0 {
            (h, Vec::new())
        } else {
            crate::model::kernels::block::Blocks::new(blocks)
                .apply(&h, &p.tensors[..k * self.blocks])?
        };
        let feat = match self.head {
            // [B, H, W, C] -> [B, C*H*W] in PyTorch's flatten order.
            Head::Flatten => h.permute((0, 3, 1, 2))?.reshape((b, ()))?,
            // mean over positions: [B, H*W, C] -> [B, C]
            Head::MeanPool => {
                let c = h.dim(3)?;
                h.reshape((b, (), c))?.mean(1)?
            }
        };
        Ok((self.head(p, &feat)?, used))
    }

    /// The linear head: logits `[B, ways]` of features `[B, F]`.
    fn head(&self, p: &Params, feat: &Tensor) -> Result<Tensor> {
        let k = self.per_block();
        let w = &p.tensors[k * self.blocks];
        let bias = &p.tensors[k * self.blocks + 1];
        Ok(feat.matmul(&w.t()?)?.broadcast_add(bias)?)
    }

    /// Mean cross-entropy at `p` on `(x, y)` with batch statistics, its
    /// gradient (detached: a constant for any outer graph) and the detached
    /// batch-norm statistics of the pass.
    pub fn loss_and_grad(
        &self,
        p: &Params,
        x: &Tensor,
        y: &Tensor,
    ) -> Result<(f64, Params, Vec<BnStats>)> {
        self.pass(p, x, y, |_| Ok(()))
            .map(|(loss, (), g, stats)| (loss, g, stats))
    }

    /// [`Learner::loss_and_grad`] and the accuracy of the same pass's
    /// logits (before the step its gradient makes).
    pub fn loss_grad_and_accuracy(
        &self,
        p: &Params,
        x: &Tensor,
        y: &Tensor,
    ) -> Result<(f64, f64, Params, Vec<BnStats>)> {
        self.pass(p, x, y, |logits| accuracy(logits, y))
    }

    /// One training pass: the loss, `read(logits)`, the gradient and the
    /// statistics.
    fn pass<R>(
        &self,
        p: &Params,
        x: &Tensor,
        y: &Tensor,
        read: impl FnOnce(&Tensor) -> Result<R>,
    ) -> Result<(f64, R, Params, Vec<BnStats>)> {
        let vars = p.to_vars()?;
        let pv = Params::from_vars(&p.names, &vars);
        let (logits, stats) = self.forward_with(&pv, x, None)?;
        let read = read(&logits.detach())?;
        let loss = cross_entropy(&logits, y)?;
        let g = pv.grads(&loss.backward()?)?.detach();
        let stats = stats
            .into_iter()
            .map(|s| BnStats {
                mean: s.mean.detach(),
                var: s.var.detach(),
                count: s.count,
            })
            .collect();
        let loss = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        Ok((loss, read, g, stats))
    }

    /// One 3x3 convolution of a block, with this learner's stride and
    /// padding convention.
    fn conv(&self, h: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
        let stride = match self.downsample {
            Downsample::Stride2 => 2,
            Downsample::MaxPool => 1,
        };
        let (_, _, hh, ww) = h.dims4()?;
        if stride == 1 || self.padding == Padding::Torch || (hh % 2 == 1 && ww % 2 == 1) {
            // Odd sizes and stride 1: TensorFlow's SAME pads one pixel on
            // every side too.
            return Ok(conv3x3(h, w, b, stride)?);
        }
        // TensorFlow SAME, stride 2, even side: output i reads input rows
        // 2i, 2i+1, 2i+2 (zero past the end). A zero row/column in front
        // shifts PyTorch's grid (rows 2i-1..2i+1) by one input pixel: output
        // i+1 of the padded input is output i of SAME; drop output 0.
        let (ph, pw) = ((hh % 2 == 0) as usize, (ww % 2 == 0) as usize);
        let hp = h.pad_with_zeros(2, ph, 0)?.pad_with_zeros(3, pw, 0)?;
        let y = conv3x3(&hp, w, b, 2)?;
        let (ho, wo) = ((hh - 1) / 2 + 1, (ww - 1) / 2 + 1);
        Ok(y.narrow(2, ph, ho)?.narrow(3, pw, wo)?)
    }
}

/// Mean cross-entropy of `logits` `[B, N]` against labels `y` `[B]` (u32).
pub fn cross_entropy(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::loss::cross_entropy(logits, y)?)
}

/// Fraction of rows whose arg-max equals the label.
pub fn accuracy(logits: &Tensor, y: &Tensor) -> Result<f64> {
    let pred = logits.argmax(D::Minus1)?;
    let correct = pred
        .eq(&y.to_dtype(pred.dtype())?)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok(correct as f64 / y.dim(0)? as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mini_imagenet_5way_has_32901_parameters() {
        let l = Learner::mini_imagenet(5, 84);
        let p = l.init(&mut Rng::new(0), &Device::Cpu).unwrap();
        assert_eq!(p.numel(), 32_901);
        assert_eq!(l.feature_side(), 5);
    }

    #[test]
    fn omniglot_shapes() {
        let l = Learner::omniglot(5, 28);
        assert_eq!(l.feature_side(), 2);
        let p = l.init(&mut Rng::new(0), &Device::Cpu).unwrap();
        let x = Tensor::zeros((3, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(l.forward(&p, &x).unwrap().dims(), &[3, 5]);
        // 4 conv blocks (64 filters) + linear 256 -> 5.
        let expect = (9 * 64 + 64 + 128) + 3 * (64 * 64 * 9 + 64 + 128) + 256 * 5 + 5;
        assert_eq!(p.numel(), expect);
    }
}
