"""Cutting a graph into pipeline stages: chained, the stages compute what the graph computes."""
import numpy as np
import pytest

import dnet
from dnet import functional as F
from dnet.backends.numpy import run_graph
from dnet.errors import DnetError
from dnet.graph.ops import Op
from dnet.runtime import StageRunner, contiguous_assignment, split_pipeline


class Block(dnet.Module):
    def __init__(self, rng, d):
        super().__init__()
        self.w = dnet.Parameter((rng.standard_normal((d, d)) / d ** 0.5).astype(np.float32))

    def forward(self, x, mask):
        return x + F.softmax(F.matmul(x, self.w) + mask, -1)


class Net(dnet.Module):
    def __init__(self, rng, d=8, depth=4):
        super().__init__()
        self.blocks = dnet.ModuleList([Block(rng, d) for _ in range(depth)])

    def forward(self, x, mask):
        for block in self.blocks:
            x = block(x, mask)
        return x


class Flattened(dnet.Module):
    """Works on (batch*seq, d) rows: a stage in the middle sees no bare `batch` or `seq`."""

    def __init__(self, rng, d=8):
        super().__init__()
        self.a = dnet.Parameter(rng.standard_normal((d, d)).astype(np.float32))
        self.b = dnet.Parameter(rng.standard_normal((d, d)).astype(np.float32))

    def forward(self, x):
        b, t, d = x.shape
        rows = F.matmul(F.reshape(x, (b * t, d)), self.a)
        return F.reshape(F.tanh(F.matmul(rows, self.b)), (b, t, d))


def _chain(stages, inputs):
    values = dict(inputs)
    for stage in stages:
        values.update(run_graph(stage, {n: values[n] for n in stage.input_names}))
    return {n: values[n] for n in stages[-1].output_names}


def _net_graph(rng):
    t = dnet.TensorType(("batch", "seq", 8), dnet.f32)
    return dnet.to_graph(Net(rng), {"x": t, "mask": t})


@pytest.mark.parametrize("n_stages", [1, 2, 3, 5])
def test_chained_stages_compute_what_the_whole_graph_computes(rng, n_stages):
    graph = _net_graph(rng)
    stages = split_pipeline(graph, contiguous_assignment(graph, [1.0] * n_stages))
    assert len(stages) == n_stages
    for shape in [(1, 1, 8), (2, 5, 8)]:
        inputs = {"x": rng.standard_normal(shape).astype(np.float32),
                  "mask": rng.standard_normal(shape).astype(np.float32)}
        np.testing.assert_array_equal(_chain(stages, inputs)["output"], run_graph(graph, inputs)["output"])


def test_each_stage_receives_only_what_crosses_into_it_and_the_mask_passes_through(rng):
    graph = _net_graph(rng)
    stages = split_pipeline(graph, contiguous_assignment(graph, [1, 1, 1]))
    assert stages[0].input_names == ["x", "mask"]
    for before, after in zip(stages, stages[1:]):
        assert before.output_names == after.input_names
        assert "mask" in after.input_names  # every block reads it, so it travels along
    assert stages[-1].output_names == ["output"]
    weights = [set(s.weights) for s in stages]
    assert set().union(*weights) == set(graph.weights) and sum(map(len, weights)) == len(graph.weights)


def test_a_stage_that_sees_only_compound_dims_also_receives_the_input_that_binds_them(rng):
    m = Flattened(rng)
    graph = dnet.to_graph(m, [dnet.TensorType(("batch", "seq", 8), dnet.f32)])
    matmuls = [n.id for n in graph.nodes if n.op is Op.MATMUL]
    stage_of = [0 if i <= matmuls[0] else 1 for i in range(len(graph.nodes))]
    first, second = split_pipeline(graph, stage_of)
    assert "x" in second.input_names  # binds batch and seq for the final reshape
    x = rng.standard_normal((3, 2, 8)).astype(np.float32)
    expected = np.tanh(x.reshape(6, 8) @ m.a.data @ m.b.data).reshape(3, 2, 8)
    np.testing.assert_allclose(_chain([first, second], {"x": x})["output"], expected, rtol=1e-5, atol=1e-6)


def test_an_assignment_against_the_data_flow_is_refused(rng):
    graph = _net_graph(rng)
    last = max(n.id for n in graph.nodes if n.op is Op.MATMUL)
    stage_of = [1 if n.id < last else 0 for n in graph.nodes]
    with pytest.raises(DnetError, match=r"reads %\d+ from the later stage 1"):
        split_pipeline(graph, stage_of)


def test_contiguous_assignment_gives_stages_shares_of_the_flops(rng):
    graph = _net_graph(rng)  # four identical blocks
    stage_of = contiguous_assignment(graph, [1, 1])
    matmul_stages = [stage_of[n.id] for n in graph.nodes if n.op is Op.MATMUL]
    assert matmul_stages == [0, 0, 1, 1]
    stage_of = contiguous_assignment(graph, [3, 1])
    assert [stage_of[n.id] for n in graph.nodes if n.op is Op.MATMUL] == [0, 0, 0, 1]
    with pytest.raises(DnetError, match="shares must be positive"):
        contiguous_assignment(graph, [1, 0])


def test_a_stage_runner_runs_its_stage_and_counts_runs(rng):
    graph = _net_graph(rng)
    runner = StageRunner(graph, "numpy")
    inputs = {"x": np.ones((1, 2, 8), np.float32), "mask": np.zeros((1, 2, 8), np.float32)}
    out, seconds = runner(inputs)
    np.testing.assert_array_equal(out["output"], run_graph(graph, inputs)["output"])
    assert seconds > 0 and runner.stats.runs == 1
