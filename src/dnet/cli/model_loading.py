"""Turning a command-line model reference into something `dnet.compile` accepts.

A reference is one of:
  a built-in name      `minilm`                      (dnet.models)
  a Python file        `path/model.py:NAME`          (a Module, or a callable returning one)
  a DSL file           `path/model.dnet[:Object]`     (dnet.load_dsl)
  an ONNX file         `path/model.onnx`              (dnet.from_onnx; its inputs' types come with it)
  a compiled artefact  a directory written by `dnet compile -o DIR`
Input types are given as `NAME:DTYPE[d0,d1,...]` with symbolic dims by name: `x:f32[batch,seq,384]`.
A DSL model's parameters get their data from `--weights FILE` (.safetensors or .npz, by dotted path) or,
with `--init seeded`, from a seeded random draw (to run a model whose weights are not at hand).
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from dnet.core.dtypes import DType
from dnet.core.shapes import dim
from dnet.core.types import TensorType
from dnet.errors import DnetError, ParseError

_INPUT = re.compile(r"^(?P<name>[A-Za-z_]\w*):(?P<dtype>\w+)\[(?P<dims>[^\]]*)\]$")


def parse_input(spec: str) -> tuple[str, TensorType]:
    m = _INPUT.match(spec.strip())
    if not m:
        raise ParseError(f"bad input spec '{spec}'", hint="write NAME:DTYPE[d0,d1,...], e.g. x:f32[batch,seq,384]")
    dims = [d.strip() for d in m["dims"].split(",") if d.strip()]
    shape = tuple(dim(int(d)) if d.lstrip("-").isdigit() else dim(d) for d in dims)
    return m["name"], TensorType(shape, DType.parse(m["dtype"]))


def parse_inputs(specs: tuple[str, ...]) -> dict[str, TensorType] | None:
    return dict(parse_input(s) for s in specs) if specs else None


def parse_dims(text: str) -> dict[str, int]:
    """`batch=2,seq=16` -> {"batch": 2, "seq": 16}: sizes of symbolic dims (--dims)."""
    env = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if not value.isdigit():
            raise DnetError(f"bad --dims entry '{part}'", hint="write NAME=INT,NAME=INT")
        env[name] = int(value)
    return env


def check_dims(graph, env: dict[str, int]) -> None:
    """A --dims name that no input's shape uses is a mistake (a typo), not something to ignore."""
    from dnet.core.shapes import Dim
    from dnet.errors import did_you_mean

    symbols = {s for t in graph.input_types().values() for d in t.shape if isinstance(d, Dim)
               for s in d.free_symbols()}
    unknown = sorted(set(env) - symbols)
    if unknown:
        raise DnetError(f"--dims names {', '.join(unknown)}, which no input's shape uses",
                        hint=did_you_mean(unknown[0], symbols) or
                        (f"the inputs' dims: {', '.join(sorted(symbols))}" if symbols else "the inputs have no symbolic dims"))


def builtin_models() -> dict[str, Any]:
    """Name -> callable returning (model, input types)."""
    from dnet import models

    return getattr(models, "BUILTIN", {})


def load_model(ref: str, weights: Path | None = None, init: str | None = None,
               seed: int = 0) -> tuple[Any, dict[str, TensorType] | None]:
    """(model, default input types or None) for a command-line reference; `weights` or `init` give a
    DSL model's parameters their data."""
    builtins = builtin_models()
    path_part, _, attr = ref.partition(":")
    path = Path(path_part)
    if (weights is not None or init is not None) and path.suffix != ".dnet":
        raise DnetError("--weights and --init are for DSL models (FILE.dnet)",
                        hint="other models come with their weights")
    if weights is not None and init is not None:
        raise DnetError("give --weights or --init, not both")
    if ref in builtins:
        return builtins[ref]()
    if path.suffix == ".py":
        return _load_python(path, attr or "model"), None
    if path.suffix == ".dnet":
        return _load_dsl(path, attr or None, weights, init, seed), None
    if path.suffix == ".onnx":
        import dnet

        return dnet.from_onnx(path), None
    if path.is_dir():
        from dnet.graph.serialize import load

        return load(path), None
    known = ", ".join(sorted(builtins)) or "none yet"
    raise DnetError(f"cannot load model '{ref}'",
                    hint=f"give a built-in name ({known}), FILE.py:NAME, FILE.dnet, FILE.onnx or a compiled directory")


def _load_dsl(path: Path, object_name: str | None, weights: Path | None, init: str | None, seed: int) -> Any:
    import dnet
    from dnet.frontend.dsl import load_weights, seeded_weights

    module = dnet.load_dsl(path, object=object_name)
    if init == "seeded":
        load_weights(module, seeded_weights(module, seed))
    elif init is not None:
        raise DnetError(f"unknown --init '{init}'", hint="--init seeded")
    elif weights is not None:
        load_weights(module, read_arrays(weights) if weights.suffix == ".npz" else weights)
    return module


def read_arrays(path: Path) -> dict[str, Any]:
    """The arrays of a .npz file by name; a file numpy cannot read is one DnetError naming it."""
    import zipfile

    import numpy as np

    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DnetError(f"cannot read {path} as .npz: {err}", hint="np.savez(path, name=array, ...) writes one") \
            from None
    if not isinstance(data, np.lib.npyio.NpzFile):   # a plain .npy: one array, no names
        raise DnetError(f"{path} holds one unnamed array, not named arrays (.npy, not .npz)",
                        hint="np.savez(path, name=array, ...) writes one")
    try:
        with data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DnetError(f"cannot read {path} as .npz: {err}", hint="np.savez(path, name=array, ...) writes one") \
            from None


def _load_python(path: Path, attr: str) -> Any:
    if not path.exists():
        raise DnetError(f"no such file: {path}")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    if not hasattr(module, attr):
        raise DnetError(f"{path} defines no '{attr}'")
    value = getattr(module, attr)
    from dnet.frontend.module import Module

    return value if isinstance(value, Module) else value()
