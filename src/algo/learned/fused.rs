//! The learned rules' LSTM stack, read-out and gated cell as one fused CPU
//! kernel over all coordinates, with a hand-written backward through time:
//! Andrychowicz et al.'s optimizer ([`super::andrychowicz`]) and the
//! two-level rule ([`super::two_level`]) in one pass per step, as the
//! meta-learner LSTM's kernel ([`crate::algo::meta_lstm::fused`]) runs
//! Ravi & Larochelle's rule.
//!
//! The composed path builds a candle graph of some forty `[4H, n]`- and
//! `[H, n]`-sized tensors per step and lets autograd walk it. Here every
//! coordinate's whole step (the stack, the read-out, the cell) is one pass
//! over a block of [`CHUNK`] coordinates, the blocks run in parallel
//! (rayon), and the backward is the chain rule written out below. To the
//! rest of the crate the unroll is one candle op ([`run`]): weights,
//! theta_0 and the starting state in; theta_T, the state after the last
//! step and Andrychowicz et al.'s surrogate meta-loss out; its backward is
//! the kernel's. So [`super::unroll()`] and [`super::unroll_segment`] hand
//! back the same tensors on either path, and their callers differentiate
//! them as before.
//!
//! Equations (coordinate k, step t; [`Spec`] says which parts a rule has):
//!
//! ```text
//! x_t   = features(g_t)                  1 (raw) or 2 (log-magnitude, sign)
//! z^1_t = W^1_ih x_t + W^1_hh h^1_{t-1} + b^1;  [i, f, g, o] = [σ, σ, tanh, σ](z^1_t)
//! c^1_t = f c^1_{t-1} + i g;  h^1_t = o tanh(c^1_t)
//! z^l_t = W^l_ih h^{l-1}_t + W^l_hh h^l_{t-1} + b^l   (l = 2..layers, the same cell)
//! u_t   = scale (w_out · h^top_t + b_out)             (read-out)
//! z_t   = u_t, or -g_t                                (the candidate)
//! no cell:      θ_t = θ_{t-1} + z_t                   (Andrychowicz et al.)
//! fixed gates:  θ_t = f θ_{t-1} + i z_t
//! learned:      f̃_t = w_f · [h^top_t, θ_{t-1}, f̃_{t-1}] + b_f;  F_t = σ(f̃_t)
//!               ĩ_t = w_i · [h^top_t, θ_{t-1}, ĩ_{t-1}] + b_i;  I_t = σ(ĩ_t)
//!               θ_t = F_t θ_{t-1} + I_t z_t
//! ```
//!
//! with H = [`H`] hidden units per layer (the shipped size; a rule of
//! another size runs composed), any number of layers, and the meta-loss's
//! seeds: dL/dθ_T, dL/d(state_T) and, for a truncated segment, the
//! surrogate `Σ_{t=0..T} <g_t, θ_t>` whose gradient seeds every step with
//! g_t ([`super::unroll_segment`]).
//!
//! **Forward.** Within a block the step goes tile by tile (16 coordinates,
//! [`L`]), layer by layer and hidden unit by hidden unit: the unit's four
//! gate pre-activations are summed in registers over the layer's inputs
//! (the features or the layer below's new h, then its own h_{t-1}: 21, 22
//! or 40 tiles, held in a local array), pass through their
//! nonlinearities, and update c and h before the next unit; the top layer's
//! h then feeds the read-out and the gates of the tile's coordinates, and
//! θ. No `[4H, n]` intermediate is written except what the tape keeps.
//!
//! **Backward.** Per step, last first, and per layer, top first: one tile
//! pass does the element-wise chain rule (through the cell and read-out for
//! the top layer, then the LSTM cell) and writes dz (`[4H][pad]`) and the
//! layer's inputs `[input; h_{t-1}; 1]`; then two products (`gemm`): the
//! weight gradient `dz [input; h_{t-1}; 1]^T`, summed over steps in a
//! `[4H, K + 1]` buffer (the bias is the column of ones), and
//! `[W_ih | W_hh]^T dz`, which is dL/dh of the layer below at this step
//! and dL/dh_{t-1} of this layer. The read-out's and the gates' weight
//! gradients are summed in per-lane partial sums.
//!
//! **Tape** (what the backward needs, per step and coordinate): per layer
//! and hidden unit the gates i, f, g, o after their nonlinearities, c_t and
//! tanh(c_t) (records of 16 coordinates, layer-major, then tile by tile in
//! the order both passes walk them: 6H values per layer); the features (1
//! or 2), the gradient and z_t (also the recorded `update`); with learned
//! gates θ_{t-1}, F_t, I_t and the fed-back f̃_{t-1}, ĩ_{t-1}. h is
//! recomputed as o tanh(c). Two layers of 20, 2 features, learned gates:
//! 249 values, 1 KB per coordinate and step in float32 (113 MB per step
//! for the 113k-coordinate Omniglot learner; 16 MB for the
//! 15,910-coordinate MNIST MLP): memory linear in T, no checkpointing. The
//! h and c at the unroll's start are kept beside it (2H per layer).
//! Evaluation (no input in an autograd graph) keeps no tape. When the
//! unroll is dropped (its graph is), its tape entries go to a one-slot
//! pool that the next unroll refills (`SPARE`): meta-training allocates
//! no tape after its first unroll, and the process holds one tape between
//! unrolls.
//!
//! **Thread independence.** Blocks are fixed by the coordinate count
//! alone; weight gradients are summed per block (products with a fixed
//! shape, per-lane sums in lane order) and then over blocks in block
//! order, so results do not depend on the number of threads. Sums use
//! separate multiplies and adds in a fixed order, so the AVX2 and baseline
//! builds ([`crate::model::kernels::simd`]) agree bit for bit.

use candle_core::{CpuStorage, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::objective::Objective;
use super::preprocess::preprocess;
use crate::error::Result;
use crate::model::kernels::gemm::{matmul, Mat};
use crate::model::kernels::scalar::Scalar;
use crate::model::kernels::simd::simd_wide as simd;
use crate::model::kernels::tile::{acc, acc_mul, lane_sum, ld, mac, map, prefetch, st, L};

/// Hidden units per layer the kernel is compiled for: the paper's and the
/// reference code's 20 (`layers: (20, 20)`), every shipped configuration's.
pub const H: usize = 20;
/// Coordinates per block: a block's recurrent state and the backward's
/// dz, carried gradients and product inputs (about 400 values per
/// coordinate with two layers) stay in L2.
pub const CHUNK: usize = 256;
/// Pre-activations per layer and coordinate.
const Z: usize = 4 * H;
/// Values per tile and hidden unit in a tape's `cell`: i, f, g, o, c, tanh c.
const CELL: usize = 6;
/// How many records ahead the backward prefetches the previous step's tape.
const AHEAD: usize = 8;

/// What the first layer reads of each coordinate's gradient.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Features {
    /// The raw gradient (1 feature; the reference code on quadratics).
    Raw,
    /// Log-magnitude and sign (2 features): with `eps` 0 the paper's
    /// formula with constant `p` ([`preprocess`]); with `eps` > 0 the
    /// reference code's `LogAndSign(k = p)` with that epsilon
    /// ([`super::andrychowicz::log_and_sign`]).
    LogSign { p: f64, eps: f64 },
}

impl Features {
    /// Features per coordinate.
    pub fn count(self) -> usize {
        match self {
            Features::Raw => 1,
            Features::LogSign { .. } => 2,
        }
    }

    /// The features of one gradient value, in the composed path's
    /// arithmetic: the paper's formula in float64 then rounded (as
    /// `Preprocess::rows`), the code's in `T` (as `log_and_sign`).
    #[inline(always)]
    fn of<T: Scalar>(self, g: T) -> [T; 2] {
        match self {
            Features::Raw => [g, T::zero()],
            Features::LogSign { p, eps: 0.0 } => {
                let (a, b) = preprocess(g.f64(), p);
                [T::of(a), T::of(b)]
            }
            Features::LogSign { p: k, eps } => {
                let log = (g.abs() * T::one() + T::of(eps)).ln();
                let (max, min) = (num_traits::Float::max, num_traits::Float::min);
                let a = max(log / T::of(k), -T::one());
                let b = min(max(g * T::of(k.exp()), -T::one()), T::one());
                [a, b]
            }
        }
    }
}

/// The shape and options of a rule the kernel runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spec {
    /// LSTM layers (at least 1), each of [`H`] units.
    pub layers: usize,
    pub features: Features,
    /// The read-out's output scale.
    pub scale: f64,
    /// The candidate z_t: the read-out (true) or -g_t.
    pub read_out: bool,
    /// How θ takes the candidate.
    pub cell: Cell,
}

/// How θ takes the candidate z_t.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell {
    /// θ_t = θ_{t-1} + z_t (Andrychowicz et al.; no cell state).
    None,
    /// θ_t = f θ_{t-1} + i z_t with constant gates (the two-level rule's
    /// `Gates::Fixed`; its state's fed-back f̃, ĩ pass through unchanged).
    Fixed { forget: f64, input: f64 },
    /// θ_t = F_t θ_{t-1} + I_t z_t with Ravi & Larochelle's learned gates
    /// (the two-level rule).
    Learned,
}

impl Cell {
    /// Whether the rule has a cell (and its weights and state).
    fn some(self) -> bool {
        self != Cell::None
    }
}

impl Spec {
    /// Whether the gates are learned (the cell's weights in use).
    fn gated(&self) -> bool {
        self.cell == Cell::Learned
    }

    /// The inputs of layer `k`: the features, or the layer below's h.
    fn inputs(&self, k: usize) -> usize {
        if k == 0 {
            self.features.count()
        } else {
            H
        }
    }

    /// Lengths of the weight tensors in the rules' saved order:
    /// `l<k>.w_ih [4H, I_k]`, `l<k>.w_hh [4H, H]`, `l<k>.b [4H, 1]` per
    /// layer, `out.w [1, H]`, `out.b [1, 1]`, then with a cell `cell.w_f
    /// [1, H + 2]`, `cell.w_i`, `cell.b_f [1, 1]`, `cell.b_i`.
    pub fn weight_sizes(&self) -> Vec<usize> {
        let mut v = vec![];
        for k in 0..self.layers {
            v.extend([Z * self.inputs(k), Z * H, Z]);
        }
        v.extend([H, 1]);
        if self.cell.some() {
            v.extend([H + 2, H + 2, 1, 1]);
        }
        v
    }

    /// Rows of the state per coordinate, in order: h, c of every layer (H
    /// each), then with a cell the fed-back f̃, ĩ (1 each).
    pub fn state_rows(&self) -> Vec<usize> {
        let mut v = vec![H; 2 * self.layers];
        if self.cell.some() {
            v.extend([1, 1]);
        }
        v
    }

    /// Series a step records: `update` (no cell), or `forget`, `input`,
    /// `update`.
    fn series(&self) -> usize {
        if self.cell.some() {
            3
        } else {
            1
        }
    }
}

/// One LSTM layer's weights (or their gradients), row-major as the
/// composed path's tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights<T> {
    /// `[4H, I]`.
    pub w_ih: Vec<T>,
    /// `[4H, H]`.
    pub w_hh: Vec<T>,
    /// `[4H]`.
    pub b: Vec<T>,
}

/// A rule's weights (or their gradients) as flat arrays.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights<T> {
    pub layers: Vec<LayerWeights<T>>,
    /// `[H]`.
    pub out_w: Vec<T>,
    pub out_b: T,
    /// `[H + 2]` each (h, θ, the fed-back gate), and the biases; zero
    /// without a cell.
    pub w_f: Vec<T>,
    pub w_i: Vec<T>,
    pub b_f: T,
    pub b_i: T,
}

impl<T: Scalar> Weights<T> {
    /// All zeros (a gradient accumulator).
    pub fn zeros(spec: &Spec) -> Self {
        let z = |n: usize| vec![T::zero(); n];
        Weights {
            layers: (0..spec.layers)
                .map(|k| LayerWeights {
                    w_ih: z(Z * spec.inputs(k)),
                    w_hh: z(Z * H),
                    b: z(Z),
                })
                .collect(),
            out_w: z(H),
            out_b: T::zero(),
            w_f: z(H + 2),
            w_i: z(H + 2),
            b_f: T::zero(),
            b_i: T::zero(),
        }
    }

    /// From the weights concatenated in [`Spec::weight_sizes`]' order.
    pub fn from_flat(spec: &Spec, v: &[T]) -> Self {
        assert_eq!(v.len(), spec.weight_sizes().iter().sum::<usize>());
        let mut w = Self::zeros(spec);
        let mut at = 0;
        let mut take = |dst: &mut [T]| {
            dst.copy_from_slice(&v[at..at + dst.len()]);
            at += dst.len();
        };
        for l in &mut w.layers {
            take(&mut l.w_ih);
            take(&mut l.w_hh);
            take(&mut l.b);
        }
        take(&mut w.out_w);
        take(std::slice::from_mut(&mut w.out_b));
        if spec.cell.some() {
            take(&mut w.w_f);
            take(&mut w.w_i);
            take(std::slice::from_mut(&mut w.b_f));
            take(std::slice::from_mut(&mut w.b_i));
        }
        w
    }

    /// Concatenated in [`Spec::weight_sizes`]' order.
    pub fn to_flat(&self, spec: &Spec) -> Vec<T> {
        let mut v = vec![];
        for l in &self.layers {
            v.extend_from_slice(&l.w_ih);
            v.extend_from_slice(&l.w_hh);
            v.extend_from_slice(&l.b);
        }
        v.extend_from_slice(&self.out_w);
        v.push(self.out_b);
        if spec.cell.some() {
            v.extend_from_slice(&self.w_f);
            v.extend_from_slice(&self.w_i);
            v.push(self.b_f);
            v.push(self.b_i);
        }
        v
    }

    fn add(&mut self, o: &Self) {
        let add = |a: &mut [T], b: &[T]| a.iter_mut().zip(b).for_each(|(x, y)| *x += *y);
        for (a, b) in self.layers.iter_mut().zip(&o.layers) {
            add(&mut a.w_ih, &b.w_ih);
            add(&mut a.w_hh, &b.w_hh);
            add(&mut a.b, &b.b);
        }
        add(&mut self.out_w, &o.out_w);
        self.out_b += o.out_b;
        add(&mut self.w_f, &o.w_f);
        add(&mut self.w_i, &o.w_i);
        self.b_f += o.b_f;
        self.b_i += o.b_i;
    }
}

/// One layer's weights regrouped for the forward tiles, and for the
/// backward's products.
#[derive(Debug)]
struct Packed<T> {
    /// Inputs I (the features or H).
    inputs: usize,
    /// `[H][I + H]`: `w[m * K + j][q] = [W_ih | W_hh][q H + m][j]`, the
    /// four gate rows of unit m side by side.
    w: Vec<[T; 4]>,
    /// `[H]`: `b[q H + m]`.
    bias: Vec<[T; 4]>,
    /// `[4H][I + H]` row-major: `[W_ih | W_hh]`.
    cat: Vec<T>,
}

impl<T: Scalar> Packed<T> {
    fn new(l: &LayerWeights<T>, inputs: usize) -> Self {
        let k = inputs + H;
        let mut w = vec![[T::zero(); 4]; H * k];
        let mut bias = vec![[T::zero(); 4]; H];
        let mut cat = vec![T::zero(); Z * k];
        for j in 0..Z {
            cat[j * k..j * k + inputs].copy_from_slice(&l.w_ih[j * inputs..][..inputs]);
            cat[j * k + inputs..][..H].copy_from_slice(&l.w_hh[j * H..][..H]);
        }
        for m in 0..H {
            for q in 0..4 {
                let j = q * H + m;
                bias[m][q] = l.b[j];
                for i in 0..k {
                    w[m * k + i][q] = cat[j * k + i];
                }
            }
        }
        Packed {
            inputs,
            w,
            bias,
            cat,
        }
    }
}

/// What every block's step and backward share: the rule, its weights and
/// their packed forms.
#[derive(Debug)]
struct Shared<T> {
    spec: Spec,
    w: Weights<T>,
    packs: Vec<Packed<T>>,
}

/// What the backward needs from one step of one block. Every buffer has
/// `pad` columns.
#[derive(Debug, Default)]
struct Tape<T> {
    /// `[layers][pad / L][H][CELL][L]`: per layer, tile and hidden unit,
    /// the gates i, f, g, o after their nonlinearities, c_t and tanh(c_t)
    /// ([`cell_at`]).
    cell: Vec<T>,
    /// `[I][pad]`: the first layer's features.
    x: Vec<T>,
    /// g_{t-1}, the gradient this step read.
    grad: Vec<T>,
    /// The candidate z_t.
    z: Vec<T>,
    /// With learned gates: θ_{t-1}, F_t, I_t, and the pre-sigmoid f̃_{t-1},
    /// ĩ_{t-1} this step was fed.
    theta_prev: Vec<T>,
    big_f: Vec<T>,
    big_i: Vec<T>,
    f_in: Vec<T>,
    i_in: Vec<T>,
}

/// Where the record of layer `k`, the tile at column `c0` and hidden unit
/// `m` starts in a tape's `cell` of `pad` columns: layer-major, then tile
/// by tile, so that the backward's pass over one layer reads one stream.
#[inline(always)]
fn cell_at(c0: usize, k: usize, m: usize, pad: usize) -> usize {
    ((k * (pad / L) + c0 / L) * H + m) * CELL * L
}

/// One block of coordinates: its recurrent state and tape. Every buffer
/// has `pad` columns (`len` rounded up to a whole tile).
#[derive(Debug)]
struct Block<T> {
    len: usize,
    pad: usize,
    /// Per layer, `[H][pad]`: h, c after the last step.
    h: Vec<Vec<T>>,
    /// h_t while a step computes it (h_{t-1} is still read); then swapped.
    hn: Vec<Vec<T>>,
    c: Vec<Vec<T>>,
    /// The fed-back f̃, ĩ after the last step (with a cell).
    f_prev: Vec<T>,
    i_prev: Vec<T>,
    /// h and c before the first step (kept with the tape).
    h0: Vec<Vec<T>>,
    c0: Vec<Vec<T>>,
    tape: Vec<Tape<T>>,
    /// Tape entries of an earlier unroll, their buffers reused.
    spare: Vec<Tape<T>>,
    /// The last step's entry when no tape is kept (its z, F, I recorded).
    last: Option<Tape<T>>,
}

impl<T: Scalar> Block<T> {
    /// A block of `len` coordinates from column `off` of the state rows
    /// `state` (`[S][n]`, [`Spec::state_rows`]; `None`: zero).
    fn new(spec: &Spec, len: usize, off: usize, n: usize, state: Option<&[T]>, keep: bool) -> Self {
        let pad = len.div_ceil(L) * L;
        let mut row = 0;
        let mut take = |r: usize| {
            let v = rows_of(state.map(|s| &s[row * n..]), r, len, off, n, pad);
            row += r;
            v
        };
        let (mut h, mut c) = (vec![], vec![]);
        for _ in 0..spec.layers {
            h.push(take(H));
            c.push(take(H));
        }
        let (f_prev, i_prev) = if spec.cell.some() {
            (take(1), take(1))
        } else {
            (vec![T::zero(); pad], vec![T::zero(); pad])
        };
        Block {
            len,
            pad,
            hn: h.clone(),
            h0: if keep { h.clone() } else { vec![] },
            c0: if keep { c.clone() } else { vec![] },
            h,
            c,
            f_prev,
            i_prev,
            tape: vec![],
            spare: vec![],
            last: None,
        }
    }
}

/// `r` rows of `pad` columns: columns `off..off + len` of the `[r][n]`
/// rows at `s` (zero without), zero in the padding.
fn rows_of<T: Scalar>(
    s: Option<&[T]>,
    r: usize,
    len: usize,
    off: usize,
    n: usize,
    pad: usize,
) -> Vec<T> {
    let mut v = vec![T::zero(); r * pad];
    if let Some(s) = s {
        for i in 0..r {
            v[i * pad..i * pad + len].copy_from_slice(&s[i * n + off..][..len]);
        }
    }
    v
}

/// An unroll of a rule over all coordinates.
#[derive(Debug)]
pub struct Unroll<T: Scalar> {
    /// θ_t after the steps taken so far.
    pub theta: Vec<T>,
    shared: Shared<T>,
    blocks: Vec<Block<T>>,
    /// Keep the tape (the unroll is differentiated) or not.
    keep: bool,
    /// Steps taken.
    steps: usize,
}

impl<T: Scalar> Unroll<T> {
    /// Start from θ_0 and the state rows `state` (`[S][n]` in
    /// [`Spec::state_rows`]' order; `None`: zero), with the rule's weights
    /// `w`.
    pub fn new(spec: Spec, w: Weights<T>, theta0: Vec<T>, state: Option<&[T]>, keep: bool) -> Self {
        assert!(spec.layers >= 1, "at least one layer");
        let n = theta0.len();
        if let Some(s) = state {
            assert_eq!(s.len(), spec.state_rows().iter().sum::<usize>() * n);
        }
        let mut blocks: Vec<Block<T>> = (0..n.div_ceil(CHUNK))
            .map(|b| Block::new(&spec, CHUNK.min(n - b * CHUNK), b * CHUNK, n, state, keep))
            .collect();
        let packs = (0..spec.layers)
            .map(|k| Packed::new(&w.layers[k], spec.inputs(k)))
            .collect();
        if keep {
            for (b, spare) in blocks.iter_mut().zip(take_spare::<T>()) {
                b.spare = spare;
            }
        }
        Unroll {
            theta: theta0,
            shared: Shared { spec, w, packs },
            blocks,
            keep,
            steps: 0,
        }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// One update θ_t from the gradient at θ_{t-1}. With `record`, returns
    /// the step's series for every coordinate: `[z_t]` without a cell,
    /// `[f_t, i_t, z_t]` with one (the gates after the sigmoid, or the
    /// constants).
    pub fn step(&mut self, grad: &[T], record: bool) -> Option<Vec<Vec<T>>> {
        assert_eq!(grad.len(), self.theta.len(), "gradient and theta sizes");
        let keep = self.keep;
        let sh = &self.shared;
        self.blocks
            .par_iter_mut()
            .zip(self.theta.par_chunks_mut(CHUNK))
            .zip(grad.par_chunks(CHUNK))
            .for_each(|((blk, theta), g)| block_step(blk, sh, theta, g, keep));
        self.steps += 1;
        record.then(|| self.series())
    }

    /// The last step's series (see [`Unroll::step`]).
    fn series(&self) -> Vec<Vec<T>> {
        let spec = &self.shared.spec;
        let n = self.theta.len();
        let mut out = vec![Vec::with_capacity(n); spec.series()];
        for blk in &self.blocks {
            let t = match (self.keep, blk.tape.last(), &blk.last) {
                (true, Some(t), _) | (false, _, Some(t)) => t,
                _ => unreachable!("a step was taken"),
            };
            let len = blk.len;
            let z = &t.z[..len];
            match spec.cell {
                Cell::None => out[0].extend_from_slice(z),
                Cell::Learned => {
                    out[0].extend_from_slice(&t.big_f[..len]);
                    out[1].extend_from_slice(&t.big_i[..len]);
                    out[2].extend_from_slice(z);
                }
                Cell::Fixed { forget, input } => {
                    out[0].extend(std::iter::repeat_n(T::of(forget), len));
                    out[1].extend(std::iter::repeat_n(T::of(input), len));
                    out[2].extend_from_slice(z);
                }
            }
        }
        out
    }

    /// The state after the steps taken, `[S][n]` in [`Spec::state_rows`]'
    /// order.
    pub fn state(&self) -> Vec<T> {
        let spec = &self.shared.spec;
        let n = self.theta.len();
        let rows = spec.state_rows();
        let mut out = vec![T::zero(); rows.iter().sum::<usize>() * n];
        let mut off = 0;
        for blk in &self.blocks {
            let mut srcs: Vec<&[T]> = vec![];
            for k in 0..spec.layers {
                srcs.push(&blk.h[k]);
                srcs.push(&blk.c[k]);
            }
            if spec.cell.some() {
                srcs.push(&blk.f_prev);
                srcs.push(&blk.i_prev);
            }
            let mut row = 0;
            for (src, &r) in srcs.iter().zip(&rows) {
                for i in 0..r {
                    out[(row + i) * n + off..][..blk.len]
                        .copy_from_slice(&src[i * blk.pad..][..blk.len]);
                }
                row += r;
            }
            off += blk.len;
        }
        out
    }

    /// Backward through every step taken from the seeds: dL/dθ_T
    /// (`d_theta`), dL/d(state_T) (`d_state`, `[S][n]`, or zero), and the
    /// surrogate's gradient `sigma` with the gradients g_0..g_T (`g_final`
    /// is g_T; the others are on the tape) — dL/dθ_t gets `sigma * g_t`.
    /// Returns the weights' gradient, dL/dθ_0 and dL/d(state_0).
    pub fn backward(
        &self,
        d_theta: &[T],
        d_state: Option<&[T]>,
        sigma: T,
        g_final: Option<&[T]>,
    ) -> (Weights<T>, Vec<T>, Vec<T>) {
        assert!(self.keep, "backward needs the tape");
        let spec = &self.shared.spec;
        let n = self.theta.len();
        let s_rows: usize = spec.state_rows().iter().sum();
        let mut d0 = vec![T::zero(); n];
        let mut ds0 = vec![T::zero(); s_rows * n];
        let offs: Vec<usize> = (0..self.blocks.len()).map(|b| b * CHUNK).collect();
        let parts: Vec<(Weights<T>, Vec<T>, Vec<T>)> = self
            .blocks
            .par_iter()
            .zip(offs.par_iter())
            .map(|(blk, &off)| {
                let seeds = Seeds {
                    d_theta: &d_theta[off..off + blk.len],
                    d_state,
                    sigma,
                    g_final: g_final.map(|g| &g[off..off + blk.len]),
                    off,
                    n,
                };
                block_backward(blk, &self.shared, seeds)
            })
            .collect();
        let mut total = Weights::zeros(spec);
        for ((gw, dth, ds), (blk, &off)) in parts.iter().zip(self.blocks.iter().zip(&offs)) {
            total.add(gw);
            d0[off..off + blk.len].copy_from_slice(dth);
            for r in 0..s_rows {
                ds0[r * n + off..][..blk.len].copy_from_slice(&ds[r * blk.len..][..blk.len]);
            }
        }
        (total, d0, ds0)
    }
}

/// The tape entries of the last finished unroll that kept one, per block,
/// for the next to reuse: a meta-training step then allocates (and
/// page-faults and zeroes) no tape. One slot for the whole process (an
/// unroll of another scalar type or started meanwhile allocates afresh);
/// it holds one unroll's tape between unrolls.
static SPARE: std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>> = std::sync::Mutex::new(None);

fn take_spare<T: Scalar>() -> Vec<Vec<Tape<T>>> {
    let slot = SPARE.lock().ok().and_then(|mut s| s.take());
    slot.and_then(|b| b.downcast::<Vec<Vec<Tape<T>>>>().ok())
        .map(|b| *b)
        .unwrap_or_default()
}

impl<T: Scalar> Drop for Unroll<T> {
    /// The tape goes back to [`SPARE`].
    fn drop(&mut self) {
        if !self.keep {
            return;
        }
        let tapes: Vec<Vec<Tape<T>>> = self
            .blocks
            .iter_mut()
            .map(|b| {
                let mut v = std::mem::take(&mut b.spare);
                v.append(&mut b.tape);
                v
            })
            .collect();
        if let Ok(mut s) = SPARE.lock() {
            *s = Some(Box::new(tapes));
        }
    }
}

/// [`block_step_body`] compiled for AVX2 when the CPU has it ([`simd`]).
fn block_step<T: Scalar>(
    blk: &mut Block<T>,
    sh: &Shared<T>,
    theta: &mut [T],
    grad: &[T],
    keep: bool,
) {
    simd(
        #[inline(always)]
        || block_step_body(blk, sh, theta, grad, keep),
    )
}

/// One layer of one tile, forward: for each hidden unit, the four gate
/// pre-activations summed in registers over the K = I + H inputs `inp`
/// (the layer's input tiles, then its h_{t-1}), the nonlinearities, c_t
/// and h_t (into `c` and `hn` at column `c0`, and into the returned
/// tiles), and with `rec` the tape record.
#[inline(always)]
fn layer_tile<T: Scalar, const K: usize>(
    pk: &Packed<T>,
    inp: &[[T; L]],
    c: &mut [T],
    hn: &mut [T],
    c0: usize,
    pad: usize,
    mut rec: Option<(&mut [T], usize)>,
) -> [[T; L]; H] {
    let inp = &inp[..K];
    let mut out = [[T::zero(); L]; H];
    for (m, hm) in out.iter_mut().enumerate() {
        // z = W_ih x + W_hh h_{t-1} + b for rows m of [i, f, g, o].
        let wm = &pk.w[m * K..][..K];
        let mut a = pk.bias[m].map(|b| [b; L]);
        for (wk, xk) in wm.iter().zip(inp) {
            mac(&mut a, wk, xk);
        }
        // [i, f, g, o] = [σ, σ, tanh, σ](z)
        let [mut i, mut f, mut g, mut o] = a;
        map(&mut i, |v| v.sig());
        map(&mut f, |v| v.sig());
        map(&mut g, |v| v.th());
        map(&mut o, |v| v.sig());
        // c_t = f c_{t-1} + i g;  h_t = o tanh(c_t)
        let at = m * pad + c0;
        let mut cc = ld(c, at);
        let mut tc = [T::zero(); L];
        let mut h = [T::zero(); L];
        for l in 0..L {
            cc[l] = f[l] * cc[l] + i[l] * g[l];
        }
        for l in 0..L {
            tc[l] = cc[l].th();
        }
        for l in 0..L {
            h[l] = o[l] * tc[l];
        }
        st(c, at, &cc);
        st(hn, at, &h);
        if let Some((cell, k)) = rec.as_mut() {
            let r = cell_at(c0, *k, m, pad);
            for (q, v) in [i, f, g, o, cc, tc].iter().enumerate() {
                st(cell, r + q * L, v);
            }
        }
        *hm = h;
    }
    out
}

/// [`layer_tile`] for the layer's input width.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn layer_tile_any<T: Scalar>(
    pk: &Packed<T>,
    inp: &[[T; L]],
    c: &mut [T],
    hn: &mut [T],
    c0: usize,
    pad: usize,
    rec: Option<(&mut [T], usize)>,
) -> [[T; L]; H] {
    match pk.inputs {
        1 => layer_tile::<T, { 1 + H }>(pk, inp, c, hn, c0, pad, rec),
        2 => layer_tile::<T, { 2 + H }>(pk, inp, c, hn, c0, pad, rec),
        H => layer_tile::<T, { 2 * H }>(pk, inp, c, hn, c0, pad, rec),
        i => unreachable!("a layer of {i} inputs"),
    }
}

/// Forward of one step on one block: updates θ in place and the block's
/// recurrent state; keeps the tape entry (or the last one, for its
/// series).
///
/// The work goes tile by tile (L coordinates), layer by layer and within
/// a layer hidden unit by hidden unit ([`layer_tile`]); then the tile's
/// read-out, gates and θ. Only what the tape keeps is written out. Sums
/// run in a fixed order with separate multiplies and adds, so the AVX2 and
/// baseline builds agree bit for bit.
#[inline(always)]
fn block_step_body<T: Scalar>(
    blk: &mut Block<T>,
    sh: &Shared<T>,
    theta: &mut [T],
    grad: &[T],
    keep: bool,
) {
    let spec = &sh.spec;
    let w = &sh.w;
    let (len, pad) = (blk.len, blk.pad);
    let layers = spec.layers;
    let ni = spec.features.count();
    let gated = spec.gated();
    // The entry's buffers are recycled when no tape is kept; every sized
    // buffer is overwritten in full below.
    let mut t = if keep {
        blk.spare.pop().unwrap_or_default()
    } else {
        blk.last.take().unwrap_or_default()
    };
    let sized = |v: &mut Vec<T>, n: usize| v.resize(n, T::zero());
    let padded = |v: &mut Vec<T>, src: &[T]| {
        v.clear();
        v.extend_from_slice(src);
        v.resize(pad, T::zero());
    };
    padded(&mut t.grad, grad);
    sized(&mut t.x, ni * pad);
    for k in 0..pad {
        let f = spec.features.of(t.grad[k]);
        for (i, fi) in f.iter().take(ni).enumerate() {
            t.x[i * pad + k] = *fi;
        }
    }
    sized(&mut t.z, pad);
    if gated {
        padded(&mut t.theta_prev, theta);
        padded(&mut t.f_in, &blk.f_prev[..len]);
        padded(&mut t.i_in, &blk.i_prev[..len]);
        sized(&mut t.big_f, pad);
        sized(&mut t.big_i, pad);
    }
    if keep {
        sized(&mut t.cell, CELL * H * layers * pad);
    }
    let one = T::one();
    let scale = T::of(spec.scale);
    let mut inp = [[T::zero(); L]; 2 * H];
    for c0 in (0..pad).step_by(L) {
        for (i, x) in inp.iter_mut().enumerate().take(ni) {
            *x = ld(&t.x, i * pad + c0);
        }
        let mut kin = ni;
        for k in 0..layers {
            for m in 0..H {
                inp[kin + m] = ld(&blk.h[k], m * pad + c0);
            }
            let rec = keep.then(|| (&mut t.cell[..], k));
            let h = layer_tile_any(
                &sh.packs[k],
                &inp,
                &mut blk.c[k],
                &mut blk.hn[k],
                c0,
                pad,
                rec,
            );
            inp[..H].copy_from_slice(&h);
            kin = H;
        }
        let h = &inp[..H];
        let g = ld(&t.grad, c0);
        // z_t = scale (w_out · h_t + b_out), or -g_t.
        let z = if spec.read_out {
            let mut u = [T::zero(); L];
            for (wm, hm) in w.out_w.iter().zip(h) {
                for l in 0..L {
                    u[l] += *wm * hm[l];
                }
            }
            let mut z = [T::zero(); L];
            for l in 0..L {
                z[l] = (u[l] + w.out_b) * scale;
            }
            z
        } else {
            g.map(|v| -v)
        };
        st(&mut t.z, c0, &z);
        let n = L.min(len.saturating_sub(c0));
        let mut th = [T::zero(); L];
        th[..n].copy_from_slice(&theta[c0..c0 + n]);
        let mut next = [T::zero(); L];
        match spec.cell {
            // θ_t = θ_{t-1} + z_t
            Cell::None => {
                for l in 0..L {
                    next[l] = th[l] + z[l];
                }
            }
            // θ_t = f θ_{t-1} + i z_t
            Cell::Fixed { forget, input } => {
                let (fo, fi) = (T::of(forget), T::of(input));
                for l in 0..L {
                    next[l] = fo * th[l] + fi * z[l];
                }
            }
            Cell::Learned => {
                // f̃ = w_f · [h, θ, f̃_prev] + b_f, ĩ likewise.
                let (mut fa, mut ia) = ([T::zero(); L], [T::zero(); L]);
                for (m, hm) in h.iter().enumerate() {
                    let (wf, wi) = (w.w_f[m], w.w_i[m]);
                    for l in 0..L {
                        fa[l] += wf * hm[l];
                        ia[l] += wi * hm[l];
                    }
                }
                let (fin, iin) = (ld(&t.f_in, c0), ld(&t.i_in, c0));
                let (mut big_f, mut big_i) = ([one; L], [one; L]);
                for l in 0..L {
                    fa[l] = fa[l] + th[l] * w.w_f[H] + fin[l] * w.w_f[H + 1] + w.b_f;
                    ia[l] = ia[l] + th[l] * w.w_i[H] + iin[l] * w.w_i[H + 1] + w.b_i;
                }
                // F_t = σ(f̃_t), I_t = σ(ĩ_t);  θ_t = F_t θ_{t-1} + I_t z_t
                for l in 0..L {
                    big_f[l] = fa[l].sig();
                    big_i[l] = ia[l].sig();
                }
                for l in 0..L {
                    next[l] = big_f[l] * th[l] + big_i[l] * z[l];
                }
                st(&mut blk.f_prev, c0, &fa);
                st(&mut blk.i_prev, c0, &ia);
                st(&mut t.big_f, c0, &big_f);
                st(&mut t.big_i, c0, &big_i);
            }
        }
        theta[c0..c0 + n].copy_from_slice(&next[..n]);
    }
    for k in 0..layers {
        std::mem::swap(&mut blk.h[k], &mut blk.hn[k]);
    }
    if keep {
        blk.tape.push(t);
    } else {
        blk.last = Some(t);
    }
}

/// The seeds of one block's backward (see [`Unroll::backward`]).
struct Seeds<'a, T> {
    d_theta: &'a [T],
    d_state: Option<&'a [T]>,
    sigma: T,
    g_final: Option<&'a [T]>,
    /// The block's first column and the coordinate count (to read
    /// `d_state`'s rows).
    off: usize,
    n: usize,
}

/// [`block_backward_body`] compiled for AVX2 when the CPU has it.
fn block_backward<T: Scalar>(
    blk: &Block<T>,
    sh: &Shared<T>,
    s: Seeds<T>,
) -> (Weights<T>, Vec<T>, Vec<T>) {
    simd(
        #[inline(always)]
        || block_backward_body(blk, sh, s),
    )
}

/// The backward's running state for one block: dL/dθ and what flows from
/// step t+1 back to step t, the product inputs and outputs, the weight
/// gradients summed so far and per-lane partial sums.
struct Carry<T> {
    dth: Vec<T>,
    /// dL/df̃_t, dL/dĩ_t through step t+1.
    dfp: Vec<T>,
    dip: Vec<T>,
    /// Per layer, `[H][pad]`: dL/dc_t through step t+1.
    dc: Vec<Vec<T>>,
    /// Per layer, `[2H][pad]`: rows 0..H, dL/dh of the layer below at this
    /// step through this layer (`W_ih^T dz`; unused for layer 1); rows
    /// H..2H, dL/dh_{t-1} of this layer (`W_hh^T dz`, read by the step
    /// before).
    dh: Vec<Vec<T>>,
    /// `[4H][pad]`: this layer's dz at this step.
    dz: Vec<T>,
    /// Per layer, `[I + H + 1][pad]`: the layer's input, h_{t-1} and ones.
    xh: Vec<Vec<T>>,
    /// Per layer, `[4H][I + H + 1]`: `[dW_ih | dW_hh | db]` summed over
    /// steps.
    gw: Vec<Vec<T>>,
    /// Per-lane sums over tiles and steps: the read-out's weights `[H]` and
    /// bias, the gates' weights `[H + 2]` and biases.
    out_w: Vec<[T; L]>,
    out_b: [T; L],
    wf: Vec<[T; L]>,
    wi: Vec<[T; L]>,
    bf: [T; L],
    bi: [T; L],
}

impl<T: Scalar> Carry<T> {
    /// For a block of `pad` columns, with the seeds `s` (zero in the
    /// padding).
    fn new(spec: &Spec, len: usize, pad: usize, s: &Seeds<T>) -> Self {
        let z = |n: usize| vec![T::zero(); n];
        let lanes = |n: usize| vec![[T::zero(); L]; n];
        let mut dth = z(pad);
        dth[..len].copy_from_slice(s.d_theta);
        if let Some(g) = s.g_final {
            // d<g_T, θ_T>/dθ_T
            for (d, &gk) in dth.iter_mut().zip(g) {
                *d += s.sigma * gk;
            }
        }
        let layers = spec.layers;
        let mut row = 0;
        let mut seed = |r: usize, dst: &mut [T]| {
            if let Some(ds) = s.d_state {
                for i in 0..r {
                    dst[i * pad..i * pad + len]
                        .copy_from_slice(&ds[(row + i) * s.n + s.off..][..len]);
                }
            }
            row += r;
        };
        let (mut dc, mut dh) = (vec![], vec![]);
        for _ in 0..layers {
            let mut h = z(2 * H * pad);
            seed(H, &mut h[H * pad..]);
            let mut c = z(H * pad);
            seed(H, &mut c);
            dh.push(h);
            dc.push(c);
        }
        let (mut dfp, mut dip) = (z(pad), z(pad));
        if spec.cell.some() {
            seed(1, &mut dfp);
            seed(1, &mut dip);
        }
        let xh = (0..layers)
            .map(|k| {
                let rows = spec.inputs(k) + H;
                let mut v = z((rows + 1) * pad);
                v[rows * pad..].fill(T::one());
                v
            })
            .collect();
        let gw = (0..layers)
            .map(|k| z(Z * (spec.inputs(k) + H + 1)))
            .collect();
        Carry {
            dth,
            dfp,
            dip,
            dc,
            dh,
            dz: z(Z * pad),
            xh,
            gw,
            out_w: lanes(H),
            out_b: [T::zero(); L],
            wf: lanes(H + 2),
            wi: lanes(H + 2),
            bf: [T::zero(); L],
            bi: [T::zero(); L],
        }
    }
}

/// Backward of one block over all steps: the weights' gradient, dL/dθ_0
/// (`[len]`) and dL/d(state_0) (`[S][len]`).
#[inline(always)]
fn block_backward_body<T: Scalar>(
    blk: &Block<T>,
    sh: &Shared<T>,
    s: Seeds<T>,
) -> (Weights<T>, Vec<T>, Vec<T>) {
    let spec = &sh.spec;
    let w = &sh.w;
    let (len, pad) = (blk.len, blk.pad);
    let layers = spec.layers;
    let top = layers - 1;
    let one = T::one();
    let scale = T::of(spec.scale);
    let sigma = s.sigma;
    let gated = spec.gated();
    let mut cr = Carry::new(spec, len, pad, &s);
    for si in (0..blk.tape.len()).rev() {
        let t = &blk.tape[si];
        let prev = si.checked_sub(1).map(|p| &blk.tape[p]);
        for k in (0..layers).rev() {
            let kin = spec.inputs(k);
            // The layer's input rows of the product: the features, or the
            // layer below's h_t (written in the tile pass).
            if k == 0 {
                cr.xh[0][..kin * pad].copy_from_slice(&t.x);
            }
            let (dh_lo, dh_hi) = cr.dh.split_at_mut(k + 1);
            let dh_k = &dh_lo[k];
            let dh_above = dh_hi.first();
            let xh = &mut cr.xh[k];
            for c0 in (0..pad).step_by(L) {
                // The cell and the read-out (top layer): dL/dz_t, the gates'
                // gradients, dL/dθ_{t-1}.
                let (mut du, mut dfp, mut dip) = ([T::zero(); L], [T::zero(); L], [T::zero(); L]);
                if k == top {
                    let mut dth = ld(&cr.dth, c0);
                    let mut dzc = dth;
                    match spec.cell {
                        // θ_t = θ_{t-1} + z_t
                        Cell::None => {}
                        // θ_t = f θ_{t-1} + i z_t
                        Cell::Fixed { forget, input } => {
                            let (fo, fi) = (T::of(forget), T::of(input));
                            for l in 0..L {
                                dzc[l] = fi * dth[l];
                                dth[l] = fo * dth[l];
                            }
                        }
                        // θ_t = F θ_{t-1} + I z_t, F = σ(f̃), I = σ(ĩ), and
                        // f̃_{t+1}, ĩ_{t+1} read f̃_t, ĩ_t back.
                        Cell::Learned => {
                            let (tp, z) = (ld(&t.theta_prev, c0), ld(&t.z, c0));
                            let (bf, bi) = (ld(&t.big_f, c0), ld(&t.big_i, c0));
                            let (dfn, din) = (ld(&cr.dfp, c0), ld(&cr.dip, c0));
                            let (wft, wit) = (w.w_f[H], w.w_i[H]);
                            for l in 0..L {
                                let (f, i) = (bf[l], bi[l]);
                                let d_f = dth[l] * tp[l];
                                let d_i = dth[l] * z[l];
                                dzc[l] = dth[l] * i;
                                dfp[l] = d_f * f * (one - f) + dfn[l];
                                dip[l] = d_i * i * (one - i) + din[l];
                                dth[l] = dth[l] * f + dfp[l] * wft + dip[l] * wit;
                            }
                            acc_mul(&mut cr.wf[H], &dfp, &tp);
                            acc_mul(&mut cr.wi[H], &dip, &tp);
                            acc_mul(&mut cr.wf[H + 1], &dfp, &ld(&t.f_in, c0));
                            acc_mul(&mut cr.wi[H + 1], &dip, &ld(&t.i_in, c0));
                            acc(&mut cr.bf, &dfp);
                            acc(&mut cr.bi, &dip);
                            let (wf1, wi1) = (w.w_f[H + 1], w.w_i[H + 1]);
                            st(&mut cr.dfp, c0, &dfp.map(|d| d * wf1));
                            st(&mut cr.dip, c0, &dip.map(|d| d * wi1));
                        }
                    }
                    if sigma != T::zero() {
                        // d<g_{t-1}, θ_{t-1}>/dθ_{t-1}
                        let g = ld(&t.grad, c0);
                        for l in 0..L {
                            dth[l] += sigma * g[l];
                        }
                    }
                    st(&mut cr.dth, c0, &dth);
                    if spec.read_out {
                        // u = scale (w_out · h + b_out)
                        for l in 0..L {
                            du[l] = dzc[l] * scale;
                        }
                        acc(&mut cr.out_b, &du);
                    }
                }
                for m in 0..H {
                    let at = m * pad + c0;
                    let rec = cell_at(c0, k, m, pad);
                    let row = |q: usize| ld(&t.cell, rec + q * L);
                    let (i, f, g, o, tc) = (row(0), row(1), row(2), row(3), row(5));
                    // dL/dh_t: through step t+1, and from above (the layer
                    // above's W_ih^T dz, or the read-out and the gates).
                    let mut dh = ld(dh_k, (H + m) * pad + c0);
                    if k == top {
                        let mut h = [T::zero(); L];
                        for l in 0..L {
                            h[l] = o[l] * tc[l];
                        }
                        if spec.read_out {
                            let wo = w.out_w[m];
                            for l in 0..L {
                                dh[l] += wo * du[l];
                            }
                            acc_mul(&mut cr.out_w[m], &du, &h);
                        }
                        if gated {
                            let (wfm, wim) = (w.w_f[m], w.w_i[m]);
                            for l in 0..L {
                                dh[l] = dh[l] + wfm * dfp[l] + wim * dip[l];
                            }
                            acc_mul(&mut cr.wf[m], &dfp, &h);
                            acc_mul(&mut cr.wi[m], &dip, &h);
                        }
                    } else if let Some(above) = dh_above {
                        let a = ld(above, at);
                        for l in 0..L {
                            dh[l] += a[l];
                        }
                    }
                    // h_{t-1}, c_{t-1} of this layer, and h_t of the layer
                    // below (this layer's input).
                    let (hp, cp) = match prev {
                        Some(p) => {
                            prefetch(&p.cell, rec + AHEAD * CELL * L, CELL * L);
                            let (po, pc, ptc) = (
                                ld(&p.cell, rec + 3 * L),
                                ld(&p.cell, rec + 4 * L),
                                ld(&p.cell, rec + 5 * L),
                            );
                            let mut hp = [T::zero(); L];
                            for l in 0..L {
                                hp[l] = po[l] * ptc[l];
                            }
                            (hp, pc)
                        }
                        None => (ld(&blk.h0[k], at), ld(&blk.c0[k], at)),
                    };
                    st(xh, (kin + m) * pad + c0, &hp);
                    if k > 0 {
                        let below = cell_at(c0, k - 1, m, pad);
                        let (bo, btc) = (ld(&t.cell, below + 3 * L), ld(&t.cell, below + 5 * L));
                        let mut hb = [T::zero(); L];
                        for l in 0..L {
                            hb[l] = bo[l] * btc[l];
                        }
                        st(xh, m * pad + c0, &hb);
                    }
                    // c_t = f c_{t-1} + i g, h_t = o tanh(c_t).
                    let mut dcn = ld(&cr.dc[k], at);
                    let mut zq = [[one; L]; 4];
                    for l in 0..L {
                        let dc = dcn[l] + dh[l] * o[l] * (one - tc[l] * tc[l]);
                        let d_o = dh[l] * tc[l];
                        dcn[l] = dc * f[l];
                        zq[0][l] = dc * g[l] * i[l] * (one - i[l]);
                        zq[1][l] = dc * cp[l] * f[l] * (one - f[l]);
                        zq[2][l] = dc * i[l] * (one - g[l] * g[l]);
                        zq[3][l] = d_o * o[l] * (one - o[l]);
                    }
                    st(&mut cr.dc[k], at, &dcn);
                    for (q, zv) in zq.iter().enumerate() {
                        st(&mut cr.dz, (q * H + m) * pad + c0, zv);
                    }
                }
            }
            // [dW_ih | dW_hh | db] += dz [input; h_{t-1}; 1]^T
            let kk = kin + H;
            let dzm = Mat {
                data: &cr.dz[..],
                rs: pad,
                cs: 1,
            };
            let xhm = Mat {
                data: &cr.xh[k][..],
                rs: 1,
                cs: pad,
            };
            matmul(Z, kk + 1, pad, &mut cr.gw[k], true, dzm, xhm, false);
            // [dL/dh^{k-1}_t; dL/dh^k_{t-1}] = [W_ih | W_hh]^T dz (layer 1:
            // the second half only).
            let cat = &sh.packs[k].cat;
            if k > 0 {
                let wt = Mat {
                    data: &cat[..],
                    rs: 1,
                    cs: kk,
                };
                matmul(kk, pad, Z, &mut cr.dh[k], false, wt, dzm, false);
            } else {
                let wt = Mat {
                    data: &cat[kin..],
                    rs: 1,
                    cs: kk,
                };
                matmul(H, pad, Z, &mut cr.dh[0][H * pad..], false, wt, dzm, false);
            }
        }
    }
    // The weights' gradient: the products' sums, then the lanes in order.
    let mut gw = Weights::zeros(spec);
    for (k, lw) in gw.layers.iter_mut().enumerate() {
        let kin = spec.inputs(k);
        let kk = kin + H + 1;
        for j in 0..Z {
            let row = &cr.gw[k][j * kk..][..kk];
            lw.w_ih[j * kin..][..kin].copy_from_slice(&row[..kin]);
            lw.w_hh[j * H..][..H].copy_from_slice(&row[kin..kin + H]);
            lw.b[j] = row[kin + H];
        }
    }
    if spec.read_out {
        for (g, a) in gw.out_w.iter_mut().zip(&cr.out_w) {
            *g = lane_sum(a);
        }
        gw.out_b = lane_sum(&cr.out_b);
    }
    if spec.gated() {
        for (g, a) in gw.w_f.iter_mut().zip(&cr.wf) {
            *g = lane_sum(a);
        }
        for (g, a) in gw.w_i.iter_mut().zip(&cr.wi) {
            *g = lane_sum(a);
        }
        gw.b_f = lane_sum(&cr.bf);
        gw.b_i = lane_sum(&cr.bi);
    }
    // dL/d(state_0): h through step 1's W_hh^T dz, c through its cell,
    // the fed-back gates through step 1's (or passed through).
    let mut ds = vec![];
    for k in 0..layers {
        for m in 0..H {
            ds.extend_from_slice(&cr.dh[k][(H + m) * pad..][..len]);
        }
        for m in 0..H {
            ds.extend_from_slice(&cr.dc[k][m * pad..][..len]);
        }
    }
    if spec.cell.some() {
        ds.extend_from_slice(&cr.dfp[..len]);
        ds.extend_from_slice(&cr.dip[..len]);
    }
    (gw, cr.dth[..len].to_vec(), ds)
}

/// What a fused unroll produced, as the composed path's tensors.
pub struct Outcome {
    /// θ_T, `[1, n]`, in the graph.
    pub theta: Tensor,
    /// The state after the last step in [`Spec::state_rows`]' order
    /// (`[rows, n]` each), in the graph; with `state` only.
    pub state: Vec<Tensor>,
    /// `Σ_{t=0..=T} <stopgrad(g_t), θ_t>` (a scalar in the graph); with
    /// `segment` only.
    pub surrogate: Option<Tensor>,
    /// f at θ_0, ..., θ_{T-1} (and θ_T with `segment`).
    pub losses: Vec<f64>,
    /// The `(gradient, loss)` the objective gave at each call.
    pub inputs: Vec<(Tensor, f64)>,
    /// With `record`: per step, the series (`[1, n]` each).
    pub recorded: Vec<Vec<Tensor>>,
}

/// How [`run`] runs.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    pub steps: usize,
    pub record: bool,
    /// A truncated segment ([`super::unroll_segment`]): one more objective
    /// call at θ_T and the surrogate meta-loss.
    pub segment: bool,
    /// Return the state after the last step (in the graph).
    pub state: bool,
}

/// Unroll the rule `spec` with `weights` (the tensors of
/// [`Spec::weight_sizes`], in order) from `theta0` (`[1, n]`) and
/// `state0` ([`Spec::state_rows`]' tensors; `None`: zero) on `objective`,
/// with the kernel, as one candle op whose backward is the kernel's: the
/// outcome's tensors are in the graph of the weights, `theta0` and
/// `state0` (a tape is kept only when one of them is in a graph).
pub fn run(
    spec: &Spec,
    weights: &[Tensor],
    theta0: &Tensor,
    state0: Option<&[Tensor]>,
    objective: &mut dyn Objective,
    opts: RunOptions,
) -> Result<Outcome> {
    match theta0.dtype() {
        DType::F64 => run_as::<f64>(spec, weights, theta0, state0, objective, opts),
        _ => run_as::<f32>(spec, weights, theta0, state0, objective, opts),
    }
}

fn run_as<T: Scalar>(
    spec: &Spec,
    weights: &[Tensor],
    theta0: &Tensor,
    state0: Option<&[Tensor]>,
    objective: &mut dyn Objective,
    opts: RunOptions,
) -> Result<Outcome> {
    let dev = theta0.device().clone();
    let n = theta0.dim(1)?;
    let flat = |ts: &[Tensor]| -> Result<Tensor> {
        let v = ts
            .iter()
            .map(|t| t.flatten_all())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::cat(&v, 0)?)
    };
    let w_flat = flat(weights)?;
    let w = Weights::from_flat(spec, &w_flat.to_vec1::<T>()?);
    let s_flat = match state0 {
        Some(s) => flat(s)?,
        None => Tensor::zeros(0, T::DTYPE, &dev)?,
    };
    let keep = w_flat.track_op() || theta0.track_op() || s_flat.track_op();
    let s_vals = state0.map(|_| s_flat.to_vec1::<T>()).transpose()?;
    let th0 = theta0.flatten_all()?.to_vec1::<T>()?;
    let mut u = Unroll::new(*spec, w, th0, s_vals.as_deref(), keep);
    let mut losses = Vec::with_capacity(opts.steps + 1);
    let mut inputs = Vec::with_capacity(opts.steps + 1);
    let mut recorded = vec![];
    let mut surrogate = 0f64;
    let mut g_final = None;
    let calls = opts.steps + usize::from(opts.segment);
    for t in 0..calls {
        let theta = Tensor::from_slice(&u.theta, (1, n), &dev)?;
        let (grad, loss) = objective.loss_and_grad(&theta)?;
        let grad = grad.detach();
        let g = grad.flatten_all()?.to_dtype(T::DTYPE)?.to_vec1::<T>()?;
        if opts.segment {
            // <g_t, θ_t>
            surrogate += g
                .iter()
                .zip(&u.theta)
                .map(|(a, b)| a.f64() * b.f64())
                .sum::<f64>();
        }
        losses.push(loss);
        if t < opts.steps {
            if let Some(series) = u.step(&g, opts.record) {
                let row = |v: Vec<T>| Tensor::from_vec(v, (1, n), &dev);
                recorded.push(
                    series
                        .into_iter()
                        .map(row)
                        .collect::<candle_core::Result<_>>()?,
                );
            }
        } else {
            g_final = Some(g);
        }
        inputs.push((grad, loss));
    }
    let rows = spec.state_rows();
    let mut out = u.theta.clone();
    if opts.state {
        out.extend(u.state());
    }
    out.push(T::of(surrogate));
    let op = UnrollOp {
        unroll: u,
        out: out.clone(),
        state: opts.state,
        g_final,
    };
    let y = w_flat.apply_op3(theta0, &s_flat, op)?;
    let theta = y.narrow(0, 0, n)?.reshape((1, n))?;
    let mut state = vec![];
    if opts.state {
        let mut at = n;
        for r in rows {
            state.push(y.narrow(0, at, r * n)?.reshape((r, n))?);
            at += r * n;
        }
    }
    let surrogate = opts
        .segment
        .then(|| y.narrow(0, out.len() - 1, 1)?.reshape(()))
        .transpose()?;
    Ok(Outcome {
        theta,
        state,
        surrogate,
        losses,
        inputs,
        recorded,
    })
}

/// The fused unroll as a candle op: `(weights [W], θ_0 [1, n], state_0
/// [S n] or [0])` to `[θ_T (n) | state_T (S n, with `state`) |
/// surrogate (1)]`. Its forward was run step by step with the objective
/// ([`run`]) and is handed over as computed; its backward is
/// [`Unroll::backward`].
struct UnrollOp<T: Scalar> {
    unroll: Unroll<T>,
    out: Vec<T>,
    state: bool,
    g_final: Option<Vec<T>>,
}

impl<T: Scalar> candle_core::CustomOp3 for UnrollOp<T> {
    fn name(&self) -> &'static str {
        "fused-learned-rule-unroll"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((T::to_cpu_storage(&self.out), Shape::from(self.out.len())))
    }

    fn bwd(
        &self,
        w: &Tensor,
        theta0: &Tensor,
        state0: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let u = &self.unroll;
        let spec = &u.shared.spec;
        let n = u.theta.len();
        let g = grad.to_vec1::<T>()?;
        let s_len = spec.state_rows().iter().sum::<usize>() * n;
        let d_state = self.state.then(|| &g[n..n + s_len]);
        let sigma = g[g.len() - 1];
        let (gw, d0, ds0) = u.backward(&g[..n], d_state, sigma, self.g_final.as_deref());
        let dev = w.device();
        let dw = w
            .track_op()
            .then(|| Tensor::from_vec(gw.to_flat(spec), w.shape(), dev))
            .transpose()?;
        let dt = theta0
            .track_op()
            .then(|| Tensor::from_vec(d0, theta0.shape(), dev))
            .transpose()?;
        let ds = (state0.track_op() && state0.elem_count() == s_len)
            .then(|| Tensor::from_vec(ds0, state0.shape(), dev))
            .transpose()?;
        Ok((dw, dt, ds))
    }
}
