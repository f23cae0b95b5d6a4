//! Fingerprints: which episodes, and which data, a result was scored on.
//!
//! An **episode fingerprint** is `sha256:<hex>` of an ordered set of
//! episodes as the learner sees them (after resize, inversion, rotation and
//! normalisation): for each episode in order, the SHA-256 of the bytes of
//! `support_x` (f32, little-endian), `support_y` (i64, little-endian),
//! `query_x` and `query_y`, in that order; the fingerprint is the SHA-256
//! of those 32-byte digests concatenated. Two episode sets have the same
//! fingerprint exactly when every tensor of every episode is the same, so a
//! score computed elsewhere on an export (`bench episodes --export`) can
//! be checked against a run's own test episodes (`bench import`). The same
//! value is computed in Python from an export's safetensors file by
//! `examples/pytorch/fewshot_export.py`.
//!
//! A **data fingerprint** is `sha256:<hex>` of a dataset's splits as the
//! episodes draw them (a run: all three; an evaluation: the test split):
//! for each split in that order, its name, then each episode
//! class's name (rotation included) and, for each base class once, every
//! image's id and decoded pixels (resized and inverted as cached). It
//! changes when an image, the class split or the preprocessing changes.

use candle_core::Tensor;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::data::sampler::{Batch, Sampler};
use crate::data::task::Task;
use crate::data::{Dataset, Split};
use crate::error::Result;

/// The SHA-256 of one episode's four tensors (see the module docs).
pub fn episode_digest(b: &Batch) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    for (x, y) in [(&b.support_x, &b.support_y), (&b.query_x, &b.query_y)] {
        let x = x.flatten_all()?.to_vec1::<f32>()?;
        h.update(x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
        h.update(
            labels(y)?
                .iter()
                .flat_map(|l| l.to_le_bytes())
                .collect::<Vec<u8>>(),
        );
    }
    Ok(h.finalize().into())
}

/// Labels of a `[n]` label tensor (u32 or i64) as i64.
pub fn labels(y: &Tensor) -> Result<Vec<i64>> {
    Ok(y.to_dtype(candle_core::DType::I64)?.to_vec1::<i64>()?)
}

/// `sha256:<hex>` of episode digests in episode order.
pub fn combine(digests: &[[u8; 32]]) -> String {
    let mut h = Sha256::new();
    for d in digests {
        h.update(d);
    }
    format!("sha256:{}", hex(&h.finalize()))
}

/// The fingerprint of episodes `0..n` of a sampler (built on the CPU, in
/// parallel; decodes what it needs).
pub fn episodes(sampler: &Sampler, n: usize) -> Result<String> {
    let cpu = candle_core::Device::Cpu;
    let digests: Vec<[u8; 32]> = (0..n as u64)
        .into_par_iter()
        .map(|i| episode_digest(&sampler.instance(i, &cpu)?))
        .collect::<Result<_>>()?;
    Ok(combine(&digests))
}

/// The data fingerprint of `splits` of a dataset (see the module docs);
/// decodes every image of them that is not decoded yet.
pub fn data(ds: &Dataset, splits: &[Split]) -> Result<String> {
    let mut h = Sha256::new();
    for &s in splits {
        let ids = ds.split_images(s);
        ds.ensure(&ids)?;
        h.update(s.name().as_bytes());
        for c in ds.split(s) {
            h.update(ds.class_name(*c).as_bytes());
            h.update([0]);
        }
        for i in ids {
            h.update(ds.images[i].id.as_bytes());
            h.update([0]);
            h.update(ds.pixels(i));
        }
    }
    Ok(format!("sha256:{}", hex(&h.finalize())))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::sampler::EpisodeId;

    fn batch(v: f32, label: u32) -> Batch {
        let cpu = candle_core::Device::Cpu;
        let x = Tensor::from_vec(vec![v; 4], (1, 1, 2, 2), &cpu).unwrap();
        let y = Tensor::from_vec(vec![label], 1, &cpu).unwrap();
        Batch {
            id: EpisodeId::default(),
            support_x: x.clone(),
            support_y: y.clone(),
            query_x: x,
            query_y: y,
        }
    }

    #[test]
    fn a_fingerprint_changes_with_a_pixel_a_label_or_the_order_and_is_sha256_of_the_documented_bytes(
    ) {
        let a = episode_digest(&batch(0.5, 0)).unwrap();
        let b = episode_digest(&batch(0.25, 0)).unwrap();
        let c = episode_digest(&batch(0.5, 1)).unwrap();
        assert!(a != b && a != c && b != c);
        assert_ne!(combine(&[a, b]), combine(&[b, a]));
        // The documented byte layout, written out by hand.
        let mut bytes = vec![];
        for _ in 0..2 {
            for _ in 0..4 {
                bytes.extend(0.5f32.to_le_bytes());
            }
            bytes.extend(0i64.to_le_bytes());
        }
        let want: [u8; 32] = Sha256::digest(&bytes).into();
        assert_eq!(a, want);
        let f = combine(&[a]);
        assert_eq!(f, format!("sha256:{}", hex(&Sha256::digest(a))));
        assert_eq!(f.len(), "sha256:".len() + 64);
    }
}
