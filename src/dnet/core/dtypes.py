"""Element types. Each maps to a numpy dtype (bf16 through ml_dtypes)."""
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

    @property
    def np(self) -> np.dtype:
        return _NUMPY[self]

    @property
    def itemsize(self) -> int:
        return self.np.itemsize

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
            if nd == dtype:
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
}
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
