"""Convolution and pooling (padding, stride, dilation, groups) against the reference backend."""
import numpy as np
import pytest

from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op

from c_support import assert_matches_reference


@pytest.fixture(scope="module")
def cnn(compile_c):
    rng = np.random.default_rng(3)
    g = GraphBuilder()
    x = g.input("x", TensorType((2, 4, 11, 9), DType.F32))
    w = g.const("w", rng.standard_normal((6, 2, 3, 3)).astype(np.float32))
    bias = g.const("bias", rng.standard_normal((1, 6, 1, 1)).astype(np.float32))
    conv = g.node(Op.CONV2D, [x, w], stride=(2, 1), padding=(1, 0, 2, 1), dilation=(1, 2), groups=2)
    relu = g.elementwise(Op.MAX, g.elementwise(Op.ADD, conv, bias), 0.0)
    g.output("conv", relu)
    g.output("max", g.node(Op.MAXPOOL2D, [x], kernel=(3, 2), stride=(2, 2), padding=(1, 1, 1, 1)))
    g.output("avg", g.node(Op.AVGPOOL2D, [x], kernel=(2, 3), stride=(1, 2), padding=(0, 1, 1, 1),
                          count_include_pad=False))
    g.output("avg_pad", g.node(Op.AVGPOOL2D, [x], kernel=(2, 2), stride=(2, 2), padding=(1, 1, 0, 0),
                              count_include_pad=True))
    graph = g.finish()
    return graph, compile_c(graph)


@pytest.mark.parametrize("seed", [0, 1])
def test_conv_and_pools_match_reference(cnn, seed):
    graph, runner = cnn
    x = np.random.default_rng(seed).standard_normal((2, 4, 11, 9)).astype(np.float32)
    assert_matches_reference(runner, graph, {"x": x}, rtol=1e-5, atol=1e-5)
