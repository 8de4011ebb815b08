"""The public entry points: compile a model for a target and run it."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from dnet.core.types import TensorType
from dnet.errors import DnetError
from dnet.graph.ir import Graph
from dnet.objects.ir import Object, ObjectModule
from dnet.objects.lower import lower


class Executable:
    """A compiled model: call it with numpy arrays (positionally or by input name)."""

    def __init__(self, graph: Graph, target: str = "numpy"):
        self.graph = graph
        self.target = target
        if target != "numpy":
            raise DnetError(f"unknown target '{target}'", hint="targets: numpy")

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from dnet.backends.numpy import run_graph

        return run_graph(self.graph, inputs)

    def __call__(self, *args: np.ndarray, **kwargs: np.ndarray) -> Any:
        names = self.graph.input_names
        if len(args) > len(names):
            raise DnetError(f"model takes {len(names)} input(s) ({', '.join(names)}), got {len(args)}")
        inputs = dict(zip(names, args))
        inputs.update(kwargs)
        out = self.run(inputs)
        values = [out[n] for n in self.graph.output_names]
        return values[0] if len(values) == 1 else tuple(values)


def to_graph(model: Any, inputs: Sequence[TensorType] | Mapping[str, TensorType] | None = None) -> Graph:
    """Lower any model form (Module, ObjectModule, Object, Graph) to graph IR."""
    from dnet.frontend.module import Module

    if isinstance(model, Graph):
        return model
    if isinstance(model, Module):
        if isinstance(inputs, Mapping):
            model = model.trace(**inputs)
        else:
            model = model.trace(*(inputs or ()))
        entry = getattr(model, "entry", "forward")
        named = {a.name: a.type for a in model.root.functions[entry].args if a.type is not None}
        return lower(model, entry, named)
    if isinstance(model, (ObjectModule, Object)):
        if inputs is not None and not isinstance(inputs, Mapping):
            raise DnetError("give an object model's inputs by name")
        return lower(model, getattr(model, "entry", "forward"), inputs)
    raise DnetError(f"cannot compile a {type(model).__name__}")


def compile(model: Any, inputs: Sequence[TensorType] | Mapping[str, TensorType] | None = None,  # noqa: A001
            target: str = "numpy") -> Executable:
    return Executable(to_graph(model, inputs), target)
