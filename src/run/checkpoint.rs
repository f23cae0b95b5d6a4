//! Checkpoints: one file per checkpoint, written so that a kill at any
//! moment leaves a usable one.
//!
//! A checkpoint is a single safetensors file
//! `<algorithm folder>/checkpoints/step-<step>.safetensors` holding
//! - the algorithm's state (`state/<name>`: meta-parameters, optimiser
//!   moments),
//! - the state with the best validation accuracy so far (`best/<name>`),
//! - in the safetensors metadata: the training bookkeeping
//!   ([`TrainState`] as JSON), the configuration the run was started with
//!   (`config`, JSON) and its SHA-256 (`config_sha256`), and the SHA-256 of
//!   the tensor data (`data_sha256`).
//!
//! Everything a resumed run needs is therefore in one file, and a file is
//! either there completely or not at all:
//! 1. the bytes go to a temporary file `checkpoints/.step-<step>.tmp-<pid>`,
//!    which is fsynced;
//! 2. it is renamed into place and the folder is fsynced (the rename is
//!    durable);
//! 3. only then are older checkpoints removed; the newest [`KEEP`] stay.
//!
//! Loading takes the newest checkpoint that parses and whose data matches
//! its checksum; a torn or corrupt newer one is reported with a warning and
//! skipped (the previous one is still there, by step 3). Temporary files
//! left by a killed process are removed when a run starts.
//!
//! Tests can slow the write path down with `FEWSHOT_TEST_CHECKPOINT_DELAY_MS`
//! (a pause between the phases above, each announced on stderr as
//! `fewshot-test: checkpoint <phase> step=<n>`), so that a kill lands inside
//! a write.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::spec::Budget;

/// One point of the learning curve.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CurvePoint {
    pub step: u64,
    pub train_episodes: u64,
    pub train_seconds: f64,
    /// Mean training loss over the steps since the previous point.
    pub train_loss: f64,
    /// Few-shot runs: mean training accuracy over the same steps (none on
    /// optimisation problems).
    #[serde(default)]
    pub train_accuracy: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub val_ci95: Option<f64>,
    /// Optimisation benchmarks: the mean final loss on the validation
    /// problems (their score; absent for few-shot runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
}

/// Bookkeeping saved with every checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    pub algorithm: String,
    /// Meta-steps done.
    pub step: u64,
    pub train_episodes: u64,
    /// Seconds spent in meta-training steps (validation excluded).
    pub train_seconds: f64,
    pub curve: Vec<CurvePoint>,
    /// Step and validation accuracy of the best validated state (kept in
    /// every checkpoint).
    pub best_step: Option<u64>,
    pub best_val_accuracy: Option<f64>,
    /// Optimisation benchmarks: the lowest mean final validation loss
    /// (at `best_step`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_val_loss: Option<f64>,
    pub finished: bool,
    /// Sums over the steps since the last curve point (so that a resumed
    /// run's curve is identical to an uninterrupted one's).
    #[serde(default)]
    pub pending_loss: f64,
    #[serde(default)]
    pub pending_accuracy: f64,
    #[serde(default)]
    pub pending_steps: u64,
    /// Every budget the steps were taken under, from the step it took
    /// effect (empty in checkpoints from before they were recorded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<crate::spec::BudgetSpan>,
}

impl TrainState {
    /// How much of the budget `b` is spent, in [0, 1] (whichever limit
    /// binds first).
    pub fn fraction(&self, b: &Budget) -> f64 {
        let by_steps = b
            .meta_steps
            .map(|m| self.step as f64 / m as f64)
            .unwrap_or(0.0);
        let by_time = b
            .minutes
            .map(|m| self.train_seconds / (60.0 * m))
            .unwrap_or(0.0);
        let by_episodes = b
            .episodes
            .map(|e| self.train_episodes as f64 / e as f64)
            .unwrap_or(0.0);
        by_steps.max(by_time).max(by_episodes).clamp(0.0, 1.0)
    }
    /// Whether the budget `b` is spent.
    pub fn done(&self, b: &Budget) -> bool {
        b.meta_steps.is_some_and(|m| self.step >= m)
            || b.minutes.is_some_and(|m| self.train_seconds >= 60.0 * m)
            || b.episodes.is_some_and(|e| self.train_episodes >= e)
    }
}

/// How many checkpoints are kept (the newest, and the one before it in case
/// the newest turns out unreadable).
pub const KEEP: usize = 2;

/// Format version written into every checkpoint.
pub const FORMAT: &str = "fewshot-checkpoint-1";

const STATE: &str = "state/";
const BEST: &str = "best/";

/// A checkpoint in memory.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub train: TrainState,
    /// The algorithm's state (meta-parameters, optimiser).
    pub state: HashMap<String, Tensor>,
    /// The state with the best validation accuracy (step in
    /// `train.best_step`), if validation ran.
    pub best: Option<HashMap<String, Tensor>>,
    /// The configuration the run was started with.
    pub config: serde_json::Value,
}

/// The checkpoint folder of an algorithm's run folder.
pub fn folder(dir: &Path) -> PathBuf {
    dir.join(crate::layout::CHECKPOINTS)
}

fn file_name(step: u64) -> String {
    format!("step-{step:010}.safetensors")
}

fn step_of(name: &str) -> Option<u64> {
    name.strip_prefix("step-")?
        .strip_suffix(".safetensors")?
        .parse()
        .ok()
}

/// Checkpoint files of `dir`, newest first.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let f = folder(dir);
    let rd = match std::fs::read_dir(&f) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(&f, e)),
    };
    let mut v: Vec<(u64, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            step_of(&name).map(|s| (s, e.path()))
        })
        .collect();
    v.sort_by_key(|x| std::cmp::Reverse(x.0));
    Ok(v)
}

/// SHA-256 of a JSON value's canonical text (keys sorted by serde_json's
/// map, which is a BTreeMap here).
pub fn config_hash(config: &serde_json::Value) -> String {
    hex(&Sha256::digest(config.to_string().as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Test hook: pause between write phases (see the module docs).
fn test_pause(phase: &str, step: u64) {
    if let Some(ms) = std::env::var("FEWSHOT_TEST_CHECKPOINT_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        eprintln!("fewshot-test: checkpoint {phase} step={step}");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Serialise a checkpoint (tensors and metadata) to bytes.
fn to_bytes(c: &Checkpoint) -> Result<Vec<u8>> {
    let mut tensors: Vec<(String, &Tensor)> = c
        .state
        .iter()
        .map(|(k, t)| (format!("{STATE}{k}"), t))
        .collect();
    if let Some(b) = &c.best {
        tensors.extend(b.iter().map(|(k, t)| (format!("{BEST}{k}"), t)));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("train".to_string(), to_json(&c.train)?),
        ("config".to_string(), c.config.to_string()),
        ("config_sha256".to_string(), config_hash(&c.config)),
    ]);
    let ser = |meta: HashMap<String, String>| {
        safetensors::tensor::serialize(tensors.iter().map(|(k, t)| (k.as_str(), *t)), Some(meta))
            .map_err(|e| Error::Checkpoint {
                path: PathBuf::from("(in memory)"),
                reason: format!("cannot serialise: {e}"),
            })
    };
    // The data section does not depend on the header: hash it from a first
    // serialisation, then write the header with the hash in it.
    let first = ser(meta.clone())?;
    let digest = hex(&Sha256::digest(data_section(&first).unwrap_or(&[])));
    meta.insert("data_sha256".into(), digest);
    ser(meta)
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Checkpoint {
        path: PathBuf::from("(in memory)"),
        reason: e.to_string(),
    })
}

/// The bytes after the header of a safetensors buffer.
fn data_section(buf: &[u8]) -> Option<&[u8]> {
    let n = u64::from_le_bytes(buf.get(..8)?.try_into().ok()?) as usize;
    buf.get(8usize.checked_add(n)?..)
}

/// Write `c` as the checkpoint of its step in `dir` (module docs: temp
/// file, fsync, rename, fsync folder, then prune to [`KEEP`]).
pub fn save(dir: &Path, c: &Checkpoint) -> Result<PathBuf> {
    let f = folder(dir);
    crate::util::create_dir_durable(&f)?;
    let step = c.train.step;
    let bytes = to_bytes(c)?;
    let path = f.join(file_name(step));
    let tmp = f.join(format!(".step-{step:010}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        let half = bytes.len() / 2;
        file.write_all(&bytes[..half])?;
        test_pause("half-written", step);
        file.write_all(&bytes[half..])?;
        file.sync_all()
    })();
    if let Err(e) = written {
        // A full disk is the worst moment to keep half a checkpoint.
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    test_pause("before-rename", step);
    crate::util::rename(&tmp, &path)?;
    crate::util::sync_dir(&f)?;
    test_pause("renamed", step);
    for (_, old) in list(dir)?.into_iter().skip(KEEP) {
        std::fs::remove_file(&old).map_err(|e| Error::io(&old, e))?;
    }
    tracing::debug!(step, "checkpoint written to {}", path.display());
    Ok(path)
}

/// Read and verify one checkpoint file.
pub fn read(path: &Path) -> Result<Checkpoint> {
    let err = |reason: String| Error::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    let buf = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&buf)
        .map_err(|e| err(format!("not a complete safetensors file ({e})")))?;
    let meta = header
        .metadata()
        .clone()
        .ok_or_else(|| err("no fewshot metadata (not a fewshot checkpoint)".into()))?;
    let field = |k: &str| {
        meta.get(k)
            .cloned()
            .ok_or_else(|| err(format!("metadata has no `{k}`")))
    };
    let format = field("format")?;
    if format != FORMAT {
        return Err(err(format!(
            "format `{format}`, this fewshot reads `{FORMAT}`"
        )));
    }
    let want = field("data_sha256")?;
    let got = hex(&Sha256::digest(data_section(&buf).unwrap_or(&[])));
    if want != got {
        return Err(err(format!(
            "tensor data does not match its checksum (sha256 {got}, recorded {want}): the file is corrupt"
        )));
    }
    let config_text = field("config")?;
    if hex(&Sha256::digest(config_text.as_bytes())) != field("config_sha256")? {
        return Err(err(
            "its configuration does not match its recorded SHA-256 (edited by hand?)".into(),
        ));
    }
    let train: TrainState = serde_json::from_str(&field("train")?)
        .map_err(|e| err(format!("metadata `train`: {e}")))?;
    let config: serde_json::Value =
        serde_json::from_str(&config_text).map_err(|e| err(format!("metadata `config`: {e}")))?;
    let all = candle_core::safetensors::load_buffer(&buf, &candle_core::Device::Cpu)
        .map_err(|e| err(e.to_string()))?;
    let mut state = HashMap::new();
    let mut best = HashMap::new();
    for (k, t) in all {
        if let Some(n) = k.strip_prefix(STATE) {
            state.insert(n.to_string(), t);
        } else if let Some(n) = k.strip_prefix(BEST) {
            best.insert(n.to_string(), t);
        }
    }
    if state.is_empty() {
        return Err(err("holds no algorithm state".into()));
    }
    if step_of(&path.file_name().unwrap_or_default().to_string_lossy()) != Some(train.step) {
        return Err(err(format!(
            "its bookkeeping says step {}, which is not the step in its name",
            train.step
        )));
    }
    Ok(Checkpoint {
        train,
        state,
        best: (!best.is_empty()).then_some(best),
        config,
    })
}

/// The newest readable checkpoint of a folder, and the newer ones that
/// could not be read.
#[derive(Debug)]
pub struct Found {
    pub path: PathBuf,
    pub checkpoint: Checkpoint,
    /// Newer checkpoint files that are torn or corrupt, with the reason.
    pub unreadable: Vec<(PathBuf, String)>,
}

impl Found {
    /// Warn about the unreadable newer checkpoints and rename each to
    /// `<name>.unreadable` (kept for inspection, never read or pruned), so
    /// that the run continues from this one.
    pub fn set_unreadable_aside(&self) -> Result<()> {
        for (p, why) in &self.unreadable {
            let aside = p.with_extension("safetensors.unreadable");
            tracing::warn!(
                "checkpoint {} is unreadable ({why}); resuming from the previous one, {}; the unreadable file is kept as {}",
                p.display(),
                self.path.display(),
                aside.display()
            );
            std::fs::rename(p, &aside).map_err(|e| Error::io(p, e))?;
        }
        if let Some(d) = self.path.parent() {
            crate::util::sync_dir(d)?;
        }
        Ok(())
    }
}

/// The newest readable checkpoint of `dir`, or `None` if there is none at
/// all. Unreadable newer checkpoints are listed in [`Found::unreadable`];
/// if every checkpoint is unreadable, the error lists them all.
pub fn latest(dir: &Path) -> Result<Option<Found>> {
    let files = list(dir)?;
    let mut unreadable = Vec::new();
    for (_, path) in &files {
        match read(path) {
            Ok(checkpoint) => {
                return Ok(Some(Found {
                    path: path.clone(),
                    checkpoint,
                    unreadable,
                }))
            }
            Err(e) => {
                let why = match e {
                    Error::Checkpoint { reason, .. } => reason,
                    other => other.to_string(),
                };
                unreadable.push((path.clone(), why));
            }
        }
    }
    if unreadable.is_empty() {
        Ok(None)
    } else {
        Err(Error::Checkpoint {
            path: folder(dir),
            reason: format!(
                "no readable checkpoint; start over with --force:\n  {}",
                unreadable
                    .iter()
                    .map(|(p, why)| format!("{}: {why}", p.display()))
                    .collect::<Vec<_>>()
                    .join("\n  ")
            ),
        })
    }
}

/// Remove temporary files a killed process left in `dir` (atomic writes of
/// this module and of [`crate::util::write_atomic`]); returns how many.
pub fn remove_stale_temps(dir: &Path) -> Result<usize> {
    let mut n = 0;
    for d in [dir.to_path_buf(), folder(dir)] {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let is_file = e.file_type().is_ok_and(|t| t.is_file());
            if is_file && crate::util::is_temp_name(&name) {
                std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
                n += 1;
            }
        }
    }
    if n > 0 {
        tracing::info!(
            "removed {n} temporary file(s) left by an interrupted run in {}",
            dir.display()
        );
    }
    Ok(n)
}

/// Field-by-field differences between two configurations, as
/// `path: was X, now Y` lines (empty when equal).
pub fn config_diff(was: &serde_json::Value, now: &serde_json::Value) -> Vec<String> {
    // Another algorithm altogether: that one line says it all.
    let kind = |v: &serde_json::Value| v.pointer("/algorithm/algorithm").cloned();
    if kind(was).is_some() && kind(was) != kind(now) {
        return vec![format!(
            "algorithm.algorithm: was {}, now {}",
            kind(was).unwrap_or_default(),
            kind(now).unwrap_or_default()
        )];
    }
    let mut out = Vec::new();
    diff_into("", was, now, &mut out);
    out
}

/// A value in a diff line; a field that is not there is `absent`.
fn shown(v: Option<&serde_json::Value>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "absent".into())
}

fn diff_into(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value as V;
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (a, b) {
        (V::Object(x), V::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => diff_into(&join(k), p, q, out),
                    (p, q) => out.push(format!("{}: was {}, now {}", join(k), shown(p), shown(q))),
                }
            }
        }
        (V::Array(x), V::Array(y)) => {
            // Entries with a label (algorithms) are matched by label,
            // others by position.
            let label = |v: &V| v.get("label").and_then(|l| l.as_str()).map(String::from);
            if x.iter().chain(y).all(|v| label(v).is_some()) {
                for p in x {
                    let l = label(p).unwrap_or_default();
                    match y.iter().find(|q| label(q).as_deref() == Some(l.as_str())) {
                        Some(q) => diff_into(&format!("{path}[{l}]"), p, q, out),
                        None => out.push(format!("{path}[{l}]: was there, now missing")),
                    }
                }
                for q in y {
                    let l = label(q).unwrap_or_default();
                    if !x.iter().any(|p| label(p).as_deref() == Some(l.as_str())) {
                        out.push(format!("{path}[{l}]: new"));
                    }
                }
            } else if x.len() == y.len() {
                for (i, (p, q)) in x.iter().zip(y).enumerate() {
                    diff_into(&format!("{path}[{i}]"), p, q, out);
                }
            } else if a != b {
                out.push(format!("{path}: was {a}, now {b}"));
            }
        }
        _ if a != b => out.push(format!("{path}: was {a}, now {b}")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ckpt(step: u64) -> Checkpoint {
        let t = Tensor::new(&[step as f32, 2.0, 3.0], &candle_core::Device::Cpu).unwrap();
        Checkpoint {
            train: TrainState {
                algorithm: "a".into(),
                step,
                ..Default::default()
            },
            state: HashMap::from([("theta.w".to_string(), t.clone())]),
            best: Some(HashMap::from([("theta.w".to_string(), (t * 2.0).unwrap())])),
            config: json!({"x": 1}),
        }
    }

    #[test]
    fn diff_names_each_changed_field_and_matches_entries_by_label() {
        let was = json!({"seed": 0, "algorithms": [
            {"label": "a", "config": {"lr": 0.1}}, {"label": "b", "config": {}}]});
        let now = json!({"seed": 1, "algorithms": [
            {"label": "c", "config": {}}, {"label": "a", "config": {"lr": 0.2}}]});
        assert_eq!(
            config_diff(&was, &now),
            vec![
                "algorithms[a].config.lr: was 0.1, now 0.2",
                "algorithms[b]: was there, now missing",
                "algorithms[c]: new",
                "seed: was 0, now 1",
            ]
        );
        assert!(config_diff(&was, &was).is_empty());
        assert_eq!(config_hash(&was), config_hash(&was.clone()));
        assert_ne!(config_hash(&was), config_hash(&now));
    }

    #[test]
    fn newest_two_are_kept_and_a_damaged_newest_falls_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for s in [1, 2, 3] {
            save(dir, &ckpt(s)).unwrap();
        }
        let steps: Vec<u64> = list(dir).unwrap().iter().map(|x| x.0).collect();
        assert_eq!(steps, vec![3, 2]);
        let f = latest(dir).unwrap().unwrap();
        assert_eq!(f.checkpoint.train.step, 3);
        assert!(f.unreadable.is_empty());
        assert_eq!(
            f.checkpoint.best.unwrap()["theta.w"]
                .to_vec1::<f32>()
                .unwrap(),
            vec![6.0, 4.0, 6.0]
        );
        // A flipped data byte: caught by the checksum, previous one used.
        let p3 = folder(dir).join(file_name(3));
        let mut b = std::fs::read(&p3).unwrap();
        let n = b.len();
        b[n - 1] ^= 1;
        std::fs::write(&p3, &b).unwrap();
        let f = latest(dir).unwrap().unwrap();
        assert_eq!(f.checkpoint.train.step, 2);
        assert!(f.unreadable[0].1.contains("checksum"), "{:?}", f.unreadable);
        // Truncated: not a complete file.
        std::fs::write(&p3, &b[..n / 3]).unwrap();
        let f = latest(dir).unwrap().unwrap();
        assert_eq!(f.checkpoint.train.step, 2);
        assert!(
            f.unreadable[0].1.contains("not a complete"),
            "{:?}",
            f.unreadable
        );
        // A file renamed to another step is refused.
        std::fs::copy(folder(dir).join(file_name(2)), &p3).unwrap();
        assert!(read(&p3)
            .unwrap_err()
            .to_string()
            .contains("not the step in its name"));
        // Nothing readable: the error lists every file.
        std::fs::write(folder(dir).join(file_name(2)), b"").unwrap();
        let e = latest(dir).unwrap_err().to_string();
        assert!(
            e.contains(&file_name(2)) && e.contains(&file_name(3)),
            "{e}"
        );
    }

    #[test]
    fn stale_temporary_files_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::create_dir_all(folder(dir)).unwrap();
        std::fs::write(folder(dir).join(".step-0000000004.tmp-77"), b"x").unwrap();
        std::fs::write(dir.join(".curve.csv.tmp12"), b"x").unwrap();
        std::fs::write(dir.join("curve.csv"), b"x").unwrap();
        assert_eq!(remove_stale_temps(dir).unwrap(), 2);
        assert!(dir.join("curve.csv").exists());
    }
}
