//! Where image bytes live: a zip archive read into memory, or a directory.
//!
//! Zip archives are read whole into memory once (Omniglot is 14 MB, the
//! shared mini-ImageNet 146 MB) and each rayon worker decodes from its own
//! cheap clone of the parsed archive, so no file handle is shared.

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zip::ZipArchive;

use crate::error::{Error, Result};

/// A parsed zip archive held in memory.
#[derive(Clone)]
pub struct ZipStore {
    pub path: PathBuf,
    /// Size of the archive held in memory, bytes.
    pub bytes: usize,
    archive: ZipArchive<Cursor<Arc<[u8]>>>,
}

impl ZipStore {
    /// Read and parse a zip archive; errors name the file.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let len = bytes.len();
        let bytes: Arc<[u8]> = bytes.into();
        let archive = ZipArchive::new(Cursor::new(bytes)).map_err(|e| Error::Archive {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(ZipStore {
            path: path.to_path_buf(),
            bytes: len,
            archive,
        })
    }

    /// Names of all file entries (directories excluded), with their index.
    pub fn file_names(&self) -> Vec<(usize, String)> {
        (0..self.archive.len())
            .filter_map(|i| {
                let name = match self.archive.name_for_index(i)? {
                    Ok(name) => name,
                    Err(e) => {
                        tracing::warn!(
                            "{}: entry {i} skipped: its name cannot be read ({e})",
                            self.path.display()
                        );
                        return None;
                    }
                };
                if name.ends_with('/') {
                    None
                } else {
                    Some((i, name.to_string()))
                }
            })
            .collect()
    }

    /// Bytes of entry `index` (decompressed, CRC-checked).
    pub fn read(&mut self, index: usize) -> std::result::Result<Vec<u8>, String> {
        let mut f = self.archive.by_index(index).map_err(|e| e.to_string())?;
        let mut buf = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut buf).map_err(|e| e.to_string())?;
        Ok(buf)
    }
}

/// Where one image's bytes are.
#[derive(Debug, Clone)]
pub enum Location {
    /// Entry `entry` of zip store `store` of the dataset.
    Zip { store: usize, entry: usize },
    /// A file on disk.
    File(PathBuf),
}

/// Per-thread reader state: clones of the dataset's archives.
pub struct Reader {
    zips: Vec<ZipStore>,
}

impl Reader {
    pub fn new(zips: &[ZipStore]) -> Self {
        Reader {
            zips: zips.to_vec(),
        }
    }

    /// The raw (encoded) bytes at a location.
    pub fn bytes(&mut self, loc: &Location) -> std::result::Result<Vec<u8>, String> {
        match loc {
            Location::Zip { store, entry } => self.zips[*store].read(*entry),
            Location::File(p) => std::fs::read(p).map_err(|e| e.to_string()),
        }
    }
}
