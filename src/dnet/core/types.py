"""Tensor types: a symbolic shape and a dtype."""
from __future__ import annotations

from dataclasses import dataclass

from dnet.core.dtypes import DType
from dnet.core.shapes import WILDCARD, Shape, dim, dim_from_json, dim_to_json, shape_str
from dnet.errors import DTypeError


@dataclass(frozen=True)
class TensorType:
    shape: Shape
    dtype: DType

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(d if d is WILDCARD else dim(d) for d in self.shape))
        if isinstance(self.dtype, str):  # 'f32', 'float16', ...: as Parameter and the CLI accept them
            object.__setattr__(self, "dtype", DType.parse(self.dtype))
        elif not isinstance(self.dtype, DType):
            raise DTypeError(f"a tensor type needs a DType, got {self.dtype!r}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}{shape_str(self.shape)}"

    def to_json(self) -> dict:
        return {"shape": [dim_to_json(d) for d in self.shape], "dtype": self.dtype.value}

    @staticmethod
    def from_json(obj: dict) -> "TensorType":
        return TensorType(tuple(dim_from_json(d) for d in obj["shape"]), DType(obj["dtype"]))
