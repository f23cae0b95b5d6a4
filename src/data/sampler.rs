//! Seeded N-way K-shot episode sampling.
//!
//! Determinism contract: episode `index` of split `split` under seed `seed`
//! is a pure function of `(seed, split, index)` and of the dataset index (the
//! class list of the split and each class's sorted image list). It does not
//! depend on the thread count, on which episodes were drawn before, or on
//! the order they are drawn in: each episode draws from its own generator,
//! `Rng::derive(seed, [split tag, index])`. The draw is:
//!
//! 1. `ways` distinct classes of the split, in random order; the position of
//!    a class in that order is its label, so labels are exactly 0..N-1 and
//!    their assignment to classes is shuffled;
//! 2. for each class in label order, `shots + queries` distinct images of
//!    it, in random order: the first `shots` are support, the rest query.
//!
//! Support and query sets are therefore disjoint. Test episodes are simply
//! indices `0..test_episodes` of the test split under the benchmark's seed:
//! a fixed, indexed set that every algorithm sees.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, EpisodeClass, Split};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Shape of an episode: N ways, K shots, Q queries per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpisodeSpec {
    /// Classes per episode (N >= 2).
    pub ways: usize,
    /// Support images per class (K >= 1).
    pub shots: usize,
    /// Query images per class (Q >= 1).
    pub queries: usize,
}

impl EpisodeSpec {
    /// Largest ways, shots or queries accepted: far above any published
    /// setting (20-way, 5-shot, 15 queries), low enough that a typo cannot
    /// allocate gigabytes for the learner's head or an episode.
    pub const MAX: usize = 1000;

    /// Check the spec on its own (without a dataset).
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("ways", self.ways),
            ("shots", self.shots),
            ("queries", self.queries),
        ] {
            if v > Self::MAX {
                return Err(Error::invalid(
                    name,
                    v,
                    format!("at most {} per episode", Self::MAX),
                ));
            }
        }
        if self.ways < 2 {
            return Err(Error::invalid(
                "ways",
                self.ways,
                "an episode needs at least 2 classes (ways >= 2)",
            ));
        }
        if self.shots < 1 {
            return Err(Error::invalid(
                "shots",
                self.shots,
                "at least 1 support image per class (shots >= 1)",
            ));
        }
        if self.queries < 1 {
            return Err(Error::invalid(
                "queries",
                self.queries,
                "at least 1 query image per class (queries >= 1)",
            ));
        }
        Ok(())
    }
}

/// One episode: which classes and which images, before any pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    pub split: Split,
    pub index: u64,
    /// Class of label `l` is `classes[l]`.
    pub classes: Vec<EpisodeClass>,
    /// `(image, label)` pairs, grouped by label, `shots` per label.
    pub support: Vec<(usize, usize)>,
    /// `(image, label)` pairs, grouped by label, `queries` per label.
    pub query: Vec<(usize, usize)>,
}

/// Which episode a batch holds: its split (none for the episodes of a file,
/// `bench eval --episodes`) and its index there. Algorithms derive an
/// episode's own random choices (Reptile's evaluation mini-batches) from it
/// and their run seed, so an episode is adapted the same way every time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct EpisodeId {
    pub split: Option<Split>,
    pub index: u64,
}

impl EpisodeId {
    pub fn new(split: Split, index: u64) -> EpisodeId {
        EpisodeId {
            split: Some(split),
            index,
        }
    }

    /// `[split tag (0: none), index]`, for [`crate::rng::Rng::derive`].
    pub fn path(&self) -> [u64; 2] {
        [self.split.map_or(0, Split::tag), self.index]
    }
}

/// An episode as tensors.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Which episode this is.
    pub id: EpisodeId,
    /// `[N*K, C, H, W]`, f32.
    pub support_x: Tensor,
    /// `[N*K]`, u32 labels in 0..N.
    pub support_y: Tensor,
    /// `[N*Q, C, H, W]`, f32.
    pub query_x: Tensor,
    /// `[N*Q]`, u32.
    pub query_y: Tensor,
}

/// Samples episodes of one split.
#[derive(Debug, Clone, Copy)]
pub struct Sampler<'a> {
    pub dataset: &'a Dataset,
    pub split: Split,
    pub spec: EpisodeSpec,
    pub seed: u64,
}

impl<'a> Sampler<'a> {
    /// Check the spec against the split and build the sampler. Fails if N is
    /// larger than the split's classes or if any class has fewer than K+Q
    /// images (all such classes are named).
    pub fn new(dataset: &'a Dataset, split: Split, spec: EpisodeSpec, seed: u64) -> Result<Self> {
        spec.validate()?;
        let classes = dataset.split(split);
        if spec.ways > classes.len() {
            return Err(Error::TooFewClasses {
                dataset: dataset.name.clone(),
                split: split.to_string(),
                available: classes.len(),
                ways: spec.ways,
            });
        }
        let needed = spec.shots + spec.queries;
        let mut small: Vec<String> = Vec::new();
        let mut bases: Vec<usize> = classes.iter().map(|c| c.base).collect();
        bases.sort_unstable();
        bases.dedup();
        for b in bases {
            let n = dataset.classes[b].images.len();
            if n < needed {
                small.push(format!("{} ({n} images)", dataset.classes[b].name));
            }
        }
        if !small.is_empty() {
            let count = small.len();
            small.truncate(10);
            return Err(Error::TooFewImages {
                dataset: dataset.name.clone(),
                split: split.to_string(),
                needed,
                count,
                list: small.join(", ") + if count > 10 { ", ..." } else { "" },
            });
        }
        Ok(Sampler {
            dataset,
            split,
            spec,
            seed,
        })
    }

    /// Episode `index` (pure function of seed, split and index).
    pub fn episode(&self, index: u64) -> Episode {
        let mut rng = Rng::derive(self.seed, &[self.split.tag(), index]);
        let pool = self.dataset.split(self.split);
        let EpisodeSpec {
            ways,
            shots,
            queries,
        } = self.spec;
        let classes: Vec<EpisodeClass> = rng
            .distinct(pool.len(), ways)
            .into_iter()
            .map(|i| pool[i])
            .collect();
        let mut support = Vec::with_capacity(ways * shots);
        let mut query = Vec::with_capacity(ways * queries);
        for (label, c) in classes.iter().enumerate() {
            let imgs = &self.dataset.classes[c.base].images;
            let pick = rng.distinct(imgs.len(), shots + queries);
            for (j, &p) in pick.iter().enumerate() {
                if j < shots {
                    support.push((imgs[p], label));
                } else {
                    query.push((imgs[p], label));
                }
            }
        }
        Episode {
            split: self.split,
            index,
            classes,
            support,
            query,
        }
    }

    /// Decode (if needed) and assemble episode tensors on `device`.
    pub fn batch(&self, episode: &Episode, device: &Device) -> Result<Batch> {
        episode_batch(self.dataset, episode, device)
    }
}

/// Decode (if needed) the images of an episode and assemble its tensors.
pub fn episode_batch(ds: &Dataset, ep: &Episode, device: &Device) -> Result<Batch> {
    let ids: Vec<usize> = ep.support.iter().chain(&ep.query).map(|p| p.0).collect();
    ds.ensure(&ids)?;
    let (support_x, support_y) = stack(ds, ep, &ep.support, device)?;
    let (query_x, query_y) = stack(ds, ep, &ep.query, device)?;
    Ok(Batch {
        id: EpisodeId::new(ep.split, ep.index),
        support_x,
        support_y,
        query_x,
        query_y,
    })
}

fn stack(
    ds: &Dataset,
    ep: &Episode,
    items: &[(usize, usize)],
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let f = &ds.format;
    let px = f.pixels();
    let mut data = vec![0f32; items.len() * px];
    let mut labels = Vec::with_capacity(items.len());
    for (k, &(img, label)) in items.iter().enumerate() {
        let rot = ep.classes[label].rotation;
        ds.write_normalised(img, rot, &mut data[k * px..(k + 1) * px]);
        labels.push(label as u32);
    }
    let x = Tensor::from_vec(data, (items.len(), f.channels, f.size, f.size), device)?;
    let y = Tensor::from_vec(labels, items.len(), device)?;
    Ok((x, y))
}
