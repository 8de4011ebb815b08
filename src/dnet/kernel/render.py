"""The renderer protocol: kernel IR -> one dialect's source text, from tables.

`Renderer` is what every backend's renderer is: it names its backend and dialect, renders a
`Kernel` to text, declares the ops it does not support (with the reason the op x backend coverage
test prints), and turns a missing table entry into a `MissingOpError` naming the op and the
backend (never a KeyError).

`CStyleRenderer` is the base of the C family (C, OpenCL C, CUDA C; as tinygrad's CStyleLanguage):
everything those languages spell alike — integer index arithmetic, expressions, let-bindings,
stores, serial loops, reductions, f16/bf16 widened to float and rounded after every op, GPU grid
loops, local memory and barriers — rendered from class-level tables that a dialect overrides:

- `unary_float`, `unary_int`, `binary_float`, `binary_int`, `compare`: Op -> format string (the
  one op -> code table of the dialect, split by the dtype an op computes in);
- `storage`, `compute`: DType -> the type a buffer element is stored in / computed in;
- `kernel_prefix`, `buffer_prefix`, `restrict`: the signature's spellings;
- `grid_index`, `barrier_code`, `local_prefix`: the GPU spellings (`None`: the dialect has no grid).

A dialect's prelude provides the helpers the tables name: dn_exp, dn_tanh, dn_erf, the half
conversions dn_f16/bf16_to_f32 and dn_f32_to_f16/bf16 (see backends/c/prelude.py), then
`reference_helpers()`, the one text of the reference's semantics that every C-family dialect
compiles: dn_maxf, dn_minf, dn_modf, dn_floordiv, dn_mod, dn_ipow, dn_clamp, dn_round_f16/bf16.

Statements and expressions are dispatched through one table each (node type -> method), so a
dialect overrides a method (`loop`, `reduce`, `gemm`, ...) rather than an isinstance chain; a
template statement the dialect cannot render (a `Gemm` on a dialect without a GEMM) is a
`MissingOpError` too.
"""
from __future__ import annotations

import math
import re
import string
from typing import ClassVar, Mapping

import numpy as np

from dnet.core.dtypes import DType
from dnet.errors import BackendError, MissingOpError
from dnet.graph.ops import Op
from dnet.kernel.ir import (Barrier, Binary, Cast, Const, Gemm, GpuLoop, InBounds, IndexLet, IndexValue, Kernel, Let,
                            Load, LocalAlloc, Loop, QMatmul, Reduce, Ref, Store, Unary, Where)

HALF = {DType.F16: "f16", DType.BF16: "bf16"}

# The reference backend's (numpy's) semantics where C's operators differ: max/min that propagate
# NaN, floor division and a modulo that takes the divisor's sign (float and integer), integer
# powers, gather indices wrapped once and clamped, and f16/bf16 rounding after each op. C, OpenCL C
# and CUDA C all compile this text; only the name of float fmod differs (`$fmod`).
_REFERENCE_HELPERS = string.Template(r"""
static inline float dn_round_f16(float x) { return dn_f16_to_f32(dn_f32_to_f16(x)); }
static inline float dn_round_bf16(float x) { return dn_bf16_to_f32(dn_f32_to_bf16(x)); }
static inline float dn_maxf(float a, float b) { return a != a ? a : (b != b ? b : (a > b ? a : b)); }
static inline float dn_minf(float a, float b) { return a != a ? a : (b != b ? b : (a < b ? a : b)); }
static inline float dn_modf(float a, float b) {
    float r = $fmod(a, b);
    return (r != 0.0f && ((r < 0.0f) != (b < 0.0f))) ? r + b : r;
}
static inline int64_t dn_floordiv(int64_t a, int64_t b) {
    if (b == 0) return 0;
    int64_t q = a / b;
    return (q * b != a && ((a < 0) != (b < 0))) ? q - 1 : q;
}
static inline int64_t dn_mod(int64_t a, int64_t b) {
    if (b == 0) return 0;
    int64_t r = a % b;
    return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
static inline int64_t dn_ipow(int64_t a, int64_t b) {
    int64_t r = 1;
    if (b < 0) return a == 1 ? 1 : (a == -1 ? ((b & 1) ? -1 : 1) : 0);
    while (b) { if (b & 1) r *= a; a *= a; b >>= 1; }
    return r;
}
static inline int64_t dn_clamp(int64_t i, int64_t n) {
    i = i < 0 ? i + n : i;
    return i < 0 ? 0 : (i >= n ? n - 1 : i);
}
""")


class Renderer:
    """Kernel IR -> source text for one backend's dialect.

    A backend subclasses it (or `CStyleRenderer`), sets `backend` and `dialect`, and implements
    `render`. `unsupported` maps an op to why this backend does not run it (the coverage test
    prints the reason instead of failing); an op neither rendered nor declared there fails it.
    """
    backend: ClassVar[str] = ""
    dialect: ClassVar[str] = ""
    unsupported: ClassVar[Mapping[Op, str]] = {}

    def __init__(self, kernel: Kernel):
        self.kernel = kernel

    def render(self) -> str:
        raise NotImplementedError

    def missing(self, op: object, dtype: DType | None = None) -> MissingOpError:
        """The error for an op (or a statement kind) this renderer has no code for."""
        reason = self.unsupported.get(op) if isinstance(op, Op) else None
        return MissingOpError(op, self.backend or self.dialect, dtype, hint=reason)

    def lookup(self, table: Mapping[Op, str], op: Op, dtype: DType) -> str:
        """`table[op]`, or a MissingOpError naming the op, the dtype and the backend."""
        code = table.get(op)
        if code is None:
            raise self.missing(op, dtype)
        return code


class CStyleRenderer(Renderer):
    """The C family's common spellings; a dialect subclass overrides tables and a few methods."""
    dialect = "c-style"
    unary_float: ClassVar[Mapping[Op, str]] = {
        Op.NEG: "(-{})", Op.EXP: "dn_exp({})", Op.LOG: "logf({})", Op.SQRT: "sqrtf({})", Op.RECIP: "(1.0f / {})",
        Op.TANH: "dn_tanh({})", Op.ERF: "dn_erf({})", Op.SIN: "sinf({})", Op.COS: "cosf({})", Op.ABS: "fabsf({})",
        Op.FLOOR: "floorf({})"}
    unary_int: ClassVar[Mapping[Op, str]] = {Op.NEG: "(-{})", Op.ABS: "({0} < 0 ? -{0} : {0})", Op.NOT: "(!{})"}
    binary_float: ClassVar[Mapping[Op, str]] = {
        Op.ADD: "({} + {})", Op.SUB: "({} - {})", Op.MUL: "({} * {})", Op.DIV: "({} / {})", Op.POW: "powf({}, {})",
        Op.MAX: "dn_maxf({}, {})", Op.MIN: "dn_minf({}, {})", Op.MOD: "dn_modf({}, {})"}
    binary_int: ClassVar[Mapping[Op, str]] = {
        Op.ADD: "({} + {})", Op.SUB: "({} - {})", Op.MUL: "({} * {})", Op.DIV: "dn_floordiv({}, {})",
        Op.POW: "dn_ipow({}, {})", Op.MAX: "({0} > {1} ? {0} : {1})", Op.MIN: "({0} < {1} ? {0} : {1})",
        Op.MOD: "dn_mod({}, {})", Op.AND: "({} && {})", Op.OR: "({} || {})"}
    binary_bool: ClassVar[Mapping[Op, str]] = {
        Op.AND: "({} && {})", Op.OR: "({} || {})", Op.ADD: "({} || {})", Op.MUL: "({} && {})",
        Op.MAX: "({} || {})", Op.MIN: "({} && {})", Op.SUB: "({} != {})",
        Op.MOD: "(0)"}     # a mod b over {0, 1} is 0 (as numpy's, even for b = 0)
    compare: ClassVar[Mapping[Op, str]] = {Op.EQ: "({} == {})", Op.NE: "({} != {})", Op.LT: "({} < {})",
                                           Op.LE: "({} <= {})"}
    storage: ClassVar[Mapping[DType, str]] = {
        DType.F32: "float", DType.F16: "uint16_t", DType.BF16: "uint16_t", DType.I8: "int8_t", DType.I32: "int32_t",
        DType.I64: "int64_t", DType.BOOL: "uint8_t", **{d: "uint8_t" for d in DType if d.is_block}}
    compute: ClassVar[Mapping[DType, str]] = {
        **storage, DType.F16: "float", DType.BF16: "float", **{d: "float" for d in DType if d.is_block}}
    index_type: ClassVar[str] = "int64_t"
    kernel_prefix: ClassVar[str] = "static void"
    buffer_prefix: ClassVar[str] = ""
    restrict: ClassVar[str] = "restrict"
    local_prefix: ClassVar[str | None] = None          # "__local" (OpenCL), "__shared__" (CUDA)
    barrier_code: ClassVar[str | None] = None          # "barrier(CLK_LOCAL_MEM_FENCE);", "__syncthreads();"
    float_fmod: ClassVar[str] = "fmodf"                # OpenCL C and CUDA C overload fmod for float

    @classmethod
    def reference_helpers(cls) -> str:
        """The prelude text of the helpers the tables name for numpy's semantics (after the
        dialect's int64_t and half conversions), spelled for this dialect."""
        return _REFERENCE_HELPERS.substitute(fmod=cls.float_fmod)

    def __init__(self, kernel: Kernel):
        super().__init__(kernel)
        self.dims = set(kernel.dims)
        self._buffers = {p.name: p.dtype for p in kernel.params}

    # -- names -------------------------------------------------------------------------
    @staticmethod
    def dim_name(symbol: str) -> str:
        """A graph dim's parameter name."""
        return "n_" + re.sub(r"\W", "_", symbol)

    def grid_index(self, level: str, axis: int) -> str:
        """The expression of a GpuLoop's variable (a GPU dialect overrides; a CPU one has no grid)."""
        raise self.missing(f"gpu {level} loop")

    # -- indices -----------------------------------------------------------------------
    def int_literal(self, x: int) -> str:
        return f"{x}LL" if abs(x) > 2**31 - 1 else str(x)

    def index(self, x) -> str:
        if isinstance(x, int):
            return self.int_literal(x)
        parts = []
        for m, c in x.terms:
            atoms = [self._atom(a) for a in m]
            if c != 1 or not atoms:
                atoms.insert(0, self.index(c))
            parts.append("*".join(atoms))
        return "(" + " + ".join(parts) + ")"

    def _atom(self, a) -> str:
        if isinstance(a, str):
            return self.dim_name(a) if a in self.dims else a
        op, inner, k = a
        return f"({self.index(inner)} {'/' if op == '//' else '%'} {self.index(k)})"

    # -- expressions -------------------------------------------------------------------
    _EXPRESSIONS: ClassVar[dict[type, str]] = {
        Const: "const_expr", IndexValue: "index_value", Load: "load_expr", Ref: "ref", Unary: "_unary",
        Binary: "_binary", Where: "where", Cast: "_cast", InBounds: "in_bounds"}

    def expr(self, e) -> str:
        method = self._EXPRESSIONS.get(type(e))
        if method is None:
            raise self.missing(type(e).__name__)
        return getattr(self, method)(e)

    def const_expr(self, e: Const) -> str:
        return self.const(e.value, e.dtype)

    def index_value(self, e: IndexValue) -> str:
        return self._round(f"(({self.compute[e.dtype]}){self.index(e.index)})", e.dtype)

    def load_expr(self, e: Load) -> str:
        return self.load(e.buffer, self.index(e.index), e.dtype)

    def ref(self, e: Ref) -> str:
        return e.name

    def where(self, e: Where) -> str:
        return f"({self.expr(e.cond)} ? {self.expr(e.a)} : {self.expr(e.b)})"

    def in_bounds(self, e: InBounds) -> str:
        i = self.index(e.index)
        return f"({self.index(e.lo)} <= {i} && {i} < {self.index(e.hi)})"

    def _round(self, text: str, dtype: DType) -> str:
        """A value computed in float (or a wider int) brought back to its dtype's values."""
        if dtype in HALF:
            return f"dn_round_{HALF[dtype]}({text})"
        if dtype in (DType.I8, DType.I32):
            return f"(({self.storage[dtype]}){text})"
        return text

    def _unary(self, e: Unary) -> str:
        x = self.expr(e.x)
        if e.op is Op.NOT:
            return f"(!{x})"
        if e.op is Op.NEG and e.dtype is DType.BOOL:
            return x
        table = self.unary_float if e.dtype.is_float else self.unary_int
        return self._round(self.lookup(table, e.op, e.dtype).format(x), e.dtype)

    def _binary(self, e: Binary) -> str:
        a, b = self.expr(e.a), self.expr(e.b)
        if e.op in self.compare:
            return self.compare[e.op].format(a, b)
        if e.op in (Op.AND, Op.OR) or e.dtype is DType.BOOL:
            if e.op in self.binary_bool:
                return self.binary_bool[e.op].format(a, b)
            return f"(({a}) != 0)"       # bool div/pow/mod: a's truth (the reference's cast of the result)
        table = self.binary_float if e.dtype.is_float else self.binary_int
        return self._round(self.lookup(table, e.op, e.dtype).format(a, b), e.dtype)

    def _cast(self, e: Cast) -> str:
        x, src, dst = self.expr(e.x), e.x.dtype, e.dtype
        if dst is DType.BOOL:
            return f"({x} != 0)"
        if (src in HALF or src.is_block) and dst is DType.F32:
            return x
        if dst in HALF:
            return self._round(f"((float){x})", dst)
        return f"(({self.compute[dst]}){x})"

    def const(self, value, dtype: DType) -> str:
        if dtype is DType.BOOL:
            return "1" if value else "0"
        if dtype.is_int:
            v = int(value)
            return f"(({self.index_type}){v}LL)" if dtype is DType.I64 else f"(({self.storage[dtype]}){v})"
        v = float(np.asarray(value, dtype=dtype.np).astype(np.float32))
        if math.isnan(v):
            return "NAN"
        if math.isinf(v):
            return "INFINITY" if v > 0 else "(-INFINITY)"
        return f"{v!r}f"

    def load(self, buffer: str, index: str, dtype: DType) -> str:
        if dtype.is_block:
            raise self.missing(f"load of {dtype} blocks", dtype)
        if dtype in HALF:
            return f"dn_{HALF[dtype]}_to_f32({buffer}[{index}])"
        return f"{buffer}[{index}]"

    def store_value(self, value: str, src: DType, dst: DType) -> str:
        if dst in HALF:
            return f"dn_f32_to_{HALF[dst]}({value})"
        if dst is DType.BOOL:
            return f"(uint8_t)({value} != 0)"
        return f"({self.storage[dst]})({value})" if src != dst else value

    # -- statements --------------------------------------------------------------------
    _STATEMENTS: ClassVar[dict[type, str]] = {
        Let: "let", IndexLet: "index_let", Store: "store_stmt", Loop: "loop", Reduce: "reduce", Gemm: "gemm",
        QMatmul: "qmatmul", GpuLoop: "gpu_loop", LocalAlloc: "local_alloc", Barrier: "barrier"}

    def stmts(self, body, pad: str) -> list[str]:
        out: list[str] = []
        for s in body:
            out += self.stmt(s, pad)
        return out

    def stmt(self, s, pad: str) -> list[str]:
        method = self._STATEMENTS.get(type(s))
        if method is None:
            raise self.missing(type(s).__name__)
        return getattr(self, method)(s, pad)

    def buffer_dtype(self, buffer: str) -> DType:
        return self._buffers[buffer]

    def let(self, s: Let, pad: str) -> list[str]:
        return [f"{pad}const {self.compute[s.value.dtype]} {s.name} = {self.expr(s.value)};"]

    def index_let(self, s: IndexLet, pad: str) -> list[str]:
        return [f"{pad}const {self.index_type} {s.name} = "
                f"dn_clamp(({self.index_type}){self.expr(s.value)}, {self.index(s.bound)});"]

    def store_stmt(self, s: Store, pad: str) -> list[str]:
        value = self.store_value(self.expr(s.value), s.value.dtype, self.buffer_dtype(s.buffer))
        return [f"{pad}{s.buffer}[{self.index(s.index)}] = {value};"]

    def loop(self, s: Loop, pad: str) -> list[str]:
        """A serial loop (a dialect with threads or SIMD overrides this to use them)."""
        out = [f"{pad}for ({self.index_type} {s.var} = 0; {s.var} < {self.index(s.extent)}; ++{s.var}) {{"]
        out += self.stmts(s.body, pad + "    ")
        out.append(f"{pad}}}")
        return out

    def reduce(self, s: Reduce, pad: str) -> list[str]:
        """acc = init; for each point of the loops: body, then acc = update(acc, value)."""
        ctype = self.compute[s.dtype]
        if s.op is Op.ARGMAX:
            out = [f"{pad}{self.index_type} {s.acc} = 0; {ctype} {s.acc}_v = {reduce_init(Op.REDUCE_MAX, s.dtype)};"]
        else:
            out = [f"{pad}{ctype} {s.acc} = {reduce_init(s.op, s.dtype)};"]
        out += self.reduce_hint(s, pad)
        inner = pad
        for var, extent in s.loops:
            out.append(f"{inner}for ({self.index_type} {var} = 0; {var} < {self.index(extent)}; ++{var}) {{")
            inner += "    "
        out += self.stmts(s.body, inner)
        out.append(inner + reduce_update(s, self.expr(s.value), self.index(s.arg_index), ctype))
        for _ in s.loops:
            inner = inner[:-4]
            out.append(f"{inner}}}")
        return out

    def reduce_hint(self, s: Reduce, pad: str) -> list[str]:
        """Lines before a reduction's loops (C: an OpenMP SIMD pragma); none by default."""
        return []

    def gemm(self, s: Gemm, pad: str) -> list[str]:
        raise self.missing("gemm")

    def qmatmul(self, s: QMatmul, pad: str) -> list[str]:
        raise self.missing(f"qmatmul on {s.weight_dtype}", s.weight_dtype)

    # -- GPU statements ----------------------------------------------------------------
    def gpu_loop(self, s: GpuLoop, pad: str) -> list[str]:
        """The loop variable is the grid index; a "global" loop guards the rounded-up grid's excess."""
        out = [f"{pad}{{ const {self.index_type} {s.var} = ({self.index_type}){self.grid_index(s.level, s.axis)};"]
        inner = pad + "  "
        if s.level == "global":
            out.append(f"{inner}if ({s.var} < {self.index(s.extent)}) {{")
            out += self.stmts(s.body, inner + "    ")
            out.append(f"{inner}}}")
        else:
            out += self.stmts(s.body, inner)
        out.append(f"{pad}}}")
        return out

    def local_alloc(self, s: LocalAlloc, pad: str) -> list[str]:
        if self.local_prefix is None:
            raise self.missing("local memory")
        self._buffers[s.name] = s.dtype
        return [f"{pad}{self.local_prefix} {self.storage[s.dtype]} {s.name}[{s.size}];", *self.stmts(s.body, pad)]

    def barrier(self, s: Barrier, pad: str) -> list[str]:
        if self.barrier_code is None:
            raise self.missing("barrier")
        return [pad + self.barrier_code]

    # -- whole kernels -----------------------------------------------------------------
    def param_type(self, p) -> str:
        const = "" if p.output else "const "
        prefix = f"{self.buffer_prefix} " if self.buffer_prefix else ""
        return f"{prefix}{const}{self.storage[p.dtype]}* {self.restrict}".rstrip()

    def signature(self) -> str:
        params = [f"{self.param_type(p)} {p.name}" for p in self.kernel.params]
        params += [f"{self.index_type} {self.dim_name(d)}" for d in self.kernel.dims]
        return f"{self.kernel_prefix} {self.kernel.name}({', '.join(params)})"

    def render(self) -> str:
        return "\n".join([self.signature() + " {", *self.stmts(self.kernel.body, "    "), "}"])


def reduce_init(op: Op, dtype: DType) -> str:
    """A reduction's starting value, in C-family spelling."""
    if op is Op.SUM:
        return "0"
    big = {DType.I8: "127", DType.I32: "2147483647", DType.I64: "INT64_MAX", DType.BOOL: "1"}
    small = {DType.I8: "-128", DType.I32: "(-2147483647 - 1)", DType.I64: "INT64_MIN", DType.BOOL: "0"}
    if dtype.is_float:
        return "INFINITY" if op is Op.REDUCE_MIN else "-INFINITY"
    return big[dtype] if op is Op.REDUCE_MIN else small[dtype]


def reduce_update(s: Reduce, v: str, arg: str, ctype: str) -> str:
    """One step of a reduction: the accumulator updated with value `v` (at position `arg`, for argmax)."""
    acc = s.acc
    if s.op is Op.SUM:
        if s.dtype is DType.BOOL:
            return f"{acc} = {acc} || {v};"
        return f"{acc} += {v};"
    if s.op is Op.REDUCE_MAX:
        return f"{{ const {ctype} x_ = {v}; {acc} = x_ > {acc} ? x_ : {acc}; }}"
    if s.op is Op.REDUCE_MIN:
        return f"{{ const {ctype} x_ = {v}; {acc} = x_ < {acc} ? x_ : {acc}; }}"
    if s.op is Op.ARGMAX:
        return (f"{{ const {ctype} x_ = {v}; if (x_ > {acc}_v) {{ {acc}_v = x_; "
                f"{acc} = {arg}; }} }}")
    raise BackendError(f"no reduction {s.op}")
