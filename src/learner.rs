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
//! Batch norm always normalises with batch statistics: there are no
//! running statistics, so nothing leaks across episodes. Which batch
//! supplies the statistics at prediction time is the caller's choice
//! ([`Learner::forward_with`]): the query batch itself (transductive, as the
//! MAML reference code evaluates) or the support set (non-transductive: each
//! query prediction depends only on the support set and that query).
//!
//! Initialisation follows PyTorch's defaults (what the PyTorch ports of MAML
//! and Reptile use): weights and biases of conv and linear layers
//! U(-1/sqrt(fan_in), 1/sqrt(fan_in)); batch-norm gamma = 1, beta = 0.

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ops::{self, BnStats};
use crate::params::Params;
use crate::rng::Rng;

/// How each conv block halves the resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Downsample {
    /// Convolution with stride 2 (Omniglot).
    Stride2,
    /// Stride-1 convolution followed by 2x2 max pooling (mini-ImageNet).
    MaxPool,
}

/// Shape of a conv-4 learner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Learner {
    pub in_channels: usize,
    pub image_size: usize,
    /// Filters per conv layer (64 Omniglot, 32 mini-ImageNet).
    pub hidden: usize,
    pub ways: usize,
    pub downsample: Downsample,
    /// Batch-norm epsilon (PyTorch default 1e-5).
    pub bn_eps: f64,
    /// Conv blocks before the linear head (4 for conv-4; 0 gives a linear
    /// classifier on raw pixels, used by tests with hand-computed gradients).
    #[serde(default = "default_blocks")]
    pub blocks: usize,
}

fn default_blocks() -> usize {
    BLOCKS
}

/// Number of conv blocks of the standard learner.
pub const BLOCKS: usize = 4;

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
        }
    }

    /// The mini-ImageNet conv-4 (max-pool, 32 filters, 3x84x84).
    pub fn mini_imagenet(ways: usize, image_size: usize) -> Self {
        Learner {
            in_channels: 3,
            image_size,
            hidden: 32,
            ways,
            downsample: Downsample::MaxPool,
            bn_eps: 1e-5,
            blocks: BLOCKS,
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

    /// Side of the feature map after the four blocks.
    pub fn feature_side(&self) -> usize {
        let mut s = self.image_size;
        for _ in 0..self.blocks {
            s = match self.downsample {
                Downsample::Stride2 => (s - 1) / 2 + 1,
                Downsample::MaxPool => s / 2,
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

    /// Parameter names in order: `conv{i}.weight`, `conv{i}.bias`,
    /// `bn{i}.gamma`, `bn{i}.beta` for i in 1..=4, then `head.weight`,
    /// `head.bias`.
    pub fn param_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for i in 1..=self.blocks {
            for n in ["conv{}.weight", "conv{}.bias", "bn{}.gamma", "bn{}.beta"] {
                names.push(n.replace("{}", &i.to_string()));
            }
        }
        names.push("head.weight".into());
        names.push("head.bias".into());
        names
    }

    /// Layer a parameter belongs to (`conv1`..`conv4` with its batch norm,
    /// `head`), for per-layer reports such as gate traces.
    pub fn layer_of(name: &str) -> String {
        let prefix = name.split('.').next().unwrap_or(name);
        prefix.replace("bn", "conv")
    }

    /// Fresh parameters (PyTorch default initialisation) from `rng`.
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
        let mut cin = self.in_channels;
        for _ in 0..self.blocks {
            let fan_in = cin * 9;
            let bound = 1.0 / (fan_in as f64).sqrt();
            let h = self.hidden;
            tensors.push(uniform(rng, h * fan_in, bound, &[h, cin, 3, 3])?);
            tensors.push(uniform(rng, h, bound, &[h])?);
            tensors.push(Tensor::ones(h, DType::F32, device)?);
            tensors.push(Tensor::zeros(h, DType::F32, device)?);
            cin = h;
        }
        let feat = self.feature_channels() * self.feature_side() * self.feature_side();
        let bound = 1.0 / (feat as f64).sqrt();
        tensors.push(uniform(rng, self.ways * feat, bound, &[self.ways, feat])?);
        tensors.push(uniform(rng, self.ways, bound, &[self.ways])?);
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
        // [B, C, H, W] -> channel-major [C, B, H, W] (see ops.rs).
        let mut h = x.transpose(0, 1)?.contiguous()?;
        let mut used = Vec::with_capacity(self.blocks);
        for i in 0..self.blocks {
            let t = &p.tensors[4 * i..4 * i + 4];
            let stride = match self.downsample {
                Downsample::Stride2 => 2,
                Downsample::MaxPool => 1,
            };
            h = ops::conv3x3(&h, &t[0], &t[1], stride)?;
            let (y, st) = ops::batch_norm(&h, &t[2], &t[3], self.bn_eps, stats.map(|s| &s[i]))?;
            used.push(st);
            h = y.relu()?;
            if self.downsample == Downsample::MaxPool {
                h = ops::max_pool2x2(&h)?;
            }
        }
        // Back to [B, C*H*W] in PyTorch's flatten order.
        let feat = h.transpose(0, 1)?.reshape((b, ()))?;
        let w = &p.tensors[4 * self.blocks];
        let bias = &p.tensors[4 * self.blocks + 1];
        let logits = feat.matmul(&w.t()?)?.broadcast_add(bias)?;
        Ok((logits, used))
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
