"""dnet: a compiler that turns a network of unlike devices into one inference accelerator."""
from typing import Any

from dnet.api import Executable, compile, to_graph
from dnet.core import WILDCARD, DType, Sym, TensorType, bf16, boolean, f16, f32, i8, i32, i64
from dnet.errors import DnetError
from dnet.frontend import functional, tensor_methods  # noqa: F401 - attaches Tensor's methods
from dnet.frontend import nn
from dnet.frontend.module import Module, ModuleList, Parameter, Sequential
from dnet.graph.ir import Graph
from dnet.objects.ir import ObjectModule
from dnet.topology import Topology, sources as _topology_sources
from dnet import models  # noqa: E402 - models are written with the names above
from dnet import llm  # noqa: E402 - LLM generation, above the compiler

# topologies the layers above the topology build (it may not import them): imported when first used
_topology_sources.register("ray", "dnet.cluster.ray_cluster:topology_from_ray")

__all__ = [
    "Executable", "compile", "to_graph", "WILDCARD", "DType", "Sym", "TensorType", "f32", "f16", "bf16",
    "i8", "i32", "i64", "boolean", "DnetError", "functional", "Module", "ModuleList", "Parameter", "Sequential",
    "nn", "models", "llm", "from_torch", "from_onnx", "load_dsl", "Topology",
]


def from_torch(module: Any, example_args: Any, dynamic_shapes: Any = None, **options: Any) -> ObjectModule:
    """Import a torch.nn.Module through torch.export as object IR (needs torch; imported only here)."""
    from dnet.frontend.torch_import import from_torch as import_torch

    return import_torch(module, example_args, dynamic_shapes, **options)


def from_onnx(model: Any, input_types: Any = None) -> Graph:
    """Import an ONNX model (a file path or an onnx.ModelProto) as a graph (needs onnx; imported only here).
    Inputs' `dim_param` names become symbolic dims; see docs/onnx.md."""
    from dnet.frontend.onnx_import import from_onnx as import_onnx

    return import_onnx(model, input_types)


def load_dsl(path: Any, object: str | None = None, constants: Any = None, weights: Any = None,  # noqa: A002
             strict: bool = True, entry: str = "forward") -> ObjectModule:
    """A DSL file as object IR: an instance of `object` (default: the file's `model(...)`) configured by
    `constants`, with `weights` (a mapping or a .safetensors path) bound to its parameters; `entry` is the
    function `dnet.compile` lowers. See docs/dsl.md."""
    from dnet.frontend.dsl import load_dsl as load

    return load(path, object, constants, weights, strict, entry)
