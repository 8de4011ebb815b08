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
from dnet.graph.ops import Op
from dnet.kernel.ir import (Binary, Cast, Const, Gemm, InBounds, IndexLet, IndexValue, Kernel, Let, Load, Loop,
                            Reduce, Ref, Store, Unary, Where)

STORAGE = {DType.F32: "float", DType.F16: "uint16_t", DType.BF16: "uint16_t", DType.I8: "int8_t",
           DType.I32: "int32_t", DType.I64: "int64_t", DType.BOOL: "uint8_t"}
COMPUTE = {**STORAGE, DType.F16: "float", DType.BF16: "float"}
_HALF = {DType.F16: "f16", DType.BF16: "bf16"}
PARALLEL_MIN_WORK = 16384   # below this many elements a kernel runs on one thread

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
    def __init__(self, kernel: Kernel):
        self.kernel = kernel
        self.dims = set(kernel.dims)

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
        if src in _HALF and dst is DType.F32:
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
        raise TypeError(f"cannot render {s!r}")

    def _dtype(self, buffer: str) -> DType:
        return next(p.dtype for p in self.kernel.params if p.name == buffer)

    def loop(self, s: Loop, pad: str) -> list[str]:
        out = []
        simple = not any(isinstance(b, (Loop, Reduce, Gemm)) for b in s.body)
        if s.parallel:
            work = self._work(s, s.parallel)
            clause = f" collapse({s.parallel})" if s.parallel > 1 else ""
            simd = " simd" if s.vector and simple and s.parallel == 1 else ""
            out.append(f"{pad}#pragma omp parallel for{simd}{clause} schedule(static) if({work} >= {PARALLEL_MIN_WORK})")
        elif s.vector and simple:
            out.append(f"{pad}#pragma omp simd")
        out.append(f"{pad}for (int64_t {s.var} = 0; {s.var} < {self.index(s.extent)}; ++{s.var}) {{")
        out += self.stmts(s.body, pad + "    ")
        out.append(f"{pad}}}")
        return out

    def _work(self, s: Loop, depth: int) -> str:
        """Elements written under the parallel loops (a cheap estimate of the kernel's work)."""
        extents = []
        node = s
        while isinstance(node, Loop):
            extents.append(self.index(node.extent))
            node = node.body[-1] if node.body else None
        return "(" + "*".join(extents) + ")"

    def reduce(self, s: Reduce, pad: str) -> list[str]:
        ctype = COMPUTE[s.dtype]
        out = []
        if s.op is Op.ARGMAX:
            out.append(f"{pad}int64_t {s.acc} = 0; {ctype} {s.acc}_v = {_init(Op.REDUCE_MAX, s.dtype)};")
        else:
            out.append(f"{pad}{ctype} {s.acc} = {_init(s.op, s.dtype)};")
        simple = not any(isinstance(b, (Loop, Reduce, Gemm)) for b in s.body) and s.op is not Op.ARGMAX
        if simple and s.dtype is not DType.BOOL:
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
        params = []
        for p in self.kernel.params:
            const_ = "" if p.output else "const "
            params.append(f"{const_}{STORAGE[p.dtype]}* restrict {p.name}")
        params += [f"int64_t {c_name(d)}" for d in self.kernel.dims]
        return f"static void {self.kernel.name}({', '.join(params)})"

    def render(self) -> str:
        lines = [self.signature() + " {"]
        lines += self.stmts(self.kernel.body, "    ")
        lines.append("}")
        return "\n".join(lines)


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
    if dtype in _HALF:
        return f"dn_{_HALF[dtype]}_to_f32({buffer}[{index}])"
    return f"{buffer}[{index}]"


def store(value: str, src: DType, dst: DType) -> str:
    if dst in _HALF:
        return f"dn_f32_to_{_HALF[dst]}({value})"
    if dst is DType.BOOL:
        return f"(uint8_t)({value} != 0)"
    return f"({STORAGE[dst]})({value})" if src != dst else value


def render_kernel(kernel: Kernel) -> str:
    return CRenderer(kernel).render()

