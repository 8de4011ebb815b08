"""One check every backend makes on an input before binding it: only a safe cast."""
from __future__ import annotations

from typing import Any

import numpy as np

from dnet.core.dtypes import DType
from dnet.errors import DTypeError


def input_array(name: str, value: Any, dtype: DType) -> np.ndarray:
    """`value` as an array of `dtype`, when numpy casts it within the same kind (int64 to int32,
    float64 to float32, int to float); complex to float, float to int, strings and None are refused."""
    array = np.asarray(value)
    if array.dtype == dtype.np:
        return array
    if array.dtype.kind in "OUS" or not np.can_cast(array.dtype, dtype.np, "same_kind"):
        raise DTypeError(f"input '{name}' is {array.dtype}, which does not cast safely to {dtype}",
                         hint=f"pass a {dtype} array (or convert it yourself, e.g. x.astype(...))")
    return array
