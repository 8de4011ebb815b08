"""Running torch.export, and recovering the names the user gave the dynamic dims.

torch's own errors (graph breaks, guards a dynamic dim violates, unsupported Python)
come back as a `TorchExportError` that carries torch's message.
"""
from __future__ import annotations

import inspect
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import torch
from torch.export import Dim, ExportedProgram
from torch.export.graph_signature import InputKind, TensorArgument
from torch.utils._pytree import tree_leaves

from dnet.errors import DnetError


class TorchExportError(DnetError):
    """torch.export could not capture the module; the message is torch's."""


def export_program(module: torch.nn.Module, args: tuple, kwargs: Mapping[str, Any],
                   dynamic_shapes: Any, strict: bool) -> ExportedProgram:
    """torch.export, then decomposition to core ATen, the op set the rules cover."""
    try:
        with _quiet():
            program = torch.export.export(module, args, dict(kwargs), dynamic_shapes=dynamic_shapes, strict=strict)
            return _views_as_reshapes(program).run_decompositions()
    except Exception as err:  # torch raises many types here; all mean "could not export"
        raise TorchExportError(f"torch.export failed for {type(module).__name__}: {type(err).__name__}: {err}",
                               hint="see torch.export's documentation on dynamic shapes and graph breaks") from err


def _views_as_reshapes(program: ExportedProgram) -> ExportedProgram:
    """Every `aten.view` of the exported graph made an `aten.reshape`, before decomposition.

    torch's decomposition re-traces the graph with fake tensors whose strides can differ from the eager
    run's: GPT-2 exported at batch >= 2 fails there ("Cannot view a tensor with shape [2, 11, 72] and strides
    (72, 144, 1)"), a `view` after a transpose that eager made contiguous. A reshape is a view where strides
    allow and a copy where not, the same values either way; dnet's graph has no strides, so nothing is lost.
    """
    changed = False
    for node in program.graph_module.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.aten.view.default:
            node.target = torch.ops.aten.reshape.default
            changed = True
    if changed:
        program.graph_module.recompile()
    return program


def unflatten_program(program: ExportedProgram) -> torch.nn.Module:
    """The module tree back, each module with the graph of its own call (`torch.export.unflatten`)."""
    try:
        with _quiet():
            return torch.export.unflatten(program)
    except Exception as err:  # torch's own failure, reported with its message
        raise TorchExportError(f"torch.export.unflatten failed: {type(err).__name__}: {err}") from err


@contextmanager
def _quiet() -> Iterator[None]:
    """Silences torch.export's own use of a pytree API that torch deprecated: nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
        yield


def dim_names(program: ExportedProgram, module: torch.nn.Module, args: tuple, kwargs: Mapping[str, Any],
              dynamic_shapes: Any) -> dict[str, str]:
    """torch's symbol names ('s70') -> the names of the user's `Dim`s ('seq')."""
    if not dynamic_shapes:
        return {}
    named = _named_axes(module, args, kwargs, dynamic_shapes)
    leaves = tree_leaves((args, dict(kwargs)))
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    user_inputs = [s.arg for s in program.graph_signature.input_specs if s.kind is InputKind.USER_INPUT]
    out: dict[str, str] = {}
    for leaf, arg in zip(leaves, user_inputs):  # the user inputs are the leaves, in order
        value = placeholders[arg.name].meta.get("val") if isinstance(arg, TensorArgument) else None
        if not isinstance(value, torch.Tensor):
            continue
        for axis, name in named.get(id(leaf), {}).items():
            symbols = getattr(_expr(value.shape[axis]), "free_symbols", set())
            if len(symbols) == 1:
                out[next(iter(symbols)).name] = name
    return out


def _expr(size: Any) -> Any:
    return size.node.expr if isinstance(size, torch.SymInt) else size


def _named_axes(module: torch.nn.Module, args: tuple, kwargs: Mapping[str, Any],
                dynamic_shapes: Any) -> dict[int, dict[int, str]]:
    """id(tensor) -> {axis: Dim name}, walking the inputs and the spec side by side as torch does."""
    bound = inspect.signature(module.forward).bind(*args, **kwargs).arguments
    if isinstance(dynamic_shapes, Mapping):
        pairs = [(bound[k], spec) for k, spec in dynamic_shapes.items() if k in bound]
    else:
        pairs = list(zip(bound.values(), dynamic_shapes))
    out: dict[int, dict[int, str]] = {}
    for value, spec in pairs:
        _walk(value, spec, out)
    return out


def _walk(value: Any, spec: Any, out: dict[int, dict[int, str]]) -> None:
    if spec is None:
        return
    if isinstance(value, torch.Tensor):
        axes = spec.items() if isinstance(spec, Mapping) else enumerate(spec)
        out[id(value)] = {axis: _root_name(d) for axis, d in axes if isinstance(d, Dim)}
    elif isinstance(value, (list, tuple)):
        for v, s in zip(value, spec):
            _walk(v, s, out)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _walk(v, spec.get(k), out)


def _root_name(d: Dim) -> str:
    """A derived dim (`2 * seq`) names the symbol of its root."""
    return getattr(d, "root", d).__name__
