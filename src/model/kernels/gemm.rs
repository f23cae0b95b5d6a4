//! The gemm wrappers of the fused kernels: a strided matrix view ([`Mat`])
//! and the product `dst = (acc ? dst : 0) + lhs * rhs` ([`matmul`],
//! [`matmul_raw`] into a block of a larger matrix), bounds-checked here and
//! computed by the `gemm` crate (runtime-dispatched SIMD) in the same order
//! on every run.

/// A strided matrix view for [`matmul`]: element (r, c) is
/// `data[r * rs + c * cs]` (row-major: `rs = cols, cs = 1`; its transpose:
/// `rs = 1, cs = rows`).
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

/// `dst[m×n] = (acc ? dst : 0) + lhs[m×k] · rhs[k×n]`, `dst` row-major,
/// for the fused kernels. Bounds are checked here; the product is the
/// `gemm` crate's (runtime-dispatched SIMD), on rayon's threads when `par`
/// (else on the caller's: the caller is already parallel), in the same
/// order on every run.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<T: num_traits::Float + 'static>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    acc: bool,
    lhs: Mat<T>,
    rhs: Mat<T>,
    par: bool,
) {
    assert!(dst.len() >= m * n && m > 0 && n > 0);
    // SAFETY: dst holds m rows of n (asserted); it is borrowed mutably, so
    // nothing else reads or writes it meanwhile.
    unsafe { matmul_raw(m, n, k, dst.as_mut_ptr(), n, acc, lhs, rhs, par) }
}

/// [`matmul`] into an `m×n` block of a larger row-major matrix: row `r`
/// of the block starts at `dst + r * dst_rs`. For kernels whose threads
/// fill disjoint column ranges of one matrix.
///
/// # Safety
/// `dst + r * dst_rs + c` must be valid for writes (and reads when `acc`)
/// for every `r < m`, `c < n`, and no other thread may touch those
/// elements during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul_raw<T: num_traits::Float + 'static>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    acc: bool,
    lhs: Mat<T>,
    rhs: Mat<T>,
    par: bool,
) {
    let last = |v: &Mat<T>, rows: usize, cols: usize| (rows - 1) * v.rs + (cols - 1) * v.cs;
    assert!(m > 0 && n > 0 && k > 0 && dst_rs >= n);
    assert!(last(&lhs, m, k) < lhs.data.len() && last(&rhs, k, n) < rhs.data.len());
    let parallelism = if par {
        ::gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        ::gemm::Parallelism::None
    };
    // SAFETY: every operand index the product reads is within the slices
    // (asserted above); the destination is the caller's promise; dst
    // aliases neither operand (they are shared borrows).
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            acc,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        )
    }
}
