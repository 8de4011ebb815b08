"""Shared by the torch import tests: run a module in torch and through dnet, compare."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

import dnet


def torch_outputs(module: torch.nn.Module, *args: Any, **kwargs: Any) -> list[np.ndarray]:
    """The module's outputs, flattened as torch.export flattens them (model output classes included)."""
    with torch.no_grad():
        out = module(*args, **kwargs)
    return [t.numpy() for t in torch.utils._pytree.tree_leaves(out)]


def dnet_outputs(exe: dnet.Executable, *args: Any) -> list[np.ndarray]:
    out = exe(*[a.numpy() for a in args])
    return list(out) if isinstance(out, tuple) else [out]


def relative_error(expected: np.ndarray, actual: np.ndarray) -> float:
    """max |expected - actual| over the output's scale, max(1, max |expected|): the issue's f32 criterion."""
    assert expected.shape == actual.shape, (expected.shape, actual.shape)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    return float(np.abs(expected.astype(np.float64) - actual).max(initial=0.0)) / scale


def assert_matches(expected: list[np.ndarray], actual: list[np.ndarray], tolerance: float = 1e-4) -> float:
    """Same dtypes and shapes; integers and bools exact, floats within `tolerance`. Returns the worst error."""
    assert len(expected) == len(actual)
    worst = 0.0
    for e, a in zip(expected, actual):
        assert a.dtype == e.dtype, (a.dtype, e.dtype)
        if e.dtype.kind in "biu":
            np.testing.assert_array_equal(a, e)
        else:
            worst = max(worst, relative_error(e, a))
    assert worst <= tolerance, worst
    return worst
