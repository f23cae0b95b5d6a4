//! The one scalar trait of the fused kernels, [`Scalar`], for `f32`
//! (training) and `f64` (gradient checks and exact references): the float
//! arithmetic (`num_traits::Float`), candle's storage types, the
//! activations and the few bit-level helpers the kernels share.
//!
//! Activations: libm in float64 (exact reference for gradient checks), a
//! branch-free vectorisable exp in float32 (libm's `tanhf`/`expf` were two
//! thirds of a meta-LSTM episode under perf); see [`exp_f32`].
//!
//! Users: the fused blocks ([`crate::model::kernels::block`]), the fused
//! LSTM cell ([`crate::model::kernels::lstm_cell`]) and the meta-LSTM
//! kernel ([`crate::algo::meta_lstm::fused`]). Methods the kernels call
//! per element are inlined into the AVX2 builds of their callers
//! ([`crate::model::kernels::simd`]).

/// Scalar types of the fused kernels: f32 and f64.
pub trait Scalar:
    num_traits::Float
    + candle_core::WithDType
    + Default
    + Copy
    + Send
    + Sync
    + std::ops::AddAssign
    + std::ops::DivAssign
    + 'static
{
    /// `x` in this type (`as`: rounded to nearest for f32).
    fn of(x: f64) -> Self;
    /// `self` as f64 (exact).
    fn f64(self) -> f64;
    /// The logistic sigmoid.
    fn sig(self) -> Self;
    /// The hyperbolic tangent.
    fn th(self) -> Self;
    /// `self` where `on`, else +0 (the same bits as `if on { self } else
    /// { 0 }`), as a bit mask: LLVM keeps the `if` as a branch per element,
    /// the mask vectorises.
    fn passed(self, on: bool) -> Self;
}

impl Scalar for f64 {
    fn of(x: f64) -> Self {
        x
    }
    fn f64(self) -> f64 {
        self
    }
    #[inline]
    fn sig(self) -> f64 {
        1.0 / (1.0 + (-self).exp())
    }
    #[inline]
    fn th(self) -> f64 {
        self.tanh()
    }
    #[inline(always)]
    fn passed(self, on: bool) -> f64 {
        f64::from_bits(self.to_bits() & u64::from(on).wrapping_neg())
    }
}

/// e^x for f32 with relative error about 2e-7: x = k ln2 + r with integer k
/// and |r| <= ln2 / 2, e^r by its degree-6 Taylor polynomial, 2^k by
/// building the exponent bits.
#[inline]
pub fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by adding and subtracting 1.5 * 2^23 (exact for
    // |x log2 e| < 2^22): branch-free and vectorisable, where `round()` is
    // a libm call on baseline x86-64.
    const MAGIC: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let k = t - MAGIC;
    // Cody-Waite: ln 2 split so that k * LN2_HI is exact.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^k from the bits of t: its low mantissa bits hold k in two's
    // complement, so (bits + 127) << 23 keeps exactly the exponent field
    // k + 127 (in 1..=254 after the clamp). Integer ops only, so the loop
    // around this vectorises (`k as i32` saturates and does not).
    p * f32::from_bits(t.to_bits().wrapping_add(127) << 23)
}

impl Scalar for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
    #[inline]
    fn sig(self) -> f32 {
        1.0 / (1.0 + exp_f32(-self))
    }
    #[inline]
    fn th(self) -> f32 {
        // tanh x = 1 - 2 / (e^{2x} + 1): absolute error ~1e-7.
        1.0 - 2.0 / (exp_f32(2.0 * self) + 1.0)
    }
    #[inline(always)]
    fn passed(self, on: bool) -> f32 {
        f32::from_bits(self.to_bits() & u32::from(on).wrapping_neg())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -80.0f32;
        while x < 80.0 {
            let e = ((exp_f32(x) as f64) / (x as f64).exp() - 1.0).abs();
            worst = worst.max(e);
            x += 0.0137;
        }
        assert!(worst < 5e-7, "relative error {worst}");
        for x in [-3.0f32, -0.5, 0.0, 1e-4, 0.7, 5.0] {
            assert!((x.th() - x.tanh()).abs() < 3e-7, "tanh({x})");
            assert!(
                (x.sig() - 1.0 / (1.0 + (-x).exp())).abs() < 3e-7,
                "sigmoid({x})"
            );
        }
    }
}
