//! Datasets: an index of classes and their images, with lazily decoded pixels.
//!
//! A [`Dataset`] is what every reader produces: a table of images (an id such
//! as `images_background/Greek/character01/0394_01.png` and where its bytes
//! are), a table of base classes, and for each split ([`Split`]) the list of
//! episode classes (a base class plus a rotation). Pixels are decoded on
//! demand, in parallel with rayon, into an in-memory cache of resized `u8`
//! images in `C x H x W` order, so repeated sampling never decodes twice.
//!
//! Readers (one trait, [`Reader`]): [`omniglot`], [`mini_imagenet`] and the
//! generic class-per-folder [`folder`]. See `docs/data.md` for layouts and
//! splits. [`describe`] counts a dataset's splits and describes episodes
//! for people.
//!
//! Beside the episode datasets: [`mnist`] (the four standard IDX files,
//! read by [`idx`]) for the optimisation benchmarks' MLP problems, and
//! [`task`], the task kinds.

pub mod describe;
pub mod episode_file;
pub mod export;
pub mod fetch;
pub mod fingerprint;
pub mod folder;
pub mod idx;
pub mod mini_imagenet;
pub mod mnist;
pub mod omniglot;
pub mod sampler;
pub mod store;
pub mod table;
pub mod task;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use store::{Location, ZipStore};

/// The three meta-splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    /// Stable numeric tag mixed into episode seeds.
    pub fn tag(self) -> u64 {
        match self {
            Split::Train => 1,
            Split::Val => 2,
            Split::Test => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            _ => Err(Error::invalid("split", s, "one of train, val, test")),
        }
    }
}

/// How to turn an encoded image into cached pixels and then into floats.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageFormat {
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// Side of the square cached image, in pixels.
    pub size: usize,
    /// Store `255 - v` (Omniglot: strokes become bright, i.e. 1.0).
    pub invert: bool,
    /// Per-channel mean subtracted after scaling to [0, 1].
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub std: Vec<f32>,
}

impl ImageFormat {
    pub fn pixels(&self) -> usize {
        self.channels * self.size * self.size
    }
}

/// One image of a dataset.
#[derive(Debug, Clone)]
pub struct ImageEntry {
    /// Stable id, the path inside the archive or below the data root.
    pub id: String,
    pub location: Location,
}

/// One base class (an Omniglot character, a mini-ImageNet wnid, a folder).
#[derive(Debug, Clone)]
pub struct ClassEntry {
    pub name: String,
    /// Indices into [`Dataset::images`], in a fixed (sorted) order.
    pub images: Vec<usize>,
}

/// A class as episodes see it: a base class and a rotation (multiples of 90
/// degrees, counter-clockwise). Rotated copies are distinct classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EpisodeClass {
    pub base: usize,
    /// 0, 1, 2 or 3 quarter turns.
    pub rotation: u8,
}

/// A dataset: index, splits and pixel cache.
pub struct Dataset {
    /// Short name (`omniglot`, `mini-imagenet`, `folder`).
    pub name: String,
    /// Human description of where it was read from and which split scheme.
    pub description: String,
    pub format: ImageFormat,
    pub images: Vec<ImageEntry>,
    pub classes: Vec<ClassEntry>,
    splits: [Vec<EpisodeClass>; 3],
    zips: Vec<ZipStore>,
    cache: Vec<OnceLock<Box<[u8]>>>,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("name", &self.name)
            .field("images", &self.images.len())
            .field("classes", &self.classes.len())
            .finish()
    }
}

/// Largest `data.image_size` any reader accepts, in pixels.
pub const MAX_IMAGE_SIDE: usize = 512;

/// `data.image_size` (or the dataset's `default`), checked against
/// 1..=[`MAX_IMAGE_SIDE`]: the one check the readers and the benchmark
/// parser share.
pub fn image_side(options: &DataOptions, default: usize) -> Result<usize> {
    let size = options.image_size.unwrap_or(default);
    if size == 0 || size > MAX_IMAGE_SIDE {
        return Err(Error::invalid(
            "data.image_size",
            size,
            format!("1..={MAX_IMAGE_SIDE} pixels"),
        ));
    }
    Ok(size)
}

/// Options every reader understands.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataOptions {
    /// Side of the cached square image (Omniglot default 28, mini-ImageNet 84).
    #[serde(default)]
    pub image_size: Option<usize>,
    /// Omniglot class split: `vinyals` (default) or `lake`.
    #[serde(default)]
    pub split_scheme: Option<String>,
    /// Add 90/180/270-degree rotations of each meta-train class as new
    /// classes (default: true for Omniglot, false otherwise).
    #[serde(default)]
    pub rotations: Option<bool>,
    /// mini-ImageNet: normalise each channel with the dataset's mean and
    /// standard deviation after scaling to [0, 1] (default: true). The
    /// three reference codes feed [0, 1] pixels: `false` reproduces them.
    #[serde(default)]
    pub normalize: Option<bool>,
}

/// A dataset reader: turns a folder (as users receive the data) into a
/// [`Dataset`]. One implementation per dataset family.
pub trait Reader: Sync {
    /// Name used on the command line and in benchmark files.
    fn name(&self) -> &'static str;
    /// Colour channels of its images as the learner sees them.
    fn channels(&self) -> usize;
    /// Side of the cached square image unless `data.image_size` says
    /// otherwise.
    fn default_image_size(&self) -> usize;
    /// Index the data at `root` (nothing is decoded yet).
    fn open(&self, root: &Path, options: &DataOptions) -> Result<Dataset>;
}

/// All known readers.
pub fn readers() -> Vec<Box<dyn Reader>> {
    vec![
        Box::new(omniglot::Omniglot),
        Box::new(mini_imagenet::MiniImageNet),
        Box::new(folder::Folder),
    ]
}

/// Environment variable naming the data directory.
pub const DATA_ENV: &str = "FEWSHOT_DATA";

/// Resolve the data directory: explicit option, else `$FEWSHOT_DATA`, else
/// `./data`.
pub fn data_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os(DATA_ENV) {
        if !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("data")
}

/// The reader of dataset `name`; the error lists the known names.
pub fn reader(name: &str) -> Result<Box<dyn Reader>> {
    let mut all = readers();
    match all.iter().position(|r| r.name() == name) {
        Some(i) => Ok(all.swap_remove(i)),
        None => {
            let names: Vec<_> = all.iter().map(|r| r.name()).collect();
            Err(Error::invalid(
                "dataset",
                name,
                format!("one of {}", names.join(", ")),
            ))
        }
    }
}

/// Open dataset `name` below the data directory (`<data>/omniglot`,
/// `<data>/mini-imagenet`) or, for `folder`, at `<data>` itself.
pub fn open(name: &str, data_dir: &Path, options: &DataOptions) -> Result<Dataset> {
    let reader = reader(name)?;
    let root = if name == "folder" {
        data_dir.to_path_buf()
    } else {
        data_dir.join(name)
    };
    let _span = tracing::info_span!("open_dataset", dataset = name).entered();
    reader.open(&root, options)
}

impl Dataset {
    /// Assemble a dataset from its parts (used by readers).
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        format: ImageFormat,
        images: Vec<ImageEntry>,
        classes: Vec<ClassEntry>,
        splits: [Vec<EpisodeClass>; 3],
        zips: Vec<ZipStore>,
    ) -> Self {
        let cache = (0..images.len()).map(|_| OnceLock::new()).collect();
        Dataset {
            name: name.into(),
            description: description.into(),
            format,
            images,
            classes,
            splits,
            zips,
            cache,
        }
    }

    /// The episode classes of a split.
    pub fn split(&self, split: Split) -> &[EpisodeClass] {
        &self.splits[split as usize]
    }

    /// Display name of an episode class, e.g. `Greek/character01@rot90`.
    pub fn class_name(&self, c: EpisodeClass) -> String {
        let base = &self.classes[c.base].name;
        if c.rotation == 0 {
            base.clone()
        } else {
            format!("{base}@rot{}", 90 * c.rotation as u32)
        }
    }

    /// Number of images in the cache.
    pub fn cached(&self) -> usize {
        self.cache.iter().filter(|c| c.get().is_some()).count()
    }

    /// Decode every image of a split (all images if `None`) into the cache.
    pub fn preload(&self, split: Option<Split>) -> Result<()> {
        let ids: Vec<usize> = match split {
            None => (0..self.images.len()).collect(),
            Some(s) => self.split_images(s),
        };
        self.ensure(&ids)
    }

    /// Every image a split's episodes can draw (each once).
    pub fn split_images(&self, s: Split) -> Vec<usize> {
        let mut bases: Vec<usize> = self.split(s).iter().map(|c| c.base).collect();
        bases.sort_unstable();
        bases.dedup();
        bases
            .iter()
            .flat_map(|&b| self.classes[b].images.iter().copied())
            .collect()
    }

    /// Make sure the given images are decoded and cached (parallel decode).
    /// All undecodable images are reported together.
    pub fn ensure(&self, ids: &[usize]) -> Result<()> {
        let missing: Vec<usize> = ids
            .iter()
            .copied()
            .filter(|&i| self.cache[i].get().is_none())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let _span = tracing::debug_span!("decode", images = missing.len()).entered();
        let errors: Vec<(usize, String)> = missing
            .par_iter()
            .map_init(
                || store::Reader::new(&self.zips),
                |reader, &i| {
                    let res = reader
                        .bytes(&self.images[i].location)
                        .and_then(|b| decode(&b, &self.format));
                    match res {
                        Ok(px) => {
                            let _ = self.cache[i].set(px.into_boxed_slice());
                            None
                        }
                        Err(e) => Some((i, e)),
                    }
                },
            )
            .flatten()
            .collect();
        if errors.is_empty() {
            return Ok(());
        }
        let count = errors.len();
        let list = errors
            .iter()
            .map(|(i, e)| format!("  {}: {e}", self.image_path(*i)))
            .collect::<Vec<_>>()
            .join("\n");
        Err(Error::BadImages {
            count,
            expected: format!(
                "a PNG or JPEG image ({} channel(s), resized to {}x{})",
                self.format.channels, self.format.size, self.format.size
            ),
            list,
        })
    }

    /// Bytes of the archives this dataset holds in memory.
    pub fn archive_bytes(&self) -> usize {
        self.zips.iter().map(|z| z.bytes).sum()
    }

    /// Full path of an image for messages: `archive.zip:entry` or the file.
    pub fn image_path(&self, i: usize) -> String {
        match &self.images[i].location {
            Location::Zip { store, .. } => {
                format!("{}:{}", self.zips[*store].path.display(), self.images[i].id)
            }
            Location::File(p) => p.display().to_string(),
        }
    }

    /// Cached pixels of image `i` (`C x H x W`, `u8`). Panics if not loaded:
    /// call [`Dataset::ensure`] first.
    pub fn pixels(&self, i: usize) -> &[u8] {
        self.cache[i]
            .get()
            .expect("image not decoded: call Dataset::ensure first")
    }

    /// Write image `i`, rotated by `rotation` quarter turns and normalised,
    /// into `out` (`C x H x W` floats).
    pub fn write_normalised(&self, i: usize, rotation: u8, out: &mut [f32]) {
        let f = &self.format;
        let s = f.size;
        let px = self.pixels(i);
        if rotation.is_multiple_of(4) {
            return normalise(f, px, out);
        }
        for c in 0..f.channels {
            let scale = 1.0 / (255.0 * f.std[c]);
            let shift = f.mean[c] / f.std[c];
            let src = &px[c * s * s..(c + 1) * s * s];
            let dst = &mut out[c * s * s..(c + 1) * s * s];
            match rotation % 4 {
                0 => {
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d = v as f32 * scale - shift;
                    }
                }
                r => {
                    for y in 0..s {
                        for x in 0..s {
                            let (sy, sx) = rotation_source(r, s, y, x);
                            dst[y * s + x] = src[sy * s + sx] as f32 * scale - shift;
                        }
                    }
                }
            }
        }
    }
}

impl Dataset {
    /// Cached pixels of image `i` (`C x H x W`, `u8`, resized and inverted
    /// as cached) turned by `rotation` quarter turns, as episodes see them
    /// before normalisation (call [`Dataset::ensure`] first).
    pub fn rotated_pixels(&self, i: usize, rotation: u8) -> Vec<u8> {
        let px = self.pixels(i);
        let r = rotation % 4;
        if r == 0 {
            return px.to_vec();
        }
        let s = self.format.size;
        let mut out = vec![0u8; px.len()];
        for (src, dst) in px.chunks(s * s).zip(out.chunks_mut(s * s)) {
            for y in 0..s {
                for x in 0..s {
                    let (sy, sx) = rotation_source(r, s, y, x);
                    dst[y * s + x] = src[sy * s + sx];
                }
            }
        }
        out
    }
}

/// Where pixel `(y, x)` of an `s x s` image turned `r` (1, 2 or 3)
/// counter-clockwise quarter turns comes from: `out(y, x) = in(sy, sx)`.
fn rotation_source(r: u8, s: usize, y: usize, x: usize) -> (usize, usize) {
    match r {
        1 => (x, s - 1 - y),
        2 => (s - 1 - y, s - 1 - x),
        _ => (s - 1 - x, y),
    }
}

/// Cached pixels `px` (`C x H x W`, `u8`) as normalised floats into `out`.
pub fn normalise(f: &ImageFormat, px: &[u8], out: &mut [f32]) {
    let n = f.size * f.size;
    for c in 0..f.channels {
        let scale = 1.0 / (255.0 * f.std[c]);
        let shift = f.mean[c] / f.std[c];
        for (d, &v) in out[c * n..(c + 1) * n]
            .iter_mut()
            .zip(&px[c * n..(c + 1) * n])
        {
            *d = v as f32 * scale - shift;
        }
    }
}

/// Decode encoded bytes into cached pixels (`C x H x W`, `u8`).
pub fn decode(bytes: &[u8], f: &ImageFormat) -> std::result::Result<Vec<u8>, String> {
    let img = image::load_from_memory(bytes).map_err(|e| e.to_string())?;
    let s = f.size as u32;
    match f.channels {
        1 => {
            let g = img.into_luma8();
            let g = if g.width() == s && g.height() == s {
                g
            } else {
                resize_area_gray(&g, f.size)
            };
            let mut v = g.into_raw();
            if f.invert {
                v.iter_mut().for_each(|p| *p = 255 - *p);
            }
            Ok(v)
        }
        3 => {
            let rgb = img.into_rgb8();
            let rgb = if rgb.width() == s && rgb.height() == s {
                rgb
            } else {
                image::imageops::resize(&rgb, s, s, image::imageops::FilterType::Triangle)
            };
            let n = f.size * f.size;
            let raw = rgb.into_raw();
            let mut out = vec![0u8; 3 * n];
            for (p, px) in raw.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    let v = px[c];
                    out[c * n + p] = if f.invert { 255 - v } else { v };
                }
            }
            Ok(out)
        }
        c => Err(format!("unsupported channel count {c}")),
    }
}

/// Cached pixels (`C x H x W`, `u8`, as [`decode`] returns them) as a PNG
/// file that [`decode`] turns back into exactly these pixels: inversion
/// undone, channels interleaved, no resize needed.
pub fn encode_png(px: &[u8], f: &ImageFormat) -> std::result::Result<Vec<u8>, String> {
    let n = f.size * f.size;
    let s = f.size as u32;
    let v = |p: u8| if f.invert { 255 - p } else { p };
    let mut out = std::io::Cursor::new(Vec::new());
    let written = match f.channels {
        1 => image::GrayImage::from_raw(s, s, px.iter().map(|&p| v(p)).collect())
            .map(|g| g.write_to(&mut out, image::ImageFormat::Png)),
        3 => {
            let raw = (0..n)
                .flat_map(|p| (0..3).map(move |c| v(px[c * n + p])))
                .collect();
            image::RgbImage::from_raw(s, s, raw)
                .map(|g| g.write_to(&mut out, image::ImageFormat::Png))
        }
        c => return Err(format!("unsupported channel count {c}")),
    };
    match written {
        None => Err(format!("{} pixels are not a {s}x{s} image", px.len())),
        Some(r) => r.map(|_| out.into_inner()).map_err(|e| e.to_string()),
    }
}

/// Area-averaging (box) resize of a grey image to `size x size`: each output
/// pixel is the exact coverage-weighted mean of the input pixels under it.
/// This is the anti-aliased downsampling PIL's `BOX` filter performs and is
/// several times faster than a generic Lanczos resize for 105 -> 28.
fn resize_area_gray(img: &image::GrayImage, size: usize) -> image::GrayImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let src = img.as_raw();
    let wx = area_weights(w, size);
    let wy = area_weights(h, size);
    // Horizontal pass: h x size.
    let mut tmp = vec![0f32; h * size];
    for y in 0..h {
        let row = &src[y * w..(y + 1) * w];
        for (ox, taps) in wx.iter().enumerate() {
            let mut acc = 0f32;
            for &(ix, wt) in taps {
                acc += row[ix] as f32 * wt;
            }
            tmp[y * size + ox] = acc;
        }
    }
    let mut out = vec![0u8; size * size];
    for (oy, taps) in wy.iter().enumerate() {
        for ox in 0..size {
            let mut acc = 0f32;
            for &(iy, wt) in taps {
                acc += tmp[iy * size + ox] * wt;
            }
            out[oy * size + ox] = acc.round().clamp(0.0, 255.0) as u8;
        }
    }
    image::GrayImage::from_raw(size as u32, size as u32, out).expect("buffer size")
}

/// For each output index, the input indices it covers and their weights
/// (summing to 1).
fn area_weights(input: usize, output: usize) -> Vec<Vec<(usize, f32)>> {
    let scale = input as f64 / output as f64;
    (0..output)
        .map(|o| {
            let lo = o as f64 * scale;
            let hi = lo + scale;
            let mut taps = Vec::new();
            let mut i = lo.floor() as usize;
            while (i as f64) < hi && i < input {
                let a = lo.max(i as f64);
                let b = hi.min(i as f64 + 1.0);
                if b > a {
                    taps.push((i, ((b - a) / scale) as f32));
                }
                i += 1;
            }
            taps
        })
        .collect()
}

/// Open a zip at `path`, or report that it (or the folder it would be
/// extracted to) is missing.
pub(crate) fn require_dir_or_zip(root: &Path, stem: &str, hint: &str) -> Result<Source> {
    let dir = root.join(stem);
    let zip = root.join(format!("{stem}.zip"));
    if dir.is_dir() {
        Ok(Source::Dir(dir))
    } else if zip.is_file() {
        Ok(Source::Zip(ZipStore::open(&zip)?))
    } else {
        Err(Error::MissingData {
            what: format!("`{stem}/` or `{stem}.zip`"),
            path: root.to_path_buf(),
            hint: hint.to_string(),
        })
    }
}

/// An extracted folder or an archive.
pub(crate) enum Source {
    Dir(PathBuf),
    Zip(ZipStore),
}

/// List the files below `dir` recursively, as `/`-separated paths relative to
/// `base`, sorted.
pub(crate) fn walk_files(base: &Path, dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| Error::io(&d, e))?;
            let p = entry.path();
            let ft = entry.file_type().map_err(|e| Error::io(&p, e))?;
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let rel = p.strip_prefix(base).unwrap_or(&p);
                let s: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(s.join("/"));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_weights_sum_to_one() {
        for (i, o) in [(105, 28), (84, 84), (10, 3), (3, 10)] {
            for taps in area_weights(i, o) {
                let s: f32 = taps.iter().map(|t| t.1).sum();
                assert!((s - 1.0).abs() < 1e-5, "{i}->{o}: {s}");
            }
        }
    }

    #[test]
    fn rotation_by_four_quarter_turns_is_identity() {
        let format = ImageFormat {
            channels: 1,
            size: 3,
            invert: false,
            mean: vec![0.0],
            std: vec![1.0 / 255.0],
        };
        let ds = Dataset::new(
            "t",
            "t",
            format,
            vec![ImageEntry {
                id: "x".into(),
                location: Location::File("x".into()),
            }],
            vec![],
            [vec![], vec![], vec![]],
            vec![],
        );
        let _ = ds.cache[0].set(vec![1, 2, 3, 4, 5, 6, 7, 8, 9].into_boxed_slice());
        let mut out = vec![0f32; 9];
        ds.write_normalised(0, 1, &mut out);
        // One counter-clockwise quarter turn of [[1,2,3],[4,5,6],[7,8,9]].
        assert_eq!(out, vec![3., 6., 9., 2., 5., 8., 1., 4., 7.]);
        ds.write_normalised(0, 2, &mut out);
        assert_eq!(out, vec![9., 8., 7., 6., 5., 4., 3., 2., 1.]);
        ds.write_normalised(0, 3, &mut out);
        assert_eq!(out, vec![7., 4., 1., 8., 5., 2., 9., 6., 3.]);
    }
}
