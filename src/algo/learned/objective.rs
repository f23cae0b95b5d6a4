//! What a learned update rule optimises: an objective, loss and gradient at
//! given flat parameters.
//!
//! A learned rule sees its objective only through [`Objective`]: at step t
//! it asks for `(grad L(theta_{t-1}), L(theta_{t-1}))` and updates theta.
//! Both are constants for the meta-learner (no second derivatives: Ravi &
//! Larochelle and Andrychowicz et al. both drop them), so an objective
//! returns plain tensors, whatever graph `theta` carries.
//!
//! Implementations: [`Support`], the learner on an episode's support set
//! (the meta-learner LSTM's objective); [`Replay`], recorded inputs played
//! back (gradient checks hold the learner's inputs fixed). Later: random
//! quadratics and an MLP on MNIST (Andrychowicz et al.'s objectives).

use std::ops::Range;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::model::learner::Learner;
use crate::model::norm::RunningStats;
use crate::model::params::Params;

/// Loss and gradient at given flat parameters.
pub trait Objective {
    /// Number of coordinates n.
    fn dim(&self) -> usize;
    /// Loss and gradient `[1, n]` at `theta` (`[1, n]`), both constants
    /// (`theta`'s graph, if any, is not followed).
    fn loss_and_grad(&mut self, theta: &Tensor) -> Result<(Tensor, f64)>;
    /// Named groups of coordinates (a network's layers), in order and
    /// covering `0..dim()`: observers summarise per group. Default: one
    /// group, `theta`.
    fn groups(&self) -> Vec<(String, Range<usize>)> {
        vec![("theta".into(), 0..self.dim())]
    }
}

/// Coordinate ranges of each learner layer (`conv1`..`conv4`, `head`) in
/// the flat parameter vector of `template`'s shape.
pub fn layer_ranges(template: &Params) -> Vec<(String, Range<usize>)> {
    let mut out: Vec<(String, Range<usize>)> = Vec::new();
    let mut off = 0;
    for (name, t) in template.names.iter().zip(&template.tensors) {
        let layer = Learner::layer_of(name);
        let n = t.elem_count();
        match out.last_mut() {
            Some((l, r)) if *l == layer => r.end += n,
            _ => out.push((layer, off..off + n)),
        }
        off += n;
    }
    out
}

/// The learner's mean cross-entropy on a support set `(x, y)`, over
/// parameters flattened like `template`.
pub struct Support<'a> {
    pub learner: &'a Learner,
    /// Names and shapes of the learner's parameters (values unused).
    pub template: &'a Params,
    pub x: &'a Tensor,
    pub y: &'a Tensor,
    /// Divide the gradient once more by the batch size, as Ravi &
    /// Larochelle's reference does (`meta-learner-lstm.lua:64`,
    /// `gradParameters:div(inputs:size(1))`).
    pub grad_div_batch: bool,
    /// Every pass's batch-norm statistics go here when given.
    pub running: Option<&'a mut RunningStats>,
}

impl Objective for Support<'_> {
    fn dim(&self) -> usize {
        self.template.numel()
    }

    fn loss_and_grad(&mut self, theta: &Tensor) -> Result<(Tensor, f64)> {
        let p = self
            .template
            .unflatten_like(&theta.detach().flatten_all()?)?;
        let (loss, g, stats) = self.learner.loss_and_grad(&p, self.x, self.y)?;
        if let Some(r) = self.running.as_deref_mut() {
            r.update(&stats)?;
        }
        let mut g = g.flatten()?;
        if self.grad_div_batch {
            g = (g / self.x.dim(0)? as f64)?;
        }
        let n = g.elem_count();
        Ok((g.reshape((1, n))?, loss))
    }

    fn groups(&self) -> Vec<(String, Range<usize>)> {
        layer_ranges(self.template)
    }
}

/// Recorded `(gradient, loss)` inputs played back in order, whatever
/// `theta` is: the meta-gradient with the learner's inputs held fixed
/// (finite-difference checks).
pub struct Replay<'a> {
    inputs: &'a [(Tensor, f64)],
    next: usize,
}

impl<'a> Replay<'a> {
    pub fn new(inputs: &'a [(Tensor, f64)]) -> Self {
        Replay { inputs, next: 0 }
    }
}

impl Objective for Replay<'_> {
    fn dim(&self) -> usize {
        self.inputs.first().map_or(0, |(g, _)| g.elem_count())
    }

    fn loss_and_grad(&mut self, _theta: &Tensor) -> Result<(Tensor, f64)> {
        let i = self.next;
        let step = self.inputs.get(i).cloned().ok_or_else(|| {
            Error::invalid(
                "replayed step",
                i + 1,
                format!("at most {} recorded steps", self.inputs.len()),
            )
        })?;
        self.next += 1;
        Ok(step)
    }
}
