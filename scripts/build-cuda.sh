#!/usr/bin/env bash
# Build `bench` with candle's CUDA backend on a machine without a GPU or a
# CUDA toolkit, for a GPU machine that has the driver and the toolkit's
# libraries but no Rust.
#
#   scripts/build-cuda.sh            # -> target/cuda-bench/bench (stripped)
#
# Environment:
#   CUDA_VERSION       toolkit release of the PyPI wheels (default 13.0: the
#                      lent H200 machines run driver 580 and CUDA 13.0, and
#                      the binary must find the same major version of
#                      libcublas, libnvrtc and libcurand there)
#   CUDA_COMPUTE_CAP   the GPU's compute capability (default 90: H100/H200;
#                      there is no GPU here to detect it)
#
# What it does (all under target/, nothing system-wide):
# 1. installs NVIDIA's compiler, headers and libraries from PyPI wheels
#    (nvidia-cuda-nvcc, -nvvm, -cuda-crt, -cuda-runtime, -cuda-cccl,
#    -cuda-nvrtc, -cublas, -curand) into target/cuda-toolkit/pip, where
#    CUDA 13's wheels form one CUDA tree, nvidia/cu13 (bin/nvcc, nvvm/,
#    include/, lib/), to which the unversioned .so links the linker wants
#    are added;
# 2. writes a stub libcuda.so.1 (the driver library exists only on the GPU
#    machine; candle's cudarc links it dynamically): every driver function
#    cudarc declares, as an empty function, so the link resolves and the
#    binary loads the real libcuda.so.1 at run time;
# 3. builds `cargo build --release --features cuda` into target/cuda and
#    copies the stripped binary to target/cuda-bench/bench (and bench.xz,
#    the file to carry to the GPU machine), then lists the
#    shared libraries it needs (on the GPU machine they come from the
#    toolkit or from PyTorch's nvidia wheels: put their lib folder on
#    LD_LIBRARY_PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
version="${CUDA_VERSION:-13.0}"
cap="${CUDA_COMPUTE_CAP:-90}"
major="${version%%.*}"
root="$PWD/target/cuda-toolkit"
pip_dir="$root/pip"
home="$pip_dir/nvidia/cu$major"

echo "== 1. CUDA $version wheels from PyPI into $pip_dir"
packages=(
    "nvidia-cuda-nvcc==$version.*"
    "nvidia-nvvm==$version.*"
    "nvidia-cuda-crt==$version.*"
    "nvidia-cuda-runtime==$version.*"
    "nvidia-cuda-cccl==$version.*"
    "nvidia-cuda-nvrtc==$version.*"
    "nvidia-cublas==$version.*"
    "nvidia-curand"
)
if [ ! -f "$pip_dir/.done-$version" ]; then
    rm -rf "$pip_dir"
    python3 -m pip install --quiet --no-deps --target "$pip_dir" "${packages[@]}"
    touch "$pip_dir/.done-$version"
fi
for lib in "$home"/lib/lib*.so.*; do
    name="$(basename "$lib")"
    # libcublas.so.13 -> libcublas.so, for -lcublas
    [ -e "$home/lib/${name%%.so*}.so" ] || ln -s "$name" "$home/lib/${name%%.so*}.so"
done
chmod +x "$home"/bin/* "$home"/nvvm/bin/* 2>/dev/null || true
"$home/bin/nvcc" --version | tail -2
mkdir -p "$home/lib/stubs"

echo "== 2. stub libcuda.so.1"
cudarc="$(cargo metadata --format-version 1 --features cuda 2>/dev/null \
    | python3 -c 'import json,sys; m=json.load(sys.stdin); print(next(p["manifest_path"] for p in m["packages"] if p["name"]=="cudarc").rsplit("/",1)[0])')"
grep -ohE 'pub (unsafe )?fn cu[A-Za-z0-9_]+\(' "$cudarc/src/driver/sys/mod.rs" \
    | sed -E 's/pub (unsafe )?fn (cu[A-Za-z0-9_]+)\(/\2/' | sort -u \
    | awk '{print "int " $1 "(void) { return 999; }"}' > "$root/libcuda-stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$home/lib/stubs/libcuda.so.1" "$root/libcuda-stub.c"
ln -sf libcuda.so.1 "$home/lib/stubs/libcuda.so"
echo "$(wc -l < "$root/libcuda-stub.c") driver functions stubbed"

echo "== 3. cargo build --release --features cuda (compute capability $cap)"
export CUDA_HOME="$home" CUDA_ROOT="$home" CUDA_PATH="$home"
export PATH="$home/bin:$PATH"
export CUDA_COMPUTE_CAP="$cap"
export LIBRARY_PATH="$home/lib:$home/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
cargo build --release --features cuda --target-dir target/cuda --bin bench
mkdir -p target/cuda-bench
strip -o target/cuda-bench/bench target/cuda/release/bench
# About 60 MiB stripped (the kernels' PTX is inside): the device tool
# carries at most 64 MiB with the working tree, so carry the xz file
# (about 8 MiB); scripts/gpu-check.sh unpacks it.
xz -T0 -6 -k -f target/cuda-bench/bench
ls -l target/cuda-bench/
echo "shared libraries it needs:"
readelf -d target/cuda-bench/bench | grep NEEDED
