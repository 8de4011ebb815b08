"""Element types. Each maps to a numpy dtype (bf16 through ml_dtypes).

Block dtypes (GGUF's Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K) hold a row's elements in
fixed-size blocks of packed integers and scales. A tensor of such a dtype has its
logical shape (rows, k) in the graph, and its storage is uint8 of shape
(rows, k // block * block_bytes): rows stay independent, blocks run along the last axis.
"""
from __future__ import annotations

from enum import Enum

import ml_dtypes
import numpy as np

from dnet.errors import DTypeError


class DType(Enum):
    F32 = "f32"
    F16 = "f16"
    BF16 = "bf16"
    I8 = "i8"
    I32 = "i32"
    I64 = "i64"
    BOOL = "bool"
    Q8_0 = "q8_0"
    Q4_0 = "q4_0"
    Q4_1 = "q4_1"
    Q4_K = "q4_k"
    Q5_K = "q5_k"
    Q6_K = "q6_k"

    @property
    def np(self) -> np.dtype:
        return _NUMPY[self]

    @property
    def itemsize(self) -> float:
        """Bytes per element (a fraction for block dtypes)."""
        if self.is_block:
            return self.block_bytes / self.block
        return self.np.itemsize

    @property
    def is_block(self) -> bool:
        return self in _BLOCKS

    @property
    def block(self) -> int:
        """Elements per block (1 for plain dtypes)."""
        return _BLOCKS[self][0] if self.is_block else 1

    @property
    def block_bytes(self) -> int:
        return _BLOCKS[self][1] if self.is_block else self.np.itemsize

    def storage_bytes(self, count: int) -> int:
        """Bytes that `count` elements take (a whole number of blocks)."""
        return -(-count // self.block) * self.block_bytes

    @property
    def is_float(self) -> bool:
        return self in (DType.F32, DType.F16, DType.BF16)

    @property
    def is_int(self) -> bool:
        return self in (DType.I8, DType.I32, DType.I64)

    def __repr__(self) -> str:
        return self.value

    __str__ = __repr__

    @staticmethod
    def parse(name: str) -> "DType":
        """'f32', 'float32', 'D_F16', 'bfloat16', ... -> DType."""
        key = name.lower().removeprefix("d_")
        key = _ALIASES.get(key, key)
        try:
            return DType(key)
        except ValueError:
            raise DTypeError(f"unknown dtype '{name}'", hint="one of " + ", ".join(d.value for d in DType)) from None

    @staticmethod
    def from_numpy(dtype: np.dtype) -> "DType":
        dtype = np.dtype(dtype)
        for d, nd in _NUMPY.items():
            if nd == dtype and not d.is_block:
                return d
        raise DTypeError(f"numpy dtype {dtype} has no dnet dtype")


_NUMPY = {
    DType.F32: np.dtype(np.float32),
    DType.F16: np.dtype(np.float16),
    DType.BF16: np.dtype(ml_dtypes.bfloat16),
    DType.I8: np.dtype(np.int8),
    DType.I32: np.dtype(np.int32),
    DType.I64: np.dtype(np.int64),
    DType.BOOL: np.dtype(np.bool_),
    **{d: np.dtype(np.uint8) for d in (DType.Q8_0, DType.Q4_0, DType.Q4_1, DType.Q4_K, DType.Q5_K, DType.Q6_K)},
}
# elements per block, bytes per block (GGUF's layouts: see dnet.core.quant)
_BLOCKS = {DType.Q8_0: (32, 34), DType.Q4_0: (32, 18), DType.Q4_1: (32, 20),
           DType.Q4_K: (256, 144), DType.Q5_K: (256, 176), DType.Q6_K: (256, 210)}
_ALIASES = {
    "float32": "f32", "float": "f32", "float16": "f16", "half": "f16", "bfloat16": "bf16",
    "int8": "i8", "int32": "i32", "int64": "i64", "long": "i64", "int": "i64", "bool_": "bool",
}

f32, f16, bf16 = DType.F32, DType.F16, DType.BF16
i8, i32, i64 = DType.I8, DType.I32, DType.I64
boolean = DType.BOOL

# Which dtype wins when two meet in a binary op (bool < ints < floats).
_RANK = {DType.BOOL: 0, DType.I8: 1, DType.I32: 2, DType.I64: 3, DType.BF16: 4, DType.F16: 5, DType.F32: 6}


def promote(a: DType, b: DType) -> DType:
    if a == b:
        return a
    if {a, b} == {DType.F16, DType.BF16}:
        return DType.F32
    return a if _RANK[a] >= _RANK[b] else b
