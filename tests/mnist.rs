//! Integration tests of the IDX reader and the MNIST dataset: the real
//! 8,000 / 2,000 digit subset in `../shared/datasets/mnist/` (see its
//! README; read only, never written), and every corrupt input we know of,
//! written into a fresh temp dir per test. Each error test asserts that the
//! message names the file and the problem.
//!
//! The real-data test fails loudly when the shared folder is absent; it
//! never passes by skipping.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use fewshot::data::idx;
use fewshot::data::mnist::{
    Digits, Mnist, CLASSES, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS,
};
use flate2::write::GzEncoder;

// ---------------------------------------------------------------- helpers

/// The shared real MNIST subset.
fn shared_mnist() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/mnist");
    assert!(
        dir.join(format!("{TRAIN_IMAGES}.gz")).is_file(),
        "the MNIST tests need the shared digits at {} (see ../shared/datasets/README.md); \
         they are not optional",
        dir.display()
    );
    dir
}

/// A fresh folder under the system temp dir, removed when dropped (also
/// when the test panics).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fewshot-mnist-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An IDX file of unsigned bytes.
fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// A small valid MNIST in `dir`: 5 training and 3 test digits of 4x3
/// pixels, the four files gzipped (`.gz` names) or not.
fn write_mnist(dir: &Path, gz: bool) {
    let pixels = |n: usize| {
        (0..n * 12)
            .map(|i| (i * 37 % 256) as u8)
            .collect::<Vec<_>>()
    };
    let files = [
        (TRAIN_IMAGES, idx_bytes(&[5, 4, 3], &pixels(5))),
        (TRAIN_LABELS, idx_bytes(&[5], &[3, 0, 9, 9, 1])),
        (TEST_IMAGES, idx_bytes(&[3, 4, 3], &pixels(3))),
        (TEST_LABELS, idx_bytes(&[3], &[7, 2, 0])),
    ];
    for (stem, bytes) in files {
        if gz {
            std::fs::write(dir.join(format!("{stem}.gz")), gzip(&bytes)).unwrap();
        } else {
            std::fs::write(dir.join(stem), bytes).unwrap();
        }
    }
}

/// A valid uncompressed MNIST in a fresh temp dir with `stem` replaced by
/// `bytes`; returns the dir and the error message of opening it.
fn open_with(name: &str, stem: &str, bytes: &[u8]) -> (TempDir, String) {
    let dir = TempDir::new(name);
    write_mnist(&dir.0, false);
    std::fs::write(dir.path(stem), bytes).unwrap();
    let msg = match Mnist::open(&dir.0) {
        Ok(_) => panic!("{name}: opening succeeded, expected an error"),
        Err(e) => e.to_string(),
    };
    (dir, msg)
}

/// Assert that `msg` names the file `path` and contains each of `parts`.
fn assert_names(msg: &str, path: &Path, parts: &[&str]) {
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name {}: {msg}",
        path.display()
    );
    for p in parts {
        assert!(msg.contains(p), "error lacks `{p}`: {msg}");
    }
}

// ---------------------------------------------------------------- real data

#[test]
fn real_subset_has_its_counts_sizes_labels_and_ink() {
    let m = Mnist::open(&shared_mnist()).unwrap();
    for (d, n) in [(&m.train, 8000), (&m.test, 2000)] {
        assert_eq!((d.n, d.rows, d.cols), (n, 28, 28));
        assert_eq!(d.images.len(), n * 28 * 28);
        assert_eq!(d.labels.len(), n);
        assert!(d.labels.iter().all(|&l| usize::from(l) < CLASSES));
        let counts = d.class_counts();
        assert_eq!(counts.iter().sum::<usize>(), n);
        // Every digit present, none dominating: a seeded split of real MNIST
        // has about n / 10 of each.
        for (c, &k) in counts.iter().enumerate() {
            assert!(k > n / 20 && k < n / 5, "digit {c}: {k} of {n}");
        }
        // Real MNIST's mean ink is 0.1307 (train) and 0.1325 (test) of full
        // scale; most pixels are background and some reach full ink.
        let mean =
            d.images.iter().map(|&p| f64::from(p)).sum::<f64>() / 255.0 / d.images.len() as f64;
        assert!((0.11..0.15).contains(&mean), "mean pixel {mean}");
        let zeros = d.images.iter().filter(|&&p| p == 0).count() as f64 / d.images.len() as f64;
        assert!((0.7..0.9).contains(&zeros), "background fraction {zeros}");
        assert_eq!(d.images.iter().max(), Some(&255));
    }
    // The first labels of each file, as `zcat <file> | xxd` shows them
    // after the 8-byte header.
    assert_eq!(m.train.labels[..8], [9, 3, 7, 0, 9, 7, 7, 9]);
    assert_eq!(m.test.labels[..8], [0, 2, 2, 8, 4, 3, 1, 0]);
    let s = m.summary();
    assert!(
        s.contains("8000 digits of 28x28") && s.contains("2000 digits of 28x28"),
        "{s}"
    );
}

#[test]
fn real_minibatch_features_are_scaled_pixels_in_order() {
    let m = Mnist::open(&shared_mnist()).unwrap();
    let d = &m.train;
    // A minibatch of 128, as the MNIST-MLP objective draws it.
    let idx: Vec<usize> = (0..128).map(|i| (i * 61 + 7) % d.n).collect();
    let x = d.features(&idx);
    assert_eq!(x.len(), 128 * 784);
    assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
    for (row, &i) in x.chunks_exact(784).zip(&idx) {
        let want: Vec<f32> = d.image(i).iter().map(|&p| p as f32 / 255.0).collect();
        assert_eq!(row, want.as_slice());
        assert_eq!(d.pixels_f32(i).collect::<Vec<_>>(), want);
    }
    let y = d.targets(&idx);
    assert_eq!(y.len(), 128);
    assert!(idx
        .iter()
        .zip(&y)
        .all(|(&i, &t)| u32::from(d.labels[i]) == t));
    assert!(d.features(&[]).is_empty());
}

// ---------------------------------------------------------------- formats

#[test]
fn gz_and_raw_give_identical_contents() {
    let raw = TempDir::new("raw");
    write_mnist(&raw.0, false);
    let gz = TempDir::new("gz");
    write_mnist(&gz.0, true);
    let a = Mnist::open(&raw.0).unwrap();
    let b = Mnist::open(&gz.0).unwrap();
    assert_eq!(a, b);
    assert_eq!(
        (a.train.n, a.train.rows, a.train.cols, a.test.n),
        (5, 4, 3, 3)
    );
    assert_eq!(a.train.labels, vec![3, 0, 9, 9, 1]);

    // Gzip is told by its magic bytes, not the name: gzipped bytes under the
    // plain name and plain bytes under the `.gz` name both read the same.
    let swapped = TempDir::new("swapped");
    for stem in [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS] {
        let plain = std::fs::read(raw.path(stem)).unwrap();
        let packed = std::fs::read(gz.path(&format!("{stem}.gz"))).unwrap();
        if stem.starts_with("train") {
            std::fs::write(swapped.path(stem), packed).unwrap();
        } else {
            std::fs::write(swapped.path(&format!("{stem}.gz")), plain).unwrap();
        }
    }
    assert_eq!(Mnist::open(&swapped.0).unwrap(), a);

    // The same through the IDX reader directly.
    let plain = idx::read(&raw.path(TRAIN_IMAGES)).unwrap();
    let packed = idx::read(&gz.path(&format!("{TRAIN_IMAGES}.gz"))).unwrap();
    assert_eq!(plain, packed);
    assert_eq!(plain.dims, vec![5, 4, 3]);
}

#[test]
fn uncompressed_file_is_preferred_when_both_exist() {
    let dir = TempDir::new("both");
    write_mnist(&dir.0, false);
    // A `.gz` beside each file that would fail if it were read.
    for stem in [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS] {
        std::fs::write(dir.path(&format!("{stem}.gz")), b"\x1f\x8bnot gzip").unwrap();
    }
    assert_eq!(Mnist::open(&dir.0).unwrap().train.n, 5);
}

#[test]
fn digits_read_pairs_two_named_files() {
    let dir = TempDir::new("pair");
    write_mnist(&dir.0, true);
    let d = Digits::read(
        &dir.path(&format!("{TEST_IMAGES}.gz")),
        &dir.path(&format!("{TEST_LABELS}.gz")),
    )
    .unwrap();
    assert_eq!((d.n, d.pixels(), d.labels.clone()), (3, 12, vec![7, 2, 0]));
    assert_eq!(d.class_counts()[0], 1);
    assert!(
        d.summary().starts_with("3 digits of 4x3 pixels"),
        "{}",
        d.summary()
    );
}

// ---------------------------------------------------------------- corrupt files

#[test]
fn bad_magic_is_refused() {
    let mut bytes = idx_bytes(&[5, 4, 3], &[0; 60]);
    bytes[0] = 0x01;
    let (dir, msg) = open_with("magic", TRAIN_IMAGES, &bytes);
    assert_names(&msg, &dir.path(TRAIN_IMAGES), &["bad magic", "0x01 0x00"]);
}

#[test]
fn unsupported_type_is_refused() {
    let mut bytes = idx_bytes(&[5, 4, 3], &[0; 60]);
    bytes[2] = 0x0D;
    let (dir, msg) = open_with("type", TRAIN_IMAGES, &bytes);
    assert_names(
        &msg,
        &dir.path(TRAIN_IMAGES),
        &["unsupported element type 0x0d", "32-bit float", "only 0x08"],
    );
}

#[test]
fn truncated_data_is_refused() {
    let bytes = idx_bytes(&[3, 4, 3], &[0; 35]);
    let (dir, msg) = open_with("truncated", TEST_IMAGES, &bytes);
    assert_names(
        &msg,
        &dir.path(TEST_IMAGES),
        &["truncated: expected 36 bytes of data", "found 35"],
    );
    // A header cut short is truncated too.
    let (dir, msg) = open_with("header", TEST_LABELS, &[0, 0, 8, 1, 0, 0]);
    assert_names(
        &msg,
        &dir.path(TEST_LABELS),
        &["truncated", "1 dimension(s)"],
    );
}

#[test]
fn trailing_bytes_are_refused() {
    let bytes = idx_bytes(&[5], &[1, 2, 3, 4, 5, 6, 7, 8]);
    let (dir, msg) = open_with("trailing", TRAIN_LABELS, &bytes);
    assert_names(
        &msg,
        &dir.path(TRAIN_LABELS),
        &["3 trailing byte(s)", "expected 5 bytes of data", "found 8"],
    );
}

#[test]
fn label_count_mismatch_names_both_files_and_counts() {
    let bytes = idx_bytes(&[4], &[1, 2, 3, 4]);
    let (dir, msg) = open_with("count", TRAIN_LABELS, &bytes);
    assert_names(
        &msg,
        &dir.path(TRAIN_LABELS),
        &["label count", ": 4 ", "5 images"],
    );
    assert_names(&msg, &dir.path(TRAIN_IMAGES), &[]);
}

#[test]
fn label_out_of_range_names_file_and_first_index() {
    let bytes = idx_bytes(&[3], &[4, 10, 11]);
    let (dir, msg) = open_with("label10", TEST_LABELS, &bytes);
    assert_names(
        &msg,
        &dir.path(TEST_LABELS),
        &["label 1 of", ": 10 ", "0 to 9"],
    );
}

#[test]
fn wrong_dimensions_are_refused() {
    let (dir, msg) = open_with("flat", TRAIN_IMAGES, &idx_bytes(&[5, 12], &[0; 60]));
    assert_names(
        &msg,
        &dir.path(TRAIN_IMAGES),
        &["dimensions", "[5, 12]", "3 dimensions"],
    );
    let (dir, msg) = open_with("labels2d", TEST_LABELS, &idx_bytes(&[3, 1], &[0; 3]));
    assert_names(
        &msg,
        &dir.path(TEST_LABELS),
        &["dimensions", "[3, 1]", "1 dimension"],
    );
    // Test images of another size than the training images.
    let (dir, msg) = open_with("size", TEST_IMAGES, &idx_bytes(&[3, 3, 4], &[0; 36]));
    assert_names(&msg, &dir.path(TEST_IMAGES), &["image size", "3x4", "4x3"]);
    assert_names(&msg, &dir.path(TRAIN_IMAGES), &[]);
}

#[test]
fn missing_file_names_both_candidates() {
    let dir = TempDir::new("missing");
    write_mnist(&dir.0, true);
    std::fs::remove_file(dir.path(&format!("{TEST_LABELS}.gz"))).unwrap();
    let msg = Mnist::open(&dir.0).unwrap_err().to_string();
    assert_names(
        &msg,
        &dir.0,
        &[
            "`t10k-labels-idx1-ubyte` or `t10k-labels-idx1-ubyte.gz`",
            "not found",
        ],
    );
    // The IDX reader names a missing file too.
    let path = dir.path("nothing-here");
    let msg = idx::read(&path).unwrap_err().to_string();
    assert_names(&msg, &path, &["cannot read"]);
}

#[test]
fn broken_gzip_is_refused() {
    let good = gzip(&idx_bytes(&[5, 4, 3], &[7; 60]));
    let stem = format!("{TRAIN_IMAGES}.gz");
    // Cut short.
    let dir = TempDir::new("gz-cut");
    write_mnist(&dir.0, true);
    std::fs::write(dir.path(&stem), &good[..good.len() / 2]).unwrap();
    let msg = Mnist::open(&dir.0).unwrap_err().to_string();
    assert_names(&msg, &dir.path(&stem), &["gzip stream does not decode"]);
    // Its checksum (the trailer's CRC-32) no longer matches.
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 8] ^= 0xff;
    std::fs::write(dir.path(&stem), &bad).unwrap();
    let msg = Mnist::open(&dir.0).unwrap_err().to_string();
    assert_names(&msg, &dir.path(&stem), &["gzip stream does not decode"]);
    // Garbage after the gzip member.
    let mut tail = good.clone();
    tail.extend_from_slice(b"garbage");
    std::fs::write(dir.path(&stem), &tail).unwrap();
    let msg = Mnist::open(&dir.0).unwrap_err().to_string();
    assert_names(&msg, &dir.path(&stem), &["gzip stream does not decode"]);
}
