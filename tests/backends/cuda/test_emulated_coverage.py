"""Every op x dtype of the op coverage list, on the CUDA backend's kernels run through the CPU emulation.

tests/backends/test_op_coverage.py holds 'cuda' to the numpy reference only where a GPU is. Here the
same cases (every op at every dtype the backend claims, GGUF block formats included) run on any
machine with a C++ compiler: the CUDA C the backend renders for a GPU target, compiled as C++ with
cuda_emulation.py's grid, launched with the CUDA runtime's own launch sizes, must give the reference's
values. What only a GPU can show (the driver, device memory, NVRTC's code) is left to the GPU runs.
"""
from __future__ import annotations

import numpy as np
import pytest

from dnet.backends import registry
from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.graph.ops import Op
from test_op_coverage import APPLICABLE, _compare, _feeds, _graph

CLAIMED = sorted(registry.device("cuda").dtypes, key=lambda d: d.value)
CASES = [pytest.param(op, d, id=f"{op}-{d}") for d in CLAIMED for op in Op if (op, d) in APPLICABLE]

_runs: dict[tuple, tuple] = {}


def _run(compile_emulated, key: tuple, ops: list[Op], dtype: DType) -> tuple:
    """(outputs, reference outputs, output names by op) of the graph of `ops`' cases, or (error,)."""
    if key not in _runs:
        graph, names = _graph(ops, dtype)
        try:
            runner = compile_emulated(graph)
            feeds = _feeds(graph, np.random.default_rng(0))
            got = runner.run(feeds)
            with np.errstate(all="ignore"):
                want = run_graph(graph, feeds)
            _runs[key] = (got, want, names)
        except Exception as err:     # noqa: BLE001 - any failure is the finding, named by the test
            _runs[key] = (err,)
    return _runs[key]


@pytest.mark.parametrize("op, dtype", CASES)
def test_op_matches_the_reference_in_the_emulation(compile_emulated, op, dtype):
    ops = sorted((o for o in Op if (o, dtype) in APPLICABLE), key=lambda o: o.name)
    result = _run(compile_emulated, ("all", dtype), ops, dtype)
    if len(result) == 1:        # the shared graph failed: the case alone says whether it is this op
        result = _run(compile_emulated, (op, dtype), [op], dtype)
    assert len(result) == 3, f"{op} on {dtype}: {type(result[0]).__name__}: {result[0]}"
    got, want, names = result
    for out in names[op]:
        failure = _compare(got[out], want[out], dtype, out)
        assert failure is None, failure


def test_a_wrong_table_entry_fails_its_case(compile_emulated, monkeypatch):
    """Not vacuous: exp spelled as a slightly different function computes other values, and the case fails."""
    from dnet.backends.cuda.renderer import CUDARenderer

    monkeypatch.setattr(CUDARenderer, "unary_float", {**CUDARenderer.unary_float, Op.EXP: "expf(1.001f * {})"})
    got, want, names = _run(compile_emulated, ("wrong exp", DType.F32), [Op.EXP], DType.F32)
    _runs.pop(("wrong exp", DType.F32))
    assert _compare(got[names[Op.EXP][0]], want[names[Op.EXP][0]], DType.F32, "exp") is not None
