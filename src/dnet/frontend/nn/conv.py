"""Convolution and pooling over NCHW tensors."""
from __future__ import annotations

from dnet.core.dtypes import DType
from dnet.errors import ShapeError, UnsupportedOpError
from dnet.frontend import functional as F
from dnet.frontend.module import Module, Parameter
from dnet.frontend.trace import user_location


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _same_padding(kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """PyTorch's padding='same' (stride 1): the extra pixel of an odd total goes after."""
    total = [d * (k - 1) for k, d in zip(kernel, dilation)]
    top, left = total[0] // 2, total[1] // 2
    return (top, left, total[0] - top, total[1] - left)


class Conv2d(Module):
    """2-D convolution; weight (out_channels, in_channels // groups, kh, kw) as in PyTorch.

    `padding` is an int, an (h, w) pair, 'valid' or 'same'; zeros padding only.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride=1,
                 padding: int | tuple[int, int] | str = 0, dilation=1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", dtype: DType = DType.F32) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ShapeError(f"Conv2d: channels {in_channels} -> {out_channels} do not divide into {groups} groups",
                             user_location())
        if padding_mode != "zeros":
            raise UnsupportedOpError(f"Conv2d: padding_mode '{padding_mode}' is not supported", user_location(),
                                     "use 'zeros'")
        kernel = _pair(kernel_size)
        self.stride, self.dilation, self.groups = _pair(stride), _pair(dilation), groups
        if padding == "same":
            if self.stride != (1, 1):
                raise ShapeError("Conv2d: padding='same' needs stride 1, as in PyTorch", user_location())
            self.padding = _same_padding(kernel, self.dilation)
        else:
            self.padding = (0, 0) if padding == "valid" else _pair(padding)
        self.weight = Parameter(shape=(out_channels, in_channels // groups) + kernel, dtype=dtype)
        self.bias = Parameter(shape=(out_channels,), dtype=dtype) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def _pool_args(kernel_size, stride, padding) -> tuple[tuple, tuple, tuple]:
    kernel = _pair(kernel_size)
    return kernel, _pair(stride) if stride is not None else kernel, _pair(padding)


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False) -> None:
        super().__init__()
        if _pair(dilation) != (1, 1) or ceil_mode:
            raise UnsupportedOpError("MaxPool2d: dilation and ceil_mode are not supported", user_location())
        self.kernel, self.stride, self.padding = _pool_args(kernel_size, stride, padding)

    def forward(self, x):
        return F.max_pool2d(x, self.kernel, self.stride, self.padding)


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True,
                 divisor_override: int | None = None) -> None:
        super().__init__()
        if ceil_mode or divisor_override is not None:
            raise UnsupportedOpError("AvgPool2d: ceil_mode and divisor_override are not supported", user_location())
        self.kernel, self.stride, self.padding = _pool_args(kernel_size, stride, padding)
        self.count_include_pad = count_include_pad

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding, self.count_include_pad)


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed output size: 1 (global pooling) for any input; other sizes when the
    input's static height and width divide by them (then it is a plain average pool)."""

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        self.output_size = _pair(output_size)

    def forward(self, x):
        if self.output_size == (1, 1):
            return F.adaptive_avg_pool2d_1(x)
        h, w = x.type.shape[2:]
        oh, ow = self.output_size
        if not (isinstance(h, int) and isinstance(w, int) and h % oh == 0 and w % ow == 0):
            raise UnsupportedOpError(f"AdaptiveAvgPool2d{self.output_size} needs static input sizes that divide "
                                     f"by it, got ({h}, {w})", user_location())
        kernel = (h // oh, w // ow)
        return F.avg_pool2d(x, kernel, kernel)
