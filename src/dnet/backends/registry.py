"""Backends by name (tinygrad style): adding a device touches no other layer.

A backend is a factory `prepare(graph, **options) -> Runner`; a Runner runs the
graph on arrays and may save/load its compiled form next to the serialised graph.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from dnet.errors import BackendError, did_you_mean
from dnet.graph.ir import Graph


class Runner(Protocol):
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class Backend(Protocol):
    name: str

    def prepare(self, graph: Graph, **options: Any) -> Runner: ...


_BACKENDS: dict[str, Callable[[], Backend]] = {}


def register(name: str, factory: Callable[[], Backend]) -> None:
    """Register a backend factory; it is only called (and its module imported) when first used."""
    _BACKENDS[name] = factory


def get(name: str) -> Backend:
    if name not in _BACKENDS:
        raise BackendError(f"unknown target '{name}'", hint=did_you_mean(name, _BACKENDS)
                           or "targets: " + ", ".join(sorted(_BACKENDS)))
    return _BACKENDS[name]()


def names() -> list[str]:
    return sorted(_BACKENDS)


class NumpyBackend:
    name = "numpy"

    def prepare(self, graph: Graph, **options: Any) -> Runner:
        return _NumpyRunner(graph)


class _NumpyRunner:
    def __init__(self, graph: Graph):
        self.graph = graph

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from dnet.backends.numpy import run_graph

        return run_graph(self.graph, inputs)

    def save(self, directory: Path) -> None:  # the serialised graph is all it needs
        pass


register("numpy", NumpyBackend)


def _c_backend() -> Backend:
    from dnet.backends.c import CBackend

    return CBackend()


register("c", _c_backend)
