"""Types every layer shares: dtypes, symbolic shapes, tensor types."""
from dnet.core.dtypes import DType, bf16, boolean, f16, f32, i8, i32, i64
from dnet.core.shapes import WILDCARD, Dim, Shape, Sym, dim, shape_str
from dnet.core.types import TensorType

__all__ = [
    "DType", "f32", "f16", "bf16", "i8", "i32", "i64", "boolean",
    "Dim", "Sym", "Shape", "WILDCARD", "dim", "shape_str", "TensorType",
]
