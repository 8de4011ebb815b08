"""The public entry points: compile a model for a target, run it, save and load it."""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from dnet.backends import registry
from dnet.core.dtypes import DType
from dnet.core.files import write_text_atomic
from dnet.core.progress import Reporter, reporting
from dnet.core.types import TensorType
from dnet.errors import DnetError, SerializationError, did_you_mean
from dnet.frontend.module import Module, set_eager_call
from dnet.frontend.trace import user_location
from dnet.graph.ir import Graph
from dnet.objects.ir import Object, ObjectModule
from dnet.objects.lower import lower

ARTIFACT_FORMAT = 1


class Executable:
    """A compiled model: call it with numpy arrays (positionally or by input name)."""

    def __init__(self, graph: Graph, target: str = "numpy", runner: Any = None, **options: Any):
        self.graph = graph
        self.target = target
        self.runner = runner if runner is not None else registry.prepare(target, graph, **options)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner.run(inputs)

    def __call__(self, *args: np.ndarray, **kwargs: np.ndarray) -> Any:
        names = self.graph.input_names
        if len(args) > len(names):
            raise DnetError(f"model takes {len(names)} input(s) ({', '.join(names)}), got {len(args)}")
        inputs = dict(zip(names, args))
        inputs.update(kwargs)
        out = self.run(inputs)
        values = [out[n] for n in self.graph.output_names]
        return values[0] if len(values) == 1 else tuple(values)


def to_graph(model: Any, inputs: Sequence[TensorType] | Mapping[str, TensorType] | None = None,
             optimize: bool = True) -> Graph:
    """Lower any model form (Module, ObjectModule, Object, Graph) to graph IR, then run the graph passes."""
    if isinstance(model, Graph):
        graph = model
    elif isinstance(model, Module):
        traced = model.trace(**inputs) if isinstance(inputs, Mapping) else model.trace(*(inputs or ()))
        graph = lower(traced, traced.entry)  # the traced arguments carry the input types
    elif isinstance(model, (ObjectModule, Object)):
        if inputs is not None and not isinstance(inputs, Mapping):
            raise DnetError("give an object model's inputs by name")
        graph = lower(model, model.entry if isinstance(model, ObjectModule) else "forward", inputs)
    else:
        raise DnetError(f"cannot compile a {type(model).__name__}")
    return _optimize(graph) if optimize else graph


def _optimize(graph: Graph) -> Graph:
    try:
        from dnet.graph.passes import default_graph_pipeline
    except ImportError:  # graph passes not present in this build
        return graph
    return default_graph_pipeline()(graph)


def compile(model: Any, inputs: Sequence[TensorType] | Mapping[str, TensorType] | None = None,  # noqa: A001
            target: str = "numpy", topology: Any = None, quantize: str | None = None,
            progress: Reporter | None = None, precision: str | None = None, **options: Any) -> Any:
    """An Executable for `target`; with a `topology`, a distributed one over its nodes' workers
    (see `dnet.cluster.session.compile_distributed` for the options). `quantize="int8"` stores
    matmul weights as int8 with a scale per output channel (`dnet.graph.passes.quantize`);
    `quantize="int8-dynamic"` also quantizes each such matmul's activations per row when it runs, so
    the C backend multiplies integers (`dnet.graph.passes.dynamic_quant`). `precision="bf16"` runs
    an f32 model's matmuls on bf16 weights and activations with f32 sums (`dnet.graph.passes.bf16`).
    `progress`: a `dnet.core.progress.Reporter` told how the long steps go (none by default)."""
    if progress is not None:
        with reporting(progress):
            return compile(model, inputs, target, topology, quantize, precision=precision, **options)
    graph = to_graph(model, inputs)
    if quantize is not None and precision is not None:
        raise DnetError(f"quantize={quantize!r} and precision={precision!r} together",
                        hint="choose one: a quantized matmul already computes in integers")
    if quantize is not None:
        graph = _quantized(graph, quantize)
    if precision is not None:
        graph = _with_precision(graph, precision)
    if topology is not None:
        from dnet.cluster.session import compile_distributed

        _check_distributed_options(options)
        return compile_distributed(graph, topology, backend=target, **options)
    return Executable(graph, target, **options)


def _check_distributed_options(options: Mapping[str, Any]) -> None:
    """With a topology, options go to the planner and the coordinator: one they do not take is an error
    naming those they do, before any worker starts (it was a TypeError from deep inside)."""
    from dnet.cluster.coordinator import Coordinator
    from dnet.cluster.session import compile_distributed

    skip = {"graph", "topology", "backend", "coordinator_options", "addresses", "self"}
    known = [p for f in (compile_distributed, Coordinator.__init__) for p in inspect.signature(f).parameters
             if p not in skip]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise DnetError(f"dnet.compile(..., topology=) has no option {', '.join(map(repr, unknown))}",
                        hint=did_you_mean(unknown[0], known) or "its options: " + ", ".join(known))


QUANTIZE_SCHEMES = ("int8", "int8-dynamic")
PRECISIONS = ("f32", "bf16")


def _quantized(graph: Graph, scheme: str) -> Graph:
    from dnet.graph.passes.dynamic_quant import quantize_dynamic
    from dnet.graph.passes.quantize import quantize_weights

    if scheme not in QUANTIZE_SCHEMES:
        raise DnetError(f"unknown quantization {scheme!r}", hint=did_you_mean(str(scheme), QUANTIZE_SCHEMES)
                        or "the schemes: 'int8' (weight-only, per channel), 'int8-dynamic' (activations too, per row)")
    if scheme == "int8":
        return quantize_weights(graph)
    from dnet.hardware import detect

    # a matmul after an activation function: bf16 where the CPU multiplies bf16, else kept f32 (as accurate)
    return quantize_dynamic(graph, after_activations="bf16" if detect().has_bf16 else "f32")


def _with_precision(graph: Graph, precision: str) -> Graph:
    from dnet.graph.passes.bf16 import bf16_matmuls

    if precision not in PRECISIONS:
        raise DnetError(f"unknown precision {precision!r}", hint=did_you_mean(str(precision), PRECISIONS)
                        or "the precisions: 'f32' (as the model is), 'bf16' (matmuls on bf16, f32 sums)")
    return bf16_matmuls(graph) if precision == "bf16" else graph


def _run_eagerly(module: Module, args: tuple, kwargs: dict) -> Any:
    """A Module called on arrays: compiled for these arrays' types, then run on them."""
    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
    except TypeError as err:
        raise DnetError(f"cannot call {type(module).__name__}.forward with these inputs: {err}",
                        user_location()) from None
    arrays = {name: np.asarray(v) for name, v in bound.arguments.items() if v is not None}
    exe = compile(module, {name: TensorType(a.shape, DType.from_numpy(a.dtype)) for name, a in arrays.items()})
    return exe(**arrays)


set_eager_call(_run_eagerly)


def save_artifact(exe: Executable, directory: Path | str) -> None:
    """A standalone artefact: the serialised graph, a manifest, and whatever the backend saves."""
    from dnet.graph.serialize import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save(exe.graph, directory / "graph")
    if hasattr(exe.runner, "save"):
        exe.runner.save(directory)
    manifest = {"format": ARTIFACT_FORMAT, "target": exe.target,
                "inputs": {n: t.to_json() for n, t in exe.graph.input_types().items()},
                "outputs": {n: t.to_json() for n, t in exe.graph.output_types().items()}}
    write_text_atomic(directory / "manifest.json", json.dumps(manifest, indent=2))


def load_artifact(directory: Path | str) -> Executable:
    from dnet.graph.serialize import load

    directory = Path(directory)
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError) as err:
        raise SerializationError(f"{directory} is not a dnet artefact: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise SerializationError(f"{directory}: artefact format {found}, expected {ARTIFACT_FORMAT}")
    target = manifest.get("target")
    if not isinstance(target, str):
        raise SerializationError(f"{directory}: manifest.json has no valid 'target' field (found {target!r})")
    graph = load(directory / "graph")
    backend = registry.get(target)
    runner = backend.load(graph, directory) if hasattr(backend, "load") else backend.prepare(graph)
    return Executable(graph, target, runner=runner)
