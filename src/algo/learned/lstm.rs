//! A standard LSTM layer applied to every coordinate alike: its weights
//! are shared by all coordinates, its state is per coordinate.
//!
//! As candle-nn's `rnn.rs`, the weights are named fields and the state is
//! a struct; activations are feature-major (`[features, coordinates]`) so
//! that every gate is a contiguous block of rows. For `n` coordinates with
//! inputs `x_t` (`[I, n]`) and hidden size H:
//!
//! ```text
//! z_t = W_ih x_t + W_hh h_{t-1} + b                      [4H, n]
//! [i, f, g, o] = [sigma, sigma, tanh, sigma](z_t)        row blocks of H
//! c_t = f * c_{t-1} + i * g;   h_t = o * tanh(c_t)       [H, n]
//! ```
//!
//! One bias vector, as Ravi & Larochelle's reference (PyTorch's LSTM has
//! two, `b_ih + b_hh`, one parameter in effect).

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::model::params::Params;
use crate::rng::Rng;

/// The weights of one coordinate-wise LSTM layer.
#[derive(Debug, Clone)]
pub struct LstmLayer {
    /// Hidden units H.
    pub hidden: usize,
    /// `W_ih`, `[4H, I]`: gate rows in the order input, forget, cell,
    /// output.
    pub weight_ih: Tensor,
    /// `W_hh`, `[4H, H]`.
    pub weight_hh: Tensor,
    /// `b`, `[4H, 1]`.
    pub bias: Tensor,
}

/// The per-coordinate state of an [`LstmLayer`].
#[derive(Debug, Clone)]
pub struct LstmState {
    /// h, `[H, n]`.
    pub h: Tensor,
    /// c, `[H, n]`.
    pub c: Tensor,
}

/// Names of the weights under a layer's prefix, as saved in `Params`
/// (and so in checkpoints and fixtures): `<prefix>.w_ih`, `.w_hh`, `.b`.
const NAMES: [&str; 3] = ["w_ih", "w_hh", "b"];

impl LstmLayer {
    /// `inputs` -> `hidden` with weights and bias drawn from U(lo, hi), in
    /// the order `W_ih`, `W_hh`, `b` (row-major).
    pub fn uniform(
        inputs: usize,
        hidden: usize,
        (lo, hi): (f64, f64),
        rng: &mut Rng,
        dev: &candle_core::Device,
    ) -> Result<Self> {
        let h = hidden;
        Ok(LstmLayer {
            hidden,
            weight_ih: uniform(&[4 * h, inputs], lo, hi, rng, dev)?,
            weight_hh: uniform(&[4 * h, h], lo, hi, rng, dev)?,
            bias: uniform(&[4 * h, 1], lo, hi, rng, dev)?,
        })
    }

    /// The layer saved in `p` under `prefix` (`lstm` reads `lstm.w_ih`,
    /// `lstm.w_hh`, `lstm.b`); the hidden size is `W_hh`'s width.
    pub fn from_params(p: &Params, prefix: &str) -> Result<Self> {
        let get = |n: &str| p.get(&format!("{prefix}.{n}")).cloned();
        let (weight_ih, weight_hh, bias) = (get(NAMES[0])?, get(NAMES[1])?, get(NAMES[2])?);
        let hidden = weight_hh.dim(1)?;
        let h4 = 4 * hidden;
        let shapes_ok = weight_hh.dims() == [h4, hidden]
            && weight_ih.dims().len() == 2
            && weight_ih.dim(0)? == h4
            && bias.dims() == [h4, 1];
        if !shapes_ok {
            return Err(Error::invalid(
                format!("{prefix} LSTM weights"),
                format!(
                    "w_ih {:?}, w_hh {:?}, b {:?}",
                    weight_ih.dims(),
                    weight_hh.dims(),
                    bias.dims()
                ),
                "w_ih [4H, I], w_hh [4H, H], b [4H, 1]",
            ));
        }
        Ok(LstmLayer {
            hidden,
            weight_ih,
            weight_hh,
            bias,
        })
    }

    /// The weights by name under `prefix`, in the order
    /// [`LstmLayer::from_params`] reads them.
    pub fn named(&self, prefix: &str) -> Vec<(String, Tensor)> {
        [&self.weight_ih, &self.weight_hh, &self.bias]
            .into_iter()
            .zip(NAMES)
            .map(|(t, n)| (format!("{prefix}.{n}"), t.clone()))
            .collect()
    }

    /// Inputs per coordinate I.
    pub fn inputs(&self) -> Result<usize> {
        Ok(self.weight_ih.dim(1)?)
    }

    /// The zero state for `like`'s `n` coordinates (`like` is `[1, n]`; its
    /// dtype and device).
    pub fn zero_state(&self, like: &Tensor) -> Result<LstmState> {
        let n = like.dim(1)?;
        let z = || Tensor::zeros((self.hidden, n), like.dtype(), like.device());
        Ok(LstmState { h: z()?, c: z()? })
    }

    /// One step on inputs `x` (`[I, n]`): the next state.
    pub fn step(&self, x: &Tensor, s: &LstmState) -> Result<LstmState> {
        // z = W_ih x + W_hh h_{t-1} + b   ([4H, n], blocks [i; f; g; o])
        let z = self
            .weight_ih
            .matmul(x)?
            .add(&self.weight_hh.matmul(&s.h)?)?
            .broadcast_add(&self.bias)?;
        // c_t = f c_{t-1} + i g;  h_t = o tanh(c_t)
        let (h, c) = crate::model::kernels::lstm_cell::lstm_cell(&z, &s.c)?;
        Ok(LstmState { h, c })
    }
}

impl LstmState {
    /// The same values cut from any autograd graph (truncation).
    pub fn detach(&self) -> LstmState {
        LstmState {
            h: self.h.detach(),
            c: self.c.detach(),
        }
    }
}

/// A float32 tensor of `shape` drawn from U(lo, hi), row-major.
pub fn uniform(
    shape: &[usize],
    lo: f64,
    hi: f64,
    rng: &mut Rng,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    let len: usize = shape.iter().product();
    let v: Vec<f32> = (0..len).map(|_| rng.uniform_range(lo, hi) as f32).collect();
    Ok(Tensor::from_vec(v, shape, dev)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn weights_round_trip_by_name_and_the_hidden_size_is_read_from_them() {
        let dev = Device::Cpu;
        let l = LstmLayer::uniform(2, 3, (-0.1, 0.1), &mut Rng::new(4), &dev).unwrap();
        assert_eq!(
            (l.weight_ih.dims(), l.weight_hh.dims(), l.bias.dims()),
            (&[12, 2][..], &[12, 3][..], &[12, 1][..])
        );
        let (names, tensors): (Vec<_>, Vec<_>) = l.named("l0").into_iter().unzip();
        assert_eq!(names, ["l0.w_ih", "l0.w_hh", "l0.b"]);
        let back = LstmLayer::from_params(&Params::new(names, tensors), "l0").unwrap();
        assert_eq!((back.hidden, back.inputs().unwrap()), (3, 2));
        let same = |a: &Tensor, b: &Tensor| {
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                == b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert!(same(&back.weight_ih, &l.weight_ih) && same(&back.bias, &l.bias));
        // A state steps to the same shape; a wrong shape is named.
        let theta = Tensor::zeros((1, 5), candle_core::DType::F32, &dev).unwrap();
        let s = l.zero_state(&theta).unwrap();
        let x = Tensor::ones((2, 5), candle_core::DType::F32, &dev).unwrap();
        let s = l.step(&x, &s).unwrap();
        assert_eq!((s.h.dims(), s.c.dims()), (&[3, 5][..], &[3, 5][..]));
        let bad = Params::new(
            vec!["l0.w_ih".into(), "l0.w_hh".into(), "l0.b".into()],
            vec![
                l.weight_ih.clone(),
                l.weight_hh.clone(),
                l.weight_ih.clone(),
            ],
        );
        let err = LstmLayer::from_params(&bad, "l0").unwrap_err().to_string();
        assert!(err.contains("l0 LSTM weights"), "{err}");
    }
}
