"""Kernel IR -> C source. One table from Op to C spelling; loops carry OpenMP pragmas.

f16/bf16 values live in `float` variables holding an exactly rounded value: loads
widen, stores narrow, and every op producing a half type rounds its result, which
reproduces the reference backend bit for bit apart from float summation order.
"""
from __future__ import annotations

import math
import re

import numpy as np

from dnet.core.dtypes import DType
from dnet.core.shapes import numel
from dnet.graph.ops import Op
from dnet.kernel.ir import (Binary, Cast, Const, Gemm, InBounds, IndexLet, IndexValue, Kernel, Let, Load, Loop,
                            QMatmul, Reduce, Ref, Store, Unary, Where)

TINY_REDUCTION = 16   # static trip counts up to this: no SIMD pragma on the reduction (see `reduce`)
STORAGE = {DType.F32: "float", DType.F16: "uint16_t", DType.BF16: "uint16_t", DType.I8: "int8_t",
           DType.I32: "int32_t", DType.I64: "int64_t", DType.BOOL: "uint8_t",
           **{d: "uint8_t" for d in DType if d.is_block}}     # block dtypes: their stored bytes
COMPUTE = {**STORAGE, DType.F16: "float", DType.BF16: "float", **{d: "float" for d in DType if d.is_block}}
_HALF = {DType.F16: "f16", DType.BF16: "bf16"}
PARALLEL_MIN_WORK = 16384   # elements of work per chunk of a parallel loop, at least

_UNARY_F = {Op.NEG: "(-{})", Op.EXP: "dn_exp({})", Op.LOG: "logf({})", Op.SQRT: "sqrtf({})",
            Op.RECIP: "(1.0f / {})", Op.TANH: "dn_tanh({})", Op.ERF: "dn_erf({})", Op.SIN: "sinf({})",
            Op.COS: "cosf({})", Op.ABS: "fabsf({})", Op.FLOOR: "floorf({})"}
_UNARY_I = {Op.NEG: "(-{})", Op.ABS: "({0} < 0 ? -{0} : {0})", Op.NOT: "(!{})"}
_BINARY_F = {Op.ADD: "({} + {})", Op.SUB: "({} - {})", Op.MUL: "({} * {})", Op.DIV: "({} / {})",
             Op.POW: "powf({}, {})", Op.MAX: "dn_maxf({}, {})", Op.MIN: "dn_minf({}, {})", Op.MOD: "dn_modf({}, {})"}
_BINARY_I = {Op.ADD: "({} + {})", Op.SUB: "({} - {})", Op.MUL: "({} * {})", Op.DIV: "dn_floordiv({}, {})",
             Op.POW: "dn_ipow({}, {})", Op.MAX: "({0} > {1} ? {0} : {1})", Op.MIN: "({0} < {1} ? {0} : {1})",
             Op.MOD: "dn_mod({}, {})", Op.AND: "({} && {})", Op.OR: "({} || {})"}
_COMPARE = {Op.EQ: "==", Op.NE: "!=", Op.LT: "<", Op.LE: "<="}


def c_name(symbol: str) -> str:
    """A graph dim's C parameter name."""
    return "n_" + re.sub(r"\W", "_", symbol)


class CRenderer:
    def __init__(self, kernel: Kernel, activation_bits: int = 16):
        self.kernel = kernel
        self.activation_bits = activation_bits     # QMatmul: activations quantized to 16 or 8 bits per block
        self.dims = set(kernel.dims)
        self.helpers: list[str] = []                 # outlined parallel bodies, emitted before the kernel
        self.locals: list[tuple[str, str]] = []      # top-level values declared so far (captured by bodies)

    # -- indices -----------------------------------------------------------------------
    def index(self, x) -> str:
        if isinstance(x, int):
            return f"{x}LL" if abs(x) > 2**31 - 1 else str(x)
        parts = []
        for m, c in x.terms:
            atoms = [self._atom(a) for a in m]
            if c != 1 or not atoms:
                atoms.insert(0, self.index(c))
            parts.append("*".join(atoms))
        return "(" + " + ".join(parts) + ")"

    def _atom(self, a) -> str:
        if isinstance(a, str):
            return c_name(a) if a in self.dims else a
        op, inner, k = a
        return f"({self.index(inner)} {'/' if op == '//' else '%'} {self.index(k)})"

    # -- expressions -------------------------------------------------------------------
    def expr(self, e) -> str:
        if isinstance(e, Const):
            return const(e.value, e.dtype)
        if isinstance(e, IndexValue):
            return self._round(f"(({COMPUTE[e.dtype]}){self.index(e.index)})", e.dtype)
        if isinstance(e, Load):
            return load(e.buffer, self.index(e.index), e.dtype)
        if isinstance(e, Ref):
            return e.name
        if isinstance(e, Unary):
            return self._unary(e)
        if isinstance(e, Binary):
            return self._binary(e)
        if isinstance(e, Where):
            return f"({self.expr(e.cond)} ? {self.expr(e.a)} : {self.expr(e.b)})"
        if isinstance(e, Cast):
            return self._cast(e)
        if isinstance(e, InBounds):
            i = self.index(e.index)
            return f"({self.index(e.lo)} <= {i} && {i} < {self.index(e.hi)})"
        raise TypeError(f"cannot render {e!r}")

    def _round(self, text: str, dtype: DType) -> str:
        if dtype in _HALF:
            return f"dn_round_{_HALF[dtype]}({text})"
        if dtype in (DType.I8, DType.I32):
            return f"(({STORAGE[dtype]}){text})"
        return text

    def _unary(self, e: Unary) -> str:
        x = self.expr(e.x)
        if e.op is Op.NOT:
            return f"(!{x})"
        table = _UNARY_F if e.dtype.is_float else _UNARY_I
        if e.op is Op.NEG and e.dtype is DType.BOOL:
            return x
        return self._round(table[e.op].format(x), e.dtype)

    def _binary(self, e: Binary) -> str:
        a, b = self.expr(e.a), self.expr(e.b)
        if e.op in _COMPARE:
            return f"({a} {_COMPARE[e.op]} {b})"
        if e.op in (Op.AND, Op.OR) or e.dtype is DType.BOOL:
            return _bool_binary(e.op, a, b)
        table = _BINARY_F if e.dtype.is_float else _BINARY_I
        return self._round(table[e.op].format(a, b), e.dtype)

    def _cast(self, e: Cast) -> str:
        x, src, dst = self.expr(e.x), e.x.dtype, e.dtype
        if dst is DType.BOOL:
            return f"({x} != 0)"
        if (src in _HALF or src.is_block) and dst is DType.F32:
            return x
        if dst in _HALF:
            return self._round(f"((float){x})", dst)
        return f"(({COMPUTE[dst]}){x})"

    # -- statements --------------------------------------------------------------------
    def stmts(self, body, pad: str) -> list[str]:
        out: list[str] = []
        for s in body:
            out += self.stmt(s, pad)
        return out

    def stmt(self, s, pad: str) -> list[str]:
        if isinstance(s, Let):
            return [f"{pad}const {COMPUTE[s.value.dtype]} {s.name} = {self.expr(s.value)};"]
        if isinstance(s, IndexLet):
            return [f"{pad}const int64_t {s.name} = dn_clamp((int64_t){self.expr(s.value)}, {self.index(s.bound)});"]
        if isinstance(s, Store):
            return [f"{pad}{s.buffer}[{self.index(s.index)}] = {store(self.expr(s.value), s.value.dtype, self._dtype(s.buffer))};"]
        if isinstance(s, Loop):
            return self.loop(s, pad)
        if isinstance(s, Reduce):
            return self.reduce(s, pad)
        if isinstance(s, Gemm):
            from dnet.backends.c.gemm import render_gemm

            return render_gemm(self, s, pad)
        if isinstance(s, QMatmul):
            from dnet.backends.c.qmatmul import render_qmatmul

            return render_qmatmul(self, s, pad)
        raise TypeError(f"cannot render {s!r}")

    def _dtype(self, buffer: str) -> DType:
        return next(p.dtype for p in self.kernel.params if p.name == buffer)

    def loop(self, s: Loop, pad: str) -> list[str]:
        if s.parallel:
            return self.parallel_loop(s, pad)
        out = []
        if s.vector and _simple(s.body):
            out.append(f"{pad}#pragma omp simd")
        out.append(f"{pad}for (int64_t {s.var} = 0; {s.var} < {self.index(s.extent)}; ++{s.var}) {{")
        out += self.stmts(s.body, pad + "    ")
        out.append(f"{pad}}}")
        return out

    def parallel_loop(self, s: Loop, pad: str) -> list[str]:
        """The first `s.parallel` loops, flattened and run in chunks on the thread pool."""
        loops = [s]
        while len(loops) < s.parallel:
            loops.append(loops[-1].body[-1])
        extents = [self.index(l.extent) for l in loops]
        inner, body = loops[-1], loops[-1].body
        lines = []
        if len(loops) == 1 and inner.vector and _simple(body):   # one flat vector loop: chunks of it
            lines += ["#pragma omp simd", f"for (int64_t {inner.var} = g_begin; {inner.var} < g_end; ++{inner.var}) {{"]
        else:
            lines.append("for (int64_t g_flat = g_begin; g_flat < g_end; ++g_flat) {")
            stride = "1"
            for l, e in reversed(list(zip(loops, extents))):
                lines.append(f"    const int64_t {l.var} = (g_flat / ({stride})) % ({e});")
                stride = f"{stride}*{e}"
        lines += self.stmts(body, "    ")
        lines.append("}")
        work = "*".join(["1"] + [self.index(l.extent) for l in _inner_loops(inner)])
        grain = f"({work} >= {PARALLEL_MIN_WORK} || {work} <= 0 ? 1 : {PARALLEL_MIN_WORK} / ({work}))"   # 0: an empty dim
        return self.outline(lines, "*".join(extents), grain, pad)

    def outline(self, body: list[str], count: str, grain: str, pad: str) -> list[str]:
        """Move `body` (over g_begin..g_end) into a function the pool calls; capture what it reads."""
        name = f"{self.kernel.name}_body{len(self.helpers)}"
        fields = self.captures()
        struct = [f"struct {name}_ctx {{"] + [f"    {t} {n};" for t, n in fields] + ["};"]
        fn = [f"static void {name}(void* g_ctx, int64_t g_begin, int64_t g_end) {{",
              f"    const struct {name}_ctx* g_c = (const struct {name}_ctx*)g_ctx;"]
        fn += [f"    {t} {n} = g_c->{n}; (void){n};" for t, n in fields]
        fn += ["    " + x for x in body] + ["}"]
        self.helpers.append("\n".join(struct + fn))
        values = ", ".join(n for _, n in fields)
        return [f"{pad}{{ struct {name}_ctx g_c = {{{values}}};",
                f"{pad}  dn_parallel({name}, &g_c, {count}, {grain}); }}"]

    def captures(self) -> list[tuple[str, str]]:
        """Everything a kernel's outlined body may read: parameters, dims, top-level values."""
        out = [(self._param_type(p), p.name) for p in self.kernel.params]
        out += [("int64_t", c_name(d)) for d in self.kernel.dims]
        out += self.locals
        return out

    def _param_type(self, p) -> str:
        return f"{'' if p.output else 'const '}{STORAGE[p.dtype]}* restrict"

    def reduce(self, s: Reduce, pad: str) -> list[str]:
        ctype = COMPUTE[s.dtype]
        out = []
        if s.op is Op.ARGMAX:
            out.append(f"{pad}int64_t {s.acc} = 0; {ctype} {s.acc}_v = {_init(Op.REDUCE_MAX, s.dtype)};")
        else:
            out.append(f"{pad}{ctype} {s.acc} = {_init(s.op, s.dtype)};")
        simple = _simple(s.body) and s.op is not Op.ARGMAX
        # a few iterations known here (a 3x3 pooling window): the compiler unrolls them, and the loop
        # around (the output's) is the one to vectorise; a SIMD reduction over 9 would only add masks
        tiny = all(isinstance(e, int) for _, e in s.loops) and numel([e for _, e in s.loops]) <= TINY_REDUCTION
        if simple and not tiny and s.dtype is not DType.BOOL:
            red = {Op.SUM: "+", Op.REDUCE_MAX: "max", Op.REDUCE_MIN: "min"}[s.op]
            clause = f" collapse({len(s.loops)})" if len(s.loops) > 1 else ""
            out.append(f"{pad}#pragma omp simd reduction({red}:{s.acc}){clause}")
        inner = pad
        for var, extent in s.loops:
            out.append(f"{inner}for (int64_t {var} = 0; {var} < {self.index(extent)}; ++{var}) {{")
            inner += "    "
        out += self.stmts(s.body, inner)
        v = self.expr(s.value)
        out.append(inner + _update(s, v, self.index(s.arg_index)))
        for _ in s.loops:
            inner = inner[:-4]
            out.append(f"{inner}}}")
        return out

    # -- whole kernels -----------------------------------------------------------------
    def signature(self) -> str:
        params = [f"{self._param_type(p)} {p.name}" for p in self.kernel.params]
        params += [f"int64_t {c_name(d)}" for d in self.kernel.dims]
        return f"static void {self.kernel.name}({', '.join(params)})"

    def render(self) -> str:
        body = []
        for stmt in self.kernel.body:         # top-level values are visible to outlined loops
            body += self.stmt(stmt, "    ")
            self.locals += _declared(stmt)
        return "\n\n".join(self.helpers + ["\n".join([self.signature() + " {"] + body + ["}"])])


def _simple(body) -> bool:
    """A loop body with no nested loops: a candidate for SIMD."""
    return not any(isinstance(b, (Loop, Reduce, Gemm, QMatmul)) for b in body)


def _inner_loops(loop: Loop) -> list[Loop]:
    """The loops nested (last statement first) under `loop`, which together make one row of work."""
    out, node = [], loop.body[-1] if loop.body else None
    while isinstance(node, Loop):
        out.append(node)
        node = node.body[-1] if node.body else None
    return out


def _declared(stmt) -> list[tuple[str, str]]:
    if isinstance(stmt, Let):
        return [(f"const {COMPUTE[stmt.value.dtype]}", stmt.name)]
    if isinstance(stmt, IndexLet):
        return [("const int64_t", stmt.name)]
    if isinstance(stmt, Reduce):
        acc = [(COMPUTE[stmt.dtype] if stmt.op is not Op.ARGMAX else "int64_t", stmt.acc)]
        return acc + ([(COMPUTE[stmt.dtype], f"{stmt.acc}_v")] if stmt.op is Op.ARGMAX else [])
    return []


def _bool_binary(op: Op, a: str, b: str) -> str:
    spelled = {Op.AND: "&&", Op.OR: "||", Op.ADD: "||", Op.MUL: "&&", Op.MAX: "||", Op.MIN: "&&"}
    if op in spelled:
        return f"({a} {spelled[op]} {b})"
    if op is Op.SUB:
        return f"({a} != {b})"
    return f"(({a}) != 0)"


def _init(op: Op, dtype: DType) -> str:
    if op is Op.SUM:
        return "0"
    big = {DType.I8: "127", DType.I32: "2147483647", DType.I64: "INT64_MAX", DType.BOOL: "1"}
    small = {DType.I8: "-128", DType.I32: "(-2147483647 - 1)", DType.I64: "INT64_MIN", DType.BOOL: "0"}
    if dtype.is_float:
        return "INFINITY" if op is Op.REDUCE_MIN else "-INFINITY"
    return big[dtype] if op is Op.REDUCE_MIN else small[dtype]


def _update(s: Reduce, v: str, arg: str) -> str:
    acc = s.acc
    if s.op is Op.SUM:
        if s.dtype is DType.BOOL:
            return f"{acc} = {acc} || {v};"
        return f"{acc} += {v};"
    if s.op is Op.REDUCE_MAX:
        return f"{{ const {COMPUTE[s.dtype]} x_ = {v}; {acc} = x_ > {acc} ? x_ : {acc}; }}"
    if s.op is Op.REDUCE_MIN:
        return f"{{ const {COMPUTE[s.dtype]} x_ = {v}; {acc} = x_ < {acc} ? x_ : {acc}; }}"
    return (f"{{ const {COMPUTE[s.dtype]} x_ = {v}; if (x_ > {acc}_v) {{ {acc}_v = x_; "
            f"{acc} = {arg}; }} }}")


def const(value, dtype: DType) -> str:
    if dtype is DType.BOOL:
        return "1" if value else "0"
    if dtype.is_int:
        v = int(value)
        return f"((int64_t){v}LL)" if dtype is DType.I64 else f"(({STORAGE[dtype]}){v})"
    v = float(np.asarray(value, dtype=dtype.np).astype(np.float32))
    if math.isnan(v):
        return "NAN"
    if math.isinf(v):
        return "INFINITY" if v > 0 else "(-INFINITY)"
    return f"{v!r}f"


def load(buffer: str, index: str, dtype: DType) -> str:
    if dtype.is_block:                  # one element dequantized (dnet.backends.c.quant)
        return f"dn_dq_{dtype.value}({buffer}, {index})"
    if dtype in _HALF:
        return f"dn_{_HALF[dtype]}_to_f32({buffer}[{index}])"
    return f"{buffer}[{index}]"


def store(value: str, src: DType, dst: DType) -> str:
    if dst in _HALF:
        return f"dn_f32_to_{_HALF[dst]}({value})"
    if dst is DType.BOOL:
        return f"(uint8_t)({value} != 0)"
    return f"({STORAGE[dst]})({value})" if src != dst else value


def render_kernel(kernel: Kernel, activation_bits: int = 16) -> str:
    return CRenderer(kernel, activation_bits).render()

