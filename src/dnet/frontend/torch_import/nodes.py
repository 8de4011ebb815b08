"""One FX node at a time: find its rule, build it, check it against torch, say where it came from.

What torch inferred for each node (shape, dtype) is compared with what dnet built,
so a rule that drifts from torch's semantics fails at its node, not in the numbers.
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping

import torch
from torch.fx import Node
from torch.fx.node import map_arg

from dnet.core.shapes import shape_str
from dnet.errors import DnetError, DTypeError, Location, ShapeError, UnsupportedOpError
from dnet.frontend.torch_import.aten import RULES, Missing, NodeInfo
from dnet.frontend.torch_import.symbolic import to_dtype, to_shape
from dnet.frontend.trace import Tensor

_TORCH_DIR = os.path.dirname(torch.__file__)
# Keyword arguments about placement and layout, which mean nothing to dnet.
_IGNORED_KWARGS = {"device", "layout", "pin_memory", "memory_format", "non_blocking", "requires_grad"}
# Ops a module exports only in training mode: dnet compiles for inference.
_TRAINING_OPS = {"aten.native_dropout.default", "aten._native_batch_norm_legit_functional.default"}
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in [^\n]*\n\s*([^\n]*)')


def target_name(target: Any) -> str:
    """The rule key of a node's target: 'aten.add.Tensor', 'operator.mul', ..."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    module = getattr(target, "__module__", "") or ""
    name = getattr(target, "__name__", repr(target))
    return f"operator.{name}" if module in ("_operator", "operator") else f"{module}.{name}".lstrip(".")


def check_supported(nodes: Iterable[Node]) -> None:
    """Every op without a rule, found before any is built; the error names the first and lists the rest."""
    missing: dict[str, Node] = {}
    for node in nodes:
        if node.op == "call_function" and target_name(node.target) not in RULES:
            missing.setdefault(target_name(node.target), node)
    if not missing:
        return
    target, node = next(iter(missing.items()))
    others = [t for t in missing if t != target]
    op = getattr(getattr(node.target, "overloadpacket", None), "__name__", target)
    code = source_line(node)
    hints = [f"also unsupported: {', '.join(others)}"] if others else []
    if _TRAINING_OPS & missing.keys():
        hints.append("the module was exported in training mode: call module.eval() first")
    raise UnsupportedOpError(
        f"torch op '{op}' ({target}) has no dnet rule" + (f": `{code}`" if code else ""), node_location(node),
        "; ".join(hints) or None)


def convert(node: Node, values: Mapping[Node, Any], dim_names: Mapping[str, str]) -> Any:
    """Build a call_function node from the traced values of its arguments."""
    target = target_name(node.target)
    args = map_arg(node.args, values.__getitem__)
    kwargs = {k: v for k, v in map_arg(node.kwargs, values.__getitem__).items() if k not in _IGNORED_KWARGS}
    if target != "operator.getitem":  # getitem may pass a missing output on; its users may not use it
        check_available(target, list(args) + list(kwargs.values()), node)
    try:
        out = RULES[target](_info(target, node, dim_names), *args, **kwargs)
        _check_matches_torch(out, node.meta.get("val"), dim_names, target)
    except DnetError as err:
        raise located(err, node) from None
    except (TypeError, ValueError, IndexError, KeyError) as err:  # arguments a rule does not expect
        raise located(UnsupportedOpError(f"{target} with these arguments is not supported "
                                         f"({type(err).__name__}: {err})"), node) from err
    return out


def check_available(user: str, values: list, node: Node) -> None:
    for value in _flat(values):
        if isinstance(value, Missing):
            raise located(UnsupportedOpError(f"{user} uses {value.what}, which dnet does not compute"), node)


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
    """dnet's type of every tensor output must be torch's."""
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


def located(err: DnetError, node: Node) -> DnetError:
    """The error, re-pointed at the user's code that made `node`."""
    err.where = node_location(node)
    err.message = f"{err.message} (node '{node.name}')"
    err.args = (err._render(),)
    return err.with_traceback(None)
