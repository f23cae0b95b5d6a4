//! Property test of the benchmark parser: random text and mutations of
//! every shipped benchmark never make it panic, and every error names a
//! field or a line of the file.

mod common;

use fewshot::spec::Benchmark;
use proptest::prelude::*;

/// The shipped benchmarks (reference setups included), as text.
fn shipped() -> Vec<String> {
    let root = common::repo_root().join("benchmarks");
    let mut v = Vec::new();
    for dir in [root.clone(), root.join("reference")] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                let text = std::fs::read_to_string(p).unwrap();
                // Few-shot benchmarks; optimisation ones have their own
                // shape (tests/optimisation.rs).
                if !text.contains("\ntask: optimisation") {
                    v.push(text);
                }
            }
        }
    }
    v.sort();
    assert!(v.len() >= 10);
    v
}

/// Values a mutation may put in place of a scalar: wrong types, limits,
/// non-finite numbers, empty collections, YAML oddities.
const VALUES: &[&str] = &[
    "-1",
    "0",
    "1",
    "2",
    "0.5",
    "-0.0",
    "1e308",
    "1e999",
    "-1e999",
    ".nan",
    ".inf",
    "-.inf",
    "18446744073709551616",
    "99999999999",
    "abc",
    "\"10\"",
    "''",
    "null",
    "~",
    "true",
    "[]",
    "{}",
    "[1, 2]",
    "{a: 1}",
    "&x 1",
    "*x",
    "!!binary aGk=",
    "\"\\u0000\"",
    "- x",
    ": :",
    "|",
    ">-",
];

/// Keys a mutation may add (real ones, misspelt ones, nested ones).
const KEYS: &[&str] = &[
    "name",
    "dataset",
    "episode",
    "ways",
    "shots",
    "queries",
    "seed",
    "budget",
    "minutes",
    "meta_steps",
    "episodes",
    "algorithms",
    "algorithm",
    "label",
    "inner_lr",
    "inner_iters",
    "steps",
    "learner",
    "hidden",
    "head",
    "batch_norm",
    "eval",
    "meta_train",
    "momentum",
    "transductive",
    "select",
    "data",
    "image_size",
    "normalize",
    "validate_every",
    "validate_every_minutes",
    "checkpoint_every",
    "test_episodes",
    "val_episodes",
    "typo_key",
];

#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    ReplaceValue(usize, usize),
    AddKey(usize, usize, usize),
    Indent(usize, bool),
    Truncate(usize),
    InsertByte(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::DeleteLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::ReplaceValue(a, b)),
        (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(a, b, c)| Mutation::AddKey(a, b, c)),
        (any::<usize>(), any::<bool>()).prop_map(|(a, b)| Mutation::Indent(a, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::InsertByte(a, b)),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    if lines.is_empty() {
        lines.push(String::new());
    }
    let n = lines.len();
    match *m {
        Mutation::DeleteLine(i) => {
            lines.remove(i % n);
        }
        Mutation::DuplicateLine(i) => {
            let l = lines[i % n].clone();
            lines.insert(i % n, l);
        }
        Mutation::SwapLines(a, b) => lines.swap(a % n, b % n),
        Mutation::ReplaceValue(i, v) => {
            // Replace what follows the first `: ` (or the first value in a
            // flow mapping) on the line.
            let l = &mut lines[i % n];
            let val = VALUES[v % VALUES.len()];
            if let Some(p) = l.find(": ") {
                let end = l[p + 2..]
                    .find([',', '}'])
                    .map(|e| p + 2 + e)
                    .unwrap_or(l.len());
                l.replace_range(p + 2..end, val);
            } else {
                l.push_str(&format!(": {val}"));
            }
        }
        Mutation::AddKey(i, k, v) => {
            let indent: String = lines[i % n].chars().take_while(|c| *c == ' ').collect();
            lines.insert(
                i % n,
                format!(
                    "{indent}{}: {}",
                    KEYS[k % KEYS.len()],
                    VALUES[v % VALUES.len()]
                ),
            );
        }
        Mutation::Indent(i, more) => {
            let l = &mut lines[i % n];
            if more {
                l.insert_str(0, "  ");
            } else if l.starts_with(' ') {
                l.remove(0);
            }
        }
        Mutation::Truncate(i) => {
            let t = lines.join("\n");
            let mut cut = i % (t.len() + 1);
            while !t.is_char_boundary(cut) {
                cut -= 1;
            }
            return t[..cut].to_string();
        }
        Mutation::InsertByte(i, b) => {
            let mut t = lines.join("\n");
            let mut at = i % (t.len() + 1);
            while !t.is_char_boundary(at) {
                at -= 1;
            }
            t.insert(at, char::from(b % 128));
            return t;
        }
    }
    lines.join("\n") + "\n"
}

/// Parse, turning a panic into a test failure that shows the input.
fn check(text: &str) -> Result<(), TestCaseError> {
    let r = std::panic::catch_unwind(|| Benchmark::parse(text, "bench.yaml"));
    let r = match r {
        Ok(r) => r,
        Err(_) => {
            return Err(TestCaseError::fail(format!(
                "the parser panicked on:\n{text}"
            )))
        }
    };
    if let Err(e) = r {
        let msg = e.to_string();
        prop_assert!(
            names_a_place(&msg),
            "the error names no field or line: {msg}\ninput:\n{text}"
        );
    }
    Ok(())
}

/// An error names its place: a line of the file (`line 3`), or a field
/// after the file name (`bench.yaml: algorithms[0].inner_lr: ...`, or a
/// field in backticks, or the field an `invalid value for` is about).
fn names_a_place(msg: &str) -> bool {
    if msg.contains("line ") {
        return true;
    }
    if let Some(rest) = msg.split("bench.yaml: ").nth(1) {
        // A path of plain names and indices; a key that is not a plain
        // name is quoted (`published."r eptile"`).
        let mut len = 0;
        let mut quoted = false;
        let mut escaped = false;
        for c in rest.chars() {
            if quoted {
                quoted = escaped || c != '"';
                escaped = !escaped && c == '\\';
            } else if c == '"' {
                quoted = true;
            } else if !(c.is_ascii_alphanumeric() || "_.[]-".contains(c)) {
                break;
            }
            len += c.len_utf8();
        }
        if len > 0 && !quoted && rest[len..].starts_with(':') {
            return true;
        }
    }
    msg.starts_with("invalid value for `") || msg.contains("field `")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_benchmarks_never_panic_and_errors_name_a_place(
        which in any::<usize>(),
        muts in prop::collection::vec(mutation(), 1..4),
    ) {
        let docs = shipped();
        let mut text = docs[which % docs.len()].clone();
        for m in &muts {
            text = apply(&text, m);
        }
        check(&text)?;
    }

    #[test]
    fn random_text_never_panics_and_errors_name_a_place(text in "[a-z_:{}\\[\\],\\- \n0-9.\"'#&*!|>]{0,200}") {
        check(&text)?;
    }
}

#[test]
fn every_shipped_benchmark_still_parses() {
    for t in shipped() {
        Benchmark::parse(&t, "bench.yaml").unwrap();
    }
}

/// Found by the mutation test above: `image_size: 0` made the parser panic
/// (an underflow computing the learner's feature map) and a huge size
/// overflowed the head's size. Both are errors naming the field now, for
/// every dataset, before anything else is computed from the size.
#[test]
fn image_sizes_out_of_range_are_named_errors() {
    for dataset in ["omniglot", "mini-imagenet"] {
        for size in ["0", "513", "18446744073709551615"] {
            let text = text_with(dataset, size);
            let e = std::panic::catch_unwind(|| Benchmark::parse(&text, "bench.yaml"))
                .unwrap_or_else(|_| panic!("{dataset} image_size {size}: the parser panicked"))
                .expect_err("an out-of-range image size");
            let msg = e.to_string();
            assert!(
                msg.contains("bench.yaml: data.image_size: must be 1..=512 pixels"),
                "{dataset} {size}: {msg}"
            );
        }
        // In range, the same text parses.
        let ok = text_with(dataset, "28");
        Benchmark::parse(&ok, "bench.yaml").unwrap_or_else(|e| panic!("{dataset}: {e}"));
    }
}

fn text_with(dataset: &str, size: &str) -> String {
    format!(
        "name: b\ndataset: {dataset}\ndata: {{image_size: {size}}}\nepisode: {{ways: 5, shots: 1, queries: 15}}\nbudget: {{meta_steps: 1}}\nalgorithms:\n  - {{algorithm: reptile}}\n"
    )
}

#[test]
fn a_key_that_is_no_plain_name_is_quoted_in_the_field_path() {
    // Found by the mutation test: a space inserted into a `published` key
    // gave `published.r eptile: ...`, a path that does not read as one.
    let text = shipped()
        .into_iter()
        .find(|t| t.contains("\n  reptile: {accuracy"))
        .expect("a shipped benchmark with a published Reptile number")
        .replacen("\n  reptile: {accuracy", "\n  r eptile: {accuracy", 1);
    let msg = Benchmark::parse(&text, "bench.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("bench.yaml: published.\"r eptile\": no algorithm is labelled `r eptile`"),
        "{msg}"
    );
    assert!(names_a_place(&msg), "{msg}");
    // Plain names stay as written.
    let text = text.replacen("\n  r eptile: {accuracy", "\n  reptil: {accuracy", 1);
    let msg = Benchmark::parse(&text, "bench.yaml")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("bench.yaml: published.reptil: "), "{msg}");
}

#[test]
fn the_task_kind_is_read_defaulted_and_recorded() {
    // Absent: episodic, and the resolved benchmark records it.
    let plain = text_with("omniglot", "28");
    let b = Benchmark::parse(&plain, "bench.yaml").unwrap();
    assert_eq!(b.task, fewshot::data::task::TaskKind::Episodic);
    let resolved = fewshot::spec::to_string(&b).unwrap();
    assert!(resolved.contains("task: episodic"), "{resolved}");
    // Written out: the same benchmark.
    let explicit = plain.replacen("dataset:", "task: episodic\ndataset:", 1);
    assert_eq!(
        Benchmark::parse(&explicit, "bench.yaml").unwrap().task,
        b.task
    );
    // A kind fewshot does not have is refused naming the field.
    let bad = plain.replacen("dataset:", "task: optimisation\ndataset:", 1);
    let msg = Benchmark::parse(&bad, "bench.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("task") && msg.contains("optimisation"),
        "{msg}"
    );
    assert!(names_a_place(&msg), "{msg}");
    // A resolved benchmark written before task kinds existed reads as
    // episodic.
    let old: String = resolved
        .lines()
        .filter(|l| !l.starts_with("task:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let back: Benchmark = fewshot::spec::from_str(&old, "resolved.yaml").unwrap();
    assert_eq!(back.task, fewshot::data::task::TaskKind::Episodic);
}
