"""Backends by name (tinygrad style): adding a device touches no other layer.

A backend is a factory `prepare(graph, **options) -> Runner`; a Runner runs the
graph on arrays and may save/load its compiled form next to the serialised graph.
A backend's `prepare` names the options it takes; `prepare(name, graph, **options)`
refuses any other (a misspelt option is an error naming the known ones, never ignored).

A compiled backend also registers its `Device` (`program.device`: allocator, renderers, program
loader, the dtypes it claims and the ops it declares unsupported) with `register_device`; the op x
backend coverage test (tests/backends/test_op_coverage.py) holds every registered backend to it.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from dnet.errors import BackendError, did_you_mean
from dnet.graph.ir import Graph
from dnet.program.collective import Collective
from dnet.program.device import Device


class Runner(Protocol):
    def run(self, inputs: Mapping[str, np.ndarray],
            collective: Collective | None = None) -> dict[str, np.ndarray]: ...   # collective: `program.collective`


class Backend(Protocol):
    name: str

    def prepare(self, graph: Graph, **options: Any) -> Runner: ...


_BACKENDS: dict[str, Callable[[], Backend]] = {}
_DEVICES: dict[str, Callable[[], Device]] = {}


def register(name: str, factory: Callable[[], Backend]) -> None:
    """Register a backend factory; it is only called (and its module imported) when first used."""
    _BACKENDS[name] = factory


def get(name: str) -> Backend:
    if name not in _BACKENDS:
        raise BackendError(f"unknown target '{name}'", hint=did_you_mean(name, _BACKENDS) or _targets())
    return _BACKENDS[name]()


def _targets() -> str:
    """The targets this machine runs, then those registered that it cannot (for an unknown name's error)."""
    here = available_names()
    elsewhere = [name for name in names() if name not in here]
    return "targets: " + ", ".join(here) + (f" (not on this machine: {', '.join(elsewhere)})" if elsewhere else "")


def names() -> list[str]:
    return sorted(_BACKENDS)


REFERENCE = "numpy"   # the interpreter every other backend is compared with: it has no Device


def register_device(name: str, factory: Callable[[], Device]) -> None:
    """Register the Device behind backend `name`; `factory` is called (its module imported) on first use."""
    _DEVICES[name] = factory


def device(name: str) -> Device:
    """The Device of backend `name`: what it is made of and what it claims to run."""
    if name not in _DEVICES:
        known = sorted(_DEVICES)
        raise BackendError(f"backend '{name}' registers no device", hint=did_you_mean(name, known) or
                           "register one with backends.registry.register_device (see program/device.py); "
                           "devices: " + ", ".join(known))
    return _DEVICES[name]()


def unavailable(name: str) -> str | None:
    """Why backend `name` cannot run on this machine (no llvmlite, no OpenCL driver, no GPU), or None.
    An unknown name is a BackendError naming the targets; a backend with no Device (the reference) runs."""
    get(name)
    if name not in _DEVICES:
        return None
    return device(name).available()


def available_names() -> list[str]:
    """The backends this machine can run, by name."""
    return [name for name in names() if _runs_here(name)]


def _runs_here(name: str) -> bool:
    try:
        return unavailable(name) is None
    except Exception:   # noqa: BLE001 - a backend whose module does not even import does not run here
        return False


def require_available(name: str) -> None:
    """A BackendError, now, where backend `name` is unknown or cannot run here (a worker's start, say)."""
    reason = unavailable(name)
    if reason is not None:
        raise BackendError(f"backend '{name}' cannot run on this machine: {reason}",
                           hint="backends this machine has: " + ", ".join(available_names()))


def option_names(name: str) -> list[str]:
    """The options backend `name`'s `prepare` takes (a worker passes `threads` only to one that takes it)."""
    return [p for p in inspect.signature(get(name).prepare).parameters if p != "graph"]


def prepare(name: str, graph: Graph, **options: Any) -> Runner:
    """`get(name).prepare(graph, **options)`, refusing an option that backend does not take."""
    backend = get(name)
    known = option_names(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise BackendError(f"target '{name}' has no option {', '.join(map(repr, unknown))}",
                           hint=did_you_mean(unknown[0], known) or
                           ("its options: " + ", ".join(known) if known else "it takes no options"))
    return backend.prepare(graph, **options)


class NumpyBackend:
    name = "numpy"

    def prepare(self, graph: Graph) -> Runner:   # the reference interpreter: nothing to choose
        return _NumpyRunner(graph)


class _NumpyRunner:
    def __init__(self, graph: Graph):
        self.graph = graph

    def run(self, inputs: Mapping[str, np.ndarray], collective: Collective | None = None) -> dict[str, np.ndarray]:
        from dnet.backends.numpy import run_graph

        return run_graph(self.graph, inputs, collective)

    def save(self, directory: Path) -> None:  # the serialised graph is all it needs
        pass


register("numpy", NumpyBackend)


def _c_backend() -> Backend:
    from dnet.backends.c import CBackend

    return CBackend()


register("c", _c_backend)


def _c_device() -> Device:
    from dnet.backends.c.device import C_DEVICE

    return C_DEVICE


register_device("c", _c_device)


def _opencl_backend() -> Backend:
    from dnet.backends.opencl import OpenCLBackend

    return OpenCLBackend()


register("opencl", _opencl_backend)


def _opencl_device() -> Device:
    from dnet.backends.opencl.device import OPENCL_DEVICE

    return OPENCL_DEVICE


register_device("opencl", _opencl_device)


def _llvm_backend() -> Backend:
    from dnet.backends.llvm import LLVMBackend

    return LLVMBackend()


register("llvm", _llvm_backend)


def _llvm_device() -> Device:
    from dnet.backends.llvm.device import LLVM_DEVICE

    return LLVM_DEVICE


register_device("llvm", _llvm_device)


def _cuda_backend() -> Backend:
    from dnet.backends.cuda import CUDABackend

    return CUDABackend()


register("cuda", _cuda_backend)


def _cuda_device() -> Device:
    from dnet.backends.cuda.device import CUDA_DEVICE

    return CUDA_DEVICE


register_device("cuda", _cuda_device)
