import hashlib
import json
import os

import numpy as np
import pytest
from graph_strategies import every_op_graph, random_graphs
from hypothesis import given, settings
from hypothesis import strategies as st

from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.shapes import Sym
from dnet.core.types import TensorType
from dnet.errors import SerializationError
from dnet.graph.analysis import cut_points
from dnet.graph.builder import GraphBuilder
from dnet.graph.ir import Graph
from dnet.graph.ops import Op
from dnet.graph.serialize import (GRAPH_FILE, WEIGHTS_FILE, boundary_name, dumps, load, loads, save, subgraph,
                                  weight_hash)

f32 = DType.F32
fast = settings(max_examples=30, deadline=None)


def assert_identical(a: Graph, b: Graph) -> None:
    """Same text, same attribute values down to their Python types, same weights bit for bit."""
    assert str(b) == str(a)
    for m, n in zip(a.nodes, b.nodes):
        assert (n.op, n.inputs, n.type, n.name) == (m.op, m.inputs, m.type, m.name)
        assert repr(n.attrs) == repr(m.attrs) and n.attr_key() == m.attr_key()  # tuple vs list, -0.0, nan
    assert (b.inputs, b.outputs, b.output_names) == (a.inputs, a.outputs, a.output_names)
    assert a.weights.keys() == b.weights.keys()
    for name, w in a.weights.items():
        assert b.weights[name].dtype == w.dtype and b.weights[name].tobytes() == w.tobytes()


def assert_same_results(a: Graph, b: Graph, feeds) -> None:
    want, got = run_graph(a, feeds), run_graph(b, feeds)
    for name in a.output_names:
        assert got[name].dtype == want[name].dtype
        np.testing.assert_array_equal(got[name], want[name])


def _residual() -> Graph:
    """h = tanh(x); s = relu(h @ w1) @ w2 + h; y = tanh(s); aux = s @ w2 (under a second name)."""
    b = GraphBuilder()
    h = b.unary(Op.TANH, b.input("x", TensorType((Sym("batch"), 8), f32)))
    w = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    r = b.elementwise(Op.MAX, b.matmul(h, b.const("w1", w)), 0.0)
    y = b.elementwise(Op.ADD, b.matmul(r, b.const("w2", w * 2)), h)
    b.output("y", b.unary(Op.TANH, y))
    b.output("aux", b.matmul(y, b.const("w2.copy", w * 2)))
    return b.finish()


# -- round trips ----------------------------------------------------------------------------------

def test_every_op_and_dtype_round_trips():
    g, feeds = every_op_graph()
    assert {n.op for n in g.nodes} == set(Op)
    assert {n.dtype for n in g.nodes} == set(DType)
    doc, blobs = dumps(g)
    back = loads(doc, blobs)
    assert_identical(g, back)
    assert_same_results(g, back, feeds)


def test_floats_lists_and_symbolic_dims_keep_their_exact_values():
    b = GraphBuilder()
    n = Sym("n")
    x = b.input("x", TensorType((n, 2), f32))
    fills = [b.full((n * 2 + 1,), v, f32) for v in (float("nan"), -0.0, float("inf"), -float("inf"), 0.1)]
    b.output("cat", b.node(Op.CONCAT, fills, axis=0))
    b.output("t", b.node(Op.PERMUTE, [x], perm=[1, 0]))  # a list, not a tuple
    b.output("pad", b.node(Op.PAD, [x], pads=((1, 0), (0, 2)), value=-float("inf")))
    g = b.finish()
    back = loads(*dumps(g))
    assert_identical(g, back)
    assert back.nodes[2].attrs["value"] == 0.0 and str(back.nodes[2].attrs["value"]) == "-0.0"
    assert back.nodes[1].attrs["shape"] == (2 * n + 1,)
    assert_same_results(g, back, {"x": np.ones((3, 2), np.float32)})


@fast
@given(random_graphs())
def test_random_graphs_round_trip(case):
    graph, feeds = case
    back = loads(*dumps(graph))
    assert_identical(graph, back)
    assert_same_results(graph, back, feeds)


def test_a_weight_travels_once_by_content_hash():
    g = _residual()
    doc, blobs = dumps(g)
    names = json.loads(doc)["graph"]["weights"]
    assert names["w2"] == names["w2.copy"] != names["w1"]
    assert sorted(blobs) == sorted({names["w1"], names["w2"]})
    assert names["w1"] == hashlib.sha256(b"f32[8, 8]" + g.weights["w1"].tobytes()).hexdigest()


def test_the_hash_covers_dtype_and_shape():
    zeros = np.zeros(4, np.float32)
    assert len({weight_hash(zeros), weight_hash(zeros.view(np.int32)), weight_hash(zeros.reshape(2, 2))}) == 3


# -- files ----------------------------------------------------------------------------------------

def test_save_and_load_a_directory(tmp_path):
    g, feeds = every_op_graph()  # bf16 weights included: safetensors' numpy side lacks bf16
    save(g, tmp_path / "piece")
    assert sorted(os.listdir(tmp_path / "piece")) == [GRAPH_FILE, WEIGHTS_FILE]
    back = load(tmp_path / "piece")
    assert_identical(g, back)
    assert_same_results(g, back, feeds)


def test_a_failed_save_leaves_the_old_files_whole(tmp_path, monkeypatch):
    save(_residual(), tmp_path)
    before = {f: (tmp_path / f).read_bytes() for f in (GRAPH_FILE, WEIGHTS_FILE)}

    def no_rename(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="disk full"):
        save(every_op_graph()[0], tmp_path)
    assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == before  # no temp file left
    monkeypatch.undo()
    assert_identical(_residual(), load(tmp_path))


# -- bad input ------------------------------------------------------------------------------------

def _reseal(outer: dict) -> bytes:
    """A document whose checksum matches its (edited) content: it reaches the structural checks."""
    body = json.dumps(outer["graph"], separators=(",", ":"))
    outer["sha256"] = hashlib.sha256(body.encode()).hexdigest()
    return json.dumps(outer).encode()


def _edited(edit) -> bytes:
    doc, _ = dumps(_residual())
    outer = json.loads(doc)
    edit(outer["graph"])
    return _reseal(outer)


def _fails(doc, blobs, message):
    with pytest.raises(SerializationError) as e:
        loads(doc, blobs)
    assert message in str(e.value)


def test_a_truncated_document_is_rejected():
    doc, blobs = dumps(_residual())
    _fails(doc[: len(doc) // 2], blobs, "graph document is not valid JSON (truncated or corrupted?)")
    _fails(b"\xff\xfe", blobs, "not valid JSON")
    _fails(doc.replace(b'"version":1', b'"version":NaN'), blobs, "not valid JSON")
    _fails(doc.replace(b'"version":1', b'"version":1e999'), blobs, "not valid JSON")


def test_a_corrupted_document_is_rejected_by_its_checksum():
    doc, blobs = dumps(_residual())
    corrupted = doc.replace(b'"shape":[8,8]', b'"shape":[8,9]', 1)
    assert corrupted != doc
    _fails(corrupted, blobs, "graph document is corrupted: its content does not match its sha256")


def test_another_format_or_version_is_rejected():
    doc, blobs = dumps(_residual())
    _fails(b'{"nodes": []}', blobs, "not a dnet-graph document")
    _fails(doc.replace(b'"version":1', b'"version":9'), blobs, "dnet-graph version 9, this dnet reads version 1")


def test_a_missing_or_mismatched_weight_is_named():
    g = _residual()
    doc, blobs = dumps(g)
    digest = weight_hash(g.weights["w1"])
    _fails(doc, {h: a for h, a in blobs.items() if h != digest}, f"missing weight 'w1' (sha256 {digest})")
    tampered = {**blobs, digest: g.weights["w1"] + 1}
    _fails(doc, tampered, f"weight 'w1' does not match its hash: expected sha256 {digest}")


@pytest.mark.parametrize("edit, message", [
    (lambda body: body["nodes"][2].update(op="matmull"), "node %2: unknown op 'matmull' (did you mean 'matmul'?)"),
    (lambda body: body["nodes"][2].pop("type"), "node %2: malformed entry (KeyError: 'type')"),
    (lambda body: body["nodes"][2].update(inputs=[1, "a"]), "the inputs of node %2 should be node ids"),
    (lambda body: body["nodes"][2]["attrs"].update(x={"complex": 1}), "unknown tagged value"),
    (lambda body: body["nodes"][3].update(inputs=[1, 9]),
     "describes an invalid graph: %3 = matmul: input(s) %9 do not come before the node"),
    (lambda body: body.update(outputs="all"), "'outputs' should be a list"),
    (lambda body: body["weights"].update(w1=[1]), "weight 'w1' should name a sha256, got [1]"),
])
def test_a_well_sealed_but_malformed_document_is_rejected(edit, message):
    blobs = dumps(_residual())[1]
    _fails(_edited(edit), blobs, message)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 20) | st.floats(allow_nan=False) | st.text(max_size=3),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2),
                    max_leaves=6)


@fast
@given(st.integers(0, 10), st.sampled_from(["op", "inputs", "attrs", "type", "name"]), JSON)
def test_loads_never_fails_with_anything_but_a_serialization_error(node, field, value):
    blobs = dumps(_residual())[1]
    doc = _edited(lambda body: body["nodes"][node].update({field: value}))
    try:
        loads(doc, blobs)
    except SerializationError:
        pass


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(SerializationError, match=f"cannot read {tmp_path / GRAPH_FILE}"):
        load(tmp_path)
    save(_residual(), tmp_path)
    (tmp_path / WEIGHTS_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(SerializationError, match=f"cannot read {tmp_path / WEIGHTS_FILE}"):
        load(tmp_path)


def test_an_attribute_json_cannot_hold_is_named():
    b = GraphBuilder()
    x = b.input("x", TensorType((2,), f32))
    b.output("y", b.node(Op.PAD, [x], pads=((1, 1),), value=np.float32(0.5)))
    with pytest.raises(SerializationError, match=r"%1 = pad, attribute 'value': cannot serialise a float32"):
        dumps(b.finish())


# -- subgraphs ------------------------------------------------------------------------------------

def run_in_pieces(graph: Graph, pieces: list[Graph], feeds) -> dict:
    """Each piece travels (dumps/loads), runs on what the earlier ones produced, and adds its outputs."""
    values = dict(feeds)
    for piece in pieces:
        piece = loads(*dumps(piece))
        values.update(run_graph(piece, {name: values[name] for name in piece.input_names}))
    return {name: values[name] for name in graph.output_names}


def test_pieces_cut_at_the_cut_points_compose_to_the_whole():
    g = _residual()
    cuts = [(c.node, c.values) for c in cut_points(g)]
    # h crosses into the block, the residual sum out of it (to y and to aux)
    assert cuts == [(1, (1,)), (8, (8,)), (9, (8,))]
    bounds = [0] + [node + 1 for node, _ in cuts] + [len(g)]
    pieces = [subgraph(g, range(lo, hi)) for lo, hi in zip(bounds, bounds[1:])]
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    want = run_graph(g, {"x": x})
    got = run_in_pieces(g, pieces, {"x": x})
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    block = pieces[1]
    assert block.input_names == [boundary_name(1)] and block.output_names == [boundary_name(8)]
    assert sorted(block.weights) == ["w1", "w2"]


def test_a_piece_copies_the_constants_it_reads_and_keeps_graph_input_names():
    g = _residual()
    piece = subgraph(g, [5, 7])  # relu(h @ w1) @ w2, without the relu's 0 fill and w2
    assert piece.input_names == [boundary_name(3)]  # h @ w1 comes in; the fill and w2 are copied
    assert [n.op for n in piece.nodes] == [Op.INPUT, Op.FULL, Op.MAX, Op.CONST, Op.MATMUL]
    assert piece.output_names == [boundary_name(7)] and list(piece.weights) == ["w2"]
    first = subgraph(g, [0, 1])
    assert first.input_names == ["x"] and first.output_names == [boundary_name(1)]


@fast
@given(random_graphs(symbolic=False), st.lists(st.floats(0, 1), max_size=4))
def test_random_graphs_split_anywhere_compose_to_the_whole(case, fractions):
    graph, feeds = case
    bounds = sorted({0, len(graph)} | {int(f * len(graph)) for f in fractions})
    pieces = [subgraph(graph, range(lo, hi)) for lo, hi in zip(bounds, bounds[1:])]
    got = run_in_pieces(graph, pieces, feeds)
    for name, want in run_graph(graph, feeds).items():
        np.testing.assert_array_equal(got[name], want)


def test_a_subgraph_of_unknown_nodes_is_rejected():
    with pytest.raises(SerializationError, match=r"subgraph: \[12\] are not node ids of a graph of 12 nodes"):
        subgraph(_residual(), [3, 12])


def test_a_truncated_weights_file_is_named(tmp_path):
    save(_residual(), tmp_path)
    data = (tmp_path / WEIGHTS_FILE).read_bytes()
    (tmp_path / WEIGHTS_FILE).write_bytes(data[:-4])
    with pytest.raises(SerializationError, match="does not fit its byte range"):
        load(tmp_path)
