"""`dnet.load_dsl`: a DSL file to object IR, configured and with its weights."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from dnet.frontend.dsl.instantiate import instantiate
from dnet.frontend.dsl.loader import load_program
from dnet.frontend.dsl.weights import load_weights
from dnet.objects.ir import ObjectModule
from dnet.objects.passes.walk import entry_function


def load_dsl(path: str | Path, object: str | None = None,  # noqa: A002
             constants: Mapping[str, Any] | None = None, weights: Any = None, strict: bool = True,
             entry: str = "forward") -> ObjectModule:
    """The object IR of a DSL file: an instance of `object` (default: its `model(...)`), configured
    by `constants`, with `weights` (a mapping or a .safetensors path) bound to its parameters.
    `entry` is the root function `dnet.compile` lowers."""
    module = instantiate(load_program(path), object, constants)
    entry_function(module, entry)  # a SymbolError naming the closest function when there is none
    module.entry = entry
    if weights is not None:
        load_weights(module, weights, strict)
    return module
