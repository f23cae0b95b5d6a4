//! The SIMD switch and the one dispatch every kernel uses: `simd` runs a
//! closure compiled again for AVX2 where the CPU has it (and
//! [`set_simd`] allows it, the default), else the baseline x86-64 build.
//! Both builds compute the same values bit for bit (see `simd`).
//!
//! Users: the fused blocks' per-chunk passes
//! ([`crate::model::kernels::block`]) and the meta-LSTM kernel's block
//! step and backward ([`crate::algo::meta_lstm::fused`]); the learned
//! rules' kernel ([`crate::algo::learned::fused`]) runs `simd_wide`, which
//! adds an AVX-512 build.

/// Whether this CPU runs the AVX2 builds of the kernels (checked once).
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(|| is_x86_feature_detected!("avx2"))
}

static SIMD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Allow (the default) or forbid the AVX2 builds of the CPU kernels, for
/// tests and A/B timing: both builds give the same bits
/// (`avx2_and_baseline_builds_give_the_same_bits`).
pub fn set_simd(on: bool) {
    SIMD.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the kernels run their AVX2 builds: allowed and supported.
#[cfg(target_arch = "x86_64")]
fn use_avx2() -> bool {
    SIMD.load(std::sync::atomic::Ordering::Relaxed) && has_avx2()
}

/// Run `f` compiled for AVX2 where the CPU has it (8-wide vectors; the
/// default build targets baseline x86-64, whose SSE2 is 4-wide). `f`'s
/// body and what it inlines (the element-wise kernels of its callers are
/// `#[inline(always)]` for this) are compiled again with AVX2 enabled.
/// Without fast-math flags LLVM neither fuses multiply-adds nor reorders
/// sums, so both builds compute the same values bit for bit.
///
/// Callers mark the closure `#[inline(always)]` (as the functions it
/// calls): a large closure the inliner leaves out of line is compiled for
/// baseline x86-64 (docs/perf.md).
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() {
        // SAFETY: the CPU supports AVX2 (checked above).
        return unsafe { avx2(f) };
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Whether this CPU runs AVX-512 builds (checked once).
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX512.get_or_init(|| is_x86_feature_detected!("avx512f") && has_avx2())
}

/// [`simd`] with AVX-512 (16-wide vectors: a whole float32 tile of
/// [`super::tile::L`] in one register) where the CPU has it, else AVX2,
/// else the baseline build; the same bits in all three (no fused
/// multiply-adds, no reordered sums). For kernels whose inner loops are
/// tiles of 16 coordinates.
#[inline(always)]
pub(crate) fn simd_wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if use_avx2() && has_avx512() {
        // SAFETY: the CPU supports AVX-512F and AVX2 (checked above).
        return unsafe { avx512(f) };
    }
    simd(f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}
