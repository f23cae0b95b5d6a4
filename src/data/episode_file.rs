//! Fixed episodes from a file, so that published fixed episode sets are
//! used as they are (`bench eval RUN --episodes FILE`).
//!
//! CSV with the columns `episode,role,label,image` (found by header name;
//! quoting, CRLF, a byte order mark and extra columns are read as the
//! `csv` crate and [`crate::data::table`] read them), one row per image;
//! `episode` numbers the episodes 0, 1, 2, ... in order, `role` is
//! `support` or `query`, `label` is the class within the episode (0..ways),
//! and `image` is a path, relative to the file's folder unless absolute.
//! Every episode must have the same ways, shots and queries (at least one of
//! each per class), its labels numbered 0..ways, and no image twice. Every image is decoded before any evaluation
//! ([`EpisodeFile::decode_all`]), as the benchmark's dataset decodes it.

use std::path::{Path, PathBuf};

use crate::data::sampler::{Batch, EpisodeSpec};
use crate::data::table;
use crate::data::{self, ImageFormat};
use crate::error::{Error, Result};

/// One image of an episode file: role, label, path (resolved), line.
#[derive(Debug, Clone)]
struct Item {
    query: bool,
    label: usize,
    path: PathBuf,
    line: usize,
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
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |line: usize, why: String| Error::Csv {
            path: path.to_path_buf(),
            reason: format!("line {line}: {why}"),
        };
        let text = String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            let line = 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
            bad(line, "not UTF-8 text".into())
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rows = table::read(path, &text, &["episode", "role", "label", "image"])?;
        let mut episodes: Vec<Vec<Item>> = vec![];
        for row in rows {
            let n = row.line;
            let f = &row.values;
            let e: usize = f[0]
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
            let query = match f[1].as_str() {
                "support" => false,
                "query" => true,
                r => return Err(bad(n, format!("role `{r}`: support or query"))),
            };
            let label: usize = f[2]
                .parse()
                .map_err(|_| bad(n, format!("label `{}` is not a number", f[2])))?;
            if label >= EpisodeSpec::MAX {
                return Err(bad(n, format!("label {label} is too large")));
            }
            if f[3].is_empty() {
                return Err(bad(n, "no image path".into()));
            }
            let p = PathBuf::from(&f[3]);
            let path = if p.is_absolute() { p } else { base.join(p) };
            if let Some(first) = episodes[e].iter().find(|x| x.path == path) {
                return Err(bad(
                    n,
                    format!(
                        "{} is already in episode {e} (line {}); an image may appear once per episode",
                        f[3], first.line
                    ),
                ));
            }
            episodes[e].push(Item {
                query,
                label,
                path,
                line: n,
            });
        }
        if episodes.is_empty() {
            return Err(bad(2, "no episodes".into()));
        }
        // Labels 0..ways, each class of an episode present.
        for (e, items) in episodes.iter().enumerate() {
            let mut labels: Vec<usize> = items.iter().map(|x| x.label).collect();
            labels.sort_unstable();
            labels.dedup();
            if let Some(x) = items.iter().find(|x| x.label >= labels.len()) {
                return Err(bad(
                    x.line,
                    format!(
                        "label {} in episode {e}, whose labels are {}: number an episode's {} classes 0 to {}",
                        x.label,
                        labels
                            .iter()
                            .map(|l| l.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        labels.len(),
                        labels.len() - 1
                    ),
                ));
            }
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
                            "line {}: episode {e}'s class {c} has {} support and {} query images, class 0 has {shots} and {queries} (every class of an episode needs the same, at least one of each)",
                            items[0].line,
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
                        reason: format!("line {}: episode {e} is {ways}-way {shots}-shot with {queries} queries, episode 0 is {}-way {}-shot with {} queries; all episodes need one shape", items[0].line, p.ways, p.shots, p.queries),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<EpisodeFile> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("eps.csv");
        std::fs::write(&p, text).unwrap();
        EpisodeFile::read(&p)
    }

    fn err(text: &str) -> String {
        read(text).unwrap_err().to_string()
    }

    const TWO_WAY: &str = "episode,role,label,image\n0,support,0,a.png\n0,query,0,b.png\n0,support,1,c.png\n0,query,1,d.png\n";

    #[test]
    fn a_pandas_file_reads_quoted_paths_with_commas_a_bom_crlf_and_an_index_column() {
        let text = "\u{feff},episode,role,label,image\r\n0,0,support,0,\"dir,comma/a.png\"\r\n1,0,query,0,b.png\r\n2,0,support,1,c.png\r\n3,0,query,1,d.png\r\n";
        let f = read(text).unwrap();
        assert_eq!((f.spec.ways, f.spec.shots, f.spec.queries), (2, 1, 1));
        assert!(f.episodes[0][0].path.ends_with("dir,comma/a.png"));
        assert_eq!(f.episodes[0][3].line, 5);
        read(TWO_WAY).unwrap();
    }

    #[test]
    fn an_image_twice_in_one_episode_is_refused_with_both_lines() {
        let e = err(&TWO_WAY.replace("0,query,1,d.png", "0,query,1,a.png"));
        assert!(
            e.contains("line 5") && e.contains("a.png") && e.contains("line 2"),
            "{e}"
        );
        // Across episodes an image may come back.
        let two = format!(
            "{TWO_WAY}{}",
            TWO_WAY
                .lines()
                .skip(1)
                .map(|l| format!("1{}\n", &l[1..]))
                .collect::<String>()
        );
        assert_eq!(read(&two).unwrap().len(), 2);
    }

    #[test]
    fn a_label_outside_the_ways_names_its_line_and_value() {
        let e = err(&TWO_WAY.replace("0,query,1,d.png", "0,query,7,d.png"));
        assert!(e.contains("line 5") && e.contains("label 7"), "{e}");
        let e = err("episode,role,label,image\n0,support,x,a.png\n");
        assert!(e.contains("line 2") && e.contains("label `x`"), "{e}");
        let e = err("episode,role,label\n0,support,0\n");
        assert!(
            e.contains("line 1") && e.contains("no column `image`"),
            "{e}"
        );
    }
}
