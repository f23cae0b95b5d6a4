//! Embeds the shipped benchmark files (`benchmarks/*.yaml`,
//! `benchmarks/reference/*.yaml`) in the library, so that an installed
//! `bench` finds them without the source tree (src/spec/file.rs).

use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("benchmarks");
    println!("cargo:rerun-if-changed=benchmarks");
    println!("cargo:rerun-if-changed=benchmarks/reference");
    let mut files = vec![];
    for sub in ["", "reference"] {
        let dir = root.join(sub);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "yaml") {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                let rel = if sub.is_empty() {
                    name
                } else {
                    format!("{sub}/{name}")
                };
                println!("cargo:rerun-if-changed={}", p.display());
                files.push((rel, p));
            }
        }
    }
    files.sort();
    git_commit();
    let mut out = String::from("/// The shipped benchmark files: (path under benchmarks/, contents).\npub const SHIPPED: &[(&str, &str)] = &[\n");
    for (rel, p) in &files {
        out.push_str(&format!(
            "    ({rel:?}, include_str!({:?})),\n",
            p.display().to_string()
        ));
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("shipped_benchmarks.rs");
    std::fs::write(dest, out).unwrap();
}

/// `FEWSHOT_GIT_COMMIT`: the commit the sources were built from, with
/// `-dirty` when tracked sources differ from it (empty outside a git
/// checkout), for the provenance of results (src/report/results.rs).
fn git_commit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_default();
    let dirty = !commit.is_empty()
        && git(&[
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            "src",
            "benchmarks",
            "build.rs",
            "Cargo.toml",
            "Cargo.lock",
        ])
        .is_some_and(|s| !s.is_empty());
    let value = if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    };
    println!("cargo:rustc-env=FEWSHOT_GIT_COMMIT={value}");
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        for f in ["HEAD", "refs/heads", "packed-refs"] {
            println!("cargo:rerun-if-changed={dir}/{f}");
        }
        for f in ["src", "Cargo.toml", "Cargo.lock"] {
            println!("cargo:rerun-if-changed={f}");
        }
    }
}
