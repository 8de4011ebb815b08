"""The LLVM backend's low-precision Gemms (`backends/llvm/igemm.py`) against the numpy reference running the
same graph (`quantize="int8-dynamic"`: activations quantized per row, int8 weights per column;
`precision="bf16"`: bf16 weights and activations, f32 sums), over row counts, batch shapes, ragged k and n
and fused epilogues.

The model, the inputs and the tolerance (f32 rounding of the sums, relative to sum |a| * |b|) are the C
backend's too: tests/backends/igemm_support.py.
"""
import numpy as np
import pytest

from dnet.core.dtypes import DType
from dnet.kernel.ir import Gemm

from igemm_support import SHAPES, assert_matches_within_sum_rounding, bf16_graph, inputs, int8_graph


@pytest.fixture(scope="module", params=["int8", "int8-portable", "bf16", "bf16-portable"])
def case(request, compile_llvm):
    """Each kind on the host's path (`vpdpbusd` where it has AVX512-VNNI, `vdpbf16ps` where AVX512-BF16)
    and forced onto the portable path."""
    from dnet.backends.llvm import igemm

    kind = request.param.split("-")[0]
    graph = int8_graph() if kind == "int8" else bf16_graph()
    instruction, check = ("vpdpbusd", "_has_vnni") if kind == "int8" else ("dpbf16ps", "_has_bf16_dot")
    if request.param.endswith("-portable"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(igemm, check, lambda: False)
            runner = compile_llvm(graph)
        assert instruction not in runner.source
        return kind, graph, runner
    runner = compile_llvm(graph)
    assert (instruction in runner.source) == getattr(igemm, check)()
    return kind, graph, runner


def test_every_matmul_is_a_low_precision_gemm(case):
    kind, _, runner = case
    dtype = DType.I8 if kind == "int8" else DType.BF16
    gemms = [s for k in runner.compiled.kernels.values() for s in k.body if isinstance(s, Gemm)]
    assert len(gemms) == len(SHAPES) and all(g.a.dtype is dtype for g in gemms)


@pytest.mark.parametrize("m,batch,offset", [(1, 1, 0.0), (5, 2, 3.0), (30, 3, -2.0), (100, 1, 0.5)])
def test_low_precision_gemms_match_the_reference(case, m, batch, offset):
    kind, graph, runner = case
    assert_matches_within_sum_rounding(graph, runner, inputs(graph, np.random.default_rng(m), m, batch, offset))
