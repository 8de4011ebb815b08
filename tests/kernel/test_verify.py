"""The kernel-IR verifier (kernel/verify.py): every rule it enforces, each on a kernel that breaks it
(hand-made, so the expected complaint is known), and every kernel the scheduler makes passes it."""
import numpy as np
import pytest

from dnet.core.dtypes import DType
from dnet.core.shapes import Sym
from dnet.core.types import TensorType
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op
from dnet.kernel import verify
from dnet.kernel.ir import (Barrier, Binary, Const, GpuLoop, IndexLet, Kernel, Let, Load, LocalAlloc, Loop, Param,
                            Reduce, Ref, Store)
from dnet.kernel.schedule import schedule
from dnet.kernel.verify import KernelVerifyError, check_bounds, verify_kernel

F = DType.F32
I, J, L, G = Sym("i"), Sym("j"), Sym("l"), Sym("g")
PARAMS = (Param("x", F), Param("y", F, output=True))


def _kernel(*body, dims=("n",)) -> Kernel:
    return Kernel("k", PARAMS, dims, tuple(body))


def _copy(index=I, extent=Sym("n")):
    return Loop("i", extent, (Store("y", index, Load("x", index, F)),))


def test_a_well_formed_loop_nest_passes():
    verify_kernel(_kernel(_copy()))


@pytest.mark.parametrize("kernel, complaint", [
    (_kernel(Loop("i", 4, (Store("z", I, Const(1.0, F)),))), "buffer 'z' is neither a parameter"),
    (_kernel(Loop("i", 4, (Store("x", I, Const(1.0, F)),))), "writes 'x', an input parameter"),
    (_kernel(Loop("i", 4, (Store("y", I, Ref("t", F)),))), "'t' is used before it is defined"),
    (_kernel(Loop("i", 4, (Store("y", J, Const(1.0, F)),))), "index uses ['j'] outside their scope"),
    (_kernel(Loop("i", 4, (Loop("i", 2, ()),))), "'i' is bound twice"),
    (_kernel(Loop("i", Sym("m"), ())), "index uses ['m']"),
    (_kernel(Loop("i", 4, (Store("y", I, Const(1.0, F)),), parallel=2)), "parallel=2 but the nest below holds 1"),
    (_kernel(Loop("i", 4, (Store("y", I, Ref("acc", F)), Reduce("acc", Op.SUM, F, (("j", 3),), (), Const(1.0, F))))),
     "'acc' is used before it is defined"),
])
def test_ill_formed_kernels_are_refused_naming_the_problem(kernel, complaint):
    with pytest.raises(KernelVerifyError, match=complaint.replace("[", r"\[").replace("]", r"\]")):
        verify_kernel(kernel, "a test pass")


def test_the_error_names_the_kernel_and_the_pass():
    with pytest.raises(KernelVerifyError, match="kernel k after pass 'lower_gemm'"):
        verify_kernel(_kernel(Loop("i", 4, (Store("q", I, Const(1.0, F)),))), "lower_gemm")


# -- GPU grids, local memory and barriers ---------------------------------------------------------------
def _tiled(*inner, level="local", extent=64):
    """A work-group per tile of 64 items, each loading into local memory, then a barrier, then a store."""
    item = GpuLoop("l", extent, level, 0, (Store("tile", L, Load("x", G * 64 + L, F)), *inner,
                                         Store("y", G * 64 + L, Load("tile", 63 - L, F))))
    return _kernel(GpuLoop("g", 4, "group", 0, (LocalAlloc("tile", F, 64, (item,)),)))


def test_a_barrier_between_local_writes_and_reads_passes():
    verify_kernel(_tiled(Barrier()))


@pytest.mark.parametrize("kernel, complaint", [
    (_kernel(Loop("i", 4, (Barrier(),))), "barrier in a kernel with no GPU grid"),
    (_kernel(GpuLoop("g", 4, "group", 0, (Barrier(),))), "outside every work-item"),
    (_tiled(Loop("r", L, (Barrier(),))), "trip count differs between work-items"),
    (_tiled(IndexLet("d", Load("x", L, F), 8), Loop("r", Sym("d"), (Barrier(),))), "trip count differs"),
    (_tiled(Reduce("acc", Op.SUM, F, (("r", 4),), (Barrier(),), Const(1.0, F))), "inside a reduction"),
    (_kernel(GpuLoop("g", 256, "global", 0, (GpuLoop("l", 64, "local", 0, (Barrier(),)),))),
     "under a 'global' grid loop"),
    (_kernel(GpuLoop("l", 64, "local", 0, (LocalAlloc("t", F, 64, ()),))), "allocate it outside work-item loops"),
    (_kernel(GpuLoop("g", 4, "group", 0, (GpuLoop("h", 4, "group", 0, ()),))), "axis 0 is already mapped"),
    (_kernel(GpuLoop("l", Sym("n"), "local", 0, ())), "work-group's size"),
    (_kernel(GpuLoop("g", 4, "warp", 0, ())), "grid level 'warp'"),
])
def test_misplaced_barriers_and_bad_grids_are_refused(kernel, complaint):
    with pytest.raises(KernelVerifyError, match=complaint):
        verify_kernel(kernel)


def test_a_uniform_loop_around_a_barrier_passes():
    verify_kernel(_tiled(Loop("r", 3, (Barrier(),))))


# -- bounds ----------------------------------------------------------------------------------------------
def test_bounds_hold_for_a_copy_of_the_whole_buffer():
    check_bounds(_kernel(_copy()), {"x": 7, "y": 7}, {"n": 7})


def test_an_index_past_the_buffer_is_refused_with_its_span():
    with pytest.raises(KernelVerifyError, match=r"index of 'x' spans \[1, 7\], outside its 7 elements"):
        check_bounds(_kernel(_copy(index=I + 1)), {"x": 7, "y": 8}, {"n": 7})


def test_a_gathered_index_is_bounded_by_its_clamp():
    k = _kernel(Loop("i", 4, (IndexLet("r", Load("x", I, F), 3), Store("y", I, Load("x", Sym("r") * 2, F)))))
    check_bounds(k, {"x": 5, "y": 4}, {"n": 1})
    with pytest.raises(KernelVerifyError, match="index of 'x'"):
        check_bounds(k, {"x": 4, "y": 4}, {"n": 1})


# -- the scheduler's own kernels -------------------------------------------------------------------------
def _model():
    b = GraphBuilder()
    x = b.input("x", TensorType((Sym("batch"), Sym("seq"), 16), F))
    w = b.const("w", np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32))
    h = C.gelu(b, C.linear(b, x, w))
    b.output("y", C.layer_norm(b, C.softmax(b, h, -1)))
    b.output("i", b.node(Op.ARGMAX, [h], axis=2, keepdim=False))
    return b.finish()


def test_every_kernel_the_scheduler_makes_passes_and_stays_in_bounds():
    assert verify.enabled()            # tests/conftest.py turns verification on for every test
    graph = _model()
    sched = schedule(graph)
    env = {"batch": 2, "seq": 3}
    for step in sched.steps:
        kernel = sched.kernels[step.kernel]
        verify_kernel(kernel)
        sizes = {}
        for param, arg in zip(kernel.params, step.args):
            if isinstance(arg, int) and arg >= 0:
                shape = graph.nodes[arg].shape
                sizes[param.name] = int(np.prod([env[str(d)] if not isinstance(d, int) else d for d in shape]))
        check_bounds(kernel, sizes, env)


def test_a_pass_that_emits_bad_ir_fails_through_checked():
    with pytest.raises(KernelVerifyError, match="after pass 'broken'"):
        verify.checked("broken", _kernel(Loop("i", 4, (Let("t", Ref("u", F)),))))
    assert verify.checked("fine", _kernel(_copy())).name == "k"
