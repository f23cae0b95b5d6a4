//! The layer-1 LSTM step of the meta-learner as a candle op
//! ([`lstm_cell`]): on the CPU one fused custom op ([`LstmCell`], parallel
//! over hidden units, one pass over memory, analytic backward), elsewhere
//! composed of candle ops. It serves the composed meta-LSTM path; the
//! fused path runs the whole unroll in [`crate::algo::meta_lstm::fused`].
//! The activations are [`Scalar`]'s.

use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::contiguous_slice;
use super::scalar::Scalar;

/// One step of the layer-1 LSTM of the meta-learner, on feature-major
/// pre-activations `z = W_ih x + W_hh h + b` (`[4H, n]`, gate blocks in the
/// order input, forget, cell, output) and the previous cell state `c_prev`
/// (`[H, n]`). Returns `(h, c)`, each `[H, n]`:
///
/// c = sigmoid(z_f) * c_prev + sigmoid(z_i) * tanh(z_g);  h = sigmoid(z_o) * tanh(c)
///
/// On the CPU this is one fused custom op (parallel over hidden units, one
/// pass over memory, analytic backward); elsewhere it is composed of candle
/// ops. The fused op has no second derivative (the meta-learner needs none).
pub fn lstm_cell(z: &Tensor, c_prev: &Tensor) -> Result<(Tensor, Tensor)> {
    let hd = c_prev.dim(0)?;
    if z.device().is_cpu() {
        let out = z.contiguous()?.apply_op2(&c_prev.contiguous()?, LstmCell)?;
        return Ok((out.narrow(0, 0, hd)?, out.narrow(0, hd, hd)?));
    }
    let sig = candle_nn::ops::sigmoid;
    let i = sig(&z.narrow(0, 0, hd)?)?;
    let f = sig(&z.narrow(0, hd, hd)?)?;
    let g = z.narrow(0, 2 * hd, hd)?.tanh()?;
    let o = sig(&z.narrow(0, 3 * hd, hd)?)?;
    let c = ((f * c_prev)? + (i * g)?)?;
    let h = (o * c.tanh()?)?;
    Ok((h, c))
}

/// Fused LSTM cell (see [`lstm_cell`]): `(z [4H, n], c_prev [H, n]) -> [2H, n]`
/// holding `h` then `c`.
#[derive(Debug, Clone, Copy)]
pub struct LstmCell;

/// Backward of [`LstmCell`]: `(z, c_prev, grad [2H, n]) -> [5H, n]` holding
/// `dz` (4H rows) then `dc_prev` (H rows).
#[derive(Debug, Clone, Copy)]
struct LstmCellBwd;

fn lstm_fwd<T: Scalar>(z: &[T], cp: &[T], hd: usize, n: usize) -> Vec<T> {
    let mut out = vec![T::zero(); 2 * hd * n];
    let (hs, cs) = out.split_at_mut(hd * n);
    hs.par_chunks_mut(n)
        .zip(cs.par_chunks_mut(n))
        .enumerate()
        .for_each(|(k, (h, c))| {
            let zi = &z[k * n..(k + 1) * n];
            let zf = &z[(hd + k) * n..(hd + k + 1) * n];
            let zg = &z[(2 * hd + k) * n..(2 * hd + k + 1) * n];
            let zo = &z[(3 * hd + k) * n..(3 * hd + k + 1) * n];
            let cpk = &cp[k * n..(k + 1) * n];
            for j in 0..n {
                let cj = zf[j].sig() * cpk[j] + zi[j].sig() * zg[j].th();
                c[j] = cj;
                h[j] = zo[j].sig() * cj.th();
            }
        });
    out
}

fn lstm_bwd<T: Scalar>(z: &[T], cp: &[T], gr: &[T], hd: usize, n: usize) -> Vec<T> {
    let mut out = vec![T::zero(); 5 * hd * n];
    let (dzi, rest) = out.split_at_mut(hd * n);
    let (dzf, rest) = rest.split_at_mut(hd * n);
    let (dzg, rest) = rest.split_at_mut(hd * n);
    let (dzo, dcp) = rest.split_at_mut(hd * n);
    let one = T::one();
    dzi.par_chunks_mut(n)
        .zip(dzf.par_chunks_mut(n))
        .zip(dzg.par_chunks_mut(n))
        .zip(dzo.par_chunks_mut(n))
        .zip(dcp.par_chunks_mut(n))
        .enumerate()
        .for_each(|(k, ((((di, df), dg), d_o), dc_prev))| {
            let row = |r: usize| &z[r * n..(r + 1) * n];
            let (zi, zf, zg, zo) = (row(k), row(hd + k), row(2 * hd + k), row(3 * hd + k));
            let cpk = &cp[k * n..(k + 1) * n];
            let gh = &gr[k * n..(k + 1) * n];
            let gc = &gr[(hd + k) * n..(hd + k + 1) * n];
            for j in 0..n {
                let (i, f, g, o) = (zi[j].sig(), zf[j].sig(), zg[j].th(), zo[j].sig());
                let c = f * cpk[j] + i * g;
                let tc = c.th();
                // dL/dc through h = o * tanh(c), plus the direct gradient of c.
                let dc = gc[j] + gh[j] * o * (one - tc * tc);
                di[j] = dc * g * i * (one - i);
                df[j] = dc * cpk[j] * f * (one - f);
                dg[j] = dc * i * (one - g * g);
                d_o[j] = gh[j] * tc * o * (one - o);
                dc_prev[j] = dc * f;
            }
        });
    out
}

fn lstm_dims(lz: &Layout, lc: &Layout) -> Result<(usize, usize)> {
    let (h4, n) = lz.shape().dims2()?;
    let (hd, n2) = lc.shape().dims2()?;
    if h4 != 4 * hd || n != n2 {
        candle_core::bail!(
            "lstm cell: z {:?} and c_prev {:?} do not match",
            lz.shape(),
            lc.shape()
        );
    }
    Ok((hd, n))
}

impl candle_core::CustomOp2 for LstmCell {
    fn name(&self) -> &'static str {
        "lstm-cell"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (hd, n) = lstm_dims(l1, l2)?;
        let out = match (s1, s2) {
            (CpuStorage::F32(z), CpuStorage::F32(c)) => CpuStorage::F32(lstm_fwd(
                contiguous_slice(z, l1, "lstm")?,
                contiguous_slice(c, l2, "lstm")?,
                hd,
                n,
            )),
            (CpuStorage::F64(z), CpuStorage::F64(c)) => CpuStorage::F64(lstm_fwd(
                contiguous_slice(z, l1, "lstm")?,
                contiguous_slice(c, l2, "lstm")?,
                hd,
                n,
            )),
            _ => candle_core::bail!("lstm cell: f32 or f64 inputs of one dtype"),
        };
        Ok((out, Shape::from((2 * hd, n))))
    }
    fn bwd(
        &self,
        z: &Tensor,
        c_prev: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let hd = c_prev.dim(0)?;
        let d = z.apply_op3_no_bwd(c_prev, &grad.contiguous()?, &LstmCellBwd)?;
        Ok((
            Some(d.narrow(0, 0, 4 * hd)?),
            Some(d.narrow(0, 4 * hd, hd)?),
        ))
    }
}

impl candle_core::CustomOp3 for LstmCellBwd {
    fn name(&self) -> &'static str {
        "lstm-cell-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (hd, n) = lstm_dims(l1, l2)?;
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(z), CpuStorage::F32(c), CpuStorage::F32(g)) => {
                CpuStorage::F32(lstm_bwd(
                    contiguous_slice(z, l1, "lstm")?,
                    contiguous_slice(c, l2, "lstm")?,
                    contiguous_slice(g, l3, "lstm")?,
                    hd,
                    n,
                ))
            }
            (CpuStorage::F64(z), CpuStorage::F64(c), CpuStorage::F64(g)) => {
                CpuStorage::F64(lstm_bwd(
                    contiguous_slice(z, l1, "lstm")?,
                    contiguous_slice(c, l2, "lstm")?,
                    contiguous_slice(g, l3, "lstm")?,
                    hd,
                    n,
                ))
            }
            _ => candle_core::bail!("lstm cell backward: f32 or f64 inputs of one dtype"),
        };
        Ok((out, Shape::from((5 * hd, n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_lstm_cell_matches_composite_values_and_gradients() {
        let d = Device::Cpu;
        let (hd, n) = (3, 7);
        let z = Var::from_tensor(&Tensor::randn(0f64, 2., (4 * hd, n), &d).unwrap()).unwrap();
        let c = Var::from_tensor(&Tensor::randn(0f64, 1., (hd, n), &d).unwrap()).unwrap();
        let wh = Tensor::randn(0f64, 1., (hd, n), &d).unwrap();
        let wc = Tensor::randn(0f64, 1., (hd, n), &d).unwrap();
        let run = |fused: bool| {
            let (h, cc) = if fused {
                lstm_cell(z.as_tensor(), c.as_tensor()).unwrap()
            } else {
                let zz = z.as_tensor();
                let sig = candle_nn::ops::sigmoid;
                let i = sig(&zz.narrow(0, 0, hd).unwrap()).unwrap();
                let f = sig(&zz.narrow(0, hd, hd).unwrap()).unwrap();
                let g = zz.narrow(0, 2 * hd, hd).unwrap().tanh().unwrap();
                let o = sig(&zz.narrow(0, 3 * hd, hd).unwrap()).unwrap();
                let cc = ((f * c.as_tensor()).unwrap() + (i * g).unwrap()).unwrap();
                ((o * cc.tanh().unwrap()).unwrap(), cc)
            };
            let loss = ((&h * &wh).unwrap().sum_all().unwrap()
                + (&cc * &wc).unwrap().sum_all().unwrap())
            .unwrap();
            let g = loss.backward().unwrap();
            (
                h,
                cc,
                g.get(z.as_tensor()).unwrap().clone(),
                g.get(c.as_tensor()).unwrap().clone(),
            )
        };
        let a = run(true);
        let b = run(false);
        for (x, y) in [(&a.0, &b.0), (&a.1, &b.1), (&a.2, &b.2), (&a.3, &b.3)] {
            let e = (x - y)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(e < 1e-12, "fused and composite LSTM differ by {e}");
        }
    }
}
