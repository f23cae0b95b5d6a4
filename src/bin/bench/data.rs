//! `bench data`: fetch, verify and describe datasets; regenerate split files.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fewshot::data::{self, fetch, omniglot, DataOptions, Split};

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
            let (text, source) = match &checksums {
                Some(p) => (
                    std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?,
                    p.display().to_string(),
                ),
                None => (
                    fetch::OMNIGLOT_CHECKSUMS.to_string(),
                    "datasets/omniglot/checksums.txt".to_string(),
                ),
            };
            let manifest = fetch::parse_manifest(&text, &source)?;
            let dest = data_dir.join("omniglot");
            for r in fetch::fetch_all(&url_base, &manifest, &dest)? {
                match r {
                    fetch::Fetched::Present(p) => println!("present   {}", p.display()),
                    fetch::Fetched::Downloaded(p) => println!("verified  {}", p.display()),
                }
            }
            Ok(())
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
            let ds = data::open(&dataset, data_dir, &options)?;
            println!("{}", ds.description);
            println!(
                "{:<6} {:>8} {:>8} {:>8}",
                "split", "classes", "base", "images"
            );
            for s in Split::ALL {
                let cls = ds.split(s);
                let mut bases: Vec<usize> = cls.iter().map(|c| c.base).collect();
                bases.sort_unstable();
                bases.dedup();
                let imgs: usize = bases.iter().map(|&b| ds.classes[b].images.len()).sum();
                println!(
                    "{:<6} {:>8} {:>8} {:>8}",
                    s.name(),
                    cls.len(),
                    bases.len(),
                    imgs
                );
            }
            if decode {
                let t = std::time::Instant::now();
                ds.preload(None)?;
                println!(
                    "decoded {} images in {:.2} s",
                    ds.cached(),
                    t.elapsed().as_secs_f64()
                );
            }
            Ok(())
        }
        DataCommand::Splits { out } => {
            let root = data_dir.join("omniglot");
            let classes = omniglot::class_sets(&root)?;
            for scheme in ["vinyals", "lake"] {
                let a = omniglot::generate_split(scheme, &classes)?;
                let path = out.join(format!("{scheme}.txt"));
                fewshot::util::write_atomic(
                    &path,
                    omniglot::format_split_file(scheme, &a).as_bytes(),
                )?;
                println!("wrote {} ({} classes)", path.display(), a.len());
            }
            Ok(())
        }
    }
}
