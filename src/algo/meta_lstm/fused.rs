//! The meta-learner's two layers as one fused kernel over all learner
//! coordinates, with a hand-written backward through time.
//!
//! The composed path ([`super::MetaLstm::unroll`]) builds a candle graph of
//! about twenty `[80, n]`-sized tensors per step and lets autograd walk it;
//! here every coordinate's whole step (both layers and the cell update) is
//! one pass over a block of [`CHUNK`] coordinates, the blocks run in
//! parallel (rayon), and the backward is the chain rule written out below.
//!
//! Within a block the forward goes tile by tile (16 coordinates, [`L`])
//! and hidden unit by hidden unit: the unit's four gate pre-activations
//! are summed in registers over the 22 inputs that differ by coordinate
//! (the loss inputs, equal for all, are folded into the bias), pass
//! through their nonlinearities, and update c, h and the meta-gates, all
//! before the next unit; no `[80, n]` intermediate is written except what
//! the tape keeps. The backward makes one such pass per step (the chain
//! rule through the meta-gates, the cell and the nonlinearities, writing
//! dz), then forms the weight gradient and dL/dh_{t-1} as two products
//! (`gemm`).
//!
//! Per step and coordinate the tape keeps what the backward needs and is
//! expensive to recompute: the four layer-1 gates after their
//! nonlinearities, c_t and tanh(c_t) (tile-major records, in the order
//! both passes walk them), the two preprocessed gradient inputs,
//! theta_{t-1}, the gradient, the meta-gates F_t, I_t and the pre-sigmoid
//! values fed back from the previous step (128 values: memory linear in T,
//! about 58 MB per step for the 113k-coordinate Omniglot learner in
//! float32); h_t is recomputed as o_t * tanh(c_t). Evaluation keeps no
//! tape.
//!
//! Gradient checkpointing over steps ([`Unroll::set_segment`], the
//! `grad_checkpoint_steps` option): instead of the tape, keep per step only
//! the learner's gradient and loss (the inputs, one value per coordinate)
//! and, every k steps, the block's recurrent state (h, c, the fed-back
//! f̃, ĩ and θ: 43 values per coordinate). The backward recomputes each
//! segment's tape from its saved state, block by block (a segment's tape is
//! k x 128 values for 256 coordinates, in cache), and runs the same
//! backward over it: the gradient is bit for bit the full tape's, for one
//! more forward pass of the meta-learner (the learner is not re-run).
//!
//! Equations (module docs of [`super`]; coordinate k, step t):
//! - x_t = (preprocess(grad_t), preprocess(loss_t))             (4 inputs)
//! - z_t = W_ih x_t + W_hh h_{t-1} + b;  [i, f, g, o] = [σ, σ, tanh, σ](z_t)
//! - c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)
//! - f̃_t = w_f · [h_t, θ_{t-1}, f̃_{t-1}] + b_f;  F_t = σ(f̃_t)
//! - ĩ_t = w_i · [h_t, θ_{t-1}, ĩ_{t-1}] + b_i;  I_t = σ(ĩ_t)
//! - θ_t = F_t * θ_{t-1} - I_t * grad_t
//!
//! Weight gradients are summed per block (in per-lane partial sums and
//! products of fixed shape) and then over blocks in block order, so the
//! result does not depend on the number of threads; sums use separate
//! multiplies and adds in a fixed order, so the AVX2 and baseline builds
//! agree bit for bit.

use rayon::prelude::*;

use super::{preprocess, Gates, HIDDEN as H};
use crate::model::kernels::gemm::{matmul, Mat};
use crate::model::kernels::scalar::Scalar;
use crate::model::kernels::simd::simd;
use crate::model::kernels::tile::{acc, acc_mul, lane_sum, ld, mac, map, prefetch, st, L};

// Tiles are [`L`] coordinates ([`crate::model::kernels::tile`]): a tile's
// four gate rows of one hidden unit (4 x 16 values) stay in registers while
// the 22 inputs that differ by coordinate are multiplied in. Blocks are
// padded to a multiple of L (the padding lanes start at zero and get a
// zero gradient).

/// Coordinates per block: the block's state and the backward's dz and
/// carried gradients (about 150 values per coordinate) fit in L2.
pub const CHUNK: usize = 256;
/// Layer-1 pre-activations per coordinate.
const Z: usize = 4 * H;
/// Layer-1 inputs per coordinate.
const IN: usize = 4;
/// Layer-1 inputs that differ by coordinate: the preprocessed gradient
/// (2) and h_{t-1} (20); the preprocessed loss (2) is the same for all.
const KIN: usize = 2 + H;

/// The meta-learner's weights (or their gradients), as flat arrays in the
/// layout of the composed path's tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights<T> {
    /// `[80, 4]`, row-major.
    pub w_ih: Vec<T>,
    /// `[80, 20]`, row-major.
    pub w_hh: Vec<T>,
    /// `[80]`.
    pub b: Vec<T>,
    /// `[22]`: 20 for h, then theta, then the fed-back f.
    pub w_f: Vec<T>,
    /// `[22]`: 20 for h, then theta, then the fed-back i.
    pub w_i: Vec<T>,
    pub b_f: T,
    pub b_i: T,
}

impl<T: Scalar> Weights<T> {
    /// All zeros (a gradient accumulator).
    pub fn zeros() -> Self {
        Weights {
            w_ih: vec![T::zero(); Z * IN],
            w_hh: vec![T::zero(); Z * H],
            b: vec![T::zero(); Z],
            w_f: vec![T::zero(); H + 2],
            w_i: vec![T::zero(); H + 2],
            b_f: T::zero(),
            b_i: T::zero(),
        }
    }

    fn add(&mut self, o: &Self) {
        let add = |a: &mut [T], b: &[T]| a.iter_mut().zip(b).for_each(|(x, y)| *x += *y);
        add(&mut self.w_ih, &o.w_ih);
        add(&mut self.w_hh, &o.w_hh);
        add(&mut self.b, &o.b);
        add(&mut self.w_f, &o.w_f);
        add(&mut self.w_i, &o.w_i);
        self.b_f += o.b_f;
        self.b_i += o.b_i;
    }
}

/// What the backward needs from one step of one block.
#[derive(Debug, Default)]
struct Tape<T> {
    /// `[pad / L][H][CELL][L]`: per tile and hidden unit, the gates i,
    /// f, g, o after their nonlinearities, c_t and tanh(c_t) ([`cell`]).
    /// Tile-major, in the order the forward writes and the backward reads:
    /// both stream through it (row-major, the two dozen rows a tile
    /// touches defeated the hardware prefetchers).
    cell: Vec<T>,
    /// `[2][pad]`: the preprocessed gradient (the two layer-1 inputs that
    /// differ by coordinate).
    x: Vec<T>,
    /// The preprocessed loss (the other two inputs, the same for all).
    la: T,
    lb: T,
    /// `[len]` each.
    theta_prev: Vec<T>,
    grad: Vec<T>,
    big_f: Vec<T>,
    big_i: Vec<T>,
    /// The pre-sigmoid f̃_{t-1}, ĩ_{t-1} this step was fed.
    f_in: Vec<T>,
    i_in: Vec<T>,
}

/// A block's recurrent state before a segment's first step (gradient
/// checkpointing): h, c and the fed-back values after the previous step,
/// and θ before this one.
#[derive(Debug)]
struct Mark<T> {
    h: Vec<T>,
    c: Vec<T>,
    f_prev: Vec<T>,
    i_prev: Vec<T>,
    theta: Vec<T>,
}

/// One block of coordinates: its recurrent state and tape. Every buffer
/// has `pad` columns (`len` rounded up to a whole tile).
#[derive(Debug)]
struct Block<T> {
    len: usize,
    pad: usize,
    h: Vec<T>,
    /// h_t while a step computes it (h_{t-1} is still read); then swapped.
    hn: Vec<T>,
    c: Vec<T>,
    f_prev: Vec<T>,
    i_prev: Vec<T>,
    tape: Vec<Tape<T>>,
    /// Tape entries of an earlier unroll, their buffers reused.
    spare: Vec<Tape<T>>,
    /// With gradient checkpointing: the state at each segment's start and
    /// the learner's gradient at every step (instead of `tape`).
    marks: Vec<Mark<T>>,
    grads: Vec<Vec<T>>,
}

impl<T: Scalar> Block<T> {
    fn new(len: usize) -> Self {
        let pad = len.div_ceil(L) * L;
        Block {
            len,
            pad,
            h: vec![T::zero(); H * pad],
            hn: vec![T::zero(); H * pad],
            c: vec![T::zero(); H * pad],
            f_prev: vec![T::zero(); pad],
            i_prev: vec![T::zero(); pad],
            tape: vec![],
            spare: vec![],
            marks: vec![],
            grads: vec![],
        }
    }

    fn mark(&self, theta: &[T]) -> Mark<T> {
        Mark {
            h: self.h.clone(),
            c: self.c.clone(),
            f_prev: self.f_prev.clone(),
            i_prev: self.i_prev.clone(),
            theta: theta.to_vec(),
        }
    }

    fn restore(&mut self, m: &Mark<T>) {
        self.h.copy_from_slice(&m.h);
        self.c.copy_from_slice(&m.c);
        self.f_prev.copy_from_slice(&m.f_prev);
        self.i_prev.copy_from_slice(&m.i_prev);
    }
}

/// An unroll of the meta-learner over all coordinates.
#[derive(Debug)]
pub struct Unroll<T> {
    /// θ_t after the steps taken so far.
    pub theta: Vec<T>,
    blocks: Vec<Block<T>>,
    /// Keep the tape (meta-training) or not (evaluation).
    keep: bool,
    gates: Gates,
    /// Gradient checkpointing: keep the state every `segment` steps and
    /// recompute the tape in the backward (0: keep the whole tape).
    segment: usize,
    /// Steps taken, and what every block's step shared at each.
    inputs: Vec<StepIn<T>>,
}

impl<T: Scalar> Unroll<T> {
    /// Start from θ_0 with zero recurrent state.
    pub fn new(theta0: Vec<T>, gates: Gates, keep: bool) -> Self {
        let n = theta0.len();
        let blocks = (0..n.div_ceil(CHUNK))
            .map(|b| Block::new(CHUNK.min(n - b * CHUNK)))
            .collect();
        Unroll {
            theta: theta0,
            blocks,
            keep,
            gates,
            segment: 0,
            inputs: vec![],
        }
    }

    /// Gradient checkpointing for the unrolls that keep a tape (learned
    /// gates): keep the state every `k` steps and recompute the steps
    /// between in the backward; 0 keeps the whole tape. Set it before the
    /// first step (a reset keeps it).
    pub fn set_segment(&mut self, k: usize) {
        self.segment = k;
    }

    fn checkpointed(&self) -> bool {
        self.keep && self.segment > 0 && self.gates == Gates::Learned
    }

    /// Start again from θ_0 (same number of coordinates), keeping the
    /// buffers of this unroll's tape for reuse: meta-training episodes
    /// then allocate nothing.
    pub fn reset(&mut self, theta0: &[T], gates: Gates, keep: bool) {
        if theta0.len() != self.theta.len() {
            *self = Unroll::new(theta0.to_vec(), gates, keep);
            return;
        }
        self.theta.copy_from_slice(theta0);
        self.gates = gates;
        self.keep = keep;
        for b in &mut self.blocks {
            b.h.fill(T::zero());
            b.c.fill(T::zero());
            b.f_prev.fill(T::zero());
            b.i_prev.fill(T::zero());
            let used: Vec<Tape<T>> = b.tape.drain(..).collect();
            b.spare.extend(used);
            b.marks.clear();
            b.grads.clear();
        }
        self.inputs.clear();
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.inputs.len()
    }

    /// One update θ_t = F_t θ_{t-1} - I_t grad_t from the learner's
    /// gradient and loss at θ_{t-1}. With `record`, returns (F_t, I_t)
    /// after the sigmoid for every coordinate.
    pub fn step(
        &mut self,
        w: &Weights<T>,
        grad: &[T],
        loss: f64,
        p: f64,
        record: bool,
    ) -> Option<(Vec<T>, Vec<T>)> {
        assert_eq!(grad.len(), self.theta.len(), "gradient and theta sizes");
        let (la, lb) = preprocess(loss, p);
        let (la, lb) = (T::of(la), T::of(lb));
        let keep = self.keep;
        let gates = self.gates;
        let checkpointed = self.checkpointed();
        let mark = checkpointed && self.inputs.len().is_multiple_of(self.segment.max(1));
        self.inputs.push(StepIn { la, lb, p, keep });
        let pk = Packed::new(w, la, lb);
        self.blocks
            .par_iter_mut()
            .zip(self.theta.par_chunks_mut(CHUNK))
            .zip(grad.par_chunks(CHUNK))
            .for_each(|((blk, theta), g)| {
                let t = match gates {
                    Gates::Learned if checkpointed => {
                        if mark {
                            let m = blk.mark(theta);
                            blk.marks.push(m);
                        }
                        blk.grads.push(g.to_vec());
                        let s = StepIn {
                            la,
                            lb,
                            p,
                            keep: false,
                        };
                        block_step(blk, w, &pk, theta, g, s)
                    }
                    Gates::Learned => block_step(blk, w, &pk, theta, g, StepIn { la, lb, p, keep }),
                    Gates::Fixed { forget, input } => {
                        let (fo, inp) = (T::of(forget), T::of(input));
                        let tape = keep.then(|| Tape {
                            cell: vec![],
                            x: vec![],
                            la,
                            lb,
                            theta_prev: theta.to_vec(),
                            grad: g.to_vec(),
                            big_f: vec![fo; theta.len()],
                            big_i: vec![inp; theta.len()],
                            f_in: vec![],
                            i_in: vec![],
                        });
                        // θ_t = f θ_{t-1} - i grad_t with constant gates.
                        for (th, gk) in theta.iter_mut().zip(g) {
                            *th = fo * *th - inp * *gk;
                        }
                        tape
                    }
                };
                if let Some(t) = t {
                    blk.tape.push(t);
                }
            });
        record.then(|| {
            let n = self.theta.len();
            let (mut f, mut i) = (Vec::with_capacity(n), Vec::with_capacity(n));
            for blk in &self.blocks {
                match (gates, blk.tape.last()) {
                    (_, Some(t)) if keep => {
                        f.extend_from_slice(&t.big_f[..blk.len]);
                        i.extend_from_slice(&t.big_i[..blk.len]);
                    }
                    (Gates::Fixed { forget, input }, _) => {
                        f.extend(std::iter::repeat_n(T::of(forget), blk.len));
                        i.extend(std::iter::repeat_n(T::of(input), blk.len));
                    }
                    // f_prev / i_prev now hold this step's pre-sigmoid values.
                    (Gates::Learned, _) => {
                        f.extend(blk.f_prev[..blk.len].iter().map(|v| v.sig()));
                        i.extend(blk.i_prev[..blk.len].iter().map(|v| v.sig()));
                    }
                }
            }
            (f, i)
        })
    }

    /// Backward through every step taken, from dL/dθ_T: returns the
    /// weights' gradient and dL/dθ_0.
    pub fn backward(&self, w: &Weights<T>, d_theta_t: &[T]) -> (Weights<T>, Vec<T>) {
        assert!(self.keep, "backward needs the tape");
        assert_eq!(d_theta_t.len(), self.theta.len());
        let n = self.theta.len();
        let mut d_theta0 = vec![T::zero(); n];
        let gates = self.gates;
        // With checkpointing, every step's packed weights, once for all
        // blocks' recomputed forwards.
        let packs: Vec<Packed<T>> = if self.checkpointed() {
            let pack = |i: &StepIn<T>| Packed::new(w, i.la, i.lb);
            self.inputs.iter().map(pack).collect()
        } else {
            vec![]
        };
        let seg = self
            .checkpointed()
            .then_some((self.segment, &self.inputs[..], &packs[..]));
        let partial: Vec<Weights<T>> = self
            .blocks
            .par_iter()
            .zip(d_theta0.par_chunks_mut(CHUNK))
            .zip(d_theta_t.par_chunks(CHUNK))
            .map(|((blk, d0), dt)| {
                let mut gw = Weights::zeros();
                block_backward(blk, w, gates, seg, dt, d0, &mut gw);
                gw
            })
            .collect();
        let mut total = Weights::zeros();
        for p in &partial {
            total.add(p);
        }
        (total, d_theta0)
    }
}

/// What every block's step shares: the preprocessed loss pair, the
/// preprocessing constant p, and whether the tape is kept.
#[derive(Debug, Clone, Copy)]
struct StepIn<T> {
    la: T,
    lb: T,
    p: f64,
    keep: bool,
}

/// [`block_step_body`] compiled for AVX2 when the CPU has it (8-wide
/// vectors; the default build targets baseline x86-64): [`simd`].
fn block_step<T: Scalar>(
    blk: &mut Block<T>,
    w: &Weights<T>,
    pk: &Packed<T>,
    theta: &mut [T],
    grad: &[T],
    s: StepIn<T>,
) -> Option<Tape<T>> {
    simd(
        #[inline(always)]
        || block_step_body(blk, w, pk, theta, grad, s),
    )
}

/// With gradient checkpointing: the segment length, and every step's
/// shared inputs and packed weights.
type Segments<'a, T> = Option<(usize, &'a [StepIn<T>], &'a [Packed<T>])>;

/// [`block_backward_body`], compiled for AVX2 when the CPU has it
/// ([`simd`]).
fn block_backward<T: Scalar>(
    blk: &Block<T>,
    w: &Weights<T>,
    gates: Gates,
    seg: Segments<T>,
    d_theta_t: &[T],
    d0: &mut [T],
    gw: &mut Weights<T>,
) {
    simd(
        #[inline(always)]
        || block_backward_body(blk, w, gates, seg, d_theta_t, d0, gw),
    )
}

/// The layer-1 weights regrouped for the tiles of [`block_step_body`]:
/// for hidden unit m and input k, the weights of its four gate rows
/// (i, f, g, o) side by side, and per m the four biases with the loss
/// inputs (the same for every coordinate) folded in.
struct Packed<T> {
    /// `[H][KIN]`: `w[m * KIN + k][q] = W[q H + m][k]`, k over the two
    /// gradient inputs (columns 0 and 1 of W_ih), then the 20 of W_hh.
    w: Vec<[T; 4]>,
    /// `[H]`: `b[q H + m] + W_ih[q H + m][2] la + W_ih[q H + m][3] lb`.
    bias: Vec<[T; 4]>,
}

impl<T: Scalar> Packed<T> {
    fn new(w: &Weights<T>, la: T, lb: T) -> Self {
        let mut pw = vec![[T::zero(); 4]; H * KIN];
        let mut bias = vec![[T::zero(); 4]; H];
        for m in 0..H {
            for q in 0..4 {
                let j = q * H + m;
                let wi = &w.w_ih[j * IN..][..IN];
                bias[m][q] = w.b[j] + wi[2] * la + wi[3] * lb;
                pw[m * KIN][q] = wi[0];
                pw[m * KIN + 1][q] = wi[1];
                for k in 0..H {
                    pw[m * KIN + 2 + k][q] = w.w_hh[j * H + k];
                }
            }
        }
        Packed { w: pw, bias }
    }
}

/// Values per tile and hidden unit in a tape's `cell`: i, f, g, o, c, tanh c.
const CELL: usize = 6;
/// How many records ahead the backward prefetches the previous step's tape.
const AHEAD: usize = 8;
/// Where the record of the tile at column `c0` and hidden unit `m` starts
/// in a tape's `cell`.
#[inline(always)]
fn cell(c0: usize, m: usize) -> usize {
    (c0 / L * H + m) * CELL * L
}

/// Forward of one step on one block (learned gates). Updates θ in place
/// and the block's recurrent state; returns the tape entry if kept.
///
/// The work goes tile by tile (L coordinates), and within a tile hidden
/// unit by hidden unit: the unit's four gate pre-activations are summed in
/// registers over the 22 per-coordinate inputs (onto the bias with the
/// loss inputs folded in), go through their nonlinearities, update c and
/// h, and add h's share to the meta-gates; then the tile's meta-gates and
/// θ. Only what the tape keeps is written out. Sums run in a fixed order
/// with separate multiplies and adds, so the AVX2 and baseline builds
/// agree bit for bit.
#[inline(always)]
fn block_step_body<T: Scalar>(
    blk: &mut Block<T>,
    w: &Weights<T>,
    pk: &Packed<T>,
    theta: &mut [T],
    grad: &[T],
    s: StepIn<T>,
) -> Option<Tape<T>> {
    let StepIn { la, lb, p, keep } = s;
    let (len, pad) = (blk.len, blk.pad);
    // The tape entry's buffers are recycled (no allocation, no page
    // faults) and refilled. Every `sized` buffer is overwritten in full
    // below, so it is not zeroed first (only growth is): zeroing cost a
    // pass over the whole tape per step.
    let mut t = blk.spare.pop().unwrap_or_default();
    let sized = |v: &mut Vec<T>, n: usize| v.resize(n, T::zero());
    // Per-coordinate inputs, zero in the padding.
    let padded = |v: &mut Vec<T>, src: &[T]| {
        v.clear();
        v.extend_from_slice(src);
        v.resize(pad, T::zero());
    };
    t.la = la;
    t.lb = lb;
    sized(&mut t.x, 2 * pad);
    {
        let (x0, x1) = t.x.split_at_mut(pad);
        for k in 0..len {
            let (a, b) = preprocess(grad[k].f64(), p);
            x0[k] = T::of(a);
            x1[k] = T::of(b);
        }
        x0[len..].fill(T::zero());
        x1[len..].fill(T::zero());
    }
    padded(&mut t.theta_prev, theta);
    padded(&mut t.grad, grad);
    // The fed-back f̃_{t-1}, ĩ_{t-1} this step sees go to the tape.
    padded(&mut t.f_in, &blk.f_prev);
    padded(&mut t.i_in, &blk.i_prev);
    if keep {
        sized(&mut t.cell, CELL * H * pad);
    }
    sized(&mut t.big_f, pad);
    sized(&mut t.big_i, pad);
    let one = T::one();
    let mut hp = [[T::zero(); L]; H];
    for c0 in (0..pad).step_by(L) {
        let xs = [ld(&t.x, c0), ld(&t.x, pad + c0)];
        for (k, r) in hp.iter_mut().enumerate() {
            *r = ld(&blk.h, k * pad + c0);
        }
        // f̃ = w_f·[h, θ, f̃_prev] + b_f, ĩ likewise, summed over m below.
        let mut fa = [w.b_f; L];
        let mut ia = [w.b_i; L];
        for m in 0..H {
            // z = W_ih x + W_hh h_{t-1} + b for rows m of [i, f, g, o].
            let wm = &pk.w[m * KIN..][..KIN];
            let mut a = pk.bias[m].map(|b| [b; L]);
            for (wk, xk) in wm[..2].iter().zip(&xs) {
                mac(&mut a, wk, xk);
            }
            for (wk, hk) in wm[2..].iter().zip(&hp) {
                mac(&mut a, wk, hk);
            }
            // [i, f, g, o] = [σ, σ, tanh, σ](z)
            let [mut i, mut f, mut g, mut o] = a;
            map(&mut i, |v| v.sig());
            map(&mut f, |v| v.sig());
            map(&mut g, |v| v.th());
            map(&mut o, |v| v.sig());
            // c_t = f c_{t-1} + i g;  h_t = o tanh(c_t)
            let at = m * pad + c0;
            let mut c = ld(&blk.c, at);
            let mut tc = [T::zero(); L];
            let mut h = [T::zero(); L];
            for l in 0..L {
                c[l] = f[l] * c[l] + i[l] * g[l];
            }
            for l in 0..L {
                tc[l] = c[l].th();
            }
            for l in 0..L {
                h[l] = o[l] * tc[l];
            }
            let (wf, wi) = (w.w_f[m], w.w_i[m]);
            for l in 0..L {
                fa[l] += wf * h[l];
                ia[l] += wi * h[l];
            }
            st(&mut blk.c, at, &c);
            st(&mut blk.hn, at, &h);
            if keep {
                let rec = cell(c0, m);
                for (k, r) in [i, f, g, o, c, tc].iter().enumerate() {
                    st(&mut t.cell, rec + k * L, r);
                }
            }
        }
        // F_t = σ(f̃_t), I_t = σ(ĩ_t);  θ_t = F_t θ_{t-1} - I_t grad_t
        let (th, gr) = (ld(&t.theta_prev, c0), ld(&t.grad, c0));
        let (fin, iin) = (ld(&t.f_in, c0), ld(&t.i_in, c0));
        let (mut big_f, mut big_i, mut next) = ([one; L], [one; L], [one; L]);
        for l in 0..L {
            fa[l] = fa[l] + w.w_f[H] * th[l] + w.w_f[H + 1] * fin[l];
            ia[l] = ia[l] + w.w_i[H] * th[l] + w.w_i[H + 1] * iin[l];
        }
        for l in 0..L {
            big_f[l] = fa[l].sig();
            big_i[l] = ia[l].sig();
        }
        for l in 0..L {
            next[l] = big_f[l] * th[l] - big_i[l] * gr[l];
        }
        st(&mut blk.f_prev, c0, &fa);
        st(&mut blk.i_prev, c0, &ia);
        st(&mut t.big_f, c0, &big_f);
        st(&mut t.big_i, c0, &big_i);
        let n = L.min(len - c0);
        theta[c0..c0 + n].copy_from_slice(&next[..n]);
    }
    std::mem::swap(&mut blk.h, &mut blk.hn);
    if keep {
        Some(t)
    } else {
        blk.spare.push(t);
        None
    }
}

/// Backward of one block over all steps: accumulates the weights'
/// gradient into `gw` and writes dL/dθ_0 into `d0`. With `seg`, the tape
/// of each segment is first recomputed from its mark (last segment first).
#[inline(always)]
fn block_backward_body<T: Scalar>(
    blk: &Block<T>,
    w: &Weights<T>,
    gates: Gates,
    seg: Segments<T>,
    d_theta_t: &[T],
    d0: &mut [T],
    gw: &mut Weights<T>,
) {
    let (len, pad) = (blk.len, blk.pad);
    let mut carry = Carry::new(pad, d_theta_t);
    if let Gates::Fixed { forget, .. } = gates {
        let fo = T::of(forget);
        for _ in &blk.tape {
            carry.dth.iter_mut().for_each(|d| *d *= fo);
        }
        d0.copy_from_slice(&carry.dth[..len]);
        return;
    }
    match seg {
        None => {
            let zeros = vec![T::zero(); H * pad];
            backward_steps(&blk.tape, &zeros, &zeros, w, &mut carry, gw);
        }
        Some((k, inputs, packs)) => {
            let mut scratch = Block::new(len);
            let mut tapes = Vec::with_capacity(k);
            for (j, m) in blk.marks.iter().enumerate().rev() {
                let (a, b) = (j * k, ((j + 1) * k).min(inputs.len()));
                scratch.restore(m);
                let mut theta = m.theta.clone();
                for (s, inp) in inputs.iter().enumerate().take(b).skip(a) {
                    let inp = StepIn { keep: true, ..*inp };
                    let pk = &packs[s];
                    let t = block_step_body(&mut scratch, w, pk, &mut theta, &blk.grads[s], inp);
                    tapes.push(t.expect("a kept tape entry"));
                }
                backward_steps(&tapes, &m.c, &m.h, w, &mut carry, gw);
                scratch.spare.append(&mut tapes);
            }
        }
    }
    carry.reduce_into(gw);
    d0.copy_from_slice(&carry.dth[..len]);
}

/// The backward's running state: dL/dθ and what flows from step t+1 back
/// to step t, per-lane partial sums of the weight gradients, and scratch
/// buffers.
struct Carry<T> {
    dth: Vec<T>,
    dc_next: Vec<T>,
    dfp_next: Vec<T>,
    dip_next: Vec<T>,
    dz: Vec<T>,
    /// `[KIN][pad]` each: the step's per-coordinate layer-1 inputs, the
    /// preprocessed gradient (2 rows, in `h_prev` when its product runs)
    /// and h (20 rows): h_t and h_{t-1} of the step being differentiated.
    h: Vec<T>,
    h_prev: Vec<T>,
    /// `[Z][KIN]`: dL/d[W_ih[:, 0..2] | W_hh], summed over steps.
    gxh: Vec<T>,
    /// `[H][pad]`: dL/dh_t through step t+1's z (W_hh^T dz_{t+1}).
    dh_next: Vec<T>,
    /// Per-lane sums over tiles and steps: w_f's and w_i's gradients
    /// (`[H + 2]`) and b_f's, b_i's; per step, db's (`[Z]`).
    wf: Vec<[T; L]>,
    wi: Vec<[T; L]>,
    bf: [T; L],
    bi: [T; L],
    db: Vec<[T; L]>,
}

impl<T: Scalar> Carry<T> {
    /// For a block of `pad` columns (dL/dθ_T is zero in the padding).
    fn new(pad: usize, d_theta_t: &[T]) -> Self {
        let z = |n: usize| vec![T::zero(); n];
        let lanes = |n: usize| vec![[T::zero(); L]; n];
        let mut dth = d_theta_t.to_vec();
        dth.resize(pad, T::zero());
        Carry {
            dth,
            dc_next: z(H * pad),
            dfp_next: z(pad),
            dip_next: z(pad),
            dz: z(Z * pad),
            h: z(KIN * pad),
            h_prev: z(KIN * pad),
            gxh: z(Z * KIN),
            dh_next: z(H * pad),
            wf: lanes(H + 2),
            wi: lanes(H + 2),
            bf: [T::zero(); L],
            bi: [T::zero(); L],
            db: lanes(Z),
        }
    }

    /// Adds the per-lane sums of the meta-gates' weight gradients to `gw`
    /// (lanes in order).
    fn reduce_into(&self, gw: &mut Weights<T>) {
        let total = lane_sum::<T>;
        for (g, a) in gw.w_f.iter_mut().zip(&self.wf) {
            *g += total(a);
        }
        for (g, a) in gw.w_i.iter_mut().zip(&self.wi) {
            *g += total(a);
        }
        gw.b_f += total(&self.bf);
        gw.b_i += total(&self.bi);
        for j in 0..Z {
            let row = &self.gxh[j * KIN..][..KIN];
            gw.w_ih[j * IN] += row[0];
            gw.w_ih[j * IN + 1] += row[1];
            for (g, &v) in gw.w_hh[j * H..][..H].iter_mut().zip(&row[2..]) {
                *g += v;
            }
        }
    }
}

/// h = o * tanh(c) of a tape entry's tile at `c0`, hidden unit `m`.
#[inline(always)]
fn tape_h<T: Scalar>(t: &Tape<T>, c0: usize, m: usize) -> [T; L] {
    let rec = cell(c0, m);
    let (o, tc) = (ld(&t.cell, rec + 3 * L), ld(&t.cell, rec + 5 * L));
    let mut h = [T::zero(); L];
    for l in 0..L {
        h[l] = o[l] * tc[l];
    }
    h
}

/// h = o * tanh(c) of one tape entry, into `[H][pad]` rows.
#[inline(always)]
fn recompute_h<T: Scalar>(t: &Tape<T>, h: &mut [T], pad: usize) {
    for c0 in (0..pad).step_by(L) {
        for m in 0..H {
            st(h, m * pad + c0, &tape_h(t, c0, m));
        }
    }
}

/// Backward over consecutive steps `tape` (last first), whose first step
/// was fed `c0s`, `h0` (c and h after the step before it, `[H][pad]`).
///
/// Per step, one pass over the block tile by tile (L coordinates) does
/// the element-wise chain rule through the meta-gates, the cell update and
/// the layer-1 nonlinearities, writes dz and the carried gradients, and
/// adds the meta-gates' weight gradients into per-lane sums; then three
/// products: dW_ih and dW_hh (dz against the inputs) and dL/dh_{t-1}.
#[inline(always)]
fn backward_steps<T: Scalar>(
    tape: &[Tape<T>],
    c0s: &[T],
    h0: &[T],
    w: &Weights<T>,
    carry: &mut Carry<T>,
    gw: &mut Weights<T>,
) {
    let pad = carry.dth.len();
    let one = T::one();
    let Some(last) = tape.last() else {
        return;
    };
    // h_t of the last step; each step then hands its h_{t-1} down.
    recompute_h(last, &mut carry.h[2 * pad..], pad);
    let (wf, wi) = (w.w_f[H], w.w_i[H]);
    let (wf1, wi1) = (w.w_f[H + 1], w.w_i[H + 1]);
    for s in (0..tape.len()).rev() {
        let t = &tape[s];
        let prev = s.checked_sub(1).map(|p| &tape[p]);
        for db in carry.db.iter_mut() {
            *db = [T::zero(); L];
        }
        for c0 in (0..pad).step_by(L) {
            // Meta-gates: θ_t = F θ_{t-1} - I grad, F = σ(f̃), I = σ(ĩ), and
            // f̃_{t+1}, ĩ_{t+1} read f̃_t, ĩ_t back.
            let mut dth = ld(&carry.dth, c0);
            let (tp, gr) = (ld(&t.theta_prev, c0), ld(&t.grad, c0));
            let (bf, bi) = (ld(&t.big_f, c0), ld(&t.big_i, c0));
            let (dfn, din) = (ld(&carry.dfp_next, c0), ld(&carry.dip_next, c0));
            let (mut dfp, mut dip) = ([one; L], [one; L]);
            for l in 0..L {
                let (f, i) = (bf[l], bi[l]);
                let d_f = dth[l] * tp[l];
                let d_i = -dth[l] * gr[l];
                dfp[l] = d_f * f * (one - f) + dfn[l];
                dip[l] = d_i * i * (one - i) + din[l];
                dth[l] = dth[l] * f + dfp[l] * wf + dip[l] * wi;
            }
            st(&mut carry.dth, c0, &dth);
            acc_mul(&mut carry.wf[H], &dfp, &tp);
            acc_mul(&mut carry.wi[H], &dip, &tp);
            acc_mul(&mut carry.wf[H + 1], &dfp, &ld(&t.f_in, c0));
            acc_mul(&mut carry.wi[H + 1], &dip, &ld(&t.i_in, c0));
            acc(&mut carry.bf, &dfp);
            acc(&mut carry.bi, &dip);
            st(&mut carry.dfp_next, c0, &dfp.map(|d| d * wf1));
            st(&mut carry.dip_next, c0, &dip.map(|d| d * wi1));
            for m in 0..H {
                let at = m * pad + c0;
                // dL/dh_t: from the meta-gates and from step t+1's z.
                let h = ld(&carry.h, 2 * pad + at);
                acc_mul(&mut carry.wf[m], &dfp, &h);
                acc_mul(&mut carry.wi[m], &dip, &h);
                let mut dh = ld(&carry.dh_next, at);
                let (wfm, wim) = (w.w_f[m], w.w_i[m]);
                for l in 0..L {
                    dh[l] = dh[l] + wfm * dfp[l] + wim * dip[l];
                }
                // h_{t-1}, for dW_hh below and as the next step's h_t.
                let (hp, cp) = match prev {
                    Some(p) => {
                        // The previous step's tape comes from memory.
                        prefetch(&p.cell, cell(c0, m) + AHEAD * CELL * L, CELL * L);
                        (tape_h(p, c0, m), ld(&p.cell, cell(c0, m) + 4 * L))
                    }
                    None => (ld(h0, at), ld(c0s, at)),
                };
                st(&mut carry.h_prev, 2 * pad + at, &hp);
                // Layer 1: c_t = f c_{t-1} + i g, h_t = o tanh(c_t).
                let rec = cell(c0, m);
                let row = |k: usize| ld(&t.cell, rec + k * L);
                let (i, f, g, o, tc) = (row(0), row(1), row(2), row(3), row(5));
                let mut dcn = ld(&carry.dc_next, at);
                let mut z = [[one; L]; 4];
                for l in 0..L {
                    let dc = dcn[l] + dh[l] * o[l] * (one - tc[l] * tc[l]);
                    let d_o = dh[l] * tc[l];
                    dcn[l] = dc * f[l];
                    z[0][l] = dc * g[l] * i[l] * (one - i[l]);
                    z[1][l] = dc * cp[l] * f[l] * (one - f[l]);
                    z[2][l] = dc * i[l] * (one - g[l] * g[l]);
                    z[3][l] = d_o * o[l] * (one - o[l]);
                }
                st(&mut carry.dc_next, at, &dcn);
                for (q, zq) in z.iter().enumerate() {
                    st(&mut carry.dz, (q * H + m) * pad + c0, zq);
                    acc(&mut carry.db[q * H + m], zq);
                }
            }
        }
        // [dW_ih[:, 0..2] | dW_hh] += dz [x; h_{t-1}]^T, db += dz 1. (Columns
        // 2 and 3 of W_ih, the loss inputs, are the same for every
        // coordinate: la and lb times db.)
        carry.h_prev[..2 * pad].copy_from_slice(&t.x);
        let dzm = Mat {
            data: &carry.dz[..],
            rs: pad,
            cs: 1,
        };
        let xh = Mat {
            data: &carry.h_prev[..],
            rs: 1,
            cs: pad,
        };
        matmul(Z, KIN, pad, &mut carry.gxh, true, dzm, xh, false);
        for (j, lanes) in carry.db.iter().enumerate() {
            let db = lane_sum(lanes);
            gw.b[j] += db;
            gw.w_ih[j * IN + 2] += t.la * db;
            gw.w_ih[j * IN + 3] += t.lb * db;
        }
        // dL/dh_{t-1} = W_hh^T dz
        let w_hh_t = Mat {
            data: &w.w_hh,
            rs: 1,
            cs: H,
        };
        matmul(H, pad, Z, &mut carry.dh_next, false, w_hh_t, dzm, false);
        std::mem::swap(&mut carry.h, &mut carry.h_prev);
    }
}
