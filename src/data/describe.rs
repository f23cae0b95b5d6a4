//! Datasets and episodes described for people, from the data alone: a
//! dataset's splits counted (`bench data info`), and seeded episodes by
//! class name and image file (`bench episodes`).
//!
//! Both return the opened dataset with what was asked; the work that can
//! take long or fail on a bad image (decoding every image, each episode's
//! tensors) is done as the caller asks for it ([`Info::decode`],
//! [`Episodes::iter`]), so a caller shows what it has before it.

use std::ops::Range;
use std::path::Path;
use std::time::Instant;

use candle_core::Device;

use crate::data::sampler::{EpisodeSpec, Sampler};
use crate::data::{self, DataOptions, Dataset, Split};
use crate::error::Result;

/// The size of one split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitSize {
    pub split: Split,
    /// Episode classes (rotated copies counted).
    pub classes: usize,
    /// Base classes (characters, wnids, folders).
    pub bases: usize,
    /// Images of the base classes.
    pub images: usize,
}

/// A dataset indexed, with the size of each split.
#[derive(Debug)]
pub struct Info {
    pub dataset: Dataset,
    /// Train, validation and test, in that order.
    pub splits: Vec<SplitSize>,
}

/// Every image of a dataset decoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decoded {
    /// Images in the cache afterwards.
    pub images: usize,
    pub seconds: f64,
}

/// Open the dataset `name` under `data_dir` and count its splits.
pub fn info(name: &str, data_dir: &Path, options: &DataOptions) -> Result<Info> {
    let dataset = data::open(name, data_dir, options)?;
    let splits = Split::ALL.map(|s| split_size(&dataset, s)).to_vec();
    Ok(Info { dataset, splits })
}

/// The classes, base classes and images of split `s`.
pub fn split_size(ds: &Dataset, s: Split) -> SplitSize {
    let cls = ds.split(s);
    let mut bases: Vec<usize> = cls.iter().map(|c| c.base).collect();
    bases.sort_unstable();
    bases.dedup();
    SplitSize {
        split: s,
        classes: cls.len(),
        bases: bases.len(),
        images: bases.iter().map(|&b| ds.classes[b].images.len()).sum(),
    }
}

impl Info {
    /// Decode every image (all undecodable files are reported together).
    pub fn decode(&self) -> Result<Decoded> {
        let t = Instant::now();
        self.dataset.preload(None)?;
        let images = self.dataset.cached();
        Ok(Decoded {
            images,
            seconds: t.elapsed().as_secs_f64(),
        })
    }
}

/// Episodes of one split of an opened dataset, checked against it.
#[derive(Debug)]
pub struct Episodes {
    pub dataset: Dataset,
    pub split: Split,
    pub spec: EpisodeSpec,
    pub seed: u64,
    /// The episode indices described.
    pub indices: Range<u64>,
}

/// One episode as people read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpisodeDescription {
    pub index: u64,
    /// Shape of the support tensor, `[N*K, C, H, W]`.
    pub support_shape: Vec<usize>,
    /// Shape of the query tensor, `[N*Q, C, H, W]`.
    pub query_shape: Vec<usize>,
    /// In label order.
    pub classes: Vec<ClassDescription>,
}

/// One class of an episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassDescription {
    pub label: usize,
    /// The class's display name ([`Dataset::class_name`]).
    pub name: String,
    /// File names of the support images (their ids' last component).
    pub support: Vec<String>,
    /// File names of the query images.
    pub query: Vec<String>,
}

/// Open the dataset `name` under `data_dir` and check `spec` against its
/// split `split` (too few classes or images is an error here, before any
/// episode); episodes `indices` under `seed` are described by
/// [`Episodes::iter`].
pub fn episodes(
    name: &str,
    data_dir: &Path,
    options: &DataOptions,
    split: Split,
    spec: EpisodeSpec,
    seed: u64,
    indices: Range<u64>,
) -> Result<Episodes> {
    let dataset = data::open(name, data_dir, options)?;
    Sampler::new(&dataset, split, spec, seed)?;
    Ok(Episodes {
        dataset,
        split,
        spec,
        seed,
        indices,
    })
}

impl Episodes {
    /// Episode classes in the split.
    pub fn split_classes(&self) -> usize {
        self.dataset.split(self.split).len()
    }

    /// Each episode described, in index order; an episode's images are
    /// decoded (and its tensors built on the CPU) when it is reached.
    pub fn iter(&self) -> impl Iterator<Item = Result<EpisodeDescription>> + '_ {
        // Checked by [`episodes`].
        let sampler = Sampler {
            dataset: &self.dataset,
            split: self.split,
            spec: self.spec,
            seed: self.seed,
        };
        let ds = &self.dataset;
        let device = Device::Cpu;
        self.indices.clone().map(move |index| {
            let ep = sampler.episode(index);
            let batch = sampler.batch(&ep, &device)?;
            let classes = ep
                .classes
                .iter()
                .enumerate()
                .map(|(label, c)| {
                    let ids = |set: &[(usize, usize)]| {
                        set.iter()
                            .filter(|p| p.1 == label)
                            .map(|p| short_id(&ds.images[p.0].id).to_string())
                            .collect()
                    };
                    ClassDescription {
                        label,
                        name: ds.class_name(*c),
                        support: ids(&ep.support),
                        query: ids(&ep.query),
                    }
                })
                .collect();
            Ok(EpisodeDescription {
                index,
                support_shape: batch.support_x.dims().to_vec(),
                query_shape: batch.query_x.dims().to_vec(),
                classes,
            })
        })
    }
}

/// The file name of an image id (the class is shown beside it).
fn short_id(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_id_is_shown_by_its_file_name() {
        assert_eq!(
            short_id("images_background/Greek/character01/0394_01.png"),
            "0394_01.png"
        );
        assert_eq!(short_id("n01532829.jpg"), "n01532829.jpg");
    }
}
