//! YAML, behind one module: benchmark files, algorithm entries and
//! resolved configurations are read and written only through these
//! functions, on `yaml_serde` (the YAML organization's maintained fork of
//! the deprecated serde_yaml; swapping it touches this file only).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// A YAML value (an algorithm entry, a resolved configuration).
pub type Value = yaml_serde::Value;
/// A YAML mapping.
pub type Mapping = yaml_serde::Mapping;

/// Parse YAML text into `T`, naming `source` and the line in errors.
pub fn from_str<T: DeserializeOwned>(text: &str, source: &str) -> Result<T> {
    yaml_serde::from_str(text).map_err(|e| {
        let mut reason = e.to_string();
        // yaml_serde places a duplicate key at its mapping's start: name the
        // line of the key's second occurrence instead.
        if let Some(key) = duplicate_key(&reason) {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            if let Some(line) = second_occurrence(text, &key, line, column) {
                let head = reason
                    .split(" at line ")
                    .next()
                    .unwrap_or(&reason)
                    .to_string();
                return Error::Config {
                    source_name: source.to_string(),
                    reason: format!("line {line}: {head} (given twice)"),
                };
            }
        }
        if !reason.contains("line ") {
            let line = e.location().map(|l| l.line()).or_else(|| {
                // yaml_serde gives no location for a control character.
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

/// The key of a yaml_serde duplicate-key message (`duplicate field
/// `seed``, `duplicate entry with key "seed"`).
fn duplicate_key(reason: &str) -> Option<String> {
    if let Some(r) = reason.strip_prefix("duplicate field `") {
        return r.split('`').next().map(String::from);
    }
    let r = reason.split("duplicate entry with key ").nth(1)?;
    let r = r.trim_start_matches('"');
    r.split(['"', ' ']).next().map(String::from)
}

/// The 1-based line where `key:` appears a second time in the mapping
/// that starts at line `from`, column `column` (1-based): a block mapping's
/// keys at that indentation, or anywhere in a flow mapping (`{`), outside
/// comments.
fn second_occurrence(text: &str, key: &str, from: usize, column: usize) -> Option<usize> {
    let first = text.lines().nth(from.saturating_sub(1))?;
    let flow = first.chars().nth(column.saturating_sub(1)) == Some('{');
    let mut seen = 0;
    for (i, line) in text.lines().enumerate().skip(from.saturating_sub(1)) {
        let ind = line.len() - line.trim_start().len();
        if !flow
            && !line.trim().is_empty()
            && !line.trim_start().starts_with('#')
            && ind < column - 1
        {
            break; // the mapping has ended
        }
        let code = line.split(" #").next().unwrap_or(line);
        if code.trim_start().starts_with('#') {
            continue;
        }
        let mut rest = code;
        while let Some(at) = rest.find(key) {
            let before = rest[..at].chars().last();
            let after = rest[at + key.len()..].trim_start();
            let starts =
                before.is_none_or(|c| c.is_whitespace() || c == '{' || c == ',' || c == '-');
            if starts && after.starts_with(':') && (flow || (ind == column - 1 && at == ind)) {
                seen += 1;
                if seen == 2 {
                    return Some(i + 1);
                }
            }
            rest = &rest[at + key.len()..];
        }
    }
    None
}

/// Convert a YAML value into `T`, naming `source` in errors.
pub fn from_value<T: DeserializeOwned>(v: yaml_serde::Value, source: &str) -> Result<T> {
    yaml_serde::from_value(v).map_err(|e| Error::Config {
        source_name: source.to_string(),
        reason: e.to_string(),
    })
}

/// Serialise to YAML.
pub fn to_string<T: Serialize>(v: &T) -> Result<String> {
    yaml_serde::to_string(v).map_err(|e| Error::Config {
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
    yaml_serde::to_value(v).map_err(|e| Error::Config {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct F {
        name: String,
        seed: Option<u64>,
        episode: Option<Ep>,
        profiles: Option<Value>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Ep {
        ways: u64,
    }

    #[test]
    fn a_duplicate_key_is_placed_at_its_second_line() {
        let text = "name: x\nprofiles:\n  p:\n    seed: 1\nseed: 2\nepisode: {ways: 5}\n# seed: 9\nseed: 3\n";
        let e = from_str::<F>(text, "b.yaml").unwrap_err().to_string();
        assert!(e.contains("line 8") && e.contains("`seed`"), "{e}");
        let e = from_str::<F>("name: x\nepisode: {ways: 5, ways: 3}\n", "b.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("ways"), "{e}");
    }
}
