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
