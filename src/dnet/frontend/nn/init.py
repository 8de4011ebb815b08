"""Filling a model's unloaded parameters with seeded random values."""
from __future__ import annotations

import numpy as np

from dnet.frontend.module import Module


def seeded_(module: Module, seed: int = 0, std: float = 0.02) -> Module:
    """Give every parameter without data seeded values: normal(0, std) for float weights,
    1 + |normal| for variances (they must be positive), zeros for integer counters.
    Parameters already loaded are left alone. Returns the module."""
    rng = np.random.default_rng(seed)
    for name, p in module.named_parameters():
        if p.data is not None:
            continue
        shape, dtype = tuple(p.type.shape), p.type.dtype
        if not dtype.is_float:
            p.load(np.zeros(shape, dtype.np), name)
        elif name.endswith("running_var"):
            p.load((1.0 + np.abs(rng.standard_normal(shape))).astype(dtype.np), name)
        else:
            p.load((std * rng.standard_normal(shape)).astype(dtype.np), name)
    return module
