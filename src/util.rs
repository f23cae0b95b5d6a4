//! Small shared helpers: atomic file writes.
//!
//! Every file fewshot writes goes through a temporary file in the same
//! folder (`.<name>.tmp<pid>`, see [`is_temp_name`]), fsynced, renamed into
//! place, and the folder fsynced: a kill leaves either the old file or the
//! new one, and a stale temporary file that runs clean up at start.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Write `bytes` to `path` atomically: write a temporary file in the same
/// folder, flush it to disk, rename it over `path`, fsync the folder. A
/// crash leaves either the old file or the new one, never a torn one; a
/// failed write removes its temporary file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(d) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_durable(d)?;
    }
    let name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    rename(&tmp, path)?;
    sync_parent(path)
}

/// Rename `from` to `to`; the error names both (and the temporary file is
/// removed if the rename failed).
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| {
        let _ = std::fs::remove_file(from);
        Error::Io {
            path: format!("{} (renaming to {})", from.display(), to.display()).into(),
            source: e,
        }
    })
}

/// Whether a file name is one of fewshot's temporary files, left by an
/// atomic write that a kill interrupted: `.<name>.tmp<pid>` ([`write_atomic`])
/// or `.step-<step>.tmp-<pid>` (checkpoints). Nothing else matches (a
/// user's `.draft.tmp` does not).
pub fn is_temp_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    let Some((stem, pid)) = rest.rsplit_once(".tmp") else {
        return false;
    };
    let pid = pid.strip_prefix('-').unwrap_or(pid);
    !stem.is_empty() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
}

/// `create_dir_all`, then fsync the parent of every folder it created, so
/// that the new folders survive a power loss with what is written in them.
pub fn create_dir_durable(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut created = Vec::new();
    let mut p = Some(dir);
    while let Some(d) = p.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        created.push(d.to_path_buf());
        p = d.parent();
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for d in created.iter().rev() {
        sync_parent(d)?;
    }
    Ok(())
}

/// Fsync the folder holding `path` (so that a rename into it is durable).
pub fn sync_parent(path: &Path) -> Result<()> {
    sync_dir(
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )
}

/// Fsync a folder (renames and removals in it become durable).
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(len: u64, msg: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:<44} [{bar:30}] {percent:>3}% ({elapsed}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// The time now, UTC, RFC 3339 to the second (`2026-12-06T17:34:36Z`).
pub fn utc_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// CSV text: `header`, then `rows`, written by the `csv` crate (a field is
/// quoted when it holds a comma, a quote or a line break; `\n` line ends).
/// Every CSV file fewshot writes goes through here.
pub fn csv_text<R, F>(header: &[&str], rows: impl IntoIterator<Item = R>) -> String
where
    R: IntoIterator<Item = F>,
    F: AsRef<[u8]>,
{
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    // Writing into memory cannot fail; a row of another length is a bug
    // the tests of each writer catch.
    w.write_record(header).expect("CSV header");
    for row in rows {
        w.write_record(row).expect("CSV row");
    }
    String::from_utf8(w.into_inner().expect("CSV flush")).expect("CSV of UTF-8 fields")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_text_quotes_only_what_needs_it() {
        let t = csv_text(&["a", "b"], [["x,y", "plain"], ["say \"hi\"", "2"]]);
        assert_eq!(t, "a,b\n\"x,y\",plain\n\"say \"\"hi\"\"\",2\n");
    }

    #[test]
    fn only_our_temporary_names_match() {
        for ours in [
            ".results.json.tmp123",
            ".curve.csv.tmp9",
            ".step-0000000004.tmp-77",
        ] {
            assert!(is_temp_name(ours), "{ours}");
        }
        for theirs in [
            ".draft.tmp",
            ".tmp",
            "results.json.tmp1",
            ".x.tmpfile",
            ".x.tmp-",
            ".tmp12",
            "notes",
        ] {
            assert!(!is_temp_name(theirs), "{theirs}");
        }
    }
}
