"""Each supported ONNX op in a small hand-built graph, against ONNX Runtime (broadcasting, negative axes)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, numpy_helper  # noqa: E402
from onnx.helper import make_node as node  # noqa: E402
from onnx_compare import assert_matches_ort, model  # noqa: E402

F32, I64, BOOL = np.float32, np.int64, np.bool_
rng = np.random.default_rng(0)


def f32(*shape, positive=False):
    x = rng.standard_normal(shape).astype(F32)
    return np.abs(x) + 0.1 if positive else x


def _case(op, inputs: dict, attrs=None, out=TensorProto.FLOAT, opset=17, inits=None, outputs=1):
    """One node `op` over graph inputs (name -> array) and initializers, read in that order."""
    inits = inits or {}
    names = list(inputs) + list(inits)
    outs = [f"y{i}" for i in range(outputs)]
    nodes = [node(op, names, outs, **(attrs or {}))]
    types = {n: (a.dtype, list(a.shape)) for n, a in inputs.items()}
    return model(nodes, types, {o: out for o in outs}, inits, opset), inputs


BINARY = ["Add", "Sub", "Mul", "Div", "Max", "Min"]


@pytest.mark.parametrize("op", BINARY)
def test_binary_ops_broadcast_numpy_style(op):
    assert_matches_ort(*_case(op, {"a": f32(3, 1, 4), "b": f32(5, 1, positive=True)}))


def test_pow_and_variadic_max():
    assert_matches_ort(*_case("Pow", {"a": f32(2, 3, positive=True), "b": f32(3)}))
    assert_matches_ort(*_case("Max", {"a": f32(2, 3), "b": f32(3), "c": f32(1, 1)}))


@pytest.mark.parametrize("op", ["Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"])
def test_comparisons_give_bool(op):
    a = rng.integers(0, 3, (4, 3)).astype(I64)
    assert_matches_ort(*_case(op, {"a": a, "b": rng.integers(0, 3, (3,)).astype(I64)}, out=TensorProto.BOOL))


@pytest.mark.parametrize("op", ["And", "Or"])
def test_logic(op):
    assert_matches_ort(*_case(op, {"a": rng.random((2, 3)) > 0.5, "b": rng.random((1, 3)) > 0.5},
                              out=TensorProto.BOOL))
    assert_matches_ort(*_case("Not", {"a": rng.random((2, 3)) > 0.5}, out=TensorProto.BOOL))


UNARY = ["Exp", "Tanh", "Erf", "Sin", "Cos", "Abs", "Neg", "Floor", "Ceil", "Sigmoid", "Relu", "LeakyRelu",
         "Identity"]


@pytest.mark.parametrize("op", UNARY)
def test_unary_ops(op):
    assert_matches_ort(*_case(op, {"x": f32(2, 3, 4) * 2}))


@pytest.mark.parametrize("op", ["Sqrt", "Log", "Reciprocal"])
def test_unary_ops_on_positive_inputs(op):
    assert_matches_ort(*_case(op, {"x": f32(2, 5, positive=True)}))


def test_gelu_both_forms_and_isnan():
    assert_matches_ort(*_case("Gelu", {"x": f32(3, 4)}, opset=20))
    assert_matches_ort(*_case("Gelu", {"x": f32(3, 4)}, {"approximate": "tanh"}, opset=20))
    x = f32(3, 4)
    x[1, 2] = np.nan
    assert_matches_ort(*_case("IsNaN", {"x": x}, out=TensorProto.BOOL))


def test_where_broadcasts_all_three():
    assert_matches_ort(*_case("Where", {"c": rng.random((3, 1)) > 0.5, "a": f32(1, 4), "b": f32(4)}))


def test_clip_with_one_and_both_bounds():
    x = {"x": f32(4, 5) * 3}
    assert_matches_ort(*_case("Clip", x, inits={"lo": np.array(-1, F32)}))
    assert_matches_ort(*_case("Clip", x, inits={"lo": np.array(-1, F32), "hi": np.array(0.5, F32)}))


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceL2"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reductions_over_negative_axes(op, keepdims):
    x = {"x": f32(2, 3, 4)}
    if op == "ReduceSum":  # axes are an input from opset 13, for the others from opset 18
        assert_matches_ort(*_case(op, x, {"keepdims": keepdims}, inits={"axes": np.array([-1, 0], I64)}))
    else:
        assert_matches_ort(*_case(op, x, {"keepdims": keepdims, "axes": [-1, 0]}))
        assert_matches_ort(*_case(op, x, {"keepdims": keepdims}, inits={"axes": np.array([-2], I64)}, opset=18))


def test_argmax():
    assert_matches_ort(*_case("ArgMax", {"x": f32(3, 5)}, {"axis": -1, "keepdims": 0}, out=TensorProto.INT64))


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_on_one_axis_and_old_flattening_form(op):
    assert_matches_ort(*_case(op, {"x": f32(2, 3, 4)}, {"axis": -2}))
    assert_matches_ort(*_case(op, {"x": f32(2, 3, 4)}, {"axis": 1}, opset=11))  # over axes 1 and 2 together


@pytest.mark.parametrize("axis", [-1, -2])
def test_layer_normalization(axis):
    shape = (4,) if axis == -1 else (3, 4)
    assert_matches_ort(*_case("LayerNormalization", {"x": f32(2, 3, 4)}, {"axis": axis, "epsilon": 1e-3},
                              inits={"w": f32(*shape), "b": f32(*shape)}))


def test_matmul_broadcasts_batch_dims_and_takes_vectors():
    assert_matches_ort(*_case("MatMul", {"a": f32(2, 1, 3, 4), "b": f32(5, 4, 6)}))
    assert_matches_ort(*_case("MatMul", {"a": f32(4), "b": f32(2, 4, 3)}))


def test_gemm_transposes_scales_and_broadcasts_c():
    assert_matches_ort(*_case("Gemm", {"a": f32(3, 4)}, {"transB": 1, "alpha": 0.5, "beta": 2.0},
                              inits={"w": f32(5, 4), "c": f32(5)}))
    assert_matches_ort(*_case("Gemm", {"a": f32(4, 3)}, {"transA": 1}, inits={"w": f32(4, 2)}))


def test_movement_ops():
    x = {"x": f32(2, 3, 4)}
    assert_matches_ort(*_case("Transpose", x, {"perm": [2, 0, 1]}))
    assert_matches_ort(*_case("Transpose", x))
    assert_matches_ort(*_case("Reshape", x, inits={"s": np.array([0, -1, 2], I64)}))
    assert_matches_ort(*_case("Flatten", x, {"axis": -1}))
    assert_matches_ort(*_case("Flatten", x, {"axis": 0}))
    assert_matches_ort(*_case("Unsqueeze", x, inits={"axes": np.array([-1, 1], I64)}))
    assert_matches_ort(*_case("Squeeze", {"x": f32(2, 1, 4, 1)}, inits={"axes": np.array([-1], I64)}))
    assert_matches_ort(*_case("Squeeze", {"x": f32(2, 1, 4, 1)}))
    assert_matches_ort(*_case("Concat", {"a": f32(2, 3), "b": f32(2, 1)}, {"axis": -1}))
    assert_matches_ort(*_case("Expand", {"x": f32(3, 1)}, inits={"s": np.array([2, 1, 4], I64)}))
    assert_matches_ort(*_case("Shape", x, {"start": -2}, out=TensorProto.INT64))
    assert_matches_ort(*_case("Size", x, out=TensorProto.INT64))


def test_slice_with_negative_bounds_axes_and_steps():
    x = {"x": f32(5, 6, 7)}
    bounds = {"starts": np.array([-4, 1], I64), "ends": np.array([2 ** 63 - 1, -1], I64),
              "axes": np.array([-1, 0], I64), "steps": np.array([2, 1], I64)}
    assert_matches_ort(*_case("Slice", x, inits=bounds))
    assert_matches_ort(*_case("Slice", x, inits={"starts": np.array([1], I64), "ends": np.array([3], I64)}))


def test_gather_with_negative_static_indices_and_tensor_indices():
    assert_matches_ort(*_case("Gather", {"x": f32(3, 5)}, {"axis": -1}, inits={"i": np.array([[-1, 0], [2, -3]])}))
    assert_matches_ort(*_case("Gather", {"t": f32(10, 4), "i": rng.integers(0, 10, (2, 3)).astype(I64)}))


def test_cast_pad_range_and_constant_of_shape():
    assert_matches_ort(*_case("Cast", {"x": f32(3, 4) * 5}, {"to": TensorProto.INT32}, out=TensorProto.INT32))
    assert_matches_ort(*_case("Cast", {"x": rng.integers(0, 9, (4,)).astype(I64)}, {"to": TensorProto.FLOAT}))
    assert_matches_ort(*_case("Pad", {"x": f32(2, 3)}, inits={"p": np.array([0, 1, 1, 2], I64),
                                                           "v": np.array(1.5, F32)}))
    rng_model, _ = _case("Range", {}, inits={"a": np.array(2, I64), "b": np.array(11, I64), "c": np.array(3, I64)},
                         out=TensorProto.INT64)
    assert_matches_ort(rng_model, {})
    fill = {"value": numpy_helper.from_array(np.array([7], I64))}
    assert_matches_ort(*_case("ConstantOfShape", {}, fill, inits={"s": np.array([2, 3], I64)},
                              out=TensorProto.INT64))


def test_dropout_is_the_identity_in_inference():
    assert_matches_ort(*_case("Dropout", {"x": f32(3, 4)}, inits={"r": np.array(0.5, F32)}))


# -- convolution and pooling ----------------------------------------------------------------------------------
def test_conv_with_groups_pads_strides_dilations_and_bias():
    attrs = {"group": 2, "pads": [1, 0, 2, 1], "strides": [2, 1], "dilations": [1, 2]}
    assert_matches_ort(*_case("Conv", {"x": f32(2, 4, 9, 8)}, attrs, inits={"w": f32(6, 2, 3, 3), "b": f32(6)}))
    assert_matches_ort(*_case("Conv", {"x": f32(1, 3, 5, 5)}, {"auto_pad": "VALID"}, inits={"w": f32(2, 3, 2, 2)}))


def test_pools():
    x = {"x": f32(2, 3, 7, 6)}
    assert_matches_ort(*_case("MaxPool", x, {"kernel_shape": [3, 2], "pads": [1, 0, 1, 1], "strides": [2, 2]}))
    for include in (0, 1):
        assert_matches_ort(*_case("AveragePool", x, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                                     "count_include_pad": include}))
    assert_matches_ort(*_case("GlobalAveragePool", x))
    assert_matches_ort(*_case("GlobalMaxPool", x))


def test_batch_normalization_with_static_and_tensor_statistics():
    stats = {"s": f32(3), "b": f32(3), "m": f32(3), "v": f32(3, positive=True)}
    assert_matches_ort(*_case("BatchNormalization", {"x": f32(2, 3, 4, 5)}, {"epsilon": 1e-3}, inits=stats))
    assert_matches_ort(*_case("BatchNormalization", {"x": f32(2, 3, 4, 5), **stats}))


def test_split_by_sizes_and_into_equal_parts_and_variadic_sum():
    assert_matches_ort(*_case("Split", {"x": f32(2, 7)}, {"axis": -1}, inits={"s": np.array([2, 5], I64)},
                              outputs=2))
    assert_matches_ort(*_case("Split", {"x": f32(6, 3)}, outputs=3))
    assert_matches_ort(*_case("Split", {"x": f32(7, 3)}, {"num_outputs": 3}, opset=18, outputs=3))
    assert_matches_ort(*_case("Sum", {"a": f32(2, 3), "b": f32(3), "c": f32(2, 1)}))
