"""The renderer protocol (kernel/render.py): tables per dialect, a missing entry is a dnet error naming op
and backend, GPU statements spelled by the dialect that has them."""
import pytest

from dnet.backends.c.renderer import CRenderer
from dnet.core.dtypes import DType
from dnet.core.shapes import Sym
from dnet.errors import MissingOpError
from dnet.graph.ops import Op
from dnet.kernel.ir import Barrier, GpuLoop, Kernel, Load, LocalAlloc, Loop, Param, Store, Unary
from dnet.kernel.render import CStyleRenderer

F = DType.F32
I, L = Sym("i"), Sym("l")


def _exp_kernel(dtype=F):
    params = (Param("x", dtype), Param("y", dtype, output=True))
    return Kernel("k", params, (), (Loop("i", 4, (Store("y", I, Unary(Op.EXP, Load("x", I, dtype), dtype)),)),))


class NoExp(CStyleRenderer):
    backend = "toy"
    unary_float = {op: code for op, code in CStyleRenderer.unary_float.items() if op is not Op.EXP}


class DeclaresNoExp(NoExp):
    unsupported = {Op.EXP: "the toy device has no exponential unit"}


def test_a_missing_table_entry_names_the_op_the_dtype_and_the_backend():
    with pytest.raises(MissingOpError, match="backend 'toy' has no code for op exp on f32") as err:
        NoExp(_exp_kernel()).render()
    assert err.value.op is Op.EXP and err.value.backend == "toy"


def test_a_declared_gap_says_why():
    with pytest.raises(MissingOpError, match="the toy device has no exponential unit"):
        DeclaresNoExp(_exp_kernel()).render()


def test_an_integer_exp_is_missing_from_the_c_tables_not_a_key_error():
    with pytest.raises(MissingOpError, match="backend 'c' has no code for op exp on i32"):
        CRenderer(_exp_kernel(DType.I32)).render()


def test_the_c_dialect_renders_its_table_entry():
    text = CRenderer(_exp_kernel()).render()
    assert "y[(i)] = dn_exp(x[(i)]);" in text and text.startswith("static void k(const float* restrict x, float* restrict y)")


class ToyGpu(CStyleRenderer):
    """A GPU dialect in a few lines: grid indices, local memory and barriers spelled as OpenCL does."""
    backend = "toygpu"
    kernel_prefix, buffer_prefix = "__kernel void", "__global"
    local_prefix, barrier_code = "__local", "barrier(CLK_LOCAL_MEM_FENCE);"

    def grid_index(self, level: str, axis: int) -> str:
        return {"group": "get_group_id", "local": "get_local_id", "global": "get_global_id"}[level] + f"({axis})"


def _tiled():
    params = (Param("x", F), Param("y", F, output=True))
    item = GpuLoop("l", 64, "local", 0, (Store("t", L, Load("x", L, F)), Barrier(), Store("y", L, Load("t", 63 - L, F))))
    return Kernel("rev", params, (), (GpuLoop("g", 1, "group", 0, (LocalAlloc("t", F, 64, (item,)),)),))


def test_a_gpu_dialect_spells_grid_loops_local_memory_and_barriers():
    text = ToyGpu(_tiled()).render()
    assert text.startswith("__kernel void rev(__global const float* restrict x, __global float* restrict y)")
    assert "const int64_t l = (int64_t)get_local_id(0);" in text and "__local float t[64];" in text
    assert "barrier(CLK_LOCAL_MEM_FENCE);" in text and "y[(l)] = t[(63 + -1*l)];" in text


def test_a_global_grid_loop_guards_the_rounded_up_grid():
    params = (Param("x", F), Param("y", F, output=True))
    k = Kernel("g", params, ("n",), (GpuLoop("i", Sym("n"), "global", 0, (Store("y", I, Load("x", I, F)),)),))
    assert "if (i < (n_n)) {" in ToyGpu(k).render()


def test_the_c_dialect_runs_a_grid_serially_but_has_no_barrier():
    with pytest.raises(MissingOpError, match="backend 'c' has no code for op local memory"):
        CRenderer(_tiled()).render()
    params = (Param("x", F), Param("y", F, output=True))
    k = Kernel("g", params, ("n",), (GpuLoop("i", Sym("n"), "global", 0, (Store("y", I, Load("x", I, F)),)),))
    assert "for (int64_t i = 0; i < (n_n); ++i) {" in CRenderer(k).render()


def test_every_c_family_prelude_takes_the_reference_helpers_once_spelled_for_its_dialect():
    """numpy's semantics (floor division, modulo, NaN max/min) are one text, not a copy per dialect."""
    from dnet.backends.c.prelude import PRELUDE as C_PRELUDE
    from dnet.backends.opencl.prelude import PRELUDE as CL_PRELUDE
    from dnet.backends.opencl.renderer import OpenCLRenderer
    from dnet.kernel.render import CStyleRenderer

    dialects = ((C_PRELUDE, CStyleRenderer, "fmodf(a, b)"), (CL_PRELUDE, OpenCLRenderer, "fmod(a, b)"))
    for prelude, renderer, fmod in dialects:
        helpers = renderer.reference_helpers()
        assert prelude.endswith(helpers) and fmod in helpers
        for name in ("dn_floordiv", "dn_mod", "dn_modf", "dn_maxf", "dn_ipow", "dn_clamp", "dn_round_bf16"):
            assert prelude.count(f" {name}(") == 1, name
