//! Runs that never lose work, tried on the real binary: run folders are
//! neither overwritten nor resumed by mistake, checkpoints survive torn and
//! corrupt files, bad data is found before training, and every error says
//! once what is wrong and where.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

/// A tiny Omniglot benchmark (8-channel learner, a few meta-steps): about
/// a second for all three algorithms.
const TINY: &str = "name: tiny
dataset: omniglot
episode: {ways: 5, shots: 1, queries: 5}
test_episodes: 4
val_episodes: 2
budget: {meta_steps: 6}
validate_every: 3
checkpoint_every: 2
learner: {hidden: 8}
algorithms:
  - {algorithm: maml, first_order: true, meta_batch: 2}
  - {algorithm: reptile, inner_iters: 2, eval_inner_iters: 2}
  - {algorithm: meta-lstm, steps: 2}
";

struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Env {
            tmp: common::tempdir(),
        }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }
    /// Write a benchmark file; returns its path.
    fn yaml(&self, name: &str, text: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    }
    /// The tiny benchmark run into a new folder `r` with `extra` arguments
    /// (asserted to succeed); returns the benchmark file and the folder.
    fn started(&self, extra: &[&str]) -> (String, PathBuf) {
        let y = self.yaml("tiny.yaml", TINY);
        let r = self.path("r");
        let mut a = vec![y.as_str(), "--run-dir", r.to_str().unwrap()];
        a.extend_from_slice(extra);
        common::assert_bench_ok(&self.run(&a));
        (y, r)
    }
    /// `bench --data-dir <shared> run <args>`.
    fn run(&self, args: &[&str]) -> Output {
        self.run_with_data(&common::shared_datasets(), args)
    }
    fn run_with_data(&self, data: &Path, args: &[&str]) -> Output {
        let mut v = vec!["--data-dir", data.to_str().unwrap(), "run"];
        v.extend_from_slice(args);
        common::bench(&v)
    }
}

fn results(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap()
}

fn labels(dir: &Path) -> Vec<(String, u64)> {
    results(dir)["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["label"].as_str().unwrap().to_string(),
                r["meta_steps"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn checkpoints(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("checkpoints"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn an_existing_run_is_never_overwritten_without_resume_or_force() {
    let e = Env::new();
    let (y, r) = e.started(&[]);
    let rs = r.to_str().unwrap();
    let before = std::fs::read(r.join("fomaml/checkpoints/step-0000000006.safetensors")).unwrap();

    // Case 1: the same folder again, without --resume: refused, untouched.
    let err = common::assert_bench_fails(
        &e.run(&[&y, "--run-dir", rs]),
        &[
            "already holds a run",
            "--resume",
            "--force",
            "fomaml/ (checkpoint at meta-step 6)",
        ],
    );
    assert!(
        !err.contains("\x1b["),
        "no colour codes off a terminal:\n{err}"
    );
    assert_eq!(
        std::fs::read(r.join("fomaml/checkpoints/step-0000000006.safetensors")).unwrap(),
        before
    );

    // --force starts over, saying what it discards.
    let out = e.run(&[
        &y,
        "--run-dir",
        rs,
        "--force",
        "--only",
        "reptile",
        "--meta-steps",
        "2",
    ]);
    common::assert_bench_ok(&out);
    let err = stderr(&out);
    for n in [
        "--force: discarding",
        "results.json with 3 row(s)",
        "fomaml/ (checkpoint at meta-step 6)",
    ] {
        assert!(err.contains(n), "{n}:\n{err}");
    }
    assert!(!r.join("fomaml").exists() && !r.join("meta-lstm").exists());
    assert_eq!(labels(&r), vec![("reptile".to_string(), 2)]);

    // --resume and --force together make no sense.
    common::assert_bench_fails(
        &e.run(&[&y, "--run-dir", rs, "--force", "--resume"]),
        &["--force", "--resume"],
    );

    // A folder holding something else is never written into, not even with --force.
    let junk = e.path("junk");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("notes.txt"), "mine").unwrap();
    for extra in [None, Some("--force")] {
        let mut a = vec![y.as_str(), "--run-dir", junk.to_str().unwrap()];
        a.extend(extra);
        common::assert_bench_fails(&e.run(&a), &["notes.txt", "holds no fewshot run"]);
    }
    assert_eq!(std::fs::read_dir(&junk).unwrap().count(), 1);
}

#[test]
fn resume_with_nothing_to_resume_is_an_error() {
    // Case 2: a misspelt or empty folder.
    let e = Env::new();
    let y = e.yaml("tiny.yaml", TINY);
    let missing = e.path("no-such-run");
    common::assert_bench_fails(
        &e.run(&[&y, "--run-dir", missing.to_str().unwrap(), "--resume"]),
        &["no-such-run", "does not exist", "nothing to resume"],
    );
    assert!(!missing.exists());
    let empty = e.path("empty");
    std::fs::create_dir(&empty).unwrap();
    common::assert_bench_fails(
        &e.run(&[&y, "--run-dir", empty.to_str().unwrap(), "--resume"]),
        &["holds no run to resume"],
    );
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
}

#[test]
fn resume_after_a_configuration_change_is_refused_naming_the_fields() {
    // Case 3.
    let e = Env::new();
    let (y, r) = e.started(&[]);
    let rs = r.to_str().unwrap();
    let resolved = std::fs::read_to_string(r.join("resolved.yaml")).unwrap();
    let changed = e.yaml(
        "changed.yaml",
        &TINY
            .replace("inner_iters: 2, eval", "inner_iters: 3, eval")
            .replace("queries: 5", "queries: 4"),
    );
    common::assert_bench_fails(
        &e.run(&[&changed, "--run-dir", rs, "--resume"]),
        &[
            "different configuration",
            "algorithms[reptile].config.inner_iters: was 2, now 3",
            "episode.queries: was 5, now 4",
        ],
    );
    assert_eq!(
        std::fs::read_to_string(r.join("resolved.yaml")).unwrap(),
        resolved
    );

    // Every checkpoint carries its configuration: one copied into another
    // run's folder is refused too.
    let other = e.path("other");
    common::assert_bench_ok(&e.run(&[
        &changed,
        "--run-dir",
        other.to_str().unwrap(),
        "--only",
        "fomaml",
    ]));
    std::fs::remove_dir_all(other.join("fomaml")).unwrap();
    copy_dir(&r.join("fomaml"), &other.join("fomaml"));
    common::assert_bench_fails(
        &e.run(&[
            &changed,
            "--run-dir",
            other.to_str().unwrap(),
            "--resume",
            "--only",
            "fomaml",
            "--meta-steps",
            "9",
        ]),
        &[
            "fomaml/checkpoints/step-0000000006.safetensors",
            "different configuration",
            "episode.queries: was 5, now 4",
        ],
    );

    // The budget may grow where no schedule spans it (first-order MAML;
    // Reptile's annealing refuses, tests/resume_budget.rs): training
    // continues where it stopped.
    common::assert_bench_ok(&e.run(&[
        &y,
        "--run-dir",
        rs,
        "--resume",
        "--meta-steps",
        "8",
        "--only",
        "fomaml",
    ]));
    assert!(checkpoints(&r.join("fomaml")).contains(&"step-0000000008.safetensors".to_string()));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn only_merges_its_rows_into_the_existing_results() {
    // Case 4.
    let e = Env::new();
    let (y, r) = e.started(&["--only", "meta-lstm"]);
    let rs = r.to_str().unwrap();
    let resolved = std::fs::read_to_string(r.join("resolved.yaml")).unwrap();
    assert!(
        resolved.contains("fomaml") && resolved.contains("reptile"),
        "{resolved}"
    );
    let table =
        common::assert_bench_ok(&e.run(&[&y, "--run-dir", rs, "--resume", "--only", "fomaml"]));
    assert!(
        table.contains("fomaml") && table.contains("meta-lstm"),
        "{table}"
    );
    assert_eq!(
        labels(&r),
        vec![("fomaml".to_string(), 6), ("meta-lstm".to_string(), 6)],
        "rows in the benchmark's order"
    );
    assert_eq!(
        std::fs::read_to_string(r.join("resolved.yaml")).unwrap(),
        resolved
    );
    // A finished, evaluated algorithm is kept as it is on a later resume.
    let ep = std::fs::read(r.join("meta-lstm/test_episodes.csv")).unwrap();
    common::assert_bench_ok(&e.run(&[&y, "--run-dir", rs, "--resume"]));
    assert_eq!(labels(&r).len(), 3);
    assert_eq!(
        std::fs::read(r.join("meta-lstm/test_episodes.csv")).unwrap(),
        ep
    );
}

#[test]
fn torn_or_corrupt_checkpoints_fall_back_to_the_previous_one() {
    // Case 5: the newest checkpoint torn (truncated) or corrupt (one byte
    // flipped), and temporary files left by a kill.
    let e = Env::new();
    let only = ["--only", "fomaml"];
    let (y, r) = e.started(&[only[0], only[1], "--meta-steps", "4"]);
    let rs = r.to_str().unwrap();
    let ck = r.join("fomaml/checkpoints");
    assert_eq!(
        checkpoints(&r.join("fomaml")),
        vec!["step-0000000002.safetensors", "step-0000000004.safetensors"]
    );
    let newest = ck.join("step-0000000004.safetensors");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(ck.join(".step-0000000006.tmp-12345"), b"half a checkpoint").unwrap();
    std::fs::write(r.join(".results.json.tmp999"), b"{").unwrap();
    let out = e.run(&[&y, "--run-dir", rs, "--resume", only[0], only[1]]);
    common::assert_bench_ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains("step-0000000004.safetensors is unreadable")
            && err.contains("resuming from the previous one")
            && err.contains("step-0000000002.safetensors"),
        "{err}"
    );
    assert_eq!(
        checkpoints(&r.join("fomaml")),
        vec![
            "step-0000000004.safetensors",
            "step-0000000004.safetensors.unreadable",
            "step-0000000006.safetensors",
        ],
        "torn file set aside, temp files removed, the run went on from step 2"
    );
    assert!(!r.join(".results.json.tmp999").exists());
    assert_eq!(labels(&r), vec![("fomaml".to_string(), 6)]);

    // A flipped byte in the tensor data is caught by the checksum.
    let mut bytes = std::fs::read(ck.join("step-0000000006.safetensors")).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    std::fs::write(ck.join("step-0000000006.safetensors"), &bytes).unwrap();
    let out = e.run(&[
        &y,
        "--run-dir",
        rs,
        "--resume",
        only[0],
        only[1],
        "--meta-steps",
        "7",
    ]);
    common::assert_bench_ok(&out);
    assert!(
        stderr(&out).contains("does not match its checksum"),
        "{}",
        stderr(&out)
    );

    // With nothing readable left the error names every file and the way out.
    for f in checkpoints(&r.join("fomaml")) {
        if f.ends_with(".safetensors") {
            std::fs::write(ck.join(&f), b"").unwrap();
        }
    }
    common::assert_bench_fails(
        &e.run(&[
            &y,
            "--run-dir",
            rs,
            "--resume",
            only[0],
            only[1],
            "--meta-steps",
            "8",
        ]),
        &[
            "no readable checkpoint",
            "step-0000000007.safetensors",
            "--force",
        ],
    );
}

#[test]
fn bad_test_images_are_all_reported_before_any_training() {
    // Case 6: a class-per-folder dataset with two corrupt test images and a
    // 30-minute budget: the error comes in seconds and nothing is written.
    let e = Env::new();
    let data = e.path("data");
    common::write_folder_dataset(
        &data,
        &[
            ("train", "a", 4),
            ("train", "b", 4),
            ("val", "c", 4),
            ("val", "d", 4),
            ("test", "e", 4),
            ("test", "f", 4),
        ],
        16,
    );
    std::fs::write(data.join("test/e/001.png"), b"not a png").unwrap();
    std::fs::write(data.join("test/f/003.png"), b"").unwrap();
    let y = e.yaml(
        "folder.yaml",
        "name: folder
dataset: folder
data: {image_size: 16}
episode: {ways: 2, shots: 1, queries: 1}
budget: {minutes: 30}
algorithms:
  - {algorithm: reptile}
",
    );
    let r = e.path("r");
    let t = std::time::Instant::now();
    common::assert_bench_fails(
        &e.run_with_data(&data, &[&y, "--run-dir", r.to_str().unwrap()]),
        &[
            "2 image file(s) could not be decoded",
            "e/001.png",
            "f/003.png",
        ],
    );
    assert!(t.elapsed().as_secs() < 60, "took {:?}", t.elapsed());
    assert!(!r.exists(), "a refused run writes nothing");
}

#[test]
fn a_csv_listing_an_image_twice_is_refused_naming_the_lines() {
    // Case 7.
    let e = Env::new();
    let data = e.path("data");
    let root = data.join("mini-imagenet");
    let rows = common::write_mini_imagenet(&root, [2, 2, 2], 3);
    let mut test = rows[2].clone();
    test.push(test[1].clone());
    common::write_csv(&root.join("test.csv"), "filename,label", &test);
    let y = e.yaml(
        "mini.yaml",
        "name: mini
dataset: mini-imagenet
data: {image_size: 16}
episode: {ways: 2, shots: 1, queries: 1}
budget: {meta_steps: 1}
algorithms:
  - {algorithm: reptile}
",
    );
    let dup = &test[1].0;
    common::assert_bench_fails(
        &e.run_with_data(&data, &[&y, "--run-dir", e.path("r").to_str().unwrap()]),
        &[
            "test.csv",
            "listed more than once",
            &format!("line 8: {dup} (first listed on line 3)"),
        ],
    );
}

#[test]
fn labels_that_would_leave_the_run_folder_are_refused() {
    // Case 8.
    let e = Env::new();
    for bad in [
        "../../x",
        "a/b",
        ".hidden",
        "",
        "results.json",
        "Resolved.yaml",
    ] {
        let y = e.yaml(
            "l.yaml",
            &TINY.replace(
                "{algorithm: meta-lstm, steps: 2}",
                &format!("{{algorithm: meta-lstm, steps: 2, label: {bad:?}}}"),
            ),
        );
        common::assert_bench_fails(
            &e.run(&[&y, "--run-dir", e.path("r").to_str().unwrap()]),
            &["algorithms[2].label"],
        );
        assert!(!e.path("r").exists() && !e.tmp.path().parent().unwrap().join("x").exists());
    }
    // The benchmark's name names the default run folder runs/<name>/.
    let y = e.yaml("n.yaml", &TINY.replace("name: tiny", "name: ../../escaped"));
    common::assert_bench_fails(&e.run(&[&y]), &["n.yaml: name", "not a usable name"]);
}

#[test]
fn errors_are_said_once_and_name_the_file_or_field() {
    // Case 9.
    let e = Env::new();
    let y = e.yaml("tiny.yaml", TINY);
    // An I/O error's cause appears once.
    std::fs::write(e.path("file"), "").unwrap();
    let err = common::assert_bench_fails(
        &e.run(&[&y, "--run-dir", e.path("file/run").to_str().unwrap()]),
        &["file/run"],
    );
    assert_eq!(err.matches("(os error").count(), 1, "{err}");
    // A field inside an algorithm entry is named.
    let bad = e.yaml(
        "bad.yaml",
        &TINY.replace("inner_iters: 2,", "inner_iters: \"10\","),
    );
    common::assert_bench_fails(
        &e.run(&[&bad, "--run-dir", e.path("r").to_str().unwrap()]),
        &["bad.yaml", "algorithms[1].inner_iters", "invalid type"],
    );
    // Budgets are finite, on the command line and in the file.
    let err = common::assert_bench_fails(
        &e.run(&[
            &y,
            "--run-dir",
            e.path("r").to_str().unwrap(),
            "--minutes",
            "inf",
        ]),
        &["--minutes", "finite"],
    );
    assert!(!err.contains("Some("), "{err}");
    let inf = e.yaml(
        "inf.yaml",
        &TINY.replace("budget: {meta_steps: 6}", "budget: {minutes: .inf}"),
    );
    common::assert_bench_fails(
        &e.run(&[&inf, "--run-dir", e.path("r").to_str().unwrap()]),
        &["budget.minutes"],
    );
    assert!(!e.path("r").exists());
    // One test episode has no interval: n/a, and null in results.json.
    let r = e.path("one");
    let table = common::assert_bench_ok(&e.run(&[
        &y,
        "--run-dir",
        r.to_str().unwrap(),
        "--only",
        "fomaml",
        "--test-episodes",
        "1",
    ]));
    assert!(
        table.contains("+/- n/a") && !table.contains("NaN"),
        "{table}"
    );
    assert!(results(&r)["results"][0]["ci95"].is_null());
}

#[test]
fn a_checkpoint_of_the_old_two_file_format_is_not_silently_ignored() {
    let e = Env::new();
    let (y, r) = e.started(&["--only", "fomaml"]);
    let rs = r.to_str().unwrap();
    std::fs::remove_dir_all(r.join("fomaml/checkpoints")).unwrap();
    std::fs::write(r.join("fomaml/checkpoint.json"), "{}").unwrap();
    std::fs::write(r.join("fomaml/checkpoint.safetensors"), "").unwrap();
    common::assert_bench_fails(
        &e.run(&[&y, "--run-dir", rs, "--resume", "--only", "fomaml"]),
        &["checkpoint.json", "cannot continue", "--force"],
    );
}

#[test]
fn a_second_run_on_the_same_folder_is_refused_while_the_first_runs() {
    use std::io::{BufRead, BufReader};
    let e = Env::new();
    let y = e.yaml("tiny.yaml", TINY);
    let r = e.path("r");
    let rs = r.to_str().unwrap();
    let data = common::shared_datasets();
    let args = [
        "--data-dir",
        data.to_str().unwrap(),
        "run",
        &y,
        "--run-dir",
        rs,
        "--only",
        "fomaml",
        "--meta-steps",
        "2",
    ];
    // The first run pauses inside its checkpoint write (test hook).
    let mut first = common::bench_cmd(&args)
        .env("FEWSHOT_TEST_CHECKPOINT_DELAY_MS", "1500")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(first.stderr.take().unwrap()).lines();
    loop {
        let l = lines.next().expect("the first run ended early").unwrap();
        if l.starts_with("fewshot-test: checkpoint half-written") {
            break;
        }
    }
    for mode in ["--resume", "--force"] {
        common::assert_bench_fails(
            &e.run(&[&y, "--run-dir", rs, "--only", "fomaml", mode]),
            &["in use by another `bench run`"],
        );
    }
    std::thread::spawn(move || lines.for_each(drop));
    assert!(
        first.wait().unwrap().success(),
        "the first run was disturbed"
    );
    assert_eq!(labels(&r), vec![("fomaml".to_string(), 2)]);
}

#[test]
fn parts_of_a_run_without_its_resolved_yaml_need_force() {
    // What a --force killed midway could leave: algorithm folders and
    // results, no resolved.yaml. Only --force takes such a folder.
    let e = Env::new();
    let (y, r) = e.started(&["--only", "fomaml", "--meta-steps", "2"]);
    let rs = r.to_str().unwrap();
    std::fs::remove_file(r.join("resolved.yaml")).unwrap();
    for extra in [None, Some("--resume")] {
        let mut a = vec![y.as_str(), "--run-dir", rs];
        a.extend(extra);
        common::assert_bench_fails(&e.run(&a), &["holds parts of a run", "--force"]);
    }
    let out = e.run(&[
        &y,
        "--run-dir",
        rs,
        "--force",
        "--only",
        "reptile",
        "--meta-steps",
        "2",
    ]);
    common::assert_bench_ok(&out);
    assert!(
        stderr(&out).contains("fomaml/ (checkpoint at meta-step 2)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(labels(&r), vec![("reptile".to_string(), 2)]);
    // A run folder that is a file is refused before any work.
    let f = e.path("afile");
    std::fs::write(&f, "x").unwrap();
    common::assert_bench_fails(
        &e.run(&[&y, "--run-dir", f.to_str().unwrap()]),
        &["is a file, not a folder"],
    );
}

#[test]
fn only_fewshots_own_temporary_files_are_cleaned_up() {
    let e = Env::new();
    let (y, r) = e.started(&["--only", "fomaml", "--meta-steps", "2"]);
    let rs = r.to_str().unwrap();
    std::fs::write(r.join(".draft.tmp"), "mine").unwrap();
    std::fs::create_dir(r.join(".tmp")).unwrap();
    std::fs::write(r.join(".results.json.tmp4242"), "{").unwrap();
    common::assert_bench_ok(&e.run(&[
        &y,
        "--run-dir",
        rs,
        "--resume",
        "--only",
        "fomaml",
        "--meta-steps",
        "4",
    ]));
    assert_eq!(
        std::fs::read_to_string(r.join(".draft.tmp")).unwrap(),
        "mine"
    );
    assert!(r.join(".tmp").is_dir() && !r.join(".results.json.tmp4242").exists());
    // A folder holding only a user's file is not empty.
    let u = e.path("u");
    std::fs::create_dir(&u).unwrap();
    std::fs::write(u.join(".draft.tmp"), "mine").unwrap();
    common::assert_bench_fails(
        &e.run(&[&y, "--run-dir", u.to_str().unwrap()]),
        &[".draft.tmp", "holds no fewshot run"],
    );
}
