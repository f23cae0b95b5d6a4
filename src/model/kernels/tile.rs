//! Register tiles of the coordinate-wise kernels: [`L`] coordinates side
//! by side as one `[T; L]` array, the loads, stores and sums the tiled
//! passes share, and the read prefetch their backward passes use.
//!
//! A coordinate-wise LSTM kernel (every coordinate runs the same small
//! network, `[features, coordinates]` rows in memory) walks its
//! coordinates tile by tile: a tile's values of one feature are one array
//! that stays in registers (two AVX2 vectors in float32), so the gate sums
//! of a hidden unit are multiply-adds of whole tiles. Every helper here
//! does its lanes in lane order with separate multiplies and adds, so the
//! AVX2 and baseline builds ([`super::simd`]) give the same bits.
//!
//! Users: the meta-LSTM kernel ([`crate::algo::meta_lstm::fused`]) and the
//! learned rules' LSTM-stack kernel ([`crate::algo::learned::fused`]).

use super::scalar::Scalar;

/// Coordinates per tile. Row lengths the kernels tile are padded to a
/// multiple of it (the padding lanes carry zeros).
pub const L: usize = 16;

/// Tile `at..at + L` of a row.
#[inline(always)]
pub fn ld<T: Copy>(v: &[T], at: usize) -> [T; L] {
    v[at..at + L].try_into().expect("a whole tile")
}

/// Store a tile at `at..at + L`.
#[inline(always)]
pub fn st<T: Copy>(v: &mut [T], at: usize, a: &[T; L]) {
    v[at..at + L].copy_from_slice(a);
}

/// a[q] += w[q] x for the four gate rows (i, f, g, o) of a hidden unit.
#[inline(always)]
pub fn mac<T: Scalar>(a: &mut [[T; L]; 4], w: &[T; 4], x: &[T; L]) {
    for (aq, &wq) in a.iter_mut().zip(w) {
        for (v, &xl) in aq.iter_mut().zip(x) {
            *v += wq * xl;
        }
    }
}

/// Apply `f` to every lane.
#[inline(always)]
pub fn map<T: Copy>(a: &mut [T; L], f: impl Fn(T) -> T) {
    for v in a.iter_mut() {
        *v = f(*v);
    }
}

/// The sum of a tile's lanes, in lane order.
#[inline(always)]
pub fn lane_sum<T: Scalar>(a: &[T; L]) -> T {
    a.iter().fold(T::zero(), |s, &v| s + v)
}

/// a[l] += x[l] y[l] (through a copy: in place, the loop stayed scalar).
#[inline(always)]
pub fn acc_mul<T: Scalar>(a: &mut [T; L], x: &[T; L], y: &[T; L]) {
    let mut v = *a;
    for l in 0..L {
        v[l] += x[l] * y[l];
    }
    *a = v;
}

/// a[l] += x[l].
#[inline(always)]
pub fn acc<T: Scalar>(a: &mut [T; L], x: &[T; L]) {
    let mut v = *a;
    for l in 0..L {
        v[l] += x[l];
    }
    *a = v;
}

/// Ask for the cache lines of `v[at..at + n]` (any part may lie outside
/// `v`: a prefetch reads nothing and never faults).
#[inline(always)]
pub fn prefetch<T>(v: &[T], at: usize, n: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let p = v.as_ptr().wrapping_add(at) as *const i8;
        for b in (0..n * std::mem::size_of::<T>()).step_by(64) {
            // SAFETY: a prefetch is a hint; it does not access memory.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(b)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (v, at, n);
}
