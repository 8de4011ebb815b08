"""STATE inputs and SCATTER writes in the graph IR, on the numpy reference: hand-derived results."""
import numpy as np
import pytest

from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.shapes import Sym
from dnet.core.types import TensorType
from dnet.errors import DTypeError, ShapeError
from dnet.graph.analysis import verify
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op

B, S = Sym("batch"), Sym("seq")


def _cache_graph():
    b = GraphBuilder()
    cache = b.state("cache", TensorType((B, 6, 2), DType.F32))
    pos = b.input("pos", TensorType((B, S), DType.I64))
    new = b.input("new", TensorType((B, S, 2), DType.F32))
    written = b.scatter(cache, pos, new, axis=1)
    b.output("total", b.reduce(Op.SUM, written, (1, 2)))
    return b.finish()


def test_scatter_writes_the_callers_state_in_place_and_reads_it_back():
    g = _cache_graph()
    verify(g)
    cache = np.zeros((2, 6, 2), np.float32)
    cache[1, 0] = 100.0                                   # an earlier token of sequence 1
    new = np.arange(2 * 2 * 2, dtype=np.float32).reshape(2, 2, 2) + 1
    out = run_graph(g, {"cache": cache, "pos": np.array([[0, 1], [4, 5]]), "new": new})
    expected = np.zeros((2, 6, 2), np.float32)
    expected[1, 0] = 100.0
    expected[0, 0:2], expected[1, 4:6] = new[0], new[1]
    np.testing.assert_array_equal(cache, expected)        # written where the positions say, nowhere else
    np.testing.assert_array_equal(out["total"], expected.sum((1, 2)))


def test_a_state_must_be_a_writeable_contiguous_array_of_its_dtype():
    g = _cache_graph()
    feeds = {"pos": np.zeros((1, 1), np.int64), "new": np.zeros((1, 1, 2), np.float32)}
    with pytest.raises(ShapeError, match="state 'cache' must be a writeable C-contiguous f32"):
        run_graph(g, {**feeds, "cache": np.zeros((1, 6, 2), np.float64)})
    with pytest.raises(ShapeError, match="state 'cache'"):
        run_graph(g, {**feeds, "cache": np.zeros((1, 2, 6), np.float32).transpose(0, 2, 1)})


def test_scatter_rejects_positions_outside_the_destination():
    g = _cache_graph()
    with pytest.raises(ShapeError, match=r"scatter: index out of range \[0, 6\)"):
        run_graph(g, {"cache": np.zeros((1, 6, 2), np.float32), "pos": np.array([[6]]),
                      "new": np.zeros((1, 1, 2), np.float32)})


def test_scatter_shapes_and_dtypes_are_checked_when_built():
    b = GraphBuilder()
    cache = b.state("cache", TensorType((2, 6, 2), DType.F32))
    with pytest.raises(ShapeError, match="do not fit along axis 1"):
        b.scatter(cache, b.input("pos", TensorType((2, 3), DType.I64)), b.input("v", TensorType((2, 3, 4), DType.F32)), 1)
    with pytest.raises(DTypeError, match="scatter: values are f16"):
        b.scatter(cache, b.input("p2", TensorType((2, 3), DType.I64)), b.input("v2", TensorType((2, 3, 2), DType.F16)), 1)
