"""ONNX import: `from_onnx(path_or_model)` -> a dnet graph.

Needs the `onnx` package (`pip install 'dnet[onnx]'`); `import dnet` does not. See docs/onnx.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from dnet.core.types import TensorType
from dnet.errors import DnetError
from dnet.graph.ir import Graph

try:
    import onnx
except ImportError as err:  # pragma: no cover - depends on the environment
    raise DnetError("dnet.from_onnx needs the onnx package", hint="pip install 'dnet[onnx]'") from err

from dnet.frontend.onnx_import.importer import import_model
from dnet.frontend.onnx_import.reader import check_model, read_model
from dnet.frontend.onnx_import.rules import OPSETS, RULES

__all__ = ["from_onnx", "RULES", "OPSETS"]


def from_onnx(model: str | Path | Any, input_types: Mapping[str, TensorType] | None = None) -> Graph:
    """The graph of an ONNX model (a file path or an `onnx.ModelProto`).

    Inputs keep their ONNX names; a `dim_param` ('batch') becomes the symbolic dim of
    that name, a `dim_value` stays a number. `input_types` replaces the declared type of
    the inputs it names (to fix a size, or to name a dim the file leaves blank).
    """
    if isinstance(model, onnx.ModelProto):
        source = f"<ONNX model '{model.graph.name}'>"
        check_model(model, source)
    elif isinstance(model, (str, Path)):
        source = str(model)
        model = read_model(Path(model))
    else:
        raise DnetError(f"from_onnx takes a path or an onnx.ModelProto, not a {type(model).__name__}")
    return import_model(model, source, input_types)
