"""Binding weights to the parameters of an instantiated DSL model, by dotted path."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from dnet.core.dtypes import DType
from dnet.core.shapes import shape_str
from dnet.errors import WeightError, did_you_mean
from dnet.frontend.weight_files import read_safetensors
from dnet.objects.ir import ObjectModule
from dnet.objects.symbols import SymbolFlag


def load_weights(module: ObjectModule, weights: Mapping[str, np.ndarray] | str | Path, strict: bool = True) -> None:
    """Give every `SYM_EXTERNAL` parameter its array from `weights` (a mapping or a .safetensors file).

    A missing weight is an error unless the parameter is `SYM_OPTIONAL` (it keeps its
    init fill); with `strict`, so is a weight that no parameter takes.
    """
    if not isinstance(weights, Mapping):
        weights = read_safetensors(weights)
    params = dict(module.root.named_parameters())
    external = {p: s for p, s in params.items() if SymbolFlag.EXTERNAL in s.flags}
    missing = [p for p, s in external.items() if p not in weights and SymbolFlag.OPTIONAL not in s.flags]
    if missing:
        hint = did_you_mean(missing[0], [w for w in weights if w not in params])
        raise WeightError(f"missing weight(s): {', '.join(missing[:6])}" + (" ..." if len(missing) > 6 else ""),
                          hint=hint)
    unexpected = [w for w in weights if w not in external]
    if strict and unexpected:
        raise WeightError(f"unexpected weight(s): {', '.join(unexpected[:6])}" + (" ..." if len(unexpected) > 6 else ""),
                          hint=did_you_mean(unexpected[0], external) or "load with strict=False to ignore them")
    for path, sym in external.items():
        if path not in weights:
            continue  # optional: keeps its init fill
        array = np.asarray(weights[path])
        if tuple(array.shape) != tuple(sym.type.shape):
            raise WeightError(f"weight '{path}' has shape {tuple(array.shape)}, the model declares "
                              f"{shape_str(sym.type.shape)}", sym.loc)
        if DType.from_numpy(array.dtype) != sym.type.dtype:
            raise WeightError(f"weight '{path}' has dtype {DType.from_numpy(array.dtype)}, the model declares "
                              f"{sym.type.dtype}", sym.loc)
        sym.value = np.ascontiguousarray(array)


def seeded_weights(module: ObjectModule, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights for every `SYM_EXTERNAL` parameter, the same for the same seed: floats drawn from
    N(0, 1/fan_in) (fan_in: the last dim), so activations keep their scale through the layers; integer and
    bool parameters are zeros. For running a model whose real weights are not at hand."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, sym in module.root.named_parameters():
        if SymbolFlag.EXTERNAL not in sym.flags:
            continue
        shape = tuple(sym.type.shape)
        if not all(isinstance(d, int) for d in shape):
            raise WeightError(f"parameter '{path}' has symbolic shape {shape_str(sym.type.shape)}: "
                              "seeded weights need fixed sizes", sym.loc)
        dtype = sym.type.dtype
        if dtype.is_float:
            scale = 1.0 / np.sqrt(shape[-1]) if shape and shape[-1] else 1.0
            out[path] = (rng.standard_normal(shape) * scale).astype(dtype.np)
        else:
            out[path] = np.zeros(shape, dtype.np)
    return out
