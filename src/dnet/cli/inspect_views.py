"""What `dnet inspect` prints: object IR (with the passes), graph IR, data-flow summary."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dnet.cli.model_loading import check_dims, load_model, parse_inputs
from dnet.errors import DnetError, did_you_mean
from dnet.objects.ir import Object, ObjectModule


def _rule(title: str) -> str:
    return f"\n== {title} " + "=" * max(0, 72 - len(title)) + "\n"


def _select(module: ObjectModule, name: str) -> Object:
    objects = list(module.root.walk())
    for obj in objects:
        if name in (obj.class_name, obj.name):
            return obj
    raise DnetError(f"no object '{name}' in the model",
                    hint=did_you_mean(name, [o.class_name for o in objects] + [o.name for o in objects]))


def object_views(module: ObjectModule, object_name: str | None, passes: bool) -> str:
    from dnet.objects.passes import run_with_trace
    from dnet.objects.printer import print_module, print_object

    def show(m: ObjectModule) -> str:
        return print_object(_select(m, object_name)) if object_name else print_module(m)

    if not passes:
        return _rule("object IR") + show(module)
    out = [_rule("object IR, as written") + show(module)]
    for name, after in run_with_trace(module, entry=module.entry):
        out.append(_rule(f"after {name}") + show(after))
    return "".join(out)


def render(ref: str, specs: tuple[str, ...], level: str, object_name: str | None, passes: bool,
           env: dict[str, int], weights: Path | None = None, init: str | None = None) -> str:
    import dnet
    from dnet.frontend.module import Module

    model, default_inputs = load_model(ref, weights, init)
    inputs = parse_inputs(specs) or default_inputs
    parts: list[str] = []
    module: Any = model
    if isinstance(model, Module):
        module = model.trace(**inputs) if isinstance(inputs, dict) else model.trace(*(inputs or ()))
    if level in ("object", "all") and isinstance(module, ObjectModule):
        parts.append(object_views(module, object_name, passes))
    if level in ("graph", "summary", "all"):
        # a DSL model's inputs: as given (-i), else as `dnet run` lowers it, each unsized dim a symbol;
        # a traced Module's arguments carry their types already
        given = inputs if isinstance(module, ObjectModule) and not isinstance(model, Module) else None
        graph = dnet.to_graph(module, given)
        if level in ("graph", "all"):
            parts.append(_rule("graph IR") + str(graph))
        check_dims(graph, env)
        parts.append(_rule("data flow") + _summary(graph, env))
    return "".join(parts).lstrip("\n")


def _summary(graph, env: dict[str, int]) -> str:
    """The data-flow summary; it costs the graph at sizes, so without them it says which to give."""
    from dnet.core.shapes import Dim
    from dnet.graph.analysis import summary

    symbols = sorted({s for t in graph.input_types().values() for d in t.shape if isinstance(d, Dim)
                      for s in d.free_symbols()} - set(env))
    if symbols:
        return f"(costs need sizes: give --dims {','.join(f'{s}=N' for s in symbols)})\n"
    return str(summary(graph, env))
