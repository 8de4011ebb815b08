"""Kernel IR: one fused group of graph ops as one loop nest. Renderer-neutral.

Index expressions are `Dim`s (dnet.core.shapes): integer polynomials over loop
variables, temporaries and the graph's symbolic dims, with floor-division and modulo
atoms. Scalar values are small expression trees (`Expr`) whose operators are the
graph's own `Op`s, so a renderer needs one table from Op to its target's spelling.

A value of dtype f16/bf16 is stored in that type but computed in f32, rounded back to
its dtype after every op (the reference backend's semantics).

Statements are loops, let-bindings, reductions into an accumulator, stores, and one
template statement, `Gemm`, that a renderer expands into its packed, register-blocked
matrix multiply with an element-wise epilogue. For GPUs: `GpuLoop` (a loop mapped onto the
grid's work-groups or work-items), `LocalAlloc` (memory shared within a work-group) and
`Barrier`. `kernel.verify` checks a kernel is well formed; `kernel.render` turns it into text.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from dnet.core.dtypes import DType
from dnet.core.shapes import Dim, render_dim
from dnet.graph.ops import Op

Index = Union[int, Dim]


# -- scalar expressions ----------------------------------------------------------------
@dataclass(frozen=True)
class Const:
    value: float | int | bool
    dtype: DType


@dataclass(frozen=True)
class IndexValue:
    """An index expression used as a value (arange, a symbolic fill)."""
    index: Index
    dtype: DType


@dataclass(frozen=True)
class Load:
    buffer: str
    index: Index
    dtype: DType


@dataclass(frozen=True)
class Ref:
    """A let-bound temporary or an accumulator."""
    name: str
    dtype: DType


@dataclass(frozen=True)
class Unary:
    op: Op
    x: "Expr"
    dtype: DType


@dataclass(frozen=True)
class Binary:
    op: Op
    a: "Expr"
    b: "Expr"
    dtype: DType


@dataclass(frozen=True)
class Where:
    cond: "Expr"
    a: "Expr"
    b: "Expr"
    dtype: DType


@dataclass(frozen=True)
class Cast:
    x: "Expr"
    dtype: DType


@dataclass(frozen=True)
class InBounds:
    """Bool: lo <= index < hi, for padding and concatenation guards."""
    index: Index
    lo: Index
    hi: Index
    dtype: DType = DType.BOOL


Expr = Union[Const, IndexValue, Load, Ref, Unary, Binary, Where, Cast, InBounds]


# -- statements ------------------------------------------------------------------------
@dataclass(frozen=True)
class Let:
    name: str
    value: Expr


@dataclass(frozen=True)
class IndexLet:
    """An integer temporary computed from data (a gather's index), clamped to [0, bound)."""
    name: str
    value: Expr
    bound: Index


@dataclass(frozen=True)
class Store:
    buffer: str
    index: Index
    value: Expr


@dataclass(frozen=True)
class Loop:
    var: str
    extent: Index
    body: tuple["Stmt", ...]
    parallel: int = 0        # >0: this loop and the next parallel-1 loops run across threads
    vector: bool = False     # innermost: ask for SIMD


@dataclass(frozen=True)
class Reduce:
    """acc = op over the loops of `value`, evaluated after `body` in the loop nest.

    ARGMAX keeps the first index of the maximum in `acc` (i64) and the maximum in `acc`_v.
    """
    acc: str
    op: Op                   # SUM, REDUCE_MAX, REDUCE_MIN, ARGMAX
    dtype: DType             # the accumulator's dtype (f32 for half inputs)
    loops: tuple[tuple[str, Index], ...]
    body: tuple["Stmt", ...]
    value: Expr
    arg_index: Index = 0     # ARGMAX only: the position along the reduced axis


@dataclass(frozen=True)
class Im2col:
    """A convolution's input read as a Gemm's right operand: row k = (c, y, z) (channel, kernel row and
    column), column j = (oh, ow) (output pixel); the element is x[c, oh*sh + y*dh - top, ow*sw + z*dw - left],
    0 outside the image. `strides` are x's along c, h and w."""
    height: Index
    width: Index
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad: tuple[int, int]           # top, left
    out_width: Index
    strides: tuple[Index, Index, Index]
    winograd: int = 0              # m: computed as Winograd F(m x m, 3 x 3) (kernel/winograd.py), a the
                                   # packed transformed filters; 0: a convolution of the weights as they are
    fallback: str = ""             # Winograd: the parameter holding the filters as they are (O x C*9), which a
                                   # backend may convolve directly where a batch has too few tiles


@dataclass(frozen=True)
class Operand:
    """A strided matrix operand of a Gemm: element (b..., i, j) at offset + sum(strides * idx)."""
    buffer: str
    dtype: DType
    offset: Index
    batch_strides: tuple[Index, ...]
    row_stride: Index
    col_stride: Index
    packed: bool = False     # a weight pre-packed at load time into the Gemm's panel layout
    scale: str = ""          # int8 operands: f32 scales per column (packed, padded to whole panels)
    im2col: Im2col | None = None   # a convolution's input, gathered into the panels as it is packed


@dataclass(frozen=True)
class Gemm:
    """out[b..., i, j] = epilogue(acc = sum_k a[b..., i, k] * b[b..., k, j]), out contiguous."""
    batch: tuple[Index, ...]
    m: Index
    n: Index
    k: Index
    a: Operand
    b: Operand
    out: str
    out_dtype: DType
    vars: tuple[str, ...]    # names of the batch, row and column variables, as the epilogue uses them
    epilogue: Expr           # in terms of Ref('acc') and `vars`
    epilogue_lets: tuple[Stmt, ...]
    scratch: str             # workspace buffer for packing b
    tile: "GemmTile"


@dataclass(frozen=True)
class GemmTile:
    mr: int                  # rows of the register block
    nr: int                  # columns of the register block (a multiple of the vector width)
    lanes: int               # f32 lanes per vector
    kc: int                  # depth of one packed block
    mc: int                  # rows of a packed block of a
    nc: int = 1 << 30        # columns of b streamed through L2 while a sliver of a stays in L1
    # the knobs `dnet tune` searches besides the cache blocks (`kernel.tune`); renderers that do not
    # implement one keep its default
    unroll: int = 4          # k steps per trip of the micro-kernel's loop
    direct_a: bool = True    # read a row-major a in place rather than packing it
    spread: int = 4          # tasks per thread the row and column split aims for


@dataclass(frozen=True)
class QMatmul:
    """out[i, j] = epilogue(acc = sum_k a[i, k] * w[j, k]) for i < m, j < n, out contiguous (m, n).

    `w` is a constant (n, k) weight kept in a block dtype (GGUF's Q4_1, ...): a renderer calls its
    backend's kernel for that format on the stored blocks, which dequantizes in registers (or
    multiplies integers against activations quantized per block), then applies the epilogue.
    """
    m: Index
    n: int
    k: int
    a: Operand               # rows along `row_stride`, elements contiguous (col_stride 1)
    weight: str
    weight_dtype: DType
    out: str
    vars: tuple[str, str]    # the row and column variables, as the epilogue uses them
    epilogue: Expr
    epilogue_lets: tuple["Stmt", ...]


# -- GPU statements: a grid of work-groups of work-items, memory shared within a group -------
GRID_LEVELS = ("group", "local", "global")


@dataclass(frozen=True)
class GpuLoop:
    """A loop whose iterations run as a GPU grid's work-groups or work-items, all at once.

    `level` "group": `var` is the work-group's id along `axis` (extent: the number of groups);
    "local": the work-item's id within its group (extent: the group's size, the same in every group);
    "global": the work-item's id in the whole grid (the launch rounds the grid up to whole groups and
    the renderer guards `var < extent`, so a barrier may not sit below a "global" loop).
    A CPU renderer may run it as an ordinary loop; GPU renderers map it to their grid indices
    (OpenCL `get_group_id`/`get_local_id`/`get_global_id`, CUDA `blockIdx`/`threadIdx`).
    """
    var: str
    extent: Index
    level: str               # one of GRID_LEVELS
    axis: int                # 0, 1 or 2
    body: tuple["Stmt", ...]


@dataclass(frozen=True)
class LocalAlloc:
    """`name`: `size` elements of `dtype` shared by the work-items of one work-group (OpenCL `__local`,
    CUDA `__shared__`), visible to `body`; read and written with ordinary Load and Store."""
    name: str
    dtype: DType
    size: int
    body: tuple["Stmt", ...]


@dataclass(frozen=True)
class Barrier:
    """Every work-item of the work-group arrives here before any goes on; local memory written before
    it is visible after it. Only where all work-items of a group arrive (`kernel.verify` checks)."""


Stmt = Union[Let, IndexLet, Store, Loop, Reduce, Gemm, QMatmul, GpuLoop, LocalAlloc, Barrier]


# -- kernels ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    name: str
    dtype: DType
    output: bool = False     # written by the kernel (its result, or a workspace)


@dataclass(frozen=True)
class Kernel:
    name: str
    params: tuple[Param, ...]           # buffers, in call order
    dims: tuple[str, ...]               # symbolic dims passed at run time (as int64)
    body: tuple[Stmt, ...]
    meta: dict = field(default_factory=dict, compare=False, hash=False)  # ops fused, for inspection

    def __str__(self) -> str:
        from dnet.kernel.printer import print_kernel

        return print_kernel(self)


def index_str(x: Index) -> str:
    return render_dim(x)
