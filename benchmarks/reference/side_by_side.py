#!/usr/bin/env python3
"""fewshot against PyTorch on the same shapes, in one go, with ratios.

    cargo build --release
    python3 benchmarks/reference/side_by_side.py [--bench target/release/bench] [--data-dir ../shared/datasets]
        [--cases a,b,...] [--rounds N]

Each case runs in its own process, PyTorch's (perf_torch.py, 2 threads)
right after ours, so that both see the same machine state; only the ratios
mean something across days (machines here vary by 2x). Prints a Markdown
table for docs/perf.md. Our learner cases run candle with 2 threads
(CANDLE_NUM_THREADS=2, one pass at a time, like PyTorch's); our algorithm
cases run as `bench run` does (episodes in parallel on rayon's 2 threads,
candle single-threaded), and their time is per training episode (task).
Our learned-optimiser cases (lstm-opt-*, two-level-* on quadratic-10d and
mnist-mlp) run `bench perf optimizers` and their time is per
meta-training step (one problem of 100 steps in truncated unrolls of 20);
that command reports no peak memory.
With --rounds N every case runs N times, ours and PyTorch's alternating;
the table shows each side's median, the ratio of the medians and the range
of the N per-round ratios (this machine's run-to-run spread is large).
Our peak memory includes the decoded images of the train and test splits
(about 60 MiB on Omniglot); PyTorch's includes its own libraries.
"""

import argparse
import datetime
import statistics
import json
import os
import platform
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

MAML2 = """name: perf-maml
dataset: omniglot
episode: {ways: 5, shots: 1, queries: 15}
budget: {meta_steps: 1}
algorithms:
  - {algorithm: maml, meta_batch: 2}
"""


OPTIMIZERS = {
    "lstm-opt-quadratic": ("quadratic-10d", "lstm-optimizer", "3"),
    "lstm-opt-mnist": ("mnist-mlp", "lstm-optimizer", "2"),
    "two-level-quadratic": ("quadratic-10d", "two-level", "3"),
    "two-level-mnist": ("mnist-mlp", "two-level", "2"),
}


def ours(bench, data, case, tmp):
    env = dict(os.environ)
    if case in OPTIMIZERS:
        bm, label, steps = OPTIMIZERS[case]
        env["CANDLE_NUM_THREADS"] = "2"
        out = subprocess.run([bench, "--data-dir", data, "perf", "optimizers", bm, "--only", label, "--steps", steps],
                             env=env, capture_output=True, text=True, check=True).stdout
        row = [l for l in out.splitlines() if l.startswith(label)][-1]
        # columns: ms/meta-step, ms/test problem
        return float(re.findall(r"[\d.]+", row[len(label):])[0]), None
    m = re.match(r"learner-(omniglot|mini)-(\d+)", case)
    if m:
        env["CANDLE_NUM_THREADS"] = "2"
        ds = "omniglot" if m.group(1) == "omniglot" else "mini-imagenet"
        out = subprocess.run([bench, "perf", "learner", ds, "--batch", m.group(2), "--reps", "10"],
                             env=env, capture_output=True, text=True, check=True).stdout
        ms = float(re.search(r"forward\+backward ([\d.]+) ms", out).group(1))
        return ms, None
    args = {
        "fomaml-task": ["fewshot-5way1shot", "--only", "fomaml", "--steps", "2"],
        "maml-task": [os.path.join(tmp, "maml.yaml"), "--only", "maml", "--steps", "3"],
        "reptile-task": ["fewshot-5way1shot", "--only", "reptile", "--steps", "4"],
        "meta-lstm-10": ["fewshot-5way1shot", "--only", "meta-lstm", "--steps", "5"],
        "meta-lstm-20": ["fewshot-5way1shot", "--lstm-steps", "20", "--only", "meta-lstm (T=20)", "--steps", "3"],
        "fomaml-task-mini": ["mini-imagenet-5way1shot", "--only", "fomaml", "--steps", "2"],
        "reptile-task-mini": ["mini-imagenet-5way1shot", "--only", "reptile", "--steps", "2"],
        "meta-lstm-mini": ["mini-imagenet-5way1shot", "--only", "meta-lstm", "--steps", "3"],
    }[case]
    out = subprocess.run([bench, "--data-dir", data, "perf", "algorithms", args[0], "--episodes", "1"] + args[1:],
                         env=env, capture_output=True, text=True, check=True).stdout
    row = [l for l in out.splitlines() if l.startswith(args[args.index("--only") + 1])][-1]
    nums = re.findall(r"[\d.]+", row.split(")")[-1] if "(T=" in row else row[len(args[2]):])
    # columns: meta-step ms, ms/train ep, ms/test episode, peak RSS MiB
    return float(nums[1]), float(nums[3])


def torch_case(case):
    out = subprocess.run([sys.executable, os.path.join(HERE, "perf_torch.py"), case],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default="target/release/bench")
    ap.add_argument("--data-dir", default="../shared/datasets")
    ap.add_argument("--cases", default="learner-omniglot-5,learner-omniglot-75,learner-mini-5,learner-mini-75,"
                                       "fomaml-task,maml-task,reptile-task,meta-lstm-10,meta-lstm-20,"
                                       "fomaml-task-mini,reptile-task-mini,meta-lstm-mini,"
                                       "lstm-opt-quadratic,lstm-opt-mnist,two-level-quadratic,two-level-mnist")
    ap.add_argument("--rounds", type=int, default=1, help="times each case runs (medians)")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp()
    with open(os.path.join(tmp, "maml.yaml"), "w") as f:
        f.write(MAML2)
    rows = []
    version = "?"
    for case in a.cases.split(","):
        runs = []
        for _ in range(max(1, a.rounds)):
            ms, peak = ours(a.bench, a.data_dir, case, tmp)
            t = torch_case(case)
            version = t["torch"]
            runs.append((ms, peak, t["ms"], t["peak_mib"]))
            print(f"{case}: fewshot {ms:.1f} ms, PyTorch {t['ms']:.1f} ms", file=sys.stderr)
        rows.append((case, runs))
    print(f"Measured {datetime.date.today()} on {platform.node()} ({os.cpu_count()} CPUs), "
          f"PyTorch {version} (2 threads), `python3 benchmarks/reference/side_by_side.py"
          f"{f' --rounds {a.rounds}' if a.rounds > 1 else ''}`:\n")
    ranged = a.rounds > 1
    print("| work | fewshot ms | PyTorch ms | time ratio |" + (" ratio range |" if ranged else "")
          + " fewshot peak MiB | PyTorch peak MiB |")
    print("| --- | ---: | ---: | ---: |" + (" ---: |" if ranged else "") + " ---: | ---: |")
    for case, runs in rows:
        ms = statistics.median(r[0] for r in runs)
        tms = statistics.median(r[2] for r in runs)
        peaks = [r[1] for r in runs if r[1] is not None]
        p = f"{max(peaks):.0f}" if peaks else "n/a"
        tpeak = max(r[3] for r in runs)
        ratios = [r[0] / r[2] for r in runs]
        rng = f" {min(ratios):.2f}-{max(ratios):.2f}x |" if ranged else ""
        print(f"| {case} | {ms:.1f} | {tms:.1f} | {ms / tms:.2f}x |{rng} {p} | {tpeak} |")

if __name__ == "__main__":
    main()
