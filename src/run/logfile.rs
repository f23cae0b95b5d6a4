//! The run's log file: every log line of a run, also written to
//! `<run-dir>/run.log` (appended, so a resumed run keeps its history).
//!
//! The library only owns the sink; the binary's `tracing` subscriber adds a
//! plain-text layer writing through [`Sink`], which writes nothing while no
//! file is attached. [`crate::run::runner`] attaches the file once the run
//! folder is locked and detaches it when the run ends.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use crate::error::{Error, Result};

static TARGET: Mutex<Option<File>> = Mutex::new(None);

/// Send log lines to `path` (appending) until [`detach`] or the next
/// `attach`.
pub fn attach(path: &Path) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    if let Ok(mut t) = TARGET.lock() {
        *t = Some(f);
    }
    Ok(())
}

/// Stop writing to the log file.
pub fn detach() {
    if let Ok(mut t) = TARGET.lock() {
        if let Some(f) = t.take() {
            let _ = f.sync_all();
        }
    }
}

/// Detaches the log file when dropped (also on an error path).
pub struct Attached(());

impl Drop for Attached {
    fn drop(&mut self) {
        detach();
    }
}

/// [`attach`], detached again when the guard is dropped.
pub fn attach_scoped(path: &Path) -> Result<Attached> {
    attach(path)?;
    Ok(Attached(()))
}

/// A writer for a `tracing` layer: the attached file, or nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sink;

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut t) = TARGET.lock() {
            if let Some(f) = t.as_mut() {
                f.write_all(buf)?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Ok(mut t) = TARGET.lock() {
            if let Some(f) = t.as_mut() {
                f.flush()?;
            }
        }
        Ok(())
    }
}
