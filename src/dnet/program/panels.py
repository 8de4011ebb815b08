"""Weights packed for the low-precision Gemms (`backends/c/igemm.py`), once, at load time.

Both layouts split the columns into panels of `nr` and group `g` consecutive values along k per
column, so that one vector load holds `g` values of k for several columns, as the dot-product
instructions read them (`vpdpbusd`: 4 int8; `vdpbf16ps`: 2 bf16):

    panel p, group kk, column jj, value t   at   ((p * groups + kk) * nr + jj) * g + t

zero-padded to whole panels and whole groups. An int8 panel holds b + 128, the unsigned bytes `vpdpbusd`
multiplies (the kernels take 128 * sum_k a back out; without VNNI they flip the top bit back), and is
followed by its columns' sums of b as int32 (`nr` of them): a row's zero offset times them is its share
of the product.
"""
from __future__ import annotations

import numpy as np

def grouped_panels(b: np.ndarray, nr: int, group: int) -> np.ndarray:
    """(k, n) -> (panels, ceil(k / group), nr, group), zero-padded."""
    k, n = b.shape
    panels, groups = -(-n // nr), -(-k // group)
    padded = np.zeros((groups * group, panels * nr), b.dtype)
    padded[:k, :n] = b
    return np.ascontiguousarray(padded.reshape(groups, group, panels, nr).transpose(2, 0, 3, 1))


def int8_panels(b: np.ndarray, nr: int) -> np.ndarray:
    """int8 (k, n) -> (panels, ceil(k/4) * nr * 4 + 4 * nr) bytes: each panel's values as b + 128 (unsigned, as
    `vpdpbusd` multiplies them; padding too), then its column sums of b (int32)."""
    grouped = grouped_panels(np.asarray(b, np.int8), nr, 4)
    panels = grouped.shape[0]
    sums = grouped.astype(np.int32).sum(axis=(1, 3))            # (panels, nr)
    unsigned = (grouped.reshape(panels, -1).view(np.uint8) ^ 0x80).view(np.int8)
    return np.concatenate([unsigned, sums.astype("<i4").view(np.int8)], axis=1)


def bf16_panels(b: np.ndarray, nr: int) -> np.ndarray:
    """bf16 (k, n) -> bf16 (panels, ceil(k/2) * nr * 2)."""
    grouped = grouped_panels(b, nr, 2)
    return grouped.reshape(grouped.shape[0], -1)


LAYOUTS = {"i8x4": int8_panels, "bf16x2": bf16_panels}
