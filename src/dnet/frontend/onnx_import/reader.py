"""Reading an ONNX model: the file, its validity, its opset, and whether dnet has a rule for every node."""
from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from dnet.errors import DnetError, Location, UnsupportedOpError
from dnet.frontend.onnx_import.rules import OPSETS, RULES

_DEFAULT_DOMAINS = ("", "ai.onnx")


def read_model(path: Path) -> onnx.ModelProto:
    """The model in `path` (external weight files next to it are read too)."""
    if not path.is_file():
        raise DnetError(f"no such ONNX file: {path}")
    try:
        model = onnx.load(str(path))
    except (DecodeError, OSError, ValueError, RuntimeError) as err:
        raise DnetError(f"{path} is not a readable ONNX model: {err}") from None
    check_model(model, str(path))
    return model


def check_model(model: onnx.ModelProto, source: str) -> None:
    """A graph is there. (onnx.checker is stricter than ONNX Runtime, e.g. on outputs without a shape; the
    importer finds what matters to it: names nothing defines, attributes a rule cannot read.)"""
    if not model.graph.node and not model.graph.output:
        raise DnetError(f"{source} holds no ONNX graph")


def opset_of(model: onnx.ModelProto, source: str) -> int:
    versions = [o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS]
    if not versions:
        raise DnetError(f"{source} imports no ai.onnx opset")
    version = versions[0]
    if version not in OPSETS:
        raise UnsupportedOpError(f"ONNX opset {version}", Location(source),
                                 hint=f"dnet reads opsets {OPSETS.start} to {OPSETS.stop - 1}; "
                                      "re-export with one of them (e.g. opset_version=17)")
    return version


def check_supported(model: onnx.ModelProto, opset: int, source: str) -> None:
    """Every node without a rule, found before anything is built; the error names the first, lists the rest."""
    missing: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        key = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"
        if key not in RULES:
            missing.setdefault(key, node)
    if not missing:
        return
    op_type, node = next(iter(missing.items()))
    others = [t for t in missing if t != op_type]
    raise UnsupportedOpError(f"ONNX op '{op_type}' (node '{node.name}', opset {opset}) has no dnet rule",
                             Location(source), f"also unsupported: {', '.join(others)}" if others else None)
