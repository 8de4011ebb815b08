"""An ONNX graph becomes a dnet graph, node by node, with shape arithmetic folded on the way.

Initializers start as static values (they become graph weights under their own names
when an op uses them as tensors); graph inputs become graph inputs, their `dim_param`
names symbolic dims. Each node is built by its rule (`rules.RULES`) under a symbol path
taken from its name ('/bert/encoder/layer.0/attention/self/MatMul' builds in
'bert.encoder.layer.0.attention.self'), so errors and the partitioner see the layers.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import onnx
from onnx import helper, numpy_helper

from dnet.core.shapes import Sym, shape_str
from dnet.core.types import TensorType
from dnet.errors import DnetError, DTypeError, Location, ShapeError, UnsupportedOpError, did_you_mean
from dnet.frontend.onnx_import.context import Context
from dnet.frontend.onnx_import.reader import check_supported, opset_of
from dnet.frontend.onnx_import.rules import RULES
from dnet.frontend.onnx_import.values import Missing, Static, dtype_of, materialize
from dnet.graph.builder import GraphBuilder
from dnet.graph.ir import Graph


def import_model(model: onnx.ModelProto, source: str, input_types: Mapping[str, TensorType] | None = None) -> Graph:
    opset = opset_of(model, source)
    check_supported(model, opset, source)
    b = GraphBuilder()
    env: dict[str, Any] = {init.name: Static(numpy_helper.to_array(init), init.name)
                           for init in model.graph.initializer}
    _add_inputs(b, model.graph, env, dict(input_types or {}), source)
    for node in model.graph.node:
        _build(b, node, env, opset, source)
    for out in model.graph.output:
        value = env.get(out.name)
        if isinstance(value, Missing) or value is None:
            raise UnsupportedOpError(f"output '{out.name}' is {value.what if value else 'never computed'}",
                                     Location(source))
        b.output(out.name, materialize(b, value) if isinstance(value, Static) else value)
        _check_declared(b, out, b.graph.outputs[-1], source)
    return b.finish()


def _add_inputs(b: GraphBuilder, graph: onnx.GraphProto, env: dict, types: dict, source: str) -> None:
    names = [i.name for i in graph.input if i.name not in env]
    for name in set(types) - set(names):
        raise DnetError(f"input_types names '{name}', which is not an input of {source}",
                        hint=did_you_mean(name, names) or f"the inputs are {', '.join(names)}")
    for value in graph.input:
        if value.name not in env:
            env[value.name] = b.input(value.name, types.get(value.name) or _declared_type(value, source))


def _declared_type(value: onnx.ValueInfoProto, source: str) -> TensorType:
    tensor = value.type.tensor_type
    what = f"input '{value.name}'"
    if not value.type.HasField("tensor_type"):
        raise UnsupportedOpError(f"{what} is not a tensor", Location(source))
    shape = []
    for i, d in enumerate(tensor.shape.dim):
        if d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            shape.append(Sym(re.sub(r"\W", "_", d.dim_param)))
        else:
            raise ShapeError(f"{what}: dim {i} has neither a size nor a name", Location(source),
                             hint="give the input's type with input_types={name: TensorType(...)}")
    return TensorType(tuple(shape), dtype_of(tensor.elem_type, what))


def _build(b: GraphBuilder, node: onnx.NodeProto, env: dict, opset: int, source: str) -> None:
    inputs = []
    for name in node.input:
        if name and name not in env:
            raise DnetError(f"{node.op_type} node '{node.name}' reads '{name}', which nothing defines",
                            Location(source))
        inputs.append(env[name] if name else None)
    while inputs and inputs[-1] is None:
        inputs.pop()
    attrs = {a.name: _attribute(a) for a in node.attribute}
    ctx = Context(b, node.op_type, opset, attrs, node.output[0] if node.output else node.name, len(node.output))
    try:
        with b.at(_path(node.name)):
            out = RULES[node.op_type](ctx, *inputs)
    except DnetError as err:
        raise _located(err, node, opset, source) from None
    except (TypeError, ValueError, IndexError, KeyError, ZeroDivisionError) as err:  # inputs a rule does not expect
        raise _located(UnsupportedOpError(f"these inputs or attributes are not supported "
                                          f"({type(err).__name__}: {err})"), node, opset, source) from err
    outs = out if isinstance(out, tuple) else (out,)
    for name, value in zip(node.output, outs):
        if name:
            env[name] = Static(value.array, name) if isinstance(value, Static) and value.name != name else value


def _attribute(attr: onnx.AttributeProto) -> Any:
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


def _path(node_name: str) -> str:
    """'/bert/encoder/layer.0/attention/self/MatMul' -> 'bert.encoder.layer.0.attention.self'."""
    parts = [p for p in node_name.split("/") if p]
    return ".".join(parts[:-1])


def _located(err: DnetError, node: onnx.NodeProto, opset: int, source: str) -> DnetError:
    err.message = f"{node.op_type} node '{node.name}' (opset {opset}): {err.message}"
    err.where = Location(source, symbol=_path(node.name) or None)
    err.args = (err._render(),)
    return err.with_traceback(None)


def _check_declared(b: GraphBuilder, out: onnx.ValueInfoProto, v: int, source: str) -> None:
    """The output's declared dtype and fixed sizes must be what dnet built (named sizes are the exporter's own)."""
    tensor, built = out.type.tensor_type, b.graph.nodes[v].type
    if tensor.elem_type and dtype_of(tensor.elem_type, f"output '{out.name}'") != built.dtype:
        raise DTypeError(f"output '{out.name}': dnet built {built.dtype}, the model declares "
                         f"{dtype_of(tensor.elem_type, out.name)}", Location(source))
    if not tensor.HasField("shape"):
        return
    declared = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in tensor.shape.dim]
    if len(declared) != len(built.shape) or any(
            isinstance(want, int) and isinstance(got, int) and want != got for want, got in zip(declared, built.shape)):
        raise ShapeError(f"output '{out.name}': dnet built {shape_str(built.shape)}, the model declares "
                         f"({', '.join(map(str, declared))})", Location(source))
