"""What a user sees when an ONNX model cannot be imported: named ops, nodes, opsets and files."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")

import onnx  # noqa: E402
from onnx import TensorProto  # noqa: E402
from onnx.helper import make_node as node  # noqa: E402
from onnx_compare import declare_output_shapes, model  # noqa: E402

import dnet  # noqa: E402
from dnet.errors import DnetError, DTypeError, ShapeError, UnsupportedOpError  # noqa: E402

X = {"x": (np.float32, ["batch", 4])}


def test_unsupported_ops_are_named_with_node_and_opset_before_any_node_is_built():
    nodes = [node("Reshape", ["x", "x"], ["bad"], name="fails_if_built"),  # would fail: a float shape
             node("Einsum", ["x", "x"], ["e"], name="my_einsum", equation="ij,ij->i"),
             node("NonZero", ["x"], ["y"], name="nz")]
    with pytest.raises(UnsupportedOpError) as err:
        dnet.from_onnx(model(nodes, X, {"y": TensorProto.INT64}))
    text = str(err.value)
    assert "ONNX op 'Einsum' (node 'my_einsum', opset 17) has no dnet rule" in text
    assert "also unsupported: NonZero" in text


def test_an_unsupported_opset_is_named():
    with pytest.raises(UnsupportedOpError, match=r"ONNX opset 9 .*dnet reads opsets 11 to 21"):
        dnet.from_onnx(model([node("Relu", ["x"], ["y"])], X, ["y"], opset=9))


def test_a_shape_computed_from_tensor_data_names_the_node():
    nodes = [node("Reshape", ["x", "s"], ["y"], name="/encoder/layer.0/Reshape")]
    proto = model(nodes, {"x": (np.float32, [2, 4]), "s": (np.int64, [2])}, ["y"])
    declare_output_shapes(proto, [(4, 2)])
    with pytest.raises(UnsupportedOpError) as err:
        dnet.from_onnx(proto)
    text = str(err.value)
    assert "Reshape node '/encoder/layer.0/Reshape' (opset 17): its shape is computed from tensor data" in text
    assert "in 'encoder.layer.0'" in text


def test_an_output_dnet_does_not_compute_is_named():
    nodes = [node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2])]
    proto = model(nodes, {"x": (np.float32, [1, 1, 4, 4])}, {"y": TensorProto.FLOAT, "idx": TensorProto.INT64})
    declare_output_shapes(proto, [(1, 1, 3, 3), (1, 1, 3, 3)])
    with pytest.raises(UnsupportedOpError, match="output 'idx' is MaxPool's indices"):
        dnet.from_onnx(proto)


def test_unsupported_attributes_say_why():
    nodes = [node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], ceil_mode=1, name="pool")]
    proto = model(nodes, {"x": (np.float32, [1, 1, 5, 5])}, ["y"])
    declare_output_shapes(proto, [(1, 1, 3, 3)])
    with pytest.raises(UnsupportedOpError, match=r"MaxPool node 'pool' \(opset 17\): MaxPool with ceil_mode"):
        dnet.from_onnx(proto)


def test_an_input_without_sizes_asks_for_input_types_and_a_wrong_name_is_caught():
    proto = model([node("Relu", ["input_ids"], ["y"])], {"input_ids": (np.float32, [None, 4])}, ["y"])
    declare_output_shapes(proto, [(2, 4)])
    with pytest.raises(ShapeError, match="input 'input_ids': dim 0 has neither a size nor a name.*input_types"):
        dnet.from_onnx(proto)
    with pytest.raises(DnetError, match="input_types names 'input_id', which is not an input.*did you mean"):
        dnet.from_onnx(proto, input_types={"input_id": dnet.TensorType((2, 4), dnet.f32)})


def test_a_declared_output_shape_dnet_disagrees_with_is_an_error():
    proto = model([node("Flatten", ["x"], ["y"], axis=0)], {"x": (np.float32, [2, 4])}, ["y"])
    declare_output_shapes(proto, [(2, 4)])  # Flatten(axis=0) is (1, 8)
    with pytest.raises(ShapeError, match=r"output 'y': dnet built \(1, 8\), the model declares \(2, 4\)"):
        dnet.from_onnx(proto)
    proto = model([node("Relu", ["x"], ["y"])], X, ["y"])
    declare_output_shapes(proto, [("batch", 5)])
    with pytest.raises(ShapeError, match=r"dnet built \(batch, 4\), the model declares \(batch, 5\)"):
        dnet.from_onnx(proto)


def test_bad_files_are_named(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07\xff\xff not a protobuf")
    with pytest.raises(DnetError, match=f"{garbage}"):
        dnet.from_onnx(garbage)
    with pytest.raises(DnetError, match="no such ONNX file: .*missing.onnx"):
        dnet.from_onnx(tmp_path / "missing.onnx")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(DnetError, match=f"{empty} holds no ONNX graph"):
        dnet.from_onnx(empty)


def test_a_malformed_graph_is_named(tmp_path):
    proto = model([node("Relu", ["nowhere"], ["y"], name="r")], X, ["y"])
    path = tmp_path / "broken.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(DnetError, match=f"{path}: Relu node 'r' reads 'nowhere', which nothing defines"):
        dnet.from_onnx(path)


def test_a_weight_of_a_dtype_dnet_lacks_is_named_when_used():
    proto = model([node("Add", ["x", "w"], ["y"], name="add")], {"x": (np.float32, [2])}, ["y"],
                  {"w": np.zeros(2, np.float64)})
    with pytest.raises(DTypeError, match="Add node 'add' .*value 'w' has dtype float64, which dnet does not compute"):
        dnet.from_onnx(proto)


def test_without_the_onnx_package_the_error_says_what_to_install(monkeypatch):
    import sys

    for name in [m for m in sys.modules if m.startswith("dnet.frontend.onnx_import")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "onnx", None)  # what `import onnx` meets when it is not installed
    with pytest.raises(DnetError, match=r"dnet.from_onnx needs the onnx package \(pip install 'dnet\[onnx\]'\)"):
        dnet.from_onnx("model.onnx")
