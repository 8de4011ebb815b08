"""The GPU grid pass (kernel/grid.py): leading parallel loops become "global" grid loops. Checked by the
verifier, by meaning (the mapped kernels run through the C dialect, which runs a grid one work-item after
another, equal the numpy reference) and by launch sizes derived by hand."""
import numpy as np
import pytest

from dnet.backends.c.device import CLoader
from dnet.backends.c.library import render_library
from dnet.backends.c.packing import PanelPacker
from dnet.backends.c.runtime import CModule
from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.shapes import Sym
from dnet.core.types import TensorType
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op
from dnet.kernel.grid import launch_grid, map_to_grid
from dnet.kernel.ir import GpuLoop, Loop
from dnet.kernel.target import GpuTarget
from dnet.program.build import build_program

GPU = GpuTarget("test gpu", max_work_group=256, simd_width=32)


def _graph():
    b = GraphBuilder()
    x = b.input("x", TensorType((Sym("batch"), Sym("seq"), 12), DType.F32))
    h = C.layer_norm(b, C.softmax(b, b.unary(Op.TANH, x), -1))
    b.output("y", b.permute(b.node(Op.ADD, [h, x]), (0, 2, 1)))
    b.output("m", b.reduce(Op.REDUCE_MAX, x, (1, 2)))
    b.output("i", b.node(Op.ARGMAX, [x], axis=1, keepdim=False))
    return b.finish()


def _grid_loops(body) -> list[GpuLoop]:
    out = []
    for s in body:
        if isinstance(s, GpuLoop):
            out.append(s)
            out += _grid_loops(s.body)
    return out


def test_mapped_kernels_pass_the_verifier_and_compute_what_they_did(tmp_path, rng):
    graph = _graph()
    compiled = build_program(graph, None, PanelPacker())
    mapped = {name: map_to_grid(k, GPU) for name, k in compiled.kernels.items()}
    assert all(_grid_loops(k.body) for k in mapped.values())           # every kernel here has a grid
    assert not any(isinstance(s, Loop) and s.parallel for k in mapped.values() for s in k.body)
    source = render_library(mapped, compiled.program)
    module = CModule(compiled.program, CLoader(tmp_path).library(source), compiled.weights, threads=1)
    for batch, seq in ((2, 5), (1, 1), (3, 7)):
        feeds = {"x": rng.standard_normal((batch, seq, 12)).astype(np.float32)}
        got, want = module.run(feeds), run_graph(graph, feeds)
        for name in graph.output_names:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_the_innermost_loop_is_axis_0_and_the_grid_rounds_up_to_whole_groups():
    b = GraphBuilder()
    x = b.input("x", TensorType((Sym("n"), Sym("m")), DType.F32))
    b.output("y", b.unary(Op.EXP, x))
    (kernel,) = build_program(b.finish(), None, PanelPacker()).kernels.values()
    mapped = map_to_grid(kernel, GPU)
    loops = _grid_loops(mapped.body)
    assert [(loop.var, loop.axis) for loop in loops] == [("i0", 1), ("i1", 0)]     # n on axis 1, m on axis 0
    # m = 100 items on axis 0 -> a group of 128 (four 32-wide warps), rounded up to 128; n = 3 groups of 1
    assert launch_grid(mapped, {"n": 3, "m": 100}, GPU) == ((128, 3), (128, 1))
    assert launch_grid(mapped, {"n": 2, "m": 1000}, GPU) == ((1024, 2), (256, 1))


def test_a_kernel_without_loops_is_one_work_item():
    b = GraphBuilder()
    b.output("s", b.reduce(Op.SUM, b.input("x", TensorType((5,), DType.F32))))
    (kernel,) = build_program(b.finish(), None, PanelPacker()).kernels.values()
    assert launch_grid(map_to_grid(kernel, GPU), {}, GPU) == ((1,), (1,))


@pytest.mark.parametrize("rows", [1, 64])
def test_a_gemm_kernel_is_left_to_the_dialects_own_matmul(rows, rng):
    b = GraphBuilder()
    x = b.input("x", TensorType((rows, 16), DType.F32))
    b.output("y", b.matmul(x, b.const("w", rng.standard_normal((16, 16)).astype(np.float32))))
    (kernel,) = build_program(b.finish(), None, PanelPacker()).kernels.values()
    assert map_to_grid(kernel, GPU) is kernel
