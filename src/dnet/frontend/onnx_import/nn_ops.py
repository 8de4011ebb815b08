"""Convolution, pooling and batch normalisation over NCHW tensors (2-D spatial only)."""
from __future__ import annotations

import numpy as np

from dnet.errors import UnsupportedOpError
from dnet.frontend.onnx_import.context import Context, Input
from dnet.frontend.onnx_import.values import Missing, Static
from dnet.graph import composites as C
from dnet.graph.ops import Op


def _window_attrs(ctx: Context, kernel: tuple) -> dict:
    """strides, dilations and pads as dnet writes them; ONNX pads are (top, left, bottom, right) already."""
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        raise UnsupportedOpError(f"{ctx.op_type} with auto_pad={auto_pad}", hint="export with explicit pads")
    if len(kernel) != 2:
        raise UnsupportedOpError(f"{ctx.op_type} over {len(kernel)} spatial dims", hint="dnet has 2-D windows")
    pads = tuple(ctx.attr("pads", (0, 0, 0, 0))) if auto_pad == "NOTSET" else (0, 0, 0, 0)
    return {"stride": tuple(ctx.attr("strides", (1, 1))), "padding": pads,
            "dilation": tuple(ctx.attr("dilations", (1, 1)))}


def conv(ctx: Context, x: Input, w: Input, bias: Input = None) -> Input:
    b, weight = ctx.b, ctx.tensor(w)
    attrs = _window_attrs(ctx, tuple(ctx.attr("kernel_shape", b.shape(weight)[2:])))
    y = b.node(Op.CONV2D, [ctx.tensor(x), weight], groups=int(ctx.attr("group", 1)), **attrs)
    return y if bias is None else b.elementwise(Op.ADD, y, b.reshape(ctx.tensor(bias), _per_channel(b.shape(y))))


def _per_channel(shape: tuple) -> tuple:
    """The shape of a per-channel parameter broadcast over an NC... tensor."""
    return (1, shape[1]) + (1,) * (len(shape) - 2)


def _pool_attrs(ctx: Context) -> dict:
    kernel = tuple(ctx.attr("kernel_shape"))
    attrs = _window_attrs(ctx, kernel)
    if ctx.attr("ceil_mode", 0) or attrs.pop("dilation") != (1, 1):
        raise UnsupportedOpError(f"{ctx.op_type} with ceil_mode or dilations")
    return {"kernel": kernel, **attrs}


def max_pool(ctx: Context, x: Input) -> tuple:
    y = ctx.b.node(Op.MAXPOOL2D, [ctx.tensor(x)], **_pool_attrs(ctx))
    return y, Missing("MaxPool's indices")


def average_pool(ctx: Context, x: Input) -> Input:
    return ctx.b.node(Op.AVGPOOL2D, [ctx.tensor(x)], count_include_pad=bool(ctx.attr("count_include_pad", 0)),
                      **_pool_attrs(ctx))


def global_average_pool(ctx: Context, x: Input) -> Input:
    v = ctx.tensor(x)
    return C.mean(ctx.b, v, tuple(range(2, len(ctx.b.shape(v)))), True)


def global_max_pool(ctx: Context, x: Input) -> Input:
    v = ctx.tensor(x)
    return ctx.b.reduce(Op.REDUCE_MAX, v, tuple(range(2, len(ctx.b.shape(v)))), True)


def batch_norm(ctx: Context, x: Input, scale: Input, bias: Input, mean: Input, var: Input) -> Input:
    """Inference: x * a + c per channel, a = scale / sqrt(var + eps), c = bias - mean * a (folded when static)."""
    if ctx.attr("training_mode", 0):
        raise UnsupportedOpError("BatchNormalization in training mode", hint="export the model in eval() mode")
    eps = float(ctx.attr("epsilon", 1e-5))
    b, v = ctx.b, ctx.tensor(x)
    channel = _per_channel(b.shape(v))
    params = (scale, bias, mean, var)
    if all(isinstance(p, Static) and not p.symbolic for p in params):
        s, c, m, var_ = (p.array.astype(np.float64) for p in params)
        a = s / np.sqrt(var_ + eps)
        dtype = scale.array.dtype
        mul = b.const(f"{ctx.output}.scale", a.astype(dtype).reshape(channel))
        add = b.const(f"{ctx.output}.shift", (c - m * a).astype(dtype).reshape(channel))
        return b.elementwise(Op.ADD, b.elementwise(Op.MUL, v, mul), add)
    s, c, m, var_ = (b.reshape(ctx.tensor(p), channel) for p in params)
    a = b.elementwise(Op.MUL, s, C.rsqrt(b, b.elementwise(Op.ADD, var_, eps)))
    return b.elementwise(Op.ADD, b.elementwise(Op.MUL, b.elementwise(Op.SUB, v, m), a), c)


RULES = {
    "Conv": conv, "MaxPool": max_pool, "AveragePool": average_pool,
    "GlobalAveragePool": global_average_pool, "GlobalMaxPool": global_max_pool,
    "BatchNormalization": batch_norm,
}
