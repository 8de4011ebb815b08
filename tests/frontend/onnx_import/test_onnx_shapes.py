"""Shape arithmetic as exporters write it, folded at import on symbolic dims, then run at two sizes vs ORT."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, numpy_helper  # noqa: E402
from onnx.helper import make_node as node  # noqa: E402
from onnx_compare import declare_output_shapes, dnet_run, model, ort_run  # noqa: E402

import dnet  # noqa: E402
from dnet.core.shapes import Sym  # noqa: E402
from dnet.graph.ops import Op  # noqa: E402

I64 = np.int64


def _const(name, value):
    return node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, I64)))


def heads_model():
    """x (batch, seq, 8) -> split into 2 heads by a computed shape, transposed, merged back, plus a position
    ramp from Range(seq) and a bias expanded to a shape picked by Where(Equal(shape, -1), 1, shape)."""
    nodes = [
        node("Shape", ["x"], ["shape"]),
        _const("zero", 0), _const("one", 1), _const("axis0", [0]), _const("minus1", [-1]), _const("heads", [2]),
        node("Gather", ["shape", "zero"], ["batch"], axis=0),
        node("Gather", ["shape", "one"], ["seq"], axis=0),
        node("Unsqueeze", ["batch", "axis0"], ["batch1"]),
        node("Unsqueeze", ["seq", "axis0"], ["seq1"]),
        node("Concat", ["batch1", "seq1", "heads", "minus1"], ["split_shape"], axis=0),
        node("Reshape", ["x", "split_shape"], ["split"]),
        node("Transpose", ["split"], ["t"], perm=[0, 2, 1, 3]),
        node("Transpose", ["t"], ["back"], perm=[0, 2, 1, 3]),
        node("Slice", ["shape", "axis0", "heads", "axis0"], ["lead"]),  # shape[0:2]
        node("Concat", ["lead", "minus1"], ["merge_shape"], axis=0),
        node("Reshape", ["back", "merge_shape"], ["merged"]),
        node("Range", ["zero", "seq", "one"], ["positions"]),
        node("Cast", ["positions"], ["pos_f"], to=TensorProto.FLOAT),
        node("Unsqueeze", ["pos_f", "minus1"], ["pos_col"]),
        node("Add", ["merged", "pos_col"], ["y"]),
        node("Concat", ["batch1", "minus1", "seq1"], ["wanted"], axis=0),
        node("ConstantOfShape", ["heads"], ["ones"], value=numpy_helper.from_array(np.array([1], I64))),
        node("Shape", ["wanted"], ["n_wanted"]),
        node("ConstantOfShape", ["n_wanted"], ["ones3"], value=numpy_helper.from_array(np.array([1], I64))),
        node("Mul", ["ones3", "minus1"], ["neg3"]),
        node("Equal", ["wanted", "neg3"], ["is_open"]),
        node("Where", ["is_open", "ones3", "wanted"], ["expand_shape"]),
        node("ReduceSum", ["y", "minus1"], ["row"], keepdims=1),
        node("Expand", ["row", "expand_shape"], ["z"]),
    ]
    proto = model(nodes, {"x": (np.float32, ["batch", "seq", 8])}, ["y", "z"])
    declare_output_shapes(proto, [("batch", "seq", 8), ("batch", "seq", "seq")])
    return proto


def test_shapes_fold_to_symbolic_dims_without_shape_ops_in_the_graph():
    graph = dnet.from_onnx(heads_model())
    assert graph.input_types()["x"].shape == (Sym("batch"), Sym("seq"), 8)
    assert graph.output_types()["y"].shape == (Sym("batch"), Sym("seq"), 8)
    assert graph.output_types()["z"].shape == (Sym("batch"), Sym("seq"), Sym("seq"))
    reshapes = [n.attrs["shape"] for n in graph.nodes if n.op is Op.RESHAPE]
    assert (Sym("batch"), Sym("seq"), 2, 4) in reshapes  # the -1 solved as 8 / 2 on symbolic sizes
    assert any(n.op is Op.ARANGE and n.attrs["stop"] == Sym("seq") for n in graph.nodes)


def test_one_import_runs_at_two_sizes_like_onnx_runtime():
    proto = heads_model()
    exe = dnet.compile(dnet.from_onnx(proto))
    for batch, seq in ((2, 3), (1, 6)):
        x = np.random.default_rng(seq).standard_normal((batch, seq, 8)).astype(np.float32)
        want = ort_run(proto, {"x": x})
        for got, ref in zip(dnet_run(exe, {"x": x}), want):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_input_types_fix_a_dim_and_name_a_blank_one():
    proto = model([node("Relu", ["x"], ["y"])], {"x": (np.float32, [None, 4])}, ["y"])
    declare_output_shapes(proto, [(3, 4)])
    graph = dnet.from_onnx(proto, input_types={"x": dnet.TensorType((Sym("rows"), 4), dnet.f32)})
    assert graph.input_types()["x"].shape == (Sym("rows"), 4)
