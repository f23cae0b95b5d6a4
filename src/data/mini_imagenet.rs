//! mini-ImageNet (Vinyals et al., 2016) with the Ravi & Larochelle split.
//!
//! Layout as users receive it: `images/` (or `images.zip` whose top folder
//! is `images/`) holding 84x84 RGB JPEGs named `<wnid><8 digits>.jpg`, plus
//! `train.csv`, `val.csv`, `test.csv` with header `filename,label`. The CSVs
//! *are* the split (64 / 16 / 20 classes). A class is a wnid; its images are
//! ordered by file name. Pixels are scaled to [0, 1] and normalised per
//! channel with the statistics commonly used for this dataset (mean
//! 120.40/115.59/104.54, std 70.68/68.28/72.55, out of 255), unless
//! `data.normalize: false` (the reference codes' [0, 1] pixels).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::{
    require_dir_or_zip, ClassEntry, DataOptions, Dataset, EpisodeClass, ImageEntry, ImageFormat,
    Reader, Source, Split,
};
use crate::data::store::Location;
use crate::error::{Error, Result};

/// Per-channel mean (of 255) used to normalise mini-ImageNet.
pub const MEAN: [f32; 3] = [120.395_86, 115.593_61, 104.540_13];
/// Per-channel standard deviation (of 255).
pub const STD: [f32; 3] = [70.681_88, 68.276_35, 72.545_06];

/// The mini-ImageNet reader.
pub struct MiniImageNet;

impl Reader for MiniImageNet {
    fn name(&self) -> &'static str {
        "mini-imagenet"
    }

    fn channels(&self) -> usize {
        3
    }

    fn default_image_size(&self) -> usize {
        84
    }

    fn open(&self, root: &Path, options: &DataOptions) -> Result<Dataset> {
        if options.split_scheme.is_some() {
            return Err(Error::invalid(
                "data.split_scheme",
                options.split_scheme.as_deref().unwrap_or(""),
                "mini-ImageNet's split is given by its CSVs; leave split_scheme out",
            ));
        }
        if !root.is_dir() {
            return Err(Error::MissingData {
                what: "mini-ImageNet folder".into(),
                path: root.to_path_buf(),
                hint: "it should hold images/ (or images.zip) and train.csv, val.csv, test.csv; see docs/data.md".into(),
            });
        }
        let size = super::image_side(options, self.default_image_size())?;
        let source = require_dir_or_zip(
            root,
            "images",
            "mini-ImageNet images: see docs/data.md for where to get them",
        )?;
        // file name -> location
        let mut zips = Vec::new();
        let lookup: HashMap<String, Location> = match source {
            Source::Dir(dir) => {
                let rd = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
                let mut m = HashMap::new();
                for e in rd {
                    let e = e.map_err(|e| Error::io(&dir, e))?;
                    m.insert(
                        e.file_name().to_string_lossy().into_owned(),
                        Location::File(e.path()),
                    );
                }
                m
            }
            Source::Zip(z) => {
                let m = z
                    .file_names()
                    .into_iter()
                    .filter_map(|(entry, name)| {
                        let file = name.strip_prefix("images/")?;
                        Some((file.to_string(), Location::Zip { store: 0, entry }))
                    })
                    .collect();
                zips.push(z);
                m
            }
        };
        let mut images = Vec::new();
        let mut classes = Vec::new();
        let mut splits: [Vec<EpisodeClass>; 3] = [vec![], vec![], vec![]];
        let mut seen: HashMap<String, Split> = HashMap::new();
        // image -> the split CSV and line that listed it first
        let mut listed: HashMap<String, (Split, usize)> = HashMap::new();
        for split in Split::ALL {
            let csv = root.join(format!("{split}.csv"));
            let rows = read_csv(&csv)?;
            let mut missing = Vec::new();
            let mut per_class: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for CsvRow { file, label, line } in rows {
                if let Some((prev, prev_line)) = listed.insert(file.clone(), (split, line)) {
                    return Err(Error::Csv {
                        path: csv,
                        reason: format!(
                            "line {line}: {file} is also listed in {prev}.csv line {prev_line}; an image must belong to one split"
                        ),
                    });
                }
                if !lookup.contains_key(&file) {
                    missing.push(file);
                    continue;
                }
                per_class.entry(label).or_default().push(file);
            }
            if !missing.is_empty() {
                return Err(Error::Csv {
                    path: csv,
                    reason: format!(
                        "{} file(s) listed are missing from {}: {}{}",
                        missing.len(),
                        root.join("images").display(),
                        missing[..missing.len().min(10)].join(", "),
                        if missing.len() > 10 { ", ..." } else { "" }
                    ),
                });
            }
            for (label, mut files) in per_class {
                if let Some(prev) = seen.insert(label.clone(), split) {
                    return Err(Error::Csv {
                        path: csv,
                        reason: format!(
                            "class {label} is also in {prev}.csv; splits must be disjoint"
                        ),
                    });
                }
                files.sort();
                let mut ids = Vec::with_capacity(files.len());
                for f in files {
                    ids.push(images.len());
                    images.push(ImageEntry {
                        id: format!("images/{f}"),
                        location: lookup[&f].clone(),
                    });
                }
                splits[split as usize].push(EpisodeClass {
                    base: classes.len(),
                    rotation: 0,
                });
                classes.push(ClassEntry {
                    name: label,
                    images: ids,
                });
            }
        }
        if options.rotations == Some(true) {
            for c in splits[0].clone() {
                for rotation in 1..4 {
                    splits[0].push(EpisodeClass {
                        base: c.base,
                        rotation,
                    });
                }
            }
        }
        let normalize = options.normalize.unwrap_or(true);
        let description = format!(
            "mini-ImageNet at {} ({} classes: {}/{}/{}, {} images), {}x{} RGB, {}",
            root.display(),
            classes.len(),
            splits[0].len(),
            splits[1].len(),
            splits[2].len(),
            images.len(),
            size,
            size,
            if normalize {
                "mean/std normalised"
            } else {
                "pixels in [0, 1]"
            }
        );
        Ok(Dataset::new(
            "mini-imagenet",
            description,
            ImageFormat {
                channels: 3,
                size,
                invert: false,
                mean: if normalize {
                    MEAN.iter().map(|m| m / 255.0).collect()
                } else {
                    vec![0.0; 3]
                },
                std: if normalize {
                    STD.iter().map(|s| s / 255.0).collect()
                } else {
                    vec![1.0; 3]
                },
            },
            images,
            classes,
            splits,
            zips,
        ))
    }
}

/// One row of a split CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvRow {
    pub file: String,
    pub label: String,
    /// The file line (the header is line 1).
    pub line: usize,
}

/// Read a Ravi-Larochelle CSV: columns `filename,label` (by header name,
/// [`crate::data::table`]), then one row per image; an image listed twice
/// is refused with both lines.
pub fn read_csv(path: &Path) -> Result<Vec<CsvRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::MissingData {
                what: "split CSV".into(),
                path: path.to_path_buf(),
                hint: "mini-ImageNet needs train.csv, val.csv and test.csv (header `filename,label`) beside images/".into(),
            }
        } else {
            Error::io(path, e)
        }
    })?;
    let mut rows = Vec::new();
    // file name -> line number where it was first listed
    let mut first_line: HashMap<String, usize> = HashMap::new();
    let mut duplicates = Vec::new();
    for row in crate::data::table::read(path, &text, &["filename", "label"])? {
        let n = row.line;
        let (f, l) = (&row.values[0], &row.values[1]);
        if f.is_empty() || l.is_empty() {
            return Err(Error::Csv {
                path: path.to_path_buf(),
                reason: format!("line {n}: an empty filename or label"),
            });
        }
        if let Some(first) = first_line.insert(f.to_string(), n) {
            first_line.insert(f.to_string(), first);
            duplicates.push(format!("line {n}: {f} (first listed on line {first})"));
            continue;
        }
        rows.push(CsvRow {
            file: f.to_string(),
            label: l.to_string(),
            line: n,
        });
    }
    if !duplicates.is_empty() {
        return Err(Error::Csv {
            path: path.to_path_buf(),
            reason: format!(
                "{} image(s) listed more than once (an image would appear twice in one episode):\n  {}",
                duplicates.len(),
                duplicates.join("\n  ")
            ),
        });
    }
    Ok(rows)
}
