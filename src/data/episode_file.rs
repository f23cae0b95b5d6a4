//! Fixed episodes from a file, so that published fixed episode sets are
//! used as they are (`bench eval RUN --episodes FILE`).
//!
//! CSV with the header `episode,role,label,image`, one line per image;
//! `episode` numbers the episodes 0, 1, 2, ... in order, `role` is
//! `support` or `query`, `label` is the class within the episode (0..ways),
//! and `image` is a path, relative to the file's folder unless absolute.
//! Every episode must have the same ways, shots and queries (at least one of
//! each per class). Every image is decoded before any evaluation
//! ([`EpisodeFile::decode_all`]), as the benchmark's dataset decodes it.

use std::path::{Path, PathBuf};

use crate::data::sampler::{Batch, EpisodeSpec};
use crate::data::{self, ImageFormat};
use crate::error::{Error, Result};

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
    pub fn decode_all(&self, f: &ImageFormat) -> Result<Vec<Vec<Vec<u8>>>> {
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

impl EpisodeFile {
    /// Tensors of episode `index` from its decoded `pixels`
    /// ([`EpisodeFile::decode_all`]), support then query, each grouped by label
    /// (the sampler's order).
    pub fn batch(
        &self,
        index: usize,
        pixels: &[Vec<u8>],
        f: &ImageFormat,
        dev: &candle_core::Device,
    ) -> Result<Batch> {
        let items = &self.episodes[index];
        let index = index as u64;
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
            id: crate::data::sampler::EpisodeId { split: None, index },
            support_x,
            support_y,
            query_x,
            query_y,
        })
    }
}
