//! `bench data`: fetch, verify and describe datasets; regenerate split files
//! (fewshot::data::fetch, fewshot::data::describe, fewshot::data::omniglot).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fewshot::data::{describe, fetch, omniglot, DataOptions};

#[derive(clap::Subcommand, Debug)]
pub enum DataCommand {
    /// Download a dataset into <data-dir>/<dataset> and verify its checksums.
    Fetch {
        /// Dataset to fetch (only omniglot can be fetched; see docs/data.md for mini-ImageNet)
        dataset: String,
        /// Base URL the files are served under
        #[arg(long, default_value = fetch::OMNIGLOT_URL_BASE)]
        url_base: String,
        /// Checksum manifest to verify against instead of the committed one
        #[arg(long)]
        checksums: Option<PathBuf>,
    },
    /// Index a dataset and print its splits (class and image counts).
    Info {
        /// omniglot, mini-imagenet or folder
        dataset: String,
        /// Omniglot class split: vinyals or lake
        #[arg(long)]
        split_scheme: Option<String>,
        /// Also decode every image (reports all undecodable files)
        #[arg(long)]
        decode: bool,
    },
    /// Regenerate the committed Omniglot split files from the data.
    Splits {
        /// Output folder
        #[arg(long, default_value = "datasets/omniglot")]
        out: PathBuf,
    },
}

pub fn run(data_dir: &Path, cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Fetch {
            dataset,
            url_base,
            checksums,
        } => {
            if dataset != "omniglot" {
                bail!("only `omniglot` can be fetched; mini-ImageNet must be obtained by hand (see docs/data.md)");
            }
            // The manifest given, with the name it is known by.
            let manifest = match &checksums {
                Some(p) => Some((
                    std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?,
                    p.display().to_string(),
                )),
                None => None,
            };
            let manifest = manifest.as_ref().map(|(t, s)| (t.as_str(), s.as_str()));
            for r in fetch::omniglot(&url_base, manifest, data_dir)? {
                match r {
                    fetch::Fetched::Present(p) => println!("present   {}", p.display()),
                    fetch::Fetched::Downloaded(p) => println!("verified  {}", p.display()),
                }
            }
        }
        DataCommand::Info {
            dataset,
            split_scheme,
            decode,
        } => {
            let options = DataOptions {
                split_scheme,
                ..Default::default()
            };
            let info = describe::info(&dataset, data_dir, &options)?;
            println!("{}", info.dataset.description);
            println!(
                "{:<6} {:>8} {:>8} {:>8}",
                "split", "classes", "base", "images"
            );
            for s in &info.splits {
                println!(
                    "{:<6} {:>8} {:>8} {:>8}",
                    s.split.name(),
                    s.classes,
                    s.bases,
                    s.images
                );
            }
            if decode {
                let d = info.decode()?;
                println!("decoded {} images in {:.2} s", d.images, d.seconds);
            }
        }
        DataCommand::Splits { out } => {
            omniglot::write_split_files(data_dir, &out, |path, classes| {
                println!("wrote {} ({classes} classes)", path.display())
            })?;
        }
    }
    Ok(())
}
