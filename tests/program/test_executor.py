"""Generic program execution (program/executor.py) on both of its paths: host memory filled directly (the
fast path every host backend takes) and any other allocator through the Allocator protocol (the path
OpenCL takes), forced here on the C backend's own launcher; both against the numpy reference."""
import numpy as np
import pytest

from dnet.backends.c import CBackend
from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.shapes import Sym
from dnet.core.types import TensorType
from dnet.errors import ShapeError
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op
from dnet.program.device import HostAllocator
from dnet.program.executor import ProgramExecutor


class CountingHostAllocator:
    """Host memory behind the generic protocol (not a HostAllocator, so the executor takes the general
    path), counting what comes back to the host."""

    def __init__(self):
        self.inner, self.back = HostAllocator(), 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def to_host(self, handle, array):
        self.back += 1


def _graph():
    b = GraphBuilder()
    cache = b.state("cache", TensorType((Sym("b"), 6, 4), DType.F32))
    x = b.input("x", TensorType((Sym("b"), Sym("s"), 4), DType.F32))
    pos = b.input("pos", TensorType((Sym("b"), Sym("s")), DType.I64))
    w = b.const("w", np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4))
    written = b.scatter(cache, pos, C.linear(b, x, w), axis=1)
    b.output("y", C.softmax(b, b.reduce(Op.SUM, written, 2), -1))
    return b.finish()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    graph = _graph()
    return graph, CBackend().prepare(graph, cache_dir=tmp_path_factory.mktemp("cache"), threads=1)


def _feeds(rng, batch=2, seq=3):
    return {"x": rng.standard_normal((batch, seq, 4)).astype(np.float32),
            "pos": np.stack([rng.permutation(6)[:seq] for _ in range(batch)]),
            "cache": rng.standard_normal((batch, 6, 4)).astype(np.float32)}


@pytest.mark.parametrize("path", ["host", "generic"])
def test_both_paths_match_the_reference_and_write_the_state_in_place(compiled, path, rng):
    graph, runner = compiled
    module = runner.module
    allocator = HostAllocator() if path == "host" else CountingHostAllocator()
    executor = ProgramExecutor(module.program, module.weights, allocator, module.launcher)
    assert executor._host is (path == "host")
    for batch, seq in ((2, 3), (1, 5), (3, 1)):      # several bindings: several arena plans
        feeds = _feeds(rng, batch, seq)
        reference_cache = feeds["cache"].copy()
        want = run_graph(graph, {**feeds, "cache": reference_cache})
        got = executor.run(feeds)
        np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(feeds["cache"], reference_cache, rtol=1e-5, atol=1e-6)
    if path == "generic":
        assert allocator.back == 3 * 2                # per run: the output and the state came back


def test_binding_refuses_bad_calls_with_one_line_errors(compiled, rng):
    _, runner = compiled
    feeds = _feeds(rng)
    with pytest.raises(ShapeError, match="missing input 'pos'"):
        runner.run({k: v for k, v in feeds.items() if k != "pos"})
    with pytest.raises(ShapeError, match=r"input 'x' has shape \(2, 3, 5\)"):
        runner.run({**feeds, "x": np.zeros((2, 3, 5), np.float32)})
    with pytest.raises(ShapeError, match=r"unknown input\(s\) \['z'\]"):
        runner.run({**feeds, "z": 1})
    with pytest.raises(ShapeError, match="state 'cache' must be a writeable C-contiguous f32"):
        runner.run({**feeds, "cache": np.asfortranarray(np.zeros((2, 6, 4), np.float32))[:, ::1]})
