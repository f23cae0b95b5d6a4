//! The reporting commands: `bench list` and `bench show`.

mod common;

#[test]
fn list_shows_every_shipped_benchmark_and_names_broken_files() {
    let out = common::bench(&["list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for name in std::fs::read_dir("benchmarks").unwrap().filter_map(|e| {
        let p = e.unwrap().path();
        (p.extension()? == "yaml").then(|| p.file_stem().unwrap().to_string_lossy().into_owned())
    }) {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("{name} not listed:\n{text}"));
        assert!(line.contains("fomaml") && line.contains("min"), "{line}");
    }
    assert!(text.contains("mini-imagenet 5w5s15q"), "{text}");
    // A broken file is listed with its error, and the exit status says so.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        "benchmarks/fewshot-5way1shot.yaml",
        dir.path().join("good.yaml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "name: bad\nepisode: {ways: 0}\n",
    )
    .unwrap();
    let d = dir.path().to_string_lossy().into_owned();
    let out = common::bench(&["list", "--dir", &d]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fewshot-5way1shot "), "{text}");
    assert!(
        text.contains("bad.yaml") && text.contains("error:"),
        "{text}"
    );
    common::assert_bench_fails(&out, &["1 benchmark file(s)"]);
}

#[test]
fn show_reprints_a_run_and_names_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("nothing").to_string_lossy().into_owned();
    let out = common::bench(&["show", &d]);
    common::assert_bench_fails(&out, &["results.json"]);
}
