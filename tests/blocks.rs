//! The fused conv+BN+ReLU(+pool) blocks against the composed candle path
//! and against central finite differences in float64: both learner forms,
//! odd spatial sizes, stride 2, batch 1 and 75, and the max-pool tie case.
//!
//! One documented difference: at a pre-activation of exactly 0 the fused
//! ReLU passes no gradient (PyTorch's convention); candle's composed ReLU
//! passes it. That only happens when batch norm degenerates (one value per
//! channel, e.g. batch 1 with a 1x1 last map), which the cases avoid.

mod common;

use candle_core::{DType, Device, Tensor};
use fewshot::model::kernels::Kernels;
use fewshot::model::learner::{cross_entropy, Downsample, Learner};
use fewshot::model::params::Params;
use fewshot::rng::Rng;

fn learner(down: Downsample, size: usize, hidden: usize, kernels: Kernels) -> Learner {
    let base = match down {
        Downsample::Stride2 => Learner::omniglot(3, size),
        Downsample::MaxPool => Learner::mini_imagenet(3, size),
    };
    Learner {
        hidden,
        in_channels: if down == Downsample::Stride2 { 1 } else { 3 },
        kernels,
        ..base
    }
}

fn data(l: &Learner, n: usize, seed: u64, dtype: DType) -> (Tensor, Tensor) {
    let mut rng = Rng::new(seed);
    let s = l.image_size;
    let v: Vec<f64> = (0..n * l.in_channels * s * s)
        .map(|_| rng.normal())
        .collect();
    let x = Tensor::from_vec(v, (n, l.in_channels, s, s), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let y = Tensor::from_vec(
        (0..n as u32).map(|i| i % 3).collect::<Vec<_>>(),
        n,
        &Device::Cpu,
    )
    .unwrap();
    (x, y)
}

#[test]
fn fused_blocks_match_the_composed_path() {
    // (form, image side, channels, batch, dtype, tolerance)
    let cases = [
        (Downsample::Stride2, 28, 8, 5, DType::F64, 1e-11),
        (Downsample::Stride2, 13, 4, 2, DType::F64, 1e-11),
        (Downsample::Stride2, 28, 4, 1, DType::F64, 1e-11),
        (Downsample::Stride2, 28, 64, 75, DType::F32, 1e-4),
        (Downsample::MaxPool, 21, 4, 3, DType::F64, 1e-11),
        (Downsample::MaxPool, 35, 5, 1, DType::F64, 1e-11),
        (Downsample::MaxPool, 84, 32, 5, DType::F32, 1e-4),
    ];
    for (down, size, hidden, n, dtype, tol) in cases {
        let f = learner(down, size, hidden, Kernels::Fused);
        let c = learner(down, size, hidden, Kernels::Composed);
        assert!(f.fusable() && !c.fusable());
        let p = f
            .init(&mut Rng::new(3), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let (x, y) = data(&f, n, 7, dtype);
        let what = format!("{down:?} {size}x{size}, {hidden} channels, batch {n}, {dtype:?}");
        let (lf, sf) = f.forward_with(&p, &x, None).unwrap();
        let (lc, sc) = c.forward_with(&p, &x, None).unwrap();
        assert!(common::max_rel_diff(&[lc], &[lf]) < tol, "{what}: logits");
        for (a, b) in sc.iter().zip(&sf) {
            assert!(
                common::max_rel_diff(
                    &[a.mean.clone(), a.var.clone()],
                    &[b.mean.clone(), b.var.clone()]
                ) < tol,
                "{what}: statistics"
            );
            assert_eq!(a.count, b.count);
        }
        let (loss_f, gf, _) = f.loss_and_grad(&p, &x, &y).unwrap();
        let (loss_c, gc, _) = c.loss_and_grad(&p, &x, &y).unwrap();
        assert!(
            (loss_f - loss_c).abs() < tol * (1.0 + loss_c.abs()),
            "{what}: loss"
        );
        for (i, name) in p.names.iter().enumerate() {
            // The conv bias is exactly cancelled by batch norm: its gradient
            // is rounding noise on both paths.
            if name.ends_with("bias") && name.starts_with("conv") {
                continue;
            }
            let d = common::max_rel_diff(&[gc.tensors[i].clone()], &[gf.tensors[i].clone()]);
            assert!(d < 10.0 * tol, "{what}: gradient of {name} differs by {d}");
        }
    }
}

#[test]
fn fused_block_gradients_match_finite_differences() {
    for (down, size) in [(Downsample::Stride2, 11), (Downsample::MaxPool, 19)] {
        let l = learner(down, size, 3, Kernels::Fused);
        let p = l
            .init(&mut Rng::new(5), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let (x, y) = data(&l, 4, 9, DType::F64);
        let loss = |q: &Params| {
            let (logits, _) = l.forward_with(q, &x, None).unwrap();
            cross_entropy(&logits, &y)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let (_, g, _) = l.loss_and_grad(&p, &x, &y).unwrap();
        let checked = common::check_gradient_fd(&p, &g, 5, loss, &format!("{down:?}"));
        assert!(checked > 60, "{checked}");
    }
}

#[test]
fn max_pool_ties_send_the_gradient_to_the_first_maximum() {
    // With zero conv weights every conv output of a channel is its bias:
    // batch norm's statistics degenerate (xhat = 0, so a = relu(beta)), and
    // each 2x2 window holds four equal values. The forward must still match the
    // composed path, and the pool's backward must route each window's
    // gradient to one position (the first maximum, as PyTorch), so nothing
    // is counted four times.
    let l = learner(Downsample::MaxPool, 16, 2, Kernels::Fused);
    let c = learner(Downsample::MaxPool, 16, 2, Kernels::Composed);
    let mut p = l
        .init(&mut Rng::new(1), &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap();
    // Zero conv weights; positive offsets, so the tied values pass the ReLU.
    for i in 0..4 {
        let w = format!("conv{}.weight", i + 1);
        let k = p.names.iter().position(|n| *n == w).unwrap();
        p.tensors[k] = p.tensors[k].zeros_like().unwrap();
        let beta = format!("bn{}.beta", i + 1);
        let k = p.names.iter().position(|n| *n == beta).unwrap();
        p.tensors[k] = (p.tensors[k].ones_like().unwrap() * 0.5).unwrap();
    }
    let x = Tensor::ones((2, 3, 16, 16), DType::F64, &Device::Cpu).unwrap();
    let (lf, _) = l.forward_with(&p, &x, None).unwrap();
    let (lc, _) = c.forward_with(&p, &x, None).unwrap();
    assert!(common::max_rel_diff(&[lc], &[lf]) < 1e-12);
    let y = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
    let (_, g, _) = l.loss_and_grad(&p, &x, &y).unwrap();
    // The head sees the pooled features; its gradient equals the composed
    // path's (nothing upstream of the pool is involved).
    let (_, gc, _) = c.loss_and_grad(&p, &x, &y).unwrap();
    let k = p.names.iter().position(|n| n == "head.weight").unwrap();
    assert!(common::max_rel_diff(&[gc.tensors[k].clone()], &[g.tensors[k].clone()]) < 1e-12);
    // And the beta of the last block gets the window's gradient once: with
    // all four tied, the composed path (candle's max) would send it to all
    // four; the fused path, like PyTorch, to one.
    let kb = p.names.iter().position(|n| n == "bn4.beta").unwrap();
    let fused = common::values(&g.tensors[kb]);
    let composed = common::values(&gc.tensors[kb]);
    for (f, c) in fused.iter().zip(&composed) {
        assert!(
            (4.0 * f - c).abs() < 1e-9 * (1.0 + c.abs()),
            "fused {f}, composed {c}"
        );
    }
}

#[test]
fn fused_blocks_do_not_depend_on_the_thread_count() {
    // Work is split in chunks of whole images fixed by the shapes, and the
    // chunks' partial sums are combined in chunk order: one thread and
    // three threads must give the same bits (float32, several chunks per
    // layer on both forms).
    for (down, size, hidden, n) in [
        (Downsample::Stride2, 28, 16, 20),
        (Downsample::MaxPool, 42, 8, 6),
    ] {
        let l = learner(down, size, hidden, Kernels::Fused);
        let p = l.init(&mut Rng::new(2), &Device::Cpu).unwrap();
        let (x, y) = data(&l, n, 4, DType::F32);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let (logits, _) = l.forward_with(&p, &x, None).unwrap();
                let (_, g, _) = l.loss_and_grad(&p, &x, &y).unwrap();
                let mut all = common::bits(&logits);
                for t in &g.tensors {
                    all.extend(common::bits(t));
                }
                all
            })
        };
        assert_eq!(run(1), run(3), "{down:?}");
    }
}

#[test]
fn avx2_and_baseline_builds_give_the_same_bits() {
    // The element-wise kernels run an AVX2 build where the CPU has one
    // (`simd::simd`); without fast-math flags the compiler neither fuses
    // multiply-adds nor reorders sums, so the baseline build must give the
    // same bits: logits and every gradient, both forms, float32 and 64.
    // (On a CPU without AVX2 both runs take the baseline build.)
    for (down, size, hidden, n, dtype) in [
        (Downsample::Stride2, 28, 16, 10, DType::F32),
        (Downsample::Stride2, 13, 4, 3, DType::F64),
        (Downsample::MaxPool, 42, 8, 6, DType::F32),
        (Downsample::MaxPool, 21, 4, 3, DType::F64),
    ] {
        let l = learner(down, size, hidden, Kernels::Fused);
        let p = l.init(&mut Rng::new(2), &Device::Cpu).unwrap();
        let p = Params {
            tensors: p
                .tensors
                .iter()
                .map(|t| t.to_dtype(dtype).unwrap())
                .collect(),
            ..p
        };
        let (x, y) = data(&l, n, 4, dtype);
        let run = |simd: bool| {
            fewshot::model::kernels::simd::set_simd(simd);
            let (logits, _) = l.forward_with(&p, &x, None).unwrap();
            let (_, g, _) = l.loss_and_grad(&p, &x, &y).unwrap();
            fewshot::model::kernels::simd::set_simd(true);
            let mut all = common::bits(&logits);
            for t in &g.tensors {
                all.extend(common::bits(t));
            }
            all
        };
        assert_eq!(run(true), run(false), "{down:?} {dtype:?}");
    }
}
