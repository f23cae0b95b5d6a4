//! Cross-dataset evaluation: the trained algorithms of a finished run,
//! tested on another benchmark's fixed test episodes (e.g. meta-trained on
//! mini-ImageNet, tested on a user's class-per-folder data of the same image
//! size: the cross-domain protocol).
//!
//! The run's own `resolved.yaml` says what was trained (every algorithm's
//! resolved configuration, the learner); the other benchmark says what is
//! tested (dataset, episode shape, seed, number of test episodes and the
//! evaluation's batch-norm protocol). The learner must accept the other
//! benchmark's images and classes: same channels, image size and ways,
//! checked before anything is evaluated. Each algorithm is tested with the
//! parameters its run selected (`select: best`: the best validated state;
//! `final`: the last checkpoint). Results go to `<run>/eval/<benchmark>/`
//! (`results.json`, the leaderboard files, `<label>/test_episodes.csv`).
//!
//! Fixed episodes can also come from a file ([`EpisodeFile`]), so that
//! published fixed episode sets are used as they are: CSV with the header
//! `episode,role,label,image`, one line per image; `episode` numbers the
//! episodes 0, 1, 2, ... in order, `role` is `support` or `query`, `label`
//! is the class within the episode (0..ways), and `image` is a path, relative
//! to the file's folder unless absolute. Every episode must have the same
//! ways, shots and queries (at least one of each per class); images are
//! decoded and normalised as the benchmark's dataset does.

use std::path::{Path, PathBuf};

use crate::algo::EpisodeScore;
use crate::data::ImageFormat;
use crate::error::{Error, Result};
use crate::runner::{pair_with_best, RunResults};
use crate::sampler::{Batch, EpisodeSpec};
use crate::spec::{Benchmark, Select};
use crate::{algo, data, eval, train};

/// Where the evaluation of `run` on benchmark `name` is written.
pub fn out_dir(run: &Path, name: &str) -> PathBuf {
    run.join(crate::rundir::EVAL_DIR).join(name)
}

/// The benchmark a run was started with, from its `resolved.yaml`.
pub fn trained_benchmark(run: &Path) -> Result<Benchmark> {
    let path = run.join("resolved.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    crate::yaml::from_str(&text, &path.display().to_string()).map_err(|e| match e {
        Error::Config {
            source_name,
            reason,
        } => Error::Config {
            source_name,
            reason: format!("not a fewshot resolved benchmark: {reason}"),
        },
        other => other,
    })
}

/// Check that what `trained` learned can be tested on `target`.
pub fn check_compatible(trained: &Benchmark, target: &Benchmark) -> Result<()> {
    let (a, b) = (&trained.learner, &target.learner);
    for (what, x, y) in [
        ("image channels", a.in_channels, b.in_channels),
        ("image size", a.image_size, b.image_size),
        (
            "ways (the learner's output classes)",
            trained.episode.ways,
            target.episode.ways,
        ),
    ] {
        if x != y {
            return Err(Error::invalid(
                format!("{what} of {}", target.name),
                y,
                format!(
                    "{x}, as the run's learner was trained on {} ({})",
                    trained.name, trained.dataset
                ),
            ));
        }
    }
    Ok(())
}

/// Evaluate every algorithm of the run in `run` (or those in `only`) on
/// `target`'s test episodes from `data_dir`; writes and returns the results.
///
/// With `file`, the episodes are the file's instead of `target`'s test
/// episodes, preprocessed as `target`'s dataset; results go to
/// `<run>/eval/<file stem>/`.
pub fn evaluate_on(
    run: &Path,
    target: &Benchmark,
    file: Option<&EpisodeFile>,
    data_dir: &Path,
    only: &[String],
    show_progress: bool,
    device: &candle_core::Device,
) -> Result<RunResults> {
    let trained = trained_benchmark(run)?;
    check_compatible(&trained, target)?;
    if let Some(f) = file {
        if f.spec.ways != trained.episode.ways {
            return Err(Error::Csv {
                path: f.path.clone(),
                reason: format!(
                    "{}-way episodes, but the run's learner was trained for {} ways",
                    f.spec.ways, trained.episode.ways
                ),
            });
        }
    }
    let name = match file {
        Some(f) => f
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "episodes".into()),
        None => target.name.clone(),
    };
    let episode = file.map(|f| f.spec).unwrap_or(target.episode);
    for l in only {
        trained.algorithm(l)?;
    }
    // Trained as the run was; evaluated with the target's episode shape
    // and batch-norm evaluation protocol.
    let mut ctx = trained.context(device);
    ctx.spec = episode;
    ctx.norm.eval = target.batch_norm.eval;
    let ds = data::open(&target.dataset, data_dir, &target.data)?;
    // Every image of the file decoded before any evaluation.
    let pixels = file.map(|f| f.decode_all(&ds.format)).transpose()?;
    let out = out_dir(run, &name);
    crate::util::create_dir_durable(&out)?;
    let mut results = RunResults {
        benchmark: name.clone(),
        dataset: target.dataset.clone(),
        episode,
        transductive: target.transductive,
        batch_norm: crate::norm::NormProtocol {
            meta_train: trained.batch_norm.meta_train,
            ..target.batch_norm
        },
        select: trained.select,
        seed: file.is_none().then_some(target.seed),
        run_seed: Some(trained.run_seed),
        run_seeds: vec![],
        profile: Some(trained.profile.clone()),
        device: Some(if device.is_cpu() {
            "cpu".into()
        } else {
            format!("{:?}", device.location())
        }),
        run_dir: out.clone(),
        results: vec![],
    };
    for (i, a) in trained.algorithms.iter().enumerate() {
        if !only.is_empty() && !only.contains(&a.label) {
            continue;
        }
        let _span = tracing::info_span!("eval", label = a.label.as_str()).entered();
        let mut algorithm = algo::build(&a.config, &ctx, &format!("algorithms[{i}]"))?;
        let dir = run.join(&a.label);
        let state = train::load_checkpoint(&mut *algorithm, &dir)?;
        let selected = if trained.select == Select::Best && train::load_best(&mut *algorithm, &dir)?
        {
            format!("best@{}", state.best_step.unwrap_or(0))
        } else {
            format!("final@{}", state.step)
        };
        let ev = match (file, &pixels) {
            (Some(f), Some(px)) => evaluate_file(&*algorithm, f, px, &ds.format)?,
            _ => eval::evaluate(
                &*algorithm,
                &ds,
                data::Split::Test,
                target.episode,
                target.seed,
                target.test_episodes,
                show_progress,
            )?,
        };
        tracing::info!(accuracy = format!("{:.4}", ev.mean), "tested on {name}");
        let label_dir = out.join(&a.label);
        crate::util::create_dir_durable(&label_dir)?;
        crate::runner::write_episode_scores(&ev, &label_dir.join("test_episodes.csv"))?;
        results
            .results
            .push(crate::runner::row(a, &state, &ev, selected));
    }
    pair_with_best(&mut results.results);
    let json = serde_json::to_string_pretty(&results).map_err(|e| Error::Config {
        source_name: "results.json".into(),
        reason: e.to_string(),
    })?;
    crate::util::write_atomic(&out.join("results.json"), json.as_bytes())?;
    crate::report::write_files(&results, &out)?;
    Ok(results)
}

/// One image of an episode file: role, label, path (as written), line.
#[derive(Debug, Clone)]
struct Item {
    query: bool,
    label: usize,
    path: PathBuf,
}

/// Fixed episodes read from a CSV file (see the module docs).
#[derive(Debug, Clone)]
pub struct EpisodeFile {
    pub path: PathBuf,
    pub spec: EpisodeSpec,
    episodes: Vec<Vec<Item>>,
}

impl EpisodeFile {
    /// Read and check the whole file: every error names the file and line.
    pub fn read(path: &Path) -> Result<EpisodeFile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let bad = |line: usize, why: String| Error::Csv {
            path: path.to_path_buf(),
            reason: format!("line {line}: {why}"),
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, h)) if h.trim() == "episode,role,label,image" => {}
            _ => {
                return Err(bad(
                    1,
                    "expected the header `episode,role,label,image`".into(),
                ))
            }
        }
        let mut episodes: Vec<Vec<Item>> = vec![];
        for (i, l) in lines {
            let n = i + 1;
            if l.trim().is_empty() {
                continue;
            }
            let f: Vec<&str> = l.splitn(4, ',').collect();
            if f.len() != 4 {
                return Err(bad(n, "expected `episode,role,label,image`".into()));
            }
            let e: usize = f[0]
                .trim()
                .parse()
                .map_err(|_| bad(n, format!("episode `{}` is not a number", f[0])))?;
            if e != episodes.len() && e + 1 != episodes.len() {
                return Err(bad(
                    n,
                    format!(
                        "episode {e} after episode {}: number episodes 0, 1, 2, ... in order",
                        episodes.len().saturating_sub(1)
                    ),
                ));
            }
            if e == episodes.len() {
                episodes.push(vec![]);
            }
            let query = match f[1].trim() {
                "support" => false,
                "query" => true,
                r => return Err(bad(n, format!("role `{r}`: support or query"))),
            };
            let label: usize = f[2]
                .trim()
                .parse()
                .map_err(|_| bad(n, format!("label `{}` is not a number", f[2])))?;
            if label >= EpisodeSpec::MAX {
                return Err(bad(n, format!("label {label} is too large")));
            }
            let p = PathBuf::from(f[3].trim());
            let path = if p.is_absolute() { p } else { base.join(p) };
            episodes[e].push(Item { query, label, path });
        }
        if episodes.is_empty() {
            return Err(bad(2, "no episodes".into()));
        }
        // One shape for all: ways, and per class the same shots and queries.
        let mut spec: Option<EpisodeSpec> = None;
        for (e, items) in episodes.iter().enumerate() {
            let ways = items.iter().map(|x| x.label).max().unwrap_or(0) + 1;
            let count = |q: bool, c: usize| {
                items
                    .iter()
                    .filter(|x| x.query == q && x.label == c)
                    .count()
            };
            let (shots, queries) = (count(false, 0), count(true, 0));
            for c in 0..ways {
                if count(false, c) != shots
                    || count(true, c) != queries
                    || shots == 0
                    || queries == 0
                {
                    return Err(Error::Csv {
                        path: path.to_path_buf(),
                        reason: format!(
                            "episode {e}: class {c} has {} support and {} query images, class 0 has {shots} and {queries} (every class of an episode needs the same, at least one of each)",
                            count(false, c),
                            count(true, c)
                        ),
                    });
                }
            }
            let s = EpisodeSpec {
                ways,
                shots,
                queries,
            };
            match spec {
                None => spec = Some(s),
                Some(p) if p != s => {
                    return Err(Error::Csv {
                        path: path.to_path_buf(),
                        reason: format!("episode {e} is {ways}-way {shots}-shot with {queries} queries, episode 0 is {}-way {}-shot with {} queries; all episodes need one shape", p.ways, p.shots, p.queries),
                    })
                }
                _ => {}
            }
        }
        Ok(EpisodeFile {
            path: path.to_path_buf(),
            spec: spec.expect("at least one episode"),
            episodes,
        })
    }

    pub fn len(&self) -> usize {
        self.episodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.episodes.is_empty()
    }

    /// Decode every image once, before any evaluation: all problems at once.
    fn decode_all(&self, f: &ImageFormat) -> Result<Vec<Vec<Vec<u8>>>> {
        use rayon::prelude::*;
        let mut problems = vec![];
        let out: Vec<Vec<std::result::Result<Vec<u8>, String>>> = self
            .episodes
            .par_iter()
            .map(|items| {
                items
                    .iter()
                    .map(|x| {
                        std::fs::read(&x.path)
                            .map_err(|e| e.to_string())
                            .and_then(|b| data::decode(&b, f))
                            .map_err(|e| format!("{}: {e}", x.path.display()))
                    })
                    .collect()
            })
            .collect();
        let mut pixels = vec![];
        for ep in out {
            let mut v = vec![];
            for r in ep {
                match r {
                    Ok(p) => v.push(p),
                    Err(e) => problems.push(e),
                }
            }
            pixels.push(v);
        }
        if !problems.is_empty() {
            let count = problems.len();
            problems.truncate(10);
            return Err(Error::BadImages {
                count,
                expected: format!("images listed in {}", self.path.display()),
                list: problems.join("\n"),
            });
        }
        Ok(pixels)
    }
}

/// Tensors of episode `items` from decoded `pixels`, support then query,
/// each grouped by label (the sampler's order); `index`: the episode's
/// position in the file.
fn file_batch(
    index: u64,
    items: &[Item],
    pixels: &[Vec<u8>],
    f: &ImageFormat,
    dev: &candle_core::Device,
) -> Result<Batch> {
    let px = f.pixels();
    let part = |query: bool| -> Result<(candle_core::Tensor, candle_core::Tensor)> {
        let mut idx: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].query == query)
            .collect();
        idx.sort_by_key(|&i| items[i].label);
        let mut data = vec![0f32; idx.len() * px];
        for (k, &i) in idx.iter().enumerate() {
            data::normalise(f, &pixels[i], &mut data[k * px..(k + 1) * px]);
        }
        let labels: Vec<u32> = idx.iter().map(|&i| items[i].label as u32).collect();
        Ok((
            candle_core::Tensor::from_vec(data, (idx.len(), f.channels, f.size, f.size), dev)?,
            candle_core::Tensor::from_vec(labels, idx.len(), dev)?,
        ))
    };
    let (support_x, support_y) = part(false)?;
    let (query_x, query_y) = part(true)?;
    Ok(Batch {
        id: crate::sampler::EpisodeId { split: None, index },
        support_x,
        support_y,
        query_x,
        query_y,
    })
}

/// Score `algorithm` on every episode of `file` (parallel over episodes).
pub fn evaluate_file(
    algorithm: &dyn algo::Algorithm,
    file: &EpisodeFile,
    pixels: &[Vec<Vec<u8>>],
    f: &ImageFormat,
) -> Result<eval::Evaluation> {
    use rayon::prelude::*;
    let t = std::time::Instant::now();
    let scores: Vec<EpisodeScore> = file
        .episodes
        .par_iter()
        .zip(pixels)
        .enumerate()
        .map(|(i, (items, px))| {
            let dev = &algorithm.context().device;
            algorithm.evaluate(&file_batch(i as u64, items, px, f, dev)?)
        })
        .collect::<Result<_>>()?;
    let accs: Vec<f64> = scores.iter().map(|s| s.accuracy).collect();
    let (mean, ci95) = eval::mean_ci95(&accs);
    Ok(eval::Evaluation {
        split: data::Split::Test,
        episodes: scores.len(),
        mean,
        ci95,
        mean_loss: scores.iter().map(|s| s.loss).sum::<f64>() / scores.len().max(1) as f64,
        seconds: t.elapsed().as_secs_f64(),
        scores,
    })
}
