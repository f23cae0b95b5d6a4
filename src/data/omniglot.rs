//! Omniglot (Lake et al., 2015) as users receive it.
//!
//! The official `images_background.zip` and `images_evaluation.zip` are read
//! directly (or the same trees extracted beside them): entries
//! `images_background/<Alphabet>/characterNN/IIII_DD.png`, 105x105, 1-bit.
//! A class is a character, named `<Alphabet>/characterNN` (alphabet names are
//! unique across the two sets). Images are resized to 28x28 by area
//! averaging (configurable) and inverted, so strokes are 1.0 and background
//! 0.0, as in the MAML reference code (`1.0 - image`).
//!
//! Class splits are fixed files committed in `datasets/omniglot/` and
//! compiled in; [`generate_split`] documents (and tests check) how they were
//! made:
//! - `vinyals`: the 1,623 characters in sorted order (background set first),
//!   shuffled by [`crate::rng::Rng`] seeded with [`VINYALS_SEED`]; the first
//!   1,200 are meta-train (of which positions 1,100..1,200 are held out as
//!   validation) and the remaining 423 are meta-test. This is the protocol of
//!   the MAML and Reptile numbers; their Python shuffles cannot be reproduced
//!   byte for byte, so the class draw differs from theirs but not its sizes.
//! - `lake`: background alphabets are meta-train, evaluation alphabets are
//!   meta-test; every sixth background alphabet in sorted order (5 of 30) is
//!   held out as validation.
//!
//! Rotation augmentation (on by default): each meta-train character also
//! appears rotated by 90, 180 and 270 degrees as three further classes
//! (1,100 x 4 = 4,400 meta-train classes under `vinyals`). Validation and
//! test classes are never rotated, so rotated classes never cross splits.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::{
    require_dir_or_zip, walk_files, ClassEntry, DataOptions, Dataset, EpisodeClass, ImageEntry,
    ImageFormat, Reader, Source, Split,
};
use crate::data::store::Location;
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Seed of the shuffle that defines the `vinyals` split.
pub const VINYALS_SEED: u64 = 1;
/// Meta-train characters (including validation) in the `vinyals` split.
pub const VINYALS_TRAIN: usize = 1200;
/// Of those, how many are held out for validation.
pub const VINYALS_VAL: usize = 100;

/// The two archive stems, in order.
pub const SETS: [&str; 2] = ["images_background", "images_evaluation"];

const VINYALS_FILE: &str = include_str!("../../datasets/omniglot/vinyals.txt");
const LAKE_FILE: &str = include_str!("../../datasets/omniglot/lake.txt");

/// The Omniglot reader.
pub struct Omniglot;

impl Reader for Omniglot {
    fn name(&self) -> &'static str {
        "omniglot"
    }

    fn channels(&self) -> usize {
        1
    }

    fn default_image_size(&self) -> usize {
        28
    }

    fn open(&self, root: &Path, options: &DataOptions) -> Result<Dataset> {
        if let Some(n) = options.normalize {
            return Err(Error::invalid(
                "data.normalize",
                n,
                "absent: only mini-ImageNet has a normalisation to switch",
            ));
        }
        let scheme = options.split_scheme.as_deref().unwrap_or("vinyals");
        let split_file = match scheme {
            "vinyals" => VINYALS_FILE,
            "lake" => LAKE_FILE,
            other => {
                return Err(Error::invalid(
                    "data.split_scheme",
                    other,
                    "for omniglot: vinyals or lake",
                ))
            }
        };
        let size = super::image_side(options, self.default_image_size())?;
        let rotations = options.rotations.unwrap_or(true);
        let (images, classes, zips) = index(root)?;
        let by_name: HashMap<&str, usize> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.as_str(), i))
            .collect();
        let assignment = parse_split_file(split_file)?;
        let mut splits: [Vec<EpisodeClass>; 3] = [vec![], vec![], vec![]];
        let mut missing = Vec::new();
        for (split, name) in &assignment {
            match by_name.get(name.as_str()) {
                Some(&base) => {
                    let turns = if *split == Split::Train && rotations {
                        4
                    } else {
                        1
                    };
                    for rotation in 0..turns {
                        splits[*split as usize].push(EpisodeClass { base, rotation });
                    }
                }
                None => missing.push(name.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(Error::MissingData {
                what: format!(
                    "{} of the {} characters of the `{scheme}` split (first: {})",
                    missing.len(),
                    assignment.len(),
                    missing[..missing.len().min(5)].join(", ")
                ),
                path: root.to_path_buf(),
                hint: "the Omniglot archives look incomplete; re-download them with `bench data fetch omniglot`".into(),
            });
        }
        let n_images = images.len();
        let description = format!(
            "Omniglot at {} ({} characters, {} images), split `{scheme}`, {}x{}, rotations {}",
            root.display(),
            classes.len(),
            n_images,
            size,
            size,
            if rotations { "on (meta-train)" } else { "off" }
        );
        Ok(Dataset::new(
            "omniglot",
            description,
            ImageFormat {
                channels: 1,
                size,
                invert: true,
                mean: vec![0.0],
                std: vec![1.0],
            },
            images,
            classes,
            splits,
            zips,
        ))
    }
}

/// Index both sets: images, classes (sorted by set then name), zip stores.
#[allow(clippy::type_complexity)]
pub fn index(
    root: &Path,
) -> Result<(
    Vec<ImageEntry>,
    Vec<ClassEntry>,
    Vec<super::store::ZipStore>,
)> {
    if !root.is_dir() {
        return Err(Error::MissingData {
            what: "Omniglot folder".into(),
            path: root.to_path_buf(),
            hint: "it should hold images_background.zip and images_evaluation.zip (or the extracted folders); run `bench data fetch omniglot`, or point --data-dir / FEWSHOT_DATA at the folder above `omniglot/`".into(),
        });
    }
    let mut images = Vec::new();
    let mut classes = Vec::new();
    let mut zips = Vec::new();
    for set in SETS {
        let source = require_dir_or_zip(
            root,
            set,
            "download it with `bench data fetch omniglot` (see docs/data.md)",
        )?;
        // (entry path, location) for every PNG of the set.
        let files: Vec<(String, Location)> = match source {
            Source::Dir(dir) => walk_files(root, &dir)?
                .into_iter()
                .map(|rel| {
                    let p = root.join(&rel);
                    (rel, Location::File(p))
                })
                .collect(),
            Source::Zip(z) => {
                let store = zips.len();
                let v = z
                    .file_names()
                    .into_iter()
                    .map(|(entry, name)| (name, Location::Zip { store, entry }))
                    .collect();
                zips.push(z);
                v
            }
        };
        let mut per_class: BTreeMap<String, Vec<(String, Location)>> = BTreeMap::new();
        for (path, loc) in files {
            let parts: Vec<&str> = path.split('/').collect();
            // <set>/<Alphabet>/<characterNN>/<file>.png
            if parts.len() != 4 || parts[0] != set || !parts[3].ends_with(".png") {
                if !path.ends_with(".DS_Store") && !path.contains("__MACOSX") {
                    tracing::warn!(entry = %path, "skipping unexpected entry in Omniglot {set}");
                }
                continue;
            }
            per_class
                .entry(format!("{}/{}", parts[1], parts[2]))
                .or_default()
                .push((path, loc));
        }
        if per_class.is_empty() {
            return Err(Error::MissingData {
                what: format!("Omniglot characters in {set}"),
                path: root.join(set),
                hint: format!("expected entries {set}/<Alphabet>/characterNN/*.png"),
            });
        }
        for (name, mut files) in per_class {
            files.sort_by(|a, b| a.0.cmp(&b.0));
            let mut ids = Vec::with_capacity(files.len());
            for (id, location) in files {
                ids.push(images.len());
                images.push(ImageEntry { id, location });
            }
            classes.push(ClassEntry { name, images: ids });
        }
    }
    Ok((images, classes, zips))
}

/// Parse a committed split file: lines `<split>\t<Alphabet>/characterNN`,
/// `#` comments allowed.
pub fn parse_split_file(text: &str) -> Result<Vec<(Split, String)>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (s, name) = line.split_once('\t').ok_or_else(|| Error::Config {
            source_name: format!("omniglot split file, line {}", n + 1),
            reason: format!("expected `<split>\\t<class>`, got {line:?}"),
        })?;
        out.push((s.parse()?, name.to_string()));
    }
    Ok(out)
}

/// Deterministically generate a split scheme from the sorted list of all
/// character names (background set first, as [`index`] orders them) and the
/// set each belongs to. This is how the committed files were made
/// (`bench data splits`); tests check the committed files against it.
pub fn generate_split(scheme: &str, classes: &[(usize, String)]) -> Result<Vec<(Split, String)>> {
    match scheme {
        "vinyals" => {
            let mut names: Vec<&String> = classes.iter().map(|(_, n)| n).collect();
            Rng::new(VINYALS_SEED).shuffle(&mut names);
            Ok(names
                .into_iter()
                .enumerate()
                .map(|(i, n)| {
                    let s = if i < VINYALS_TRAIN - VINYALS_VAL {
                        Split::Train
                    } else if i < VINYALS_TRAIN {
                        Split::Val
                    } else {
                        Split::Test
                    };
                    (s, n.clone())
                })
                .collect())
        }
        "lake" => {
            let mut bg_alphabets: Vec<&str> = classes
                .iter()
                .filter(|(set, _)| *set == 0)
                .map(|(_, n)| n.split('/').next().unwrap_or(n))
                .collect();
            bg_alphabets.dedup();
            let val: Vec<&str> = bg_alphabets.iter().copied().skip(5).step_by(6).collect();
            Ok(classes
                .iter()
                .map(|(set, n)| {
                    let alphabet = n.split('/').next().unwrap_or(n);
                    let s = if *set == 1 {
                        Split::Test
                    } else if val.contains(&alphabet) {
                        Split::Val
                    } else {
                        Split::Train
                    };
                    (s, n.clone())
                })
                .collect())
        }
        other => Err(Error::invalid("split scheme", other, "vinyals or lake")),
    }
}

/// Render a split assignment in the committed file format.
pub fn format_split_file(scheme: &str, assignment: &[(Split, String)]) -> String {
    let mut out = format!(
        "# Omniglot `{scheme}` class split, generated by `bench data splits` (see src/data/omniglot.rs).\n# <split>\\t<Alphabet>/characterNN\n"
    );
    for (s, n) in assignment {
        out.push_str(&format!("{s}\t{n}\n"));
    }
    out
}

/// Regenerate the committed split files from the data in
/// `<data_dir>/omniglot`: `<out>/vinyals.txt`, then `<out>/lake.txt`, each
/// written atomically and handed to `wrote` with its class count as soon
/// as it is written.
pub fn write_split_files(
    data_dir: &Path,
    out: &Path,
    mut wrote: impl FnMut(&Path, usize),
) -> Result<()> {
    let classes = class_sets(&data_dir.join("omniglot"))?;
    for scheme in ["vinyals", "lake"] {
        let a = generate_split(scheme, &classes)?;
        let path = out.join(format!("{scheme}.txt"));
        crate::util::write_atomic(&path, format_split_file(scheme, &a).as_bytes())?;
        wrote(&path, a.len());
    }
    Ok(())
}

/// Character names with their set (0 background, 1 evaluation), in index order.
pub fn class_sets(root: &Path) -> Result<Vec<(usize, String)>> {
    let (images, classes, _) = index(root)?;
    Ok(classes
        .iter()
        .map(|c| {
            let set = usize::from(!images[c.images[0]].id.starts_with(SETS[0]));
            (set, c.name.clone())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_split_files_parse_and_have_documented_sizes() {
        let v = parse_split_file(VINYALS_FILE).unwrap();
        assert_eq!(v.len(), 1623);
        let count = |s| v.iter().filter(|(x, _)| *x == s).count();
        assert_eq!(count(Split::Train), 1100);
        assert_eq!(count(Split::Val), 100);
        assert_eq!(count(Split::Test), 423);
        let l = parse_split_file(LAKE_FILE).unwrap();
        assert_eq!(l.len(), 1623);
        let count = |s| l.iter().filter(|(x, _)| *x == s).count();
        assert_eq!(count(Split::Test), 659);
        assert_eq!(count(Split::Train) + count(Split::Val), 964);
    }
}
