"""An exported program becomes object IR, one object per torch module that runs.

`torch.export.unflatten` gives back the module tree, each module with the FX graph
of its own call. Each graph is run through dnet's tracer as the `forward` function
of the module's object: a `get_attr` is a parameter of that object, under torch's
name; a `call_module` is a call of a child object; every other node is built by its
rule (`nodes.convert`). The root's arguments are the program's user inputs, typed
with torch's dynamic dims as named symbols.
"""
from __future__ import annotations

from operator import attrgetter
from typing import Any, Mapping

import numpy as np
import torch
from torch.export import ExportedProgram
from torch.fx import GraphModule, Node
from torch.fx.node import map_arg

from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.frontend.torch_import.export import unflatten_program
from dnet.frontend.torch_import.nodes import check_available, check_supported, convert
from dnet.frontend.torch_import.symbolic import to_dtype, to_shape
from dnet.frontend.trace import SymInt, Tensor, new_trace, recording, state, to_expr
from dnet.graph.builder import GraphBuilder
from dnet.objects.ir import Argument, Call, Expr, Function, GetItem, Let, Object, ObjectModule, Ref
from dnet.objects.symbols import SymbolFlag, SymbolKind


def import_program(program: ExportedProgram, dim_names: Mapping[str, str], class_name: str) -> ObjectModule:
    """Object IR for `program`: a root object `class_name`, a child object per submodule called."""
    check_supported(program.graph.nodes)
    tree = unflatten_program(program)
    root = Object(class_name)
    with new_trace() as trace:
        importer = _Importer(trace.shadow, dim_names, _module_classes(program))
        inputs = [importer.user_input(node) for node in tree.graph.nodes if node.op == "placeholder"]
        with recording(Function("<caller>")):
            entry, _ = importer.record(tree, root, "", inputs)
    module = ObjectModule(root, entry=entry)
    module.shadow = trace.shadow.graph  # type: ignore[attr-defined]
    return module


def _module_classes(program: ExportedProgram) -> dict[str, str]:
    """Module path -> class name ('encoder.layer.0' -> 'BertLayer'), from the nodes' module stacks."""
    out: dict[str, str] = {}
    for node in program.graph.nodes:
        for path, qualified in (node.meta.get("nn_module_stack") or {}).values():
            if isinstance(path, str) and isinstance(qualified, str):
                out.setdefault(path, qualified.rsplit(".", 1)[-1])
    return out


class _Importer:
    """Records the functions of the module tree into objects, sharing one shadow graph and the weights."""

    def __init__(self, shadow: GraphBuilder, dim_names: Mapping[str, str], classes: Mapping[str, str]):
        self.shadow, self.dim_names, self.classes = shadow, dim_names, classes
        self.arrays: dict[int, np.ndarray] = {}  # one numpy copy per torch tensor, tied weights included

    def user_input(self, node: Node) -> Any:
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor):
            return value  # a Python constant torch.export specialised on (use_cache=False)
        type_ = TensorType(to_shape(value.shape, self.dim_names), to_dtype(value.dtype, f"input '{node.name}'"))
        return Tensor(Ref(node.name), self.shadow.input(node.name, type_))

    def record(self, module: GraphModule, obj: Object, path: str, inputs: list) -> tuple[str, Any]:
        """Trace one call of `module` into a function of `obj`; returns its name and the traced outputs."""
        placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
        values: dict[Node, Any] = {n: _rebind(Ref(n.name), v) for n, v in zip(placeholders, inputs)}
        fn = Function("forward", [_argument(n.name, v) for n, v in zip(placeholders, inputs) if _traced(v)])
        outputs = None
        with recording(fn, path), self.shadow.scope(path or obj.class_name):
            for node in module.graph.nodes:
                if node.op == "get_attr":
                    values[node] = self._weight(module, obj, path, node.target)
                elif node.op == "call_function":
                    values[node] = convert(node, values, self.dim_names)
                elif node.op == "call_module":
                    values[node] = self._call(module, obj, node, values)
                elif node.op == "output":
                    outputs = map_arg(node.args[0], values.__getitem__)
            if not path and isinstance(outputs, (list, tuple)) and len(outputs) == 1:
                outputs = outputs[0]  # the program's one output: the root returns it as itself, not a 1-tuple
            fn.result = to_expr(outputs)
        return obj.add_or_reuse_function(fn), outputs

    def _call(self, module: GraphModule, obj: Object, node: Node, values: dict[Node, Any]) -> Any:
        args = list(map_arg(node.args, values.__getitem__))
        check_available(f"module '{node.target}'", args, node)
        child = _child_object(obj, node.target, self.classes)
        name, outputs = self.record(module.get_submodule(node.target), child, child.name, args)
        call = Call(f"{node.target}.{name}", tuple(to_expr(a) for a in args if _traced(a)))
        return _bind_call(call, outputs)

    def _weight(self, module: GraphModule, obj: Object, path: str, target: str) -> Tensor:
        tensor = attrgetter(target)(module)
        if target not in obj.parameters:
            if id(tensor) not in self.arrays:
                self.arrays[id(tensor)] = to_numpy(tensor, target)
            data = self.arrays[id(tensor)]
            obj.add_parameter(target, TensorType(data.shape, DType.from_numpy(data.dtype)), data)
        data = obj.parameters[target].value
        return Tensor(Ref(target), self.shadow.const(f"{path}.{target}" if path else target, data))


def to_numpy(tensor: torch.Tensor, name: str = "") -> np.ndarray:
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype is torch.bfloat16:  # numpy has no bf16: reinterpret the bits
        return tensor.view(torch.int16).numpy().view(DType.BF16.np).copy()
    to_dtype(tensor.dtype, f"weight '{name}'")
    return tensor.numpy().copy()


def _child_object(obj: Object, target: str, classes: Mapping[str, str]) -> Object:
    """The object of submodule `target` ('h.0'), made on first use along with the ones between."""
    prefix = obj.name
    for part in target.split("."):
        prefix = f"{prefix}.{part}" if prefix else part
        if part not in obj.children:
            obj.add_child(part, Object(classes.get(prefix, "Module"), prefix))
        obj = obj.children[part]
    return obj


def _traced(value: Any) -> bool:
    """Traced values are passed as arguments; Python constants are baked into the callee."""
    return isinstance(value, (Tensor, SymInt))


def _argument(name: str, value: Tensor | SymInt) -> Argument:
    if isinstance(value, Tensor):
        return Argument(name, SymbolKind.TENSOR, SymbolFlag.EXTERNAL, value.type)
    return Argument(name, SymbolKind.SCALAR, SymbolFlag.EXTERNAL)


def _rebind(expr: Expr, value: Any) -> Any:
    """`value` as seen through `expr`: traced values get the new expression, constants stay."""
    if isinstance(value, Tensor):
        return Tensor(expr, value.value)
    if isinstance(value, SymInt):
        return SymInt(expr, value.value)
    return value


def _bind_call(call: Call, outputs: Any) -> Any:
    """Bind a child call in the caller; its outputs (tensors, sizes, tuples of them) keep their shadows."""
    recording_ = state().current
    name = recording_.fresh("r")
    recording_.fn.body.append(Let(name, call))
    if isinstance(outputs, (list, tuple)):
        return tuple(_rebind(GetItem(Ref(name), i), v) for i, v in enumerate(outputs))
    return _rebind(Ref(name), outputs)
