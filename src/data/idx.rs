//! The IDX file format of LeCun's MNIST distribution, read whole.
//!
//! An IDX file is a header followed by a dense array, everything big-endian:
//!
//! ```text
//! offset  size      field
//! 0       2         zero bytes 0x00 0x00 (the magic)
//! 2       1         element type: 0x08 unsigned byte, 0x09 signed byte,
//!                   0x0B i16, 0x0C i32, 0x0D f32, 0x0E f64
//! 3       1         number of dimensions d
//! 4       4 * d     the size of each dimension, a big-endian u32
//! 4 + 4d  product   the elements, last dimension fastest (row-major)
//! ```
//!
//! MNIST's image files are `0x00 0x00 0x08 0x03` (count x rows x cols, one
//! byte per pixel) and its label files `0x00 0x00 0x08 0x01` (one byte per
//! label). Only the unsigned-byte type 0x08 is supported; any other type is
//! refused naming the file and its type byte.
//!
//! A file may be gzipped (as MNIST is distributed: `train-images-idx3-ubyte.gz`)
//! or not; gzip is recognised by its magic bytes `1f 8b`, not by the file's
//! extension. The data must be exactly as long as the dimensions say: a short
//! file and trailing bytes after the data are both errors, since either
//! means the file is not what its header claims. Every error names the file.
//!
//! Format reference: Y. LeCun, C. Cortes, C. J. C. Burges, "The MNIST
//! database of handwritten digits" (the page that distributes the files
//! describes the format at its end).

use std::io::{self, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::error::{Error, Result};

/// The element type byte of unsigned-byte data, the only type supported.
pub const TYPE_U8: u8 = 0x08;

/// The two magic bytes that open a gzip stream (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idx {
    /// The size of each dimension, outermost first (MNIST images:
    /// `[count, rows, cols]`; labels: `[count]`).
    pub dims: Vec<usize>,
    /// The elements in row-major order; `data.len()` is the product of
    /// `dims`.
    pub data: Vec<u8>,
}

/// Read the IDX file at `path`, gzipped or not.
///
/// Errors, each naming the file: it cannot be read, its gzip stream does not
/// decode, its first two bytes are not zero, its type is not unsigned byte
/// (0x08), its header is cut short, its data is shorter than the product of
/// its dimensions, or bytes follow the data.
pub fn read(path: &Path) -> Result<Idx> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bytes = if raw.starts_with(&GZIP_MAGIC) {
        let mut out = Vec::new();
        MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| malformed(path, format!("gzip stream does not decode: {e}")))?;
        out
    } else {
        raw
    };
    parse(&bytes, path)
}

/// Parse the (decompressed) bytes of an IDX file; `path` is only named in
/// errors.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Idx> {
    let Some(&[m0, m1, kind, ndims]) = bytes.first_chunk::<4>() else {
        return Err(malformed(
            path,
            format!(
                "truncated: the 4-byte IDX header is cut short, found {} byte(s)",
                bytes.len()
            ),
        ));
    };
    if [m0, m1] != [0, 0] {
        return Err(malformed(
            path,
            format!(
                "bad magic: an IDX file starts with 0x00 0x00, found {m0:#04x} {m1:#04x} \
                 (not an IDX file)"
            ),
        ));
    }
    if kind != TYPE_U8 {
        return Err(malformed(
            path,
            format!(
                "unsupported element type {kind:#04x} ({}); only 0x08 (unsigned byte) is \
                 supported",
                type_name(kind)
            ),
        ));
    }
    let ndims = usize::from(ndims);
    let header = 4 + 4 * ndims;
    let Some(dim_bytes) = bytes.get(4..header) else {
        return Err(malformed(
            path,
            format!(
                "truncated: the header declares {ndims} dimension(s) ({header} bytes), found \
                 {} byte(s)",
                bytes.len()
            ),
        ));
    };
    let dims: Vec<usize> = dim_bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            malformed(
                path,
                format!("dimensions {dims:?} hold more elements than memory can address"),
            )
        })?;
    let found = bytes.len() - header;
    if found < expected {
        return Err(malformed(
            path,
            format!(
                "truncated: expected {expected} bytes of data for dimensions {dims:?}, found \
                 {found}"
            ),
        ));
    }
    if found > expected {
        return Err(malformed(
            path,
            format!(
                "{} trailing byte(s) after the data: expected {expected} bytes of data for \
                 dimensions {dims:?}, found {found}",
                found - expected
            ),
        ));
    }
    Ok(Idx {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// A file whose contents are not a well-formed IDX file: an [`Error::Io`]
/// of kind `InvalidData` naming the file.
fn malformed(path: &Path, reason: String) -> Error {
    Error::io(path, io::Error::new(io::ErrorKind::InvalidData, reason))
}

/// The name the format gives to an element type byte.
fn type_name(kind: u8) -> &'static str {
    match kind {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0B => "16-bit integer",
        0x0C => "32-bit integer",
        0x0D => "32-bit float",
        0x0E => "64-bit float",
        _ => "not an IDX type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IDX file of unsigned bytes with the given dims and data.
    fn file(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, TYPE_U8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    fn err(bytes: &[u8]) -> String {
        parse(bytes, Path::new("x.idx")).unwrap_err().to_string()
    }

    #[test]
    fn parses_dims_and_data_row_major() {
        let idx = parse(&file(&[2, 3], &[1, 2, 3, 4, 5, 6]), Path::new("x")).unwrap();
        assert_eq!(idx.dims, vec![2, 3]);
        assert_eq!(idx.data, vec![1, 2, 3, 4, 5, 6]);
        // Sizes above 255 use every byte of the big-endian u32.
        let idx = parse(&file(&[0x0102], &[7; 0x0102]), Path::new("x")).unwrap();
        assert_eq!(idx.dims, vec![258]);
    }

    #[test]
    fn empty_dimension_holds_no_data() {
        let idx = parse(&file(&[0, 28, 28], &[]), Path::new("x")).unwrap();
        assert_eq!(idx.dims, vec![0, 28, 28]);
        assert!(idx.data.is_empty());
    }

    #[test]
    fn refuses_malformed_headers_and_lengths() {
        let e = err(&[0, 0]);
        assert!(
            e.contains("x.idx") && e.contains("4-byte IDX header"),
            "{e}"
        );
        let e = err(&[0, 0, TYPE_U8, 2, 0, 0, 0]);
        assert!(e.contains("declares 2 dimension(s)"), "{e}");
        let e = err(&[0x1f, 0x00, TYPE_U8, 0]);
        assert!(e.contains("bad magic") && e.contains("0x1f 0x00"), "{e}");
        let e = err(&[0, 0, 0x0D, 0]);
        assert!(e.contains("0x0d") && e.contains("32-bit float"), "{e}");
        let e = err(&file(&[2, 3], &[0; 5]));
        assert!(e.contains("truncated: expected 6 bytes of data"), "{e}");
        assert!(e.contains("found 5"), "{e}");
        let e = err(&file(&[2, 3], &[0; 8]));
        assert!(e.contains("2 trailing byte(s)"), "{e}");
        let e = err(&file(&[u32::MAX, u32::MAX, u32::MAX], &[]));
        assert!(e.contains("more elements than memory"), "{e}");
    }
}
