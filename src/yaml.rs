//! YAML, behind one module: benchmark files, algorithm entries and
//! resolved configurations are read and written only through these
//! functions (serde_yaml is deprecated upstream; swapping it touches this
//! file only).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// A YAML value (an algorithm entry, a resolved configuration).
pub type Value = serde_yaml::Value;
/// A YAML mapping.
pub type Mapping = serde_yaml::Mapping;

/// Parse YAML text into `T`, naming `source` and the line in errors.
pub fn from_str<T: DeserializeOwned>(text: &str, source: &str) -> Result<T> {
    serde_yaml::from_str(text).map_err(|e| {
        let mut reason = e.to_string();
        if !reason.contains("line ") {
            let line = e.location().map(|l| l.line()).or_else(|| {
                // serde_yaml gives no location for a control character.
                text.lines()
                    .position(|l| l.chars().any(|c| c.is_control() && c != '\t'))
                    .map(|i| i + 1)
            });
            reason = match line {
                Some(l) => format!("line {l}: {reason}"),
                // A field named in backticks is place enough (a duplicate
                // key has no location; line 1 would be wrong).
                None if reason.contains('`') => reason,
                None => format!("{reason} (the file must be a mapping of benchmark fields)"),
            };
        }
        Error::Config {
            source_name: source.to_string(),
            reason,
        }
    })
}

/// Convert a YAML value into `T`, naming `source` in errors.
pub fn from_value<T: DeserializeOwned>(v: serde_yaml::Value, source: &str) -> Result<T> {
    serde_yaml::from_value(v).map_err(|e| Error::Config {
        source_name: source.to_string(),
        reason: e.to_string(),
    })
}

/// Serialise to YAML.
pub fn to_string<T: Serialize>(v: &T) -> Result<String> {
    serde_yaml::to_string(v).map_err(|e| Error::Config {
        source_name: "serialisation".into(),
        reason: e.to_string(),
    })
}

/// A unit enum variant as YAML writes it (`support-plus-one`), for
/// messages and tables.
pub fn variant_name<T: Serialize>(v: &T) -> String {
    to_string(v)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Convert `v` into a YAML value.
pub fn to_value<T: Serialize>(v: &T) -> Result<Value> {
    serde_yaml::to_value(v).map_err(|e| Error::Config {
        source_name: "serialisation".into(),
        reason: e.to_string(),
    })
}

/// Parse a struct from a YAML entry (unknown keys are rejected by the
/// struct's `deny_unknown_fields`); an error names the field it is about
/// (`inner_iters`), which callers prefix with the entry
/// (`algorithms[0].inner_iters`).
pub fn from_entry<T: DeserializeOwned>(v: &Value) -> Result<T> {
    serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        let path = e.path().to_string();
        Error::Config {
            source_name: if path == "." { String::new() } else { path },
            reason: e.into_inner().to_string(),
        }
    })
}
