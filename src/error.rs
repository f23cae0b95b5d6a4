//! The library's one error type.
//!
//! Every variant names the file, field or split it is about and what was
//! expected, so that a user can fix the input without reading the code. The
//! binary maps any error to a non-zero exit status.

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in fewshot.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A data folder or file that should exist does not.
    #[error("{what} not found at {path}: {hint}")]
    MissingData {
        what: String,
        path: PathBuf,
        hint: String,
    },

    /// An I/O error on a named file.
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A zip archive that cannot be opened (truncated, corrupt, not a zip).
    #[error("{path} is not a readable zip archive ({reason}); re-download it (for Omniglot: `bench data fetch omniglot`)")]
    Archive { path: PathBuf, reason: String },

    /// One or more images could not be decoded. All of them are listed.
    #[error("{count} image file(s) could not be decoded (expected {expected}):\n{list}")]
    BadImages {
        count: usize,
        expected: String,
        list: String,
    },

    /// A CSV file (mini-ImageNet split) is malformed or names missing files.
    #[error("{path}: {reason}")]
    Csv { path: PathBuf, reason: String },

    /// A field of a request or config has a value outside what is allowed.
    #[error("invalid value for `{field}`: {value} ({allowed})")]
    Invalid {
        field: String,
        value: String,
        allowed: String,
    },

    /// More ways were requested than a split has classes.
    #[error("split `{split}` of {dataset} has {available} classes, but ways = {ways} were requested (ways must be at most {available})")]
    TooFewClasses {
        dataset: String,
        split: String,
        available: usize,
        ways: usize,
    },

    /// Some classes of a split have fewer than shots + queries images.
    #[error("split `{split}` of {dataset}: {count} class(es) have fewer than shots + queries = {needed} images: {list}")]
    TooFewImages {
        dataset: String,
        split: String,
        needed: usize,
        count: usize,
        list: String,
    },

    /// A benchmark or run configuration is invalid.
    /// A results file (`results.json`) that cannot be read or written.
    #[error("{path}: {reason}")]
    Results { path: PathBuf, reason: String },

    #[error("config {source_name}: {reason}")]
    Config { source_name: String, reason: String },

    /// A downloaded file does not have the expected checksum.
    #[error("checksum mismatch for {path}: expected {algorithm} {expected}, got {actual}; the file was not kept")]
    Checksum {
        path: PathBuf,
        algorithm: String,
        expected: String,
        actual: String,
    },

    /// A download failed.
    #[error("download of {url} failed: {reason}")]
    Download { url: String, reason: String },

    /// Training produced a NaN or infinite value.
    #[error("non-finite {what} at meta-step {step} of {algorithm}; the last good checkpoint is kept at {checkpoint}")]
    NonFinite {
        algorithm: String,
        what: String,
        step: usize,
        checkpoint: String,
    },

    /// An algorithm whose whole meta-knowledge is the learner's
    /// initialisation asked to start from a fresh one (a learner of another
    /// shape, or `bench eval --fresh-init`).
    #[error("{algorithm} has no update rule to apply from a fresh initialisation: {reason}")]
    NotPortable { algorithm: String, reason: String },

    /// A checkpoint that cannot be used (torn, corrupt, from another run).
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },

    /// A run folder that cannot be used as asked (`--resume`, `--force`).
    #[error("run folder {path}: {reason}")]
    RunDir { path: PathBuf, reason: String },

    /// A command-line flag whose value names nothing there is (`--only` of
    /// a label the benchmark does not have).
    #[error("{flag} {value}: {reason}")]
    Flag {
        flag: String,
        value: String,
        reason: String,
    },

    /// A path that cannot be made absolute (`bench plan` writes absolute
    /// paths into every unit's command).
    #[error("cannot make {path} absolute: {source}")]
    Absolute {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A tensor operation failed.
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

impl Error {
    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        allowed: impl Into<String>,
    ) -> Self {
        Error::Invalid {
            field: field.into(),
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }
}
