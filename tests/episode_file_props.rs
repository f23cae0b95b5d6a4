//! Property test of the episode-file reader (`bench eval --episodes`):
//! random text and mutations of a valid file never make it panic, and every
//! error names the file and a line; the real binary gives the same answer.

mod common;

use fewshot::data::episode_file::EpisodeFile;
use proptest::prelude::*;

/// A valid 3-way 1-shot file of two episodes, 2 queries per class.
fn valid() -> String {
    let mut s = String::from("episode,role,label,image\n");
    for e in 0..2 {
        for c in 0..3 {
            s.push_str(&format!("{e},support,{c},img/e{e}c{c}s.png\n"));
            for q in 0..2 {
                s.push_str(&format!("{e},query,{c},img/e{e}c{c}q{q}.png\n"));
            }
        }
    }
    s
}

/// What a mutation may insert: separators, quotes, line ends, a BOM,
/// digits, roles, labels out of range, non-UTF-8 bytes.
const PIECES: &[&[u8]] = &[
    b",",
    b"\"",
    b"\n",
    b"\r\n",
    b"\r",
    "\u{feff}".as_bytes(),
    b"0",
    b"1",
    b"7",
    b"-1",
    b"99999999999999999999",
    b"support",
    b"query",
    b"train",
    b" ",
    b"img/e0c0s.png",
    b"episode,role,label,image\n",
    b"\xff\xfe",
    b"",
];

#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize, usize),
    Insert(usize, usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..12).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (any::<usize>(), 0..PIECES.len()).prop_map(|(a, k)| Mutation::Insert(a, k)),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

fn apply(mut text: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        match *m {
            Mutation::Delete(a, n) if !text.is_empty() => {
                let a = a % text.len();
                let b = (a + n).min(text.len());
                text.drain(a..b);
            }
            Mutation::Insert(a, k) => {
                let a = a % (text.len() + 1);
                text.splice(a..a, PIECES[k].iter().copied());
            }
            Mutation::DuplicateLine(a) | Mutation::SwapLines(a, _) => {
                let mut lines: Vec<Vec<u8>> =
                    text.split(|&b| b == b'\n').map(|l| l.to_vec()).collect();
                let n = lines.len();
                match *m {
                    Mutation::DuplicateLine(_) => {
                        let l = lines[a % n].clone();
                        lines.insert(a % n, l);
                    }
                    Mutation::SwapLines(_, b) => lines.swap(a % n, b % n),
                    _ => unreachable!(),
                }
                text = lines.join(&b'\n');
            }
            _ => {}
        }
    }
    text
}

/// Read `bytes` as an episode file: Ok, or an error naming file and line.
fn check(bytes: &[u8]) -> Result<(), String> {
    let dir = common::tempdir();
    let path = dir.path().join("eps.csv");
    std::fs::write(&path, bytes).unwrap();
    let r = std::panic::catch_unwind(|| EpisodeFile::read(&path));
    match r {
        Err(_) => Err(format!("panicked on {:?}", String::from_utf8_lossy(bytes))),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            let m = e.to_string();
            if m.contains("eps.csv") && m.contains("line ") {
                Ok(())
            } else {
                Err(format!(
                    "error without file and line: {m}\nfor {:?}",
                    String::from_utf8_lossy(bytes)
                ))
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn mutated_files_never_panic_and_errors_name_a_line(ms in prop::collection::vec(mutation(), 1..5)) {
        let bytes = apply(valid().into_bytes(), &ms);
        if let Err(e) = check(&bytes) {
            prop_assert!(false, "{}", e);
        }
    }

    #[test]
    fn random_text_never_panics_and_errors_name_a_line(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut b = b"episode,role,label,image\n".to_vec();
        b.extend(bytes);
        if let Err(e) = check(&b) {
            prop_assert!(false, "{}", e);
        }
    }
}

#[test]
fn the_valid_file_reads_and_the_binary_names_the_line_of_a_bad_one() {
    check(valid().as_bytes()).unwrap();
    // Through `bench eval --episodes`: the file is read before anything
    // else of the run is looked at, so no run folder is needed to see it.
    let dir = common::tempdir();
    let path = dir.path().join("eps.csv");
    let eval = || {
        common::bench(&[
            "eval",
            dir.path().to_str().unwrap(),
            "--on",
            "fewshot-5way1shot",
            "--episodes",
            path.to_str().unwrap(),
        ])
    };
    std::fs::write(
        &path,
        valid().replace("0,query,2,img/e0c2q1.png", "0,query,7,img/e0c2q1.png"),
    )
    .unwrap();
    let out = eval();
    common::assert_bench_fails(&out, &["eps.csv", "line 10", "label 7"]);
    // The same image as support and as query of one episode.
    std::fs::write(
        &path,
        valid().replace("0,query,0,img/e0c0q0.png", "0,query,0,img/e0c0s.png"),
    )
    .unwrap();
    let out = eval();
    common::assert_bench_fails(
        &out,
        &[
            "eps.csv",
            "line 3",
            "img/e0c0s.png",
            "line 2",
            "once per episode",
        ],
    );
}
