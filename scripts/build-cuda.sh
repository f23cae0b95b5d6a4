#!/usr/bin/env bash
# Build `bench` with candle's CUDA backend on a machine without a GPU or a
# CUDA toolkit, for a GPU machine that has the driver and the toolkit's
# libraries but no Rust.
#
#   scripts/build-cuda.sh            # -> target/cuda-bench/bench (stripped)
#
# Environment:
#   CUDA_VERSION       toolkit release of the PyPI wheels (default 12.4; the
#                      GPU machine's driver must support it)
#   CUDA_COMPUTE_CAP   the GPU's compute capability (default 90: H100/H200;
#                      there is no GPU here to detect it)
#
# What it does (all under target/, nothing system-wide):
# 1. installs NVIDIA's compiler, headers and libraries from PyPI wheels
#    (nvidia-cuda-nvcc-cu12, -cuda-runtime-, -cuda-cccl-, -cublas-,
#    -curand-, -cuda-nvrtc-) into target/cuda-toolkit/pip;
# 2. lays them out as one CUDA tree, target/cuda-toolkit/home (bin/nvcc,
#    include/, lib64/ with the unversioned .so links the linker wants);
# 3. writes a stub libcuda.so.1 (the driver library exists only on the GPU
#    machine; candle's cudarc links it dynamically): every driver function
#    cudarc declares, as an empty function, so the link resolves and the
#    binary loads the real libcuda.so.1 at run time;
# 4. builds `cargo build --release --features cuda` into target/cuda and
#    copies the stripped binary to target/cuda-bench/bench, then lists the
#    shared libraries it needs (on the GPU machine they come from the
#    toolkit: put its lib64 on LD_LIBRARY_PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
version="${CUDA_VERSION:-12.4}"
cap="${CUDA_COMPUTE_CAP:-90}"
root="$PWD/target/cuda-toolkit"
pip_dir="$root/pip"
home="$root/home"

echo "== 1. CUDA $version wheels from PyPI into $pip_dir"
packages=(
    "nvidia-cuda-nvcc-cu12==$version.*"
    "nvidia-cuda-runtime-cu12==$version.*"
    "nvidia-cuda-cccl-cu12==$version.*"
    "nvidia-cuda-nvrtc-cu12==$version.*"
    "nvidia-cublas-cu12"
    "nvidia-curand-cu12"
)
if [ ! -f "$pip_dir/.done-$version" ]; then
    rm -rf "$pip_dir"
    python3 -m pip install --quiet --no-deps --target "$pip_dir" "${packages[@]}"
    touch "$pip_dir/.done-$version"
fi
nv="$pip_dir/nvidia"

echo "== 2. one CUDA tree in $home"
rm -rf "$home"
# nvcc finds its include/ and nvvm/ relative to its own real path, so the
# compiler's package is copied (not linked) as the tree's base.
cp -r "$nv/cuda_nvcc" "$home"
for pkg in cuda_runtime cuda_cccl cuda_nvrtc cublas curand; do
    [ -d "$nv/$pkg/include" ] && cp -rs --remove-destination "$nv/$pkg/include/." "$home/include/"
done
mkdir -p "$home/lib64/stubs"
for lib in "$nv"/*/lib/lib*.so*; do
    name="$(basename "$lib")"
    ln -sf "$lib" "$home/lib64/$name"
    # libcublas.so.12 -> libcublas.so, for -lcublas
    ln -sf "$lib" "$home/lib64/${name%%.so*}.so"
done
chmod +x "$home"/bin/* "$home"/nvvm/bin/* 2>/dev/null || true
"$home/bin/nvcc" --version | tail -2

echo "== 3. stub libcuda.so.1"
cudarc="$(cargo metadata --format-version 1 --features cuda 2>/dev/null \
    | python3 -c 'import json,sys; m=json.load(sys.stdin); print(next(p["manifest_path"] for p in m["packages"] if p["name"]=="cudarc").rsplit("/",1)[0])')"
grep -ohE 'pub (unsafe )?fn cu[A-Za-z0-9_]+\(' "$cudarc/src/driver/sys/mod.rs" \
    | sed -E 's/pub (unsafe )?fn (cu[A-Za-z0-9_]+)\(/\2/' | sort -u \
    | awk '{print "int " $1 "(void) { return 999; }"}' > "$root/libcuda-stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$home/lib64/stubs/libcuda.so.1" "$root/libcuda-stub.c"
ln -sf libcuda.so.1 "$home/lib64/stubs/libcuda.so"
echo "$(wc -l < "$root/libcuda-stub.c") driver functions stubbed"

echo "== 4. cargo build --release --features cuda (compute capability $cap)"
export CUDA_HOME="$home" CUDA_ROOT="$home" CUDA_PATH="$home"
export PATH="$home/bin:$PATH"
export CUDA_COMPUTE_CAP="$cap"
export LIBRARY_PATH="$home/lib64:$home/lib64/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
cargo build --release --features cuda --target-dir target/cuda --bin bench
mkdir -p target/cuda-bench
strip -o target/cuda-bench/bench target/cuda/release/bench
ls -l target/cuda-bench/bench
echo "shared libraries it needs:"
readelf -d target/cuda-bench/bench | grep NEEDED
