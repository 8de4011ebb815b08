"""Winograd convolution F(m x m, 3 x 3): its matrices, the filter transform, and which convolutions use it.

A 3x3 convolution of stride 1 computes each m x m block of output (a *tile*) from the (m + 2) x (m + 2)
block of input under it (tiles overlap by 2). Winograd's minimal filtering (Lavin and Gray, 2015) does
it with (m + 2)^2 products per tile and channel pair instead of 9 m^2:

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* element by element)

g the 3x3 filter, d the input block. Summed over input channels, the element-wise products become
(m + 2)^2 independent matrix products [output channels x input channels] x [input channels x tiles],
which is where the time goes: F(4, 3) does 36 products per 16 outputs (2.25 per output, against 9
for a direct convolution), F(2, 3) 16 per 4 (4 per output). The price is accuracy (the transforms'
constants grow with m: F(4, 3) in f32 errs about 1e-5 of the magnitudes summed, F(2, 3) about 1e-6)
and the ragged tiles at the right and bottom edges, which compute outputs that are thrown away.

The filter transform G g G^T of a constant weight is done once, when the weights are packed (the
backend's packer calls `filter_transform`); the input and output transforms are the backend's.
Which convolutions use it is `choose` (a backend that implements it sets `CpuTarget.conv_winograd`).
"""
from __future__ import annotations

from functools import cache

import numpy as np

from dnet.errors import DnetError
from dnet.kernel.ir import Index

MODES = ("auto", "off", "2", "4")   # CpuTarget.conv_winograd: the rule, never, always F(2, 3), always F(4, 3)


@cache
def matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T, G, A^T) of F(m x m, 3 x 3), m in (2, 4), as float64 (interpolation points 0, +-1, +-2, inf)."""
    if m == 2:
        bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
        g = [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]]
        at = [[1, 1, 1, 0], [0, 1, -1, -1]]
    elif m == 4:
        bt = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
              [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
        g = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
             [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
        at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
    else:
        raise DnetError(f"Winograd F({m}x{m}, 3x3) is not implemented", hint="m is 2 or 4")
    return np.array(bt, np.float64), np.array(g, np.float64), np.array(at, np.float64)


def filter_transform(w: np.ndarray, m: int) -> np.ndarray:
    """G g G^T of every filter of w (O, C, 3, 3): (m + 2)^2 matrices of O x C, as (alpha, alpha, O, C)
    float32, computed in float64 so the only rounding is the final one."""
    _, g, _ = matrices(m)
    u = np.einsum("ay,ocyz,bz->aboc", g, np.asarray(w, np.float64), g, optimize=True)
    return u.astype(np.float32)


def eligible(kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int], groups: int) -> bool:
    """A convolution Winograd F(m, 3) computes: 3x3, stride 1, dilation 1, no groups."""
    return tuple(kernel) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1) and groups == 1


def choose(mode: str, c_in: int, c_out: int, out_h: Index | None = None, out_w: Index | None = None) -> int:
    """The output tile m (4 or 2) a Winograd convolution of this shape uses, or 0 (the direct one).

    `mode`: "off" never, "4" / "2" always (tests and benchmarks force each path), "auto" the rule:
    F(4, 3) once both channel counts are `AUTO_MIN_CHANNELS` or more (fewer, and the transforms, whose
    work grows with the channels and not with their product, are too large a share); F(2, 3) instead
    where one image has fewer F(4, 3) tiles than `PANEL_TILES` and at least as many F(2, 3) ones (14 x 14:
    16 and 49), so that a batch of one still fills a panel (256 channels at 14 x 14, batch 1, one core:
    2.1 ms direct, 2.7 as F(4, 3), 1.8 as F(2, 3); batch 8: 9.5 as F(4, 3), 10.2 as F(2, 3)). Whether a batch
    has tiles enough to fill the micro-kernel's panels is known only when it runs: under "auto" the
    backend keeps the filters as they are too and convolves directly when it has not
    (`Im2col.fallback`). Measured: benchmarks/README.md, "Winograd".
    """
    if mode not in MODES:
        raise DnetError(f"unknown Winograd mode {mode!r}", hint=f"one of {', '.join(MODES)}")
    if mode == "off":
        return 0
    if mode != "auto":
        return int(mode)
    if c_in < AUTO_MIN_CHANNELS or c_out < AUTO_MIN_CHANNELS:
        return 0
    if isinstance(out_h, int) and isinstance(out_w, int):
        def tiles(m: int) -> int:
            return -(-out_h // m) * -(-out_w // m)
        if tiles(4) < PANEL_TILES <= tiles(2):
            return 2
    return 4


AUTO_MIN_CHANNELS = 32   # input and output channels at least, for "auto" to choose Winograd
PANEL_TILES = 32         # tiles a panel of the widest micro-kernel takes (AVX-512's 12 x 32)
