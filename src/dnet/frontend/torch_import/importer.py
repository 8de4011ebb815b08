"""An exported program, run through dnet's tracer, becomes object IR.

The program's weights become parameters of one root object, under the names torch
gives them (`encoder.layer.0.attention.self.query.weight`); its user inputs become
the typed arguments of the root's `forward`, with torch's dynamic dims as named
symbols. Each FX node is built by its rule in `aten.RULES`; what torch inferred
for the node (shape, dtype) is checked against what dnet built, so a rule that
drifts from torch's semantics fails at the node, not in the numbers.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np
import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind
from torch.fx import Node
from torch.fx.node import map_arg

from dnet.core.types import TensorType
from dnet.errors import DnetError, DTypeError, Location, ShapeError, UnsupportedOpError
from dnet.core.shapes import shape_str
from dnet.frontend.torch_import.aten import RULES, Missing, NodeInfo
from dnet.frontend.torch_import.symbolic import to_dtype, to_shape
from dnet.frontend.trace import Tensor, new_trace, recording, to_expr
from dnet.objects.ir import Argument, Function, Object, ObjectModule, Ref
from dnet.objects.symbols import SymbolFlag, SymbolKind

_TORCH_DIR = os.path.dirname(torch.__file__)
# Keyword arguments about placement and layout, which mean nothing to dnet.
_IGNORED_KWARGS = {"device", "layout", "pin_memory", "memory_format", "non_blocking", "requires_grad"}
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in [^\n]*\n\s*([^\n]*)')


def import_program(program: ExportedProgram, dim_names: Mapping[str, str], class_name: str) -> ObjectModule:
    """Object IR for `program`: one root object `class_name` whose `forward` is the program."""
    _check_supported(program)
    root = Object(class_name)
    fn = Function("forward")
    values: dict[Node, Any] = {}
    with new_trace() as state, recording(fn):
        placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
        for spec, node in zip(program.graph_signature.input_specs, placeholders):
            values[node] = _input(program, spec, node, root, fn, state.shadow, dim_names)
        for node in program.graph.nodes:
            if node.op == "call_function":
                values[node] = _convert(node, values, dim_names)
        fn.result = to_expr(_user_outputs(program, values))
    root.add_function(fn)
    module = ObjectModule(root)
    module.entry = "forward"  # type: ignore[attr-defined]
    module.shadow = state.shadow.graph  # type: ignore[attr-defined]
    return module


# -- inputs and outputs ------------------------------------------------------------------------------
def _input(program, spec, node: Node, root: Object, fn: Function, shadow, dim_names) -> Any:
    """A weight becomes a root parameter; a user input a typed argument of forward."""
    if spec.kind is InputKind.USER_INPUT:
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor):
            return value  # a Python constant torch.export specialised on (use_cache=False)
        type_ = TensorType(to_shape(value.shape, dim_names), to_dtype(value.dtype, f"input '{node.name}'"))
        fn.args.append(Argument(node.name, SymbolKind.TENSOR, SymbolFlag.EXTERNAL, type_))
        return Tensor(Ref(node.name), shadow.input(node.name, type_))
    if spec.kind not in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
        raise UnsupportedOpError(f"program input '{node.name}' of kind {spec.kind.name} has no dnet form")
    name = spec.target
    tensor = program.state_dict[name] if name in program.state_dict else program.constants[name]
    data = to_numpy(tensor, name)
    root.add_parameter(name, TensorType(data.shape, to_dtype(tensor.dtype, f"weight '{name}'")), data)
    return Tensor(Ref(name), shadow.const(name, data))


def to_numpy(tensor: torch.Tensor, name: str = "") -> np.ndarray:
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype is torch.bfloat16:  # numpy has no bf16: reinterpret the bits
        from dnet.core.dtypes import DType

        return tensor.view(torch.int16).numpy().view(DType.BF16.np).copy()
    to_dtype(tensor.dtype, f"weight '{name}'")
    return tensor.numpy().copy()


def _user_outputs(program: ExportedProgram, values: dict[Node, Any]) -> Any:
    output = next(n for n in program.graph.nodes if n.op == "output")
    specs = program.graph_signature.output_specs
    results = [map_arg(arg, values.__getitem__) for spec, arg in zip(specs, output.args[0])
               if spec.kind is OutputKind.USER_OUTPUT]
    return results[0] if len(results) == 1 else tuple(results)


# -- nodes -------------------------------------------------------------------------------------------
def target_name(target: Any) -> str:
    """The rule key of a node's target: 'aten.add.Tensor', 'operator.mul', ..."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    module = getattr(target, "__module__", "") or ""
    name = getattr(target, "__name__", repr(target))
    return f"operator.{name}" if module in ("_operator", "operator") else f"{module}.{name}".lstrip(".")


def _check_supported(program: ExportedProgram) -> None:
    """Every op without a rule, found before any is built; the error names the first and counts the rest."""
    missing: dict[str, Node] = {}
    for node in program.graph.nodes:
        if node.op == "call_function" and target_name(node.target) not in RULES:
            missing.setdefault(target_name(node.target), node)
    if not missing:
        return
    target, node = next(iter(missing.items()))
    others = [t for t in missing if t != target]
    op = getattr(getattr(node.target, "overloadpacket", None), "__name__", target)
    code = source_line(node)
    raise UnsupportedOpError(
        f"torch op '{op}' ({target}) has no dnet rule" + (f": `{code}`" if code else ""), node_location(node),
        f"also unsupported: {', '.join(others)}" if others else None)


def _convert(node: Node, values: dict[Node, Any], dim_names: Mapping[str, str]) -> Any:
    target = target_name(node.target)
    args = map_arg(node.args, values.__getitem__)
    kwargs = {k: v for k, v in map_arg(node.kwargs, values.__getitem__).items() if k not in _IGNORED_KWARGS}
    for value in _flat(list(args) + list(kwargs.values())) if target != "operator.getitem" else ():
        if isinstance(value, Missing):
            raise _located(UnsupportedOpError(f"{target} uses {value.what}, which dnet does not compute"), node)
    info = _info(target, node, dim_names)
    try:
        out = RULES[target](info, *args, **kwargs)
        _check_matches_torch(out, node.meta.get("val"), dim_names, target)
    except DnetError as err:
        raise _located(err, node) from None
    except (TypeError, ValueError, IndexError, KeyError) as err:  # arguments a rule does not expect
        raise _located(UnsupportedOpError(f"{target} with these arguments is not supported "
                                          f"({type(err).__name__}: {err})"), node) from err
    return out


def _info(target: str, node: Node, dim_names: Mapping[str, str]) -> NodeInfo:
    value = node.meta.get("val")
    if isinstance(value, (list, tuple)):
        value = next((v for v in value if isinstance(v, torch.Tensor)), None)
    if not isinstance(value, torch.Tensor):
        return NodeInfo(target, None, None)
    return NodeInfo(target, to_dtype(value.dtype, f"the output of {target}"), to_shape(value.shape, dim_names))


def _flat(values: Any) -> list:
    if isinstance(values, (list, tuple)):
        return [v for item in values for v in _flat(item)]
    return [values]


def _check_matches_torch(out: Any, expected: Any, dim_names: Mapping[str, str], target: str) -> None:
    """dnet's type of every tensor output must be torch's: a rule that drifts is a bug caught here."""
    if isinstance(out, (list, tuple)) and isinstance(expected, (list, tuple)):
        for o, e in zip(out, expected):
            _check_matches_torch(o, e, dim_names, target)
        return
    if not isinstance(out, Tensor) or not isinstance(expected, torch.Tensor):
        return
    shape, dtype = to_shape(expected.shape, dim_names), to_dtype(expected.dtype)
    if tuple(out.type.shape) != shape:
        raise ShapeError(f"{target}: dnet built shape {shape_str(out.type.shape)}, torch says {shape_str(shape)}")
    if out.dtype != dtype:
        raise DTypeError(f"{target}: dnet built dtype {out.dtype}, torch says {dtype}")


# -- where a node came from ------------------------------------------------------------------------------
def node_location(node: Node) -> Location:
    """The innermost frame of the node's stack trace outside torch, and its module path."""
    frames = _frames(node)
    file, line = (frames[-1][0], frames[-1][1]) if frames else (None, None)
    stack = node.meta.get("nn_module_stack") or {}
    paths = [path for path, _ in stack.values() if isinstance(path, str) and path]
    return Location(file, line, symbol=paths[-1] if paths else None)


def source_line(node: Node) -> str:
    frames = _frames(node)
    return frames[-1][2].strip() if frames else ""


def _frames(node: Node) -> list[tuple[str, int, str]]:
    trace = node.meta.get("stack_trace") or ""
    frames = [(f, int(line), code) for f, line, code in _FRAME.findall(trace)]
    outside = [fr for fr in frames if not fr[0].startswith(_TORCH_DIR)]
    return outside or frames


def _located(err: DnetError, node: Node) -> DnetError:
    """The error, re-pointed at the user's code that made `node`."""
    err.where = node_location(node)
    err.message = f"{err.message} (node '{node.name}')"
    err.args = (err._render(),)
    return err.with_traceback(None)
