#!/usr/bin/env bash
# Build llama-cpp-python from source into a virtual environment, for the
# llama.cpp baseline of benchmarks/llm.py.
#
#   benchmarks/install_llama_cpp.sh [PYTHON]      (default: .venv/bin/python)
#
# No wheel of 0.3.36 exists for CPython on Linux, so pip builds it with cmake.
# A native build (GGML_NATIVE=ON) crashed on a processor with AMX; this script
# turns native detection off and enables each x86 feature only when
# /proc/cpuinfo lists it, with AMX always off. Elsewhere (arm64, ...) it keeps
# llama.cpp's defaults. Needs cmake and a C/C++ compiler (ninja is optional).
set -euo pipefail

PYTHON="${1:-.venv/bin/python}"
VERSION="0.3.36"

has_flag() {
    grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -qx "$1"
}

on_off() {
    if has_flag "$1"; then echo ON; else echo OFF; fi
}

args="-DGGML_BLAS=OFF -DLLAMA_CURL=OFF -DGGML_OPENMP=ON"
case "$(uname -m)" in
    x86_64 | amd64)
        args="$args -DGGML_NATIVE=OFF"
        args="$args -DGGML_AVX=$(on_off avx)"
        args="$args -DGGML_AVX2=$(on_off avx2)"
        args="$args -DGGML_FMA=$(on_off fma)"
        args="$args -DGGML_F16C=$(on_off f16c)"
        args="$args -DGGML_AVX512=$(on_off avx512f)"
        args="$args -DGGML_AVX512_VBMI=$(on_off avx512vbmi)"
        args="$args -DGGML_AVX512_VNNI=$(on_off avx512_vnni)"
        args="$args -DGGML_AVX512_BF16=$(on_off avx512_bf16)"
        args="$args -DGGML_AVX_VNNI=$(on_off avx_vnni)"
        args="$args -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
        ;;
esac

echo "CMAKE_ARGS=$args"
start=$(date +%s)
CMAKE_ARGS="$args" \
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    nice -n 10 "$PYTHON" -m pip install --no-cache-dir --no-binary llama-cpp-python \
    "llama-cpp-python[server]==$VERSION"
echo "built llama-cpp-python $VERSION in $(( $(date +%s) - start )) s"
"$PYTHON" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)"
