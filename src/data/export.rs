//! Fixed episodes out of fewshot, for methods written elsewhere
//! (`bench episodes <benchmark> --export DIR`).
//!
//! An export folder holds:
//! - [`CSV`]: `episode,role,label,image,class,source`, one row per image,
//!   support then query, each grouped by label (the order of the learner's
//!   tensors). Its first four columns are what `bench eval --episodes`
//!   reads ([`crate::data::episode_file`]); `class` is the episode class
//!   (rotation included) and `source` the image's id in the dataset.
//! - `images/<episode>/<role>-<label>-<k>.png`: every image as the episode
//!   uses it (resized, turned by its class's rotation), stored so that
//!   decoding it as the dataset does gives back exactly the learner's
//!   pixels (Omniglot's inversion undone in the file, lossless PNG).
//! - [`TENSORS`]: one safetensors file with `support_x [E, N*K, C, H, W]`
//!   and `query_x [E, N*Q, C, H, W]` (f32, normalised exactly as the
//!   learner sees them) and `support_y [E, N*K]`, `query_y [E, N*Q]`
//!   (i64 labels); its metadata says where the episodes come from and
//!   holds their fingerprint ([`crate::data::fingerprint`]).
//! - [`MANIFEST`]: the same metadata as JSON.
//!
//! The folder is written beside its destination and renamed into place
//! when complete, so an interrupted export leaves no half folder under the
//! name, and an existing folder is never written into.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use safetensors::{Dtype, View};

use crate::data::fingerprint;
use crate::data::sampler::{Episode, Sampler};
use crate::data::Dataset;
use crate::error::{Error, Result};

/// The episode list of an export.
pub const CSV: &str = "episodes.csv";
/// The tensors of an export.
pub const TENSORS: &str = "episodes.safetensors";
/// The metadata of an export.
pub const MANIFEST: &str = "export.json";
/// The images of an export.
pub const IMAGES: &str = "images";

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub dir: PathBuf,
    pub episodes: usize,
    pub images: usize,
    /// The episode fingerprint ([`crate::data::fingerprint`]).
    pub fingerprint: String,
    /// Bytes of the safetensors file.
    pub tensor_bytes: u64,
}

/// Export episodes `0..n` of `sampler` into the new folder `dir`;
/// `meta` (where the episodes come from: benchmark, split, seed, ...) goes
/// into the safetensors metadata and the manifest, beside the fingerprint
/// and the episode shape.
pub fn export(
    sampler: &Sampler,
    n: usize,
    dir: &Path,
    meta: BTreeMap<String, String>,
) -> Result<Exported> {
    if dir.exists() {
        return Err(Error::invalid(
            "export folder",
            dir.display(),
            "a folder that does not exist yet: it already exists, and an export never writes into one",
        ));
    }
    let ds = sampler.dataset;
    let eps: Vec<Episode> = (0..n as u64).map(|i| sampler.episode(i)).collect();
    let ids: Vec<usize> = eps
        .iter()
        .flat_map(|e| e.support.iter().chain(&e.query).map(|p| p.0))
        .collect();
    ds.ensure(&ids)?;
    let name = dir
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let tmp = dir.with_file_name(format!(".{name}.partial{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    let written = write_into(ds, sampler, &eps, ids.len(), &tmp, meta);
    match written {
        Ok(mut e) => {
            crate::util::rename(&tmp, dir)?;
            e.dir = dir.to_path_buf();
            Ok(e)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn write_into(
    ds: &Dataset,
    sampler: &Sampler,
    eps: &[Episode],
    images_count: usize,
    dir: &Path,
    mut meta: BTreeMap<String, String>,
) -> Result<Exported> {
    let images = dir.join(IMAGES);
    crate::util::create_dir_durable(&images)?;
    // Each episode's images and CSV rows, and its digest, in parallel.
    type Rows = Vec<[String; 6]>;
    let done: Vec<(Rows, [u8; 32])> = eps
        .par_iter()
        .enumerate()
        .map(|(e, ep)| -> Result<(Rows, [u8; 32])> {
            let folder = images.join(format!("{e:05}"));
            std::fs::create_dir(&folder).map_err(|x| Error::io(&folder, x))?;
            let mut rows = vec![];
            for (role, set) in [("support", &ep.support), ("query", &ep.query)] {
                let mut k = vec![0usize; ep.classes.len()];
                for &(img, label) in set.iter() {
                    let file = format!("{role}-{label}-{}.png", k[label]);
                    k[label] += 1;
                    let px = ds.rotated_pixels(img, ep.classes[label].rotation);
                    let png = crate::data::encode_png(&px, &ds.format).map_err(|why| {
                        Error::BadImages {
                            count: 1,
                            expected: "pixels that encode as PNG".into(),
                            list: format!("{}: {why}", ds.image_path(img)),
                        }
                    })?;
                    let path = folder.join(&file);
                    std::fs::write(&path, png).map_err(|x| Error::io(&path, x))?;
                    rows.push([
                        e.to_string(),
                        role.to_string(),
                        label.to_string(),
                        format!("{IMAGES}/{e:05}/{file}"),
                        ds.class_name(ep.classes[label]),
                        ds.images[img].id.clone(),
                    ]);
                }
            }
            let b = sampler.batch(ep, &candle_core::Device::Cpu)?;
            Ok((rows, fingerprint::episode_digest(&b)?))
        })
        .collect::<Result<_>>()?;
    let mut rows = vec![];
    let mut digests = vec![];
    for (r, d) in done {
        rows.extend(r);
        digests.push(d);
    }
    let csv = crate::util::csv_text(
        &["episode", "role", "label", "image", "class", "source"],
        rows,
    );
    crate::util::write_atomic(&dir.join(CSV), csv.as_bytes())?;
    let fp = fingerprint::combine(&digests);
    let spec = sampler.spec;
    let f = &ds.format;
    meta.insert("fingerprint".into(), fp.clone());
    meta.insert("episodes".into(), eps.len().to_string());
    meta.insert("ways".into(), spec.ways.to_string());
    meta.insert("shots".into(), spec.shots.to_string());
    meta.insert("queries".into(), spec.queries.to_string());
    meta.insert("dataset".into(), ds.name.clone());
    meta.insert("split".into(), sampler.split.to_string());
    meta.insert("seed".into(), sampler.seed.to_string());
    meta.insert(
        "image".into(),
        format!(
            "{} channel(s), {}x{}, inverted: {}, mean {:?}, std {:?}",
            f.channels, f.size, f.size, f.invert, f.mean, f.std
        ),
    );
    meta.insert("fewshot".into(), env!("CARGO_PKG_VERSION").into());
    let parts: Vec<(String, Part)> = [
        ("support_x", false, false),
        ("support_y", false, true),
        ("query_x", true, false),
        ("query_y", true, true),
    ]
    .into_iter()
    .map(|(name, query, labels)| {
        let per = spec.ways * if query { spec.queries } else { spec.shots };
        let shape = if labels {
            vec![eps.len(), per]
        } else {
            vec![eps.len(), per, f.channels, f.size, f.size]
        };
        (
            name.to_string(),
            Part {
                ds,
                eps,
                query,
                labels,
                shape,
            },
        )
    })
    .collect();
    let tensors = dir.join(TENSORS);
    safetensors::serialize_to_file(parts, Some(meta.clone().into_iter().collect()), &tensors)
        .map_err(|e| Error::io(&tensors, std::io::Error::other(e.to_string())))?;
    let json = serde_json::to_string_pretty(&meta).expect("strings serialise");
    crate::util::write_atomic(&dir.join(MANIFEST), json.as_bytes())?;
    let tensor_bytes = std::fs::metadata(&tensors)
        .map_err(|e| Error::io(&tensors, e))?
        .len();
    Ok(Exported {
        dir: dir.to_path_buf(),
        episodes: eps.len(),
        images: images_count,
        fingerprint: fp,
        tensor_bytes,
    })
}

/// One of the four stacked tensors, built when the writer asks for its
/// bytes (so only one is in memory at a time).
struct Part<'a> {
    ds: &'a Dataset,
    eps: &'a [Episode],
    query: bool,
    labels: bool,
    shape: Vec<usize>,
}

impl View for Part<'_> {
    fn dtype(&self) -> Dtype {
        if self.labels {
            Dtype::I64
        } else {
            Dtype::F32
        }
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let px = self.ds.format.pixels();
        let mut out = Vec::with_capacity(self.data_len());
        let mut floats = vec![0f32; px];
        for ep in self.eps {
            let set = if self.query { &ep.query } else { &ep.support };
            for &(img, label) in set {
                if self.labels {
                    out.extend((label as i64).to_le_bytes());
                } else {
                    self.ds
                        .write_normalised(img, ep.classes[label].rotation, &mut floats);
                    out.extend(floats.iter().flat_map(|v| v.to_le_bytes()));
                }
            }
        }
        Cow::Owned(out)
    }

    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype().bitsize() / 8
    }
}
