"""Kernel IR from the scheduler: printable, renderer-neutral, deduplicated across repeated layers."""
import numpy as np

from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder
from dnet.hardware import Host, detect
from dnet.kernel.gemm import choose_tile
from dnet.kernel.schedule import schedule


def _stack(layers: int):
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.input("x", TensorType(("seq", 16), DType.F32))
    for i in range(layers):
        w = b.const(f"w{i}", rng.standard_normal((16, 16)).astype(np.float32))
        x = C.layer_norm(b, C.relu(b, C.linear(b, x, w)))
    b.output("y", x)
    return b.finish()


def test_identical_layers_share_their_kernels():
    sched = schedule(_stack(4))
    assert len(sched.steps) == 8
    assert len(sched.kernels) == 2


def test_kernels_print_as_loop_nests():
    text = "\n".join(str(k) for k in schedule(_stack(1)).kernels.values())
    assert "gemm out[" in text and "sum over" in text and "# parallel" in text


def test_tiles_follow_the_host_not_this_machine():
    avx2 = Host("x86_64", "test", 4, frozenset({"avx2", "fma"}), l1d=32 * 1024, l2=1 << 20)
    avx512 = Host("x86_64", "test", 4, frozenset({"avx512f"}), l1d=48 * 1024, l2=2 << 20)
    neon = Host("aarch64", "test", 4, frozenset({"neon", "asimd"}))
    scalar = Host("riscv64", "test", 1, frozenset())
    assert (choose_tile(avx2).nr, choose_tile(avx2).mr) == (16, 6)
    assert choose_tile(avx512).nr == 32 and choose_tile(avx512).mr >= 6
    assert choose_tile(neon).nr == 8
    assert choose_tile(scalar).lanes == 1
    assert detect().cores >= 1
