//! Downloading datasets, with progress and checksum verification.
//!
//! `bench data fetch omniglot` downloads the two official archives from the
//! `brendenlake/omniglot` repository into `<data>/omniglot/`. Each file is
//! streamed to `<name>.part`, hashed on the fly (SHA-256 and MD5), compared
//! with the expected digest from a checksum manifest, and only then renamed
//! into place; a mismatch deletes the partial file and keeps any earlier
//! good copy. A `SHA256SUMS` file is written beside the archives.
//!
//! All requests go through one HTTP agent ([`agent`]): connect and read
//! timeouts, the proxy from the environment (`HTTPS_PROXY`, `HTTP_PROXY`,
//! `ALL_PROXY`, `NO_PROXY`), and a transient failure (no connection, a
//! dropped or truncated transfer, status 429 or 5xx) retried after 1, 2
//! and 4 seconds before it is reported; a 4xx status or a checksum
//! mismatch is reported at once.
//!
//! Manifest format (`datasets/omniglot/checksums.txt`, or `--checksums`):
//! lines `<hex digest>  <file name>`; 32 hex digits are MD5, 64 are SHA-256.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use md5::Md5;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Where the official Omniglot archives are served.
pub const OMNIGLOT_URL_BASE: &str = "https://github.com/brendenlake/omniglot/raw/master/python";

/// The committed manifest for the official Omniglot archives.
pub const OMNIGLOT_CHECKSUMS: &str = include_str!("../../datasets/omniglot/checksums.txt");

/// Attempts per file before a transient failure is reported.
pub const ATTEMPTS: u32 = 4;
/// The wait before the first retry; each later wait doubles it.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The HTTP agent of every download from `url`: 30 s to connect, 60 s
/// without a byte before a read fails, and the proxy from the environment
/// unless the host is loopback or matched by `NO_PROXY` ([`bypasses_proxy`];
/// ureq 2 reads the proxy variables but not `NO_PROXY`).
pub fn agent(url: &str) -> &'static ureq::Agent {
    static PROXIED: OnceLock<ureq::Agent> = OnceLock::new();
    static DIRECT: OnceLock<ureq::Agent> = OnceLock::new();
    let build = |proxy: bool| {
        ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(30))
            .timeout_read(Duration::from_secs(60))
            .try_proxy_from_env(proxy)
            .user_agent(concat!("fewshot/", env!("CARGO_PKG_VERSION")))
            .build()
    };
    let no_proxy = std::env::var("NO_PROXY")
        .or_else(|_| std::env::var("no_proxy"))
        .unwrap_or_default();
    if bypasses_proxy(host_of(url), &no_proxy) {
        DIRECT.get_or_init(|| build(false))
    } else {
        PROXIED.get_or_init(|| build(true))
    }
}

/// The host of an `http(s)://host[:port]/...` URL (brackets of an IPv6
/// literal removed).
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("");
    }
    authority.split(':').next().unwrap_or("")
}

/// Whether `host` is reached without the environment's proxy: loopback
/// always, and any host `no_proxy` (curl's syntax: comma-separated names,
/// each matching itself and its subdomains, a leading dot ignored, `*` for
/// every host) names.
pub fn bypasses_proxy(host: &str, no_proxy: &str) -> bool {
    let host = host.to_ascii_lowercase();
    if host == "localhost" || host == "::1" || host.starts_with("127.") {
        return true;
    }
    no_proxy.split(',').map(str::trim).any(|e| {
        let e = e.trim_start_matches('.').to_ascii_lowercase();
        e == "*" || (!e.is_empty() && (host == e || host.ends_with(&format!(".{e}"))))
    })
}

/// An expected digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    Sha256(String),
    Md5(String),
}

impl Checksum {
    fn algorithm(&self) -> &'static str {
        match self {
            Checksum::Sha256(_) => "SHA-256",
            Checksum::Md5(_) => "MD5",
        }
    }
    fn hex(&self) -> &str {
        match self {
            Checksum::Sha256(h) | Checksum::Md5(h) => h,
        }
    }
}

/// Parse a checksum manifest.
pub fn parse_manifest(text: &str, source: &str) -> Result<Vec<(String, Checksum)>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut it = line.split_whitespace();
        let (Some(hex), Some(name), None) = (it.next(), it.next(), it.next()) else {
            return Err(Error::Config {
                source_name: source.to_string(),
                reason: format!("line {}: expected `<hex digest>  <file name>`", n + 1),
            });
        };
        let hex = hex.to_ascii_lowercase();
        if !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::Config {
                source_name: source.to_string(),
                reason: format!("line {}: digest {hex:?} is not hexadecimal", n + 1),
            });
        }
        let sum = match hex.len() {
            64 => Checksum::Sha256(hex),
            32 => Checksum::Md5(hex),
            l => {
                return Err(Error::Config {
                    source_name: source.to_string(),
                    reason: format!(
                        "line {}: digest has {l} hex digits; 64 (SHA-256) or 32 (MD5) allowed",
                        n + 1
                    ),
                })
            }
        };
        out.push((name.trim_start_matches('*').to_string(), sum));
    }
    Ok(out)
}

/// Digests of a local file.
pub fn file_digests(path: &Path) -> Result<(String, String)> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut sha = Sha256::new();
    let mut md5 = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        md5.update(&buf[..n]);
    }
    Ok((hex(&sha.finalize()), hex(&md5.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn matches(sum: &Checksum, sha: &str, md5: &str) -> bool {
    match sum {
        Checksum::Sha256(h) => h == sha,
        Checksum::Md5(h) => h == md5,
    }
}

/// Outcome of fetching one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// Already present with the right checksum; nothing downloaded.
    Present(PathBuf),
    /// Downloaded and verified.
    Downloaded(PathBuf),
}

/// Download every file of `manifest` from `url_base/<name>` into `dest`,
/// verifying each; write `dest/SHA256SUMS` at the end.
pub fn fetch_all(
    url_base: &str,
    manifest: &[(String, Checksum)],
    dest: &Path,
) -> Result<Vec<Fetched>> {
    std::fs::create_dir_all(dest).map_err(|e| Error::io(dest, e))?;
    let mut out = Vec::new();
    let mut sums = String::new();
    for (name, sum) in manifest {
        let url = format!("{}/{}", url_base.trim_end_matches('/'), name);
        let target = dest.join(name);
        let r = fetch_one(&url, sum, &target)?;
        let (sha, _) = file_digests(&target)?;
        sums.push_str(&format!("{sha}  {name}\n"));
        out.push(r);
    }
    crate::util::write_atomic(&dest.join("SHA256SUMS"), sums.as_bytes())?;
    Ok(out)
}

/// Fetch Omniglot into `<data_dir>/omniglot` ([`fetch_all`]), verified
/// against `manifest` (its text, and the name it is known by in errors), or
/// else the committed one ([`OMNIGLOT_CHECKSUMS`]).
pub fn omniglot(
    url_base: &str,
    manifest: Option<(&str, &str)>,
    data_dir: &Path,
) -> Result<Vec<Fetched>> {
    let (text, source) =
        manifest.unwrap_or((OMNIGLOT_CHECKSUMS, "datasets/omniglot/checksums.txt"));
    let manifest = parse_manifest(text, source)?;
    fetch_all(url_base, &manifest, &data_dir.join("omniglot"))
}

/// Download one file to `target` unless it is already there and verified.
pub fn fetch_one(url: &str, sum: &Checksum, target: &Path) -> Result<Fetched> {
    if target.is_file() {
        let (sha, md5) = file_digests(target)?;
        if matches(sum, &sha, &md5) {
            tracing::info!(file = %target.display(), "already present and verified");
            return Ok(Fetched::Present(target.to_path_buf()));
        }
        tracing::warn!(file = %target.display(), "present but checksum differs; downloading again");
    }
    let _span = tracing::info_span!("download", url).entered();
    let part = target.with_extension("part");
    let mut wait = FIRST_BACKOFF;
    let mut attempt = 1;
    let (sha, md5, n) = loop {
        match download_once(url, target, &part) {
            Ok(v) => break v,
            Err(Failure { error, transient }) => {
                let _ = std::fs::remove_file(&part);
                if !transient || attempt == ATTEMPTS {
                    return Err(error);
                }
                tracing::warn!(
                    "attempt {attempt} of {ATTEMPTS} failed ({error}); retrying in {}s",
                    wait.as_secs_f64()
                );
                std::thread::sleep(wait);
                wait *= 2;
                attempt += 1;
            }
        }
    };
    if !matches(sum, &sha, &md5) {
        let _ = std::fs::remove_file(&part);
        return Err(Error::Checksum {
            path: target.to_path_buf(),
            algorithm: sum.algorithm().into(),
            expected: sum.hex().into(),
            actual: match sum {
                Checksum::Sha256(_) => sha,
                Checksum::Md5(_) => md5,
            },
        });
    }
    std::fs::rename(&part, target).map_err(|e| Error::io(target, e))?;
    tracing::info!(file = %target.display(), bytes = n, "downloaded and verified");
    Ok(Fetched::Downloaded(target.to_path_buf()))
}

/// A failed attempt, and whether another could succeed.
struct Failure {
    error: Error,
    transient: bool,
}

/// One request for `url`, streamed into `part` and hashed: the SHA-256 and
/// MD5 hex digests and the byte count.
fn download_once(
    url: &str,
    target: &Path,
    part: &Path,
) -> std::result::Result<(String, String, u64), Failure> {
    let failed = |reason: String, transient: bool| Failure {
        error: Error::Download {
            url: url.to_string(),
            reason,
        },
        transient,
    };
    let resp = match agent(url).get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let transient = code == 429 || code >= 500;
            return Err(failed(
                format!("status code {code} {}", r.status_text()),
                transient,
            ));
        }
        Err(e) => return Err(failed(e.to_string(), true)),
    };
    let total: Option<u64> = resp.header("Content-Length").and_then(|v| v.parse().ok());
    let pb = match total {
        Some(t) => indicatif::ProgressBar::new(t),
        None => indicatif::ProgressBar::new_spinner(),
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(
        target
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    let local = |e: Error| Failure {
        error: e,
        transient: false,
    };
    let result = (|| -> std::result::Result<(String, String, u64), Failure> {
        let mut reader = resp.into_reader();
        let mut file = std::fs::File::create(part).map_err(|e| local(Error::io(part, e)))?;
        let mut sha = Sha256::new();
        let mut md5 = Md5::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut n_total = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| failed(e.to_string(), true))?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            md5.update(&buf[..n]);
            file.write_all(&buf[..n])
                .map_err(|e| local(Error::io(part, e)))?;
            n_total += n as u64;
            pb.set_position(n_total);
        }
        file.sync_all().map_err(|e| local(Error::io(part, e)))?;
        Ok((hex(&sha.finalize()), hex(&md5.finalize()), n_total))
    })();
    pb.finish_and_clear();
    let (sha, md5, n) = result?;
    if let Some(t) = total {
        if t != n {
            return Err(failed(format!("received {n} bytes, expected {t}"), true));
        }
    }
    Ok((sha, md5, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_manifest_parses() {
        let m = parse_manifest(OMNIGLOT_CHECKSUMS, "checksums.txt").unwrap();
        assert_eq!(m.len(), 2);
        assert!(matches!(m[0].1, Checksum::Md5(_)));
        assert_eq!(m[0].0, "images_background.zip");
    }

    #[test]
    fn loopback_and_no_proxy_hosts_bypass_the_proxy() {
        assert_eq!(host_of("http://127.0.0.1:8080/a.zip"), "127.0.0.1");
        assert_eq!(host_of("https://user@github.com/x"), "github.com");
        assert_eq!(host_of("http://[::1]:80/"), "::1");
        assert!(bypasses_proxy("127.0.0.1", ""));
        assert!(bypasses_proxy("localhost", ""));
        assert!(!bypasses_proxy("github.com", ""));
        assert!(bypasses_proxy("raw.github.com", "example.org, .github.com"));
        assert!(bypasses_proxy("github.com", "github.com"));
        assert!(!bypasses_proxy("notgithub.com", "github.com"));
        assert!(bypasses_proxy("anything", "*"));
    }

    #[test]
    fn bad_manifest_lines_are_named() {
        let e = parse_manifest("abc  x.zip\n", "m.txt")
            .unwrap_err()
            .to_string();
        assert!(e.contains("m.txt") && e.contains("line 1"), "{e}");
        let e = parse_manifest("zz  x.zip\n", "m.txt")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not hexadecimal"), "{e}");
    }
}
