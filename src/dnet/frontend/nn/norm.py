"""Normalisation layers: LayerNorm, RMSNorm, and BatchNorm2d with its running statistics."""
from __future__ import annotations

from typing import Sequence

import ml_dtypes

from dnet.core.dtypes import DType
from dnet.errors import UnsupportedOpError
from dnet.frontend import functional as F
from dnet.frontend.module import Module, Parameter
from dnet.frontend.trace import user_location


def _shape(normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    return (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)


class LayerNorm(Module):
    """Normalise over the trailing `normalized_shape` axes, then scale by `weight` and shift by `bias`."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, dtype: DType = DType.F32) -> None:
        super().__init__()
        shape = _shape(normalized_shape)
        self.eps, self.ndim = float(eps), len(shape)
        self.weight = Parameter(shape=shape, dtype=dtype) if elementwise_affine else None
        self.bias = Parameter(shape=shape, dtype=dtype) if elementwise_affine and bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps, self.ndim)


class RMSNorm(Module):
    """x / sqrt(mean(x**2) + eps) * weight over the trailing axes; `eps=None` is the dtype's epsilon,
    as in torch.nn.RMSNorm."""

    def __init__(self, normalized_shape: int | Sequence[int], eps: float | None = None,
                 elementwise_affine: bool = True, dtype: DType = DType.F32) -> None:
        super().__init__()
        shape = _shape(normalized_shape)
        self.ndim = len(shape)
        self.eps = None if eps is None else float(eps)
        self.weight = Parameter(shape=shape, dtype=dtype) if elementwise_affine else None

    def forward(self, x):
        eps = float(ml_dtypes.finfo(x.dtype.np).eps) if self.eps is None else self.eps
        if self.ndim == 1:
            return F.rms_norm(x, self.weight, eps)
        axes = tuple(range(-self.ndim, 0))
        y = x * ((x * x).mean(axes, keepdim=True) + eps).rsqrt()
        return y if self.weight is None else y * self.weight


class BatchNorm2d(Module):
    """Inference batch norm over NCHW: (x - running_mean) / sqrt(running_var + eps) * weight + bias.

    `num_batches_tracked` is declared only so that PyTorch state dicts load; inference never reads it.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True, dtype: DType = DType.F32) -> None:
        super().__init__()
        if not track_running_stats:
            raise UnsupportedOpError("BatchNorm2d without running statistics normalises by batch statistics, "
                                     "which inference does not do", user_location(), "use track_running_stats=True")
        self.num_features, self.eps = num_features, float(eps)
        self.weight = Parameter(shape=(num_features,), dtype=dtype) if affine else None
        self.bias = Parameter(shape=(num_features,), dtype=dtype) if affine else None
        self.running_mean = Parameter(shape=(num_features,), dtype=dtype)
        self.running_var = Parameter(shape=(num_features,), dtype=dtype)
        self.num_batches_tracked = Parameter(shape=(), dtype=DType.I64)

    def forward(self, x):
        def channel(p):
            return p.reshape(1, -1, 1, 1)
        scale = (self.running_var + self.eps).rsqrt()
        if self.weight is not None:
            scale = scale * self.weight
        y = (x - channel(self.running_mean)) * channel(scale)
        return y if self.bias is None else y + channel(self.bias)
