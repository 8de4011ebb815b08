"""GGUF block formats on the host: dequantize and quantize with numpy.

The layouts are GGUF's (ggml's `block_q4_1` and friends); the arithmetic is the `gguf`
package's, the format's reference implementation in Python. So the numpy backend, the
oracle of every test, computes with exactly what llama.cpp would read, and dnet's own C
kernels (`dnet.backends.c.quant`) are checked against code dnet did not write.
"""
from __future__ import annotations

import numpy as np

from dnet.core.dtypes import DType
from dnet.errors import DTypeError

BLOCK_DTYPES = (DType.Q8_0, DType.Q4_0, DType.Q4_1, DType.Q4_K, DType.Q5_K, DType.Q6_K)
QUANTIZABLE = (DType.Q8_0, DType.Q4_0, DType.Q4_1)    # what `quantize` can write (gguf's numpy quantizers)


def ggml_type(dtype: DType):
    """The `gguf.GGMLQuantizationType` of a block dtype."""
    import gguf

    return getattr(gguf.GGMLQuantizationType, dtype.name)


def block_dtype(ggml_type_name: str) -> DType | None:
    """'Q4_1' -> DType.Q4_1; None for a name that is not one of dnet's block dtypes."""
    try:
        dtype = DType[ggml_type_name.upper()]
    except KeyError:
        return None
    return dtype if dtype.is_block else None


def storage_shape(dtype: DType, shape: tuple[int, ...]) -> tuple[int, ...]:
    """uint8 storage of a block tensor of logical `shape` (the last axis holds whole blocks)."""
    check_row(dtype, shape)
    return (*shape[:-1], shape[-1] // dtype.block * dtype.block_bytes)


def check_row(dtype: DType, shape: tuple[int, ...]) -> None:
    if not shape or shape[-1] % dtype.block:
        raise DTypeError(f"a {dtype} tensor needs rows of whole {dtype.block}-element blocks, got shape {shape}")


def dequantize(data: np.ndarray, dtype: DType, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """f32 values of block-`dtype` storage `data` (uint8, rows of whole blocks)."""
    from gguf.quants import dequantize as gguf_dequantize

    raw = np.ascontiguousarray(data, dtype=np.uint8)
    out = gguf_dequantize(raw, ggml_type(dtype)).astype(np.float32, copy=False)
    return out.reshape(shape) if shape is not None else out


def quantize(values: np.ndarray, dtype: DType) -> np.ndarray:
    """uint8 storage of f32 `values` in block `dtype` (Q8_0, Q4_0, Q4_1)."""
    from gguf.quants import quantize as gguf_quantize

    if dtype not in QUANTIZABLE:
        raise DTypeError(f"cannot quantize to {dtype}", hint="one of " + ", ".join(d.value for d in QUANTIZABLE))
    values = np.ascontiguousarray(values, dtype=np.float32)
    check_row(dtype, values.shape)
    return gguf_quantize(values, ggml_type(dtype))


# where each block format keeps its f16 scales (byte offsets in a block): random bytes elsewhere are valid
_F16_FIELDS = {DType.Q8_0: (0,), DType.Q4_0: (0,), DType.Q4_1: (0, 2), DType.Q4_K: (0, 2), DType.Q5_K: (0, 2),
               DType.Q6_K: (208,)}


def random_blocks(dtype: DType, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Valid storage of random values in any block format (gguf has no numpy quantizer for the
    K-quants): random bytes, with each block's f16 scales set to small finite values."""
    raw = rng.integers(0, 256, storage_shape(dtype, shape), dtype=np.uint8)
    blocks = raw.reshape(-1, dtype.block_bytes)
    for offset in _F16_FIELDS[dtype]:
        scales = rng.uniform(0.001, 0.02, len(blocks)).astype(np.float16)
        blocks[:, offset:offset + 2] = scales.view(np.uint8).reshape(-1, 2)
    return raw
