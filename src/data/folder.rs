//! A generic class-per-folder reader, for users who bring their own data.
//!
//! Layout: `<root>/<split>/<class>/<image>` with `<split>` among `train`,
//! `val`, `test` (at least one must exist). Every file below a class folder
//! is an image of that class (hidden files excepted), so a stray non-image
//! file is reported, not ignored. Images are decoded as RGB, resized to
//! `image_size` (default 84) and scaled to [0, 1].

use std::collections::BTreeMap;
use std::path::Path;

use super::{
    walk_files, ClassEntry, DataOptions, Dataset, EpisodeClass, ImageEntry, ImageFormat, Reader,
    Split,
};
use crate::data::store::Location;
use crate::error::{Error, Result};

/// The class-per-folder reader.
pub struct Folder;

impl Reader for Folder {
    fn name(&self) -> &'static str {
        "folder"
    }

    fn channels(&self) -> usize {
        3
    }

    fn default_image_size(&self) -> usize {
        84
    }

    fn open(&self, root: &Path, options: &DataOptions) -> Result<Dataset> {
        if let Some(n) = options.normalize {
            return Err(Error::invalid(
                "data.normalize",
                n,
                "absent: only mini-ImageNet has a normalisation to switch",
            ));
        }
        let size = super::image_side(options, self.default_image_size())?;
        if !Split::ALL.iter().any(|s| root.join(s.name()).is_dir()) {
            return Err(Error::MissingData {
                what: "split folders train/, val/ or test/".into(),
                path: root.to_path_buf(),
                hint: "the folder reader expects <root>/<split>/<class>/<image>".into(),
            });
        }
        let mut images = Vec::new();
        let mut classes = Vec::new();
        let mut splits: [Vec<EpisodeClass>; 3] = [vec![], vec![], vec![]];
        for split in Split::ALL {
            let dir = root.join(split.name());
            if !dir.is_dir() {
                continue;
            }
            let mut per_class: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for rel in walk_files(&dir, &dir)? {
                let parts: Vec<&str> = rel.split('/').collect();
                if parts.iter().any(|p| p.starts_with('.')) {
                    continue;
                }
                if parts.len() != 2 {
                    tracing::warn!(file = %dir.join(&rel).display(), "not in a class folder; skipped");
                    continue;
                }
                per_class.entry(parts[0].to_string()).or_default().push(rel);
            }
            for (name, files) in per_class {
                let mut ids = Vec::new();
                for rel in files {
                    ids.push(images.len());
                    images.push(ImageEntry {
                        id: format!("{split}/{rel}"),
                        location: Location::File(dir.join(&rel)),
                    });
                }
                let base = classes.len();
                classes.push(ClassEntry {
                    name: format!("{split}/{name}"),
                    images: ids,
                });
                let turns = if split == Split::Train && options.rotations == Some(true) {
                    4
                } else {
                    1
                };
                for rotation in 0..turns {
                    splits[split as usize].push(EpisodeClass { base, rotation });
                }
            }
        }
        let description = format!(
            "class folders at {} ({} classes, {} images), {size}x{size} RGB",
            root.display(),
            classes.len(),
            images.len()
        );
        Ok(Dataset::new(
            "folder",
            description,
            ImageFormat {
                channels: 3,
                size,
                invert: false,
                mean: vec![0.0; 3],
                std: vec![1.0; 3],
            },
            images,
            classes,
            splits,
            vec![],
        ))
    }
}
