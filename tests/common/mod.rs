//! Helpers shared by the integration tests: where the real data is, small
//! synthetic datasets written into temp dirs, a loopback HTTP server and the
//! `bench` binary.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shared real datasets (`../shared/datasets`). Real-data tests must not
/// pass silently without them, so a missing folder is a loud failure.
pub fn shared_datasets() -> PathBuf {
    let p = repo_root().join("../shared/datasets");
    assert!(
        p.join("omniglot").is_dir() && p.join("mini-imagenet").is_dir(),
        "the real-data tests need the shared datasets at {} (omniglot/ and mini-imagenet/, see \
         its README.md); they are not optional and CI always provides them",
        p.display()
    );
    p
}

/// `tempfile::tempdir()`, unwrapped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create temp dir")
}

/// A small RGB test image whose pixels depend on `(a, b)` and are not
/// symmetric under any rotation (a gradient plus a marker in one corner).
pub fn pattern(a: u32, b: u32, w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let corner = if x < 2 && y < 2 { 200 } else { 0 };
        image::Rgb([
            ((x * 17 + a * 31) % 200 + corner / 4) as u8,
            ((y * 13 + b * 29) % 200) as u8,
            ((x * 3 + y * 7 + a * 5 + b * 11) % 200 + corner / 4) as u8,
        ])
    })
}

/// Write a class-per-folder dataset `<root>/<split>/<class>/<i>.png`: for
/// each `(split, class, images)` in `layout`, `images` PNGs of `size` px.
pub fn write_folder_dataset(root: &Path, layout: &[(&str, &str, usize)], size: u32) {
    for (ci, (split, class, n)) in layout.iter().enumerate() {
        let dir = root.join(split).join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..*n {
            pattern(ci as u32, i as u32, size, size)
                .save(dir.join(format!("{i:03}.png")))
                .unwrap();
        }
    }
}

/// Write a tiny mini-ImageNet-shaped folder at `root`: `images/` with
/// `per_class` small JPEGs per class and `train/val/test.csv` (header
/// `filename,label`), `classes[s]` classes in split `s`. Returns the rows
/// written per split.
pub fn write_mini_imagenet(
    root: &Path,
    classes: [usize; 3],
    per_class: usize,
) -> Vec<Vec<(String, String)>> {
    let images = root.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let mut all = Vec::new();
    let mut wnid = 0;
    for (s, split) in ["train", "val", "test"].iter().enumerate() {
        let mut rows = Vec::new();
        for _ in 0..classes[s] {
            wnid += 1;
            let label = format!("n{wnid:08}");
            for i in 0..per_class {
                let file = format!("{label}{:08}.jpg", i + 1);
                pattern(wnid, i as u32, 16, 16)
                    .save(images.join(&file))
                    .unwrap();
                rows.push((file, label.clone()));
            }
        }
        write_csv(&root.join(format!("{split}.csv")), "filename,label", &rows);
        all.push(rows);
    }
    all
}

/// Write a CSV with the given header and `(filename, label)` rows.
pub fn write_csv(path: &Path, header: &str, rows: &[(String, String)]) {
    let mut text = format!("{header}\n");
    for (f, l) in rows {
        text.push_str(&format!("{f},{l}\n"));
    }
    std::fs::write(path, text).unwrap();
}

/// Run the `bench` binary with `args` and no inherited `FEWSHOT_DATA`.
pub fn bench(args: &[&str]) -> Output {
    bench_cmd(args).output().expect("run bench")
}

/// The `bench` command, ready to run (`FEWSHOT_DATA` removed).
pub fn bench_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bench"));
    c.args(args)
        .env_remove("FEWSHOT_DATA")
        .env("RUST_LOG", "warn");
    c
}

/// Assert that `bench` failed with an error (exit status 2) and that its
/// stderr mentions every one of `needles`; returns stderr.
pub fn assert_bench_fails(out: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.code() == Some(2),
        "bench should fail, got {:?}\nstdout:\n{}\nstderr:\n{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    for n in needles {
        assert!(stderr.contains(n), "stderr should mention {n:?}:\n{stderr}");
    }
    stderr
}

/// Assert that `bench` succeeded; returns stdout.
pub fn assert_bench_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "bench failed with {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A minimal HTTP/1.1 file server on loopback, for the download path.
///
/// Serves `GET /<name>` for the listed names from `dir` (200 with
/// `Content-Length`, connection closed after each response) and 404 for
/// anything else. It stops by itself after `max_requests` requests or when
/// `lifetime` has passed, whichever comes first.
pub struct FileServer {
    /// `http://127.0.0.1:<port>`
    pub url_base: String,
    /// Requests answered so far (any status). Counted before the answer
    /// is written, so a client that has its answer sees it counted.
    pub requests: Arc<AtomicUsize>,
}

impl FileServer {
    pub fn start(dir: &Path, names: &[&str], max_requests: usize, lifetime: Duration) -> Self {
        Self::start_failing(dir, names, max_requests, lifetime, 0)
    }

    /// As [`FileServer::start`], but the first `fail_first` requests are
    /// answered `503 Service Unavailable` (a server having a bad moment).
    pub fn start_failing(
        dir: &Path,
        names: &[&str],
        max_requests: usize,
        lifetime: Duration,
        fail_first: usize,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let dir = dir.to_path_buf();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        std::thread::spawn(move || {
            let deadline = Instant::now() + lifetime;
            while count.load(Ordering::SeqCst) < max_requests && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        // A failed exchange is the client's problem; the
                        // test sees it as a download error.
                        let _ = serve_one(stream, &dir, &names, &count, fail_first);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        });
        FileServer {
            url_base: format!("http://127.0.0.1:{port}"),
            requests,
        }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn serve_one(
    stream: TcpStream,
    dir: &Path,
    names: &[String],
    count: &AtomicUsize,
    fail_first: usize,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let name = path.trim_start_matches('/');
    let mut out = stream;
    let earlier = count.fetch_add(1, Ordering::SeqCst);
    if earlier < fail_first {
        let body = b"busy\n";
        write!(
            out,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        return out.write_all(body);
    }
    if method == "GET" && names.iter().any(|n| n == name) {
        let body = std::fs::read(dir.join(name))?;
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        out.write_all(&body)?;
    } else {
        let body = b"not found\n";
        write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )?;
        out.write_all(body)?;
    }
    out.flush()?;
    out.shutdown(std::net::Shutdown::Write)
}

/// Every few-shot `*.yaml` benchmark directly in `dir` (optimisation
/// benchmarks have their own shape: tests/optimisation.rs), parsed and
/// resolved; each must be named after its file.
pub fn load_benchmarks(dir: &Path) -> Vec<fewshot::spec::Benchmark> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml")
            && fewshot::spec::task_of_file(p.to_str().unwrap()).unwrap()
                == fewshot::data::task::TaskKind::Episodic
        {
            let (b, _) = fewshot::spec::Benchmark::load(p.to_str().unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert_eq!(
                Some(b.name.as_str()),
                p.file_stem().and_then(|s| s.to_str()),
                "{}",
                p.display()
            );
            out.push(b);
        }
    }
    out
}

/// Test protocol: meta-training and evaluation both with the query batch's
/// statistics (transductive) or both with the support set's.
pub fn both_stats(transductive: bool) -> fewshot::model::norm::NormProtocol {
    use fewshot::model::norm::{EvalStats, NormProtocol, TrainStats};
    let (meta_train, eval) = if transductive {
        (TrainStats::Query, EvalStats::Query)
    } else {
        (TrainStats::Support, EvalStats::Support)
    };
    NormProtocol {
        meta_train,
        eval,
        momentum: 0.9,
    }
}

/// A tensor's values as float64 bit patterns (exact comparisons of
/// checkpoints).
pub fn bits(t: &candle_core::Tensor) -> Vec<u64> {
    values(t).iter().map(|x| x.to_bits()).collect()
}

/// Check the float64 gradient `g` of `f` at `p` against central differences
/// (step 1e-6, tolerance 1e-6 relative), on about `per_tensor` evenly spaced
/// coordinates of every tensor; `what` prefixes failure messages. Returns
/// how many coordinates were checked.
pub fn check_gradient_fd(
    p: &fewshot::model::params::Params,
    g: &fewshot::model::params::Params,
    per_tensor: usize,
    f: impl Fn(&fewshot::model::params::Params) -> f64,
    what: &str,
) -> usize {
    let h = 1e-6;
    let mut checked = 0;
    for (i, name) in p.names.iter().enumerate() {
        let t = &p.tensors[i];
        let ga = g.tensors[i]
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let n = t.elem_count();
        for k in (0..n).step_by((n / per_tensor).max(1)) {
            let shift = |d: f64| {
                let mut q = p.clone();
                let mut v = t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
                v[k] += d;
                q.tensors[i] = candle_core::Tensor::from_vec(v, t.shape(), t.device()).unwrap();
                q
            };
            let fd = (f(&shift(h)) - f(&shift(-h))) / (2.0 * h);
            assert!(
                (fd - ga[k]).abs() <= 1e-6 * (1.0 + fd.abs()),
                "{what}: {name}[{k}]: analytic {} vs finite difference {fd}",
                ga[k]
            );
            checked += 1;
        }
    }
    checked
}

/// A tensor's values in float64.
pub fn values(t: &candle_core::Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

/// Largest |a - b| over paired lists of tensors, relative to the largest
/// |a| (the fused kernels against the composed path).
pub fn max_rel_diff(a: &[candle_core::Tensor], b: &[candle_core::Tensor]) -> f64 {
    let (mut d, mut s) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (values(x), values(y));
        assert_eq!(x.len(), y.len());
        for (p, q) in x.iter().zip(&y) {
            d = d.max((p - q).abs());
            s = s.max(p.abs());
        }
    }
    d / s.max(1e-30)
}

/// `benchmarks/fewshot-5way1shot.yaml` renamed `small`, its `algorithms:`
/// replaced by `algorithms` (YAML list lines), each `(from, to)` of `edits`
/// applied (every one must match), written to `dir/b.yaml`.
pub fn headline_variant(dir: &Path, algorithms: &str, edits: &[(&str, &str)]) -> PathBuf {
    let text =
        std::fs::read_to_string(repo_root().join("benchmarks/fewshot-5way1shot.yaml")).unwrap();
    let mut head = text
        .split("\nalgorithms:")
        .next()
        .unwrap()
        .replace("name: fewshot-5way1shot", "name: small");
    for (from, to) in edits {
        assert!(
            head.contains(from),
            "`{from}` is not in the headline benchmark"
        );
        head = head.replace(from, to);
    }
    let p = dir.join("b.yaml");
    std::fs::write(&p, format!("{head}\nalgorithms:\n{algorithms}")).unwrap();
    p
}

/// `p` plus Gaussian noise of standard deviation `scale`.
pub fn jitter(
    p: &fewshot::model::params::Params,
    scale: f64,
    seed: u64,
) -> fewshot::model::params::Params {
    let mut rng = fewshot::rng::Rng::new(seed);
    let tensors = p
        .tensors
        .iter()
        .map(|t| {
            let noise: Vec<f64> = (0..t.elem_count()).map(|_| scale * rng.normal()).collect();
            let noise = candle_core::Tensor::from_vec(noise, t.shape(), &candle_core::Device::Cpu)
                .unwrap()
                .to_dtype(t.dtype())
                .unwrap();
            (t + noise).unwrap()
        })
        .collect();
    fewshot::model::params::Params::new(p.names.clone(), tensors)
}
