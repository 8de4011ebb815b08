"""Every op x dtype of the op coverage list, rendered to CUDA C and compiled by NVRTC: no GPU needed.

NVRTC compiles for a named architecture without a device, so on any machine with the `cuda` extra
the CUDA backend's kernels for every case of tests/backends/test_op_coverage.py (every op at every
dtype the backend claims, GGUF block formats included) are rendered from the program a GPU target
gets and compiled to a cubin (PTX assembled to sm_80 machine code, so ptxas' checks run too). A
rendering gap or any NVRTC error fails the case, named. Whether the results are right needs a GPU:
the same cases run against the numpy reference in test_op_coverage.py, skipped here.
"""
from __future__ import annotations

import pytest

from dnet.backends import registry
from dnet.core.dtypes import DType
from dnet.graph.ops import Op
from dnet.kernel.target import GpuTarget
from test_op_coverage import APPLICABLE, _graph

# an A100's limits (sm_80): what a GPU target passes the scheduler; any CUDA GPU of the last years has these
NOMINAL = GpuTarget("nominal sm_80", max_work_group=1024, local_memory=48 * 1024, simd_width=32, compute_units=108)
ARCH = "sm_80"
CLAIMED = sorted(registry.device("cuda").dtypes, key=lambda d: d.value)
CASES = [pytest.param(op, d, id=f"{op}-{d}") for d in CLAIMED for op in Op if (op, d) in APPLICABLE]

_compiled: dict[tuple, Exception | None] = {}


def _compile(key: tuple, ops: list[Op], dtype: DType) -> Exception | None:
    """None when the graph of `ops`' cases at `dtype` renders and NVRTC compiles it, else the error."""
    from dnet.backends.cuda import render_program
    from dnet.backends.cuda.nvrtc import compile_cuda

    if key not in _compiled:
        try:
            image = compile_cuda(render_program(_graph(ops, dtype)[0], NOMINAL).source, ARCH)
            assert image[:4] == b"\x7fELF", "NVRTC gave no cubin"
            _compiled[key] = None
        except Exception as err:     # noqa: BLE001 - any failure is the finding, named by the test
            _compiled[key] = err
    return _compiled[key]


@pytest.mark.parametrize("op, dtype", CASES)
def test_op_renders_and_nvrtc_compiles_it(nvrtc_here, op, dtype):
    # one compile per dtype holds every op's case; only where it fails is the op compiled alone
    ops = sorted((o for o in Op if (o, dtype) in APPLICABLE), key=lambda o: o.name)
    if _compile(("all", dtype), ops, dtype) is None:
        return
    error = _compile((op, dtype), [op], dtype)
    assert error is None, f"{op} on {dtype}: {type(error).__name__}: {error}"


def test_every_claimed_dtype_has_cases():
    assert {d for _, d in (p.values for p in CASES)} == set(CLAIMED) == set(DType)


def test_an_nvrtc_error_fails_with_the_compiler_s_line(nvrtc_here):
    """The check above is not vacuous: CUDA C that NVRTC refuses is a BackendError quoting its error."""
    from dnet.backends.cuda.nvrtc import compile_cuda
    from dnet.backends.cuda.prelude import PRELUDE
    from dnet.errors import BackendError

    with pytest.raises(BackendError, match=r'identifier "dn_nonexistent" is undefined'):
        compile_cuda(PRELUDE + 'extern "C" __global__ void k(float* a) { a[0] = dn_nonexistent(a[1]); }', ARCH)


def test_a_kernel_whose_op_is_missing_from_the_table_fails_naming_op_and_backend(nvrtc_here, monkeypatch):
    from dnet.backends.cuda.renderer import CUDARenderer

    monkeypatch.setattr(CUDARenderer, "unary_float",
                        {op: code for op, code in CUDARenderer.unary_float.items() if op is not Op.ERF})
    error = _compile(("no erf", DType.F32), [Op.ERF], DType.F32)
    _compiled.pop(("no erf", DType.F32))
    assert error is not None and "backend 'cuda' has no code for op erf on f32" in str(error)


def test_a_table_entry_nvrtc_refuses_fails_the_case(nvrtc_here, monkeypatch):
    """A wrong spelling in the op table renders, and then NVRTC's error fails the case."""
    from dnet.backends.cuda.renderer import CUDARenderer

    monkeypatch.setattr(CUDARenderer, "unary_float", {**CUDARenderer.unary_float, Op.EXP: "expff({})"})
    error = _compile(("bad exp", DType.F32), [Op.EXP], DType.F32)
    _compiled.pop(("bad exp", DType.F32))
    assert error is not None and 'identifier "expff" is undefined' in str(error)
