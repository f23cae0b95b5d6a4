#!/usr/bin/env bash
# The GPU check, run ON the GPU machine from the repository root, with the
# binary scripts/build-cuda.sh built here carried along
# (carry: target/cuda-bench/bench.xz, unpacked here)
# and Omniglot copied into .data/ (14 MB; `mkdir -p .data && cp -r
# ../shared/datasets/omniglot .data/` here, with .data/ in
# .git/info/exclude). Prints and writes into $OUT (or ./gpu-check):
#   - which shared libraries the binary finds (ldd),
#   - bench selftest --device cuda (the gradient checks),
#   - bench perf learner on both learners, batch 5 and 75,
#   - bench perf algorithms on the main job (a few meta-steps each),
#   - the main job on a budget of a few meta-steps, end to end,
#   - PyTorch on the same GPU and shapes (benchmarks/reference/perf_torch.py
#     --device cuda; the machine's python3 holds PyTorch),
#   - bench perf algorithms on that machine's CPU cores (the fused kernels).
# Arguments choose parts: `scripts/gpu-check.sh [bench] [torch] [cpu]`
# (all three when none is given).
# Sized for about five minutes on an H200; each step has its own time limit
# so that one hang does not take the rest.
set -uo pipefail
out="${OUT:-gpu-check}"
mkdir -p "$out"
bench="${BENCH:-target/cuda-bench/bench}"
if [ ! -x "$bench" ] && [ -f "$bench.xz" ]; then
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$bench.xz" "$bench"
    chmod +x "$bench"
fi
data="${FEWSHOT_DATA:-.data}"
exec > >(tee "$out/gpu-check.log") 2>&1

# The CUDA 13 libraries: the toolkit's, or PyTorch's nvidia wheels'.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
         "$(dirname "$(find / -name 'libcublas.so.13*' -not -path '*/proc/*' 2>/dev/null | head -n 1)")"; do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
ldd "$bench" | grep -E 'not found|cuda|cublas|curand|nvrtc|cudart'

step() {
    local limit="$1"; shift
    echo "== $* (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@"
    echo "== exit $? after $((SECONDS - t0))s"
}
parts="${*:-bench torch cpu}"
has() { [[ " $parts " == *" $1 "* ]]; }

if has bench; then
    step 120 "$bench" --device cuda selftest
    for d in omniglot mini-imagenet; do
        for b in 5 75; do
            step 60 "$bench" --device cuda perf learner "$d" --batch "$b" --reps 10
        done
    done
    step 120 "$bench" --device cuda --data-dir "$data" perf algorithms fewshot-5way1shot --steps 5 --episodes 20
    step 180 "$bench" --device cuda --data-dir "$data" run fewshot-5way1shot --smoke --meta-steps 20 \
        --test-episodes 20 --run-dir "$out/run"
fi

if has torch; then
    for c in learner-omniglot-5 learner-omniglot-75 learner-mini-5 learner-mini-75 \
             fomaml-task reptile-task meta-lstm-10; do
        step 90 python3 benchmarks/reference/perf_torch.py "$c" --device cuda --reps 10
    done
fi

if has cpu; then
    step 120 "$bench" --device cpu --data-dir "$data" perf algorithms fewshot-5way1shot --steps 5 --episodes 20
fi
