"""Kernel IR -> LLVM IR text: the `llvm` dialect of `kernel.render.Renderer`.

A kernel becomes `define internal void @name(ptr noalias %buffers..., i64 %dims...)`, the same
argument list as the C backend's kernels. Values are computed in f32 (f16/bf16 widened on load,
rounded after every op, narrowed on store, as the reference backend does), in their own integer
width, or as i1 for bools. Index arithmetic is i64 with `nsw` (as C's signed arithmetic), so the
optimiser can reason about strides. Ops map to LLVM through tables: instructions (`fadd`, `sdiv`),
intrinsics (`llvm.sqrt.f32`, lowered to the CPU's instruction or libm), or the prelude's functions
(`dn_exp`, `dn_tanh`, `dn_erf`: polynomials that the loop vectoriser can widen).

Parallel loops are outlined, as the C backend does: the body becomes `@name_body<k>(ptr %ctx,
i64 %begin, i64 %end)`, what it reads (buffers, dims, top-level values) is passed in a struct, and
the kernel calls the process's thread pool, `dn_parallel` (`backends/llvm/pool.py`). A `Gemm` is
the packed, register-blocked micro-kernel in LLVM vector types (`backends/llvm/gemm.py`).
"""
from __future__ import annotations

from typing import ClassVar, Mapping

import numpy as np

from dnet.core.dtypes import DType
from dnet.graph.ops import Op
from dnet.kernel.ir import (Barrier, Binary, Cast, Const, Gemm, GpuLoop, InBounds, IndexLet, IndexValue, Kernel, Let,
                            Load, LocalAlloc, Loop, QMatmul, Reduce, Ref, Store, Unary, Where)
from dnet.kernel.render import Renderer
from dnet.backends.llvm.ir_text import COMPUTE, INT_BITS, STORAGE, Function, float_literal, quote

HALF = (DType.F16, DType.BF16)
PARALLEL_MIN_WORK = 16384   # elements of work per chunk of a parallel loop, at least (as the C backend)

# op -> (instruction or function, how it is applied); "fn" names a prelude function or an intrinsic
UNARY_FLOAT: Mapping[Op, tuple[str, str]] = {
    Op.NEG: ("fneg", "inst"), Op.EXP: ("@dn_exp", "fn"), Op.LOG: ("@llvm.log.f32", "fn"),
    Op.SQRT: ("@llvm.sqrt.f32", "fn"), Op.RECIP: ("@dn_recip", "fn"), Op.TANH: ("@dn_tanh", "fn"),
    Op.ERF: ("@dn_erf", "fn"), Op.SIN: ("@llvm.sin.f32", "fn"), Op.COS: ("@llvm.cos.f32", "fn"),
    Op.ABS: ("@llvm.fabs.f32", "fn"), Op.FLOOR: ("@llvm.floor.f32", "fn")}
BINARY_FLOAT: Mapping[Op, tuple[str, str]] = {
    Op.ADD: ("fadd", "inst"), Op.SUB: ("fsub", "inst"), Op.MUL: ("fmul", "inst"), Op.DIV: ("fdiv", "inst"),
    Op.POW: ("@llvm.pow.f32", "fn"), Op.MAX: ("@dn_maxf", "fn"), Op.MIN: ("@dn_minf", "fn"),
    Op.MOD: ("@dn_modf", "fn")}
BINARY_INT: Mapping[Op, tuple[str, str]] = {
    Op.ADD: ("add", "inst"), Op.SUB: ("sub", "inst"), Op.MUL: ("mul", "inst"), Op.DIV: ("@dn_floordiv", "i64fn"),
    Op.POW: ("@dn_ipow", "i64fn"), Op.MAX: ("sgt", "select"), Op.MIN: ("slt", "select"),
    Op.MOD: ("@dn_mod", "i64fn")}
BINARY_BOOL: Mapping[Op, str] = {Op.AND: "and", Op.OR: "or", Op.ADD: "or", Op.MUL: "and", Op.MAX: "or",
                                 Op.MIN: "and", Op.SUB: "xor"}
COMPARE_FLOAT = {Op.EQ: "oeq", Op.NE: "une", Op.LT: "olt", Op.LE: "ole"}     # C's ==, !=, <, <= on floats
COMPARE_INT = {Op.EQ: "eq", Op.NE: "ne", Op.LT: "slt", Op.LE: "sle"}
COMPARE_BOOL = {Op.EQ: "eq", Op.NE: "ne", Op.LT: "ult", Op.LE: "ule"}         # bools are unsigned 0/1

INT_LIMITS = {DType.I8: (-128, 127), DType.I32: (-2**31, 2**31 - 1), DType.I64: (-2**63, 2**63 - 1)}


class LLVMRenderer(Renderer):
    backend = "llvm"
    dialect = "llvm"
    unsupported = {}

    _EXPRESSIONS: ClassVar[dict[type, str]] = {
        Const: "const_expr", IndexValue: "index_value", Load: "load_expr", Ref: "ref", Unary: "unary",
        Binary: "binary", Where: "where", Cast: "cast", InBounds: "in_bounds"}
    _STATEMENTS: ClassVar[dict[type, str]] = {
        Let: "let", IndexLet: "index_let", Store: "store", Loop: "loop", Reduce: "reduce", Gemm: "gemm",
        QMatmul: "qmatmul", GpuLoop: "gpu", LocalAlloc: "gpu", Barrier: "gpu"}

    def __init__(self, kernel: Kernel, gemm_support=None):
        from dnet.backends.llvm.gemm import GemmSupport

        super().__init__(kernel)
        self.gemm_support = gemm_support if gemm_support is not None else GemmSupport()   # micro-kernels, per module
        self.dims = set(kernel.dims)
        self.buffers = {p.name: p.dtype for p in kernel.params}
        self.helpers: list[Function] = []     # outlined parallel bodies
        self.fn: Function = Function("")
        self.env: dict[str, tuple[str, str]] = {}    # kernel IR name -> (SSA value, LLVM type)

    # -- whole kernels -----------------------------------------------------------------
    def signature(self) -> str:
        params = [f"ptr noalias %p{i}" for i, _ in enumerate(self.kernel.params)]
        params += [f"i64 %d{i}" for i, _ in enumerate(self.kernel.dims)]
        return f"define internal void {quote(self.kernel.name)}({', '.join(params)}) nounwind"

    def render(self) -> str:
        """The kernel's functions (outlined bodies first), as LLVM IR text."""
        self.fn = Function(self.signature())
        for i, p in enumerate(self.kernel.params):
            self.env[p.name] = (f"%p{i}", "ptr")
        for i, d in enumerate(self.kernel.dims):
            self.env[self.dim_key(d)] = (f"%d{i}", "i64")
        self.stmts(self.kernel.body)
        self.fn.emit("ret void")
        return "\n\n".join([h.text() for h in self.helpers] + [self.fn.text()])

    @staticmethod
    def dim_key(symbol: str) -> str:
        return "\0dim:" + symbol            # dims and kernel IR names never collide

    # -- indices -----------------------------------------------------------------------
    def index(self, x) -> str:
        """An index expression as an i64 operand."""
        if isinstance(x, (int, np.integer)):
            return str(int(x))
        f, total = self.fn, "0"
        for m, c in x.terms:
            term = str(int(c))
            for a in m:
                term = f.mul(term, self._atom(a))
            total = f.add(total, term)
        return total

    def _atom(self, a) -> str:
        if isinstance(a, str):
            key = self.dim_key(a) if a in self.dims else a
            return self.env[key][0]
        op, inner, k = a
        return self.fn.op(f"{'sdiv' if op == '//' else 'srem'} i64 {self.index(inner)}, {self.index(k)}")

    # -- expressions -------------------------------------------------------------------
    def expr(self, e) -> str:
        method = self._EXPRESSIONS.get(type(e))
        if method is None:
            raise self.missing(type(e).__name__)
        return getattr(self, method)(e)

    def const_expr(self, e: Const) -> str:
        return const(e.value, e.dtype)

    def index_value(self, e: IndexValue) -> str:
        i = self.index(e.index)
        ty = COMPUTE[e.dtype]
        if e.dtype.is_float:
            return self.round(self.fn.op(f"sitofp i64 {i} to float"), e.dtype)
        if ty == "i1":
            return self.fn.op(f"icmp ne i64 {i}, 0")
        return i if ty == "i64" else self.fn.op(f"trunc i64 {i} to {ty}")

    def load_expr(self, e: Load) -> str:
        return self.load(e.buffer, self.index(e.index), e.dtype)

    def load(self, buffer: str, index: str, dtype: DType) -> str:
        if dtype.is_block:
            from dnet.backends.llvm.quant import load_block

            return load_block(self, buffer, index, dtype)
        f = self.fn
        ptr = f.gep(STORAGE[dtype], self.env[buffer][0], index)
        raw = f.op(f"load {STORAGE[dtype]}, ptr {ptr}")
        return self.widen(raw, dtype)

    def widen(self, raw: str, dtype: DType) -> str:
        """A stored element as its computed value."""
        f = self.fn
        if dtype is DType.F16:
            return f.op(f"call float @dn_f16_to_f32(i16 {raw})")
        if dtype is DType.BF16:
            wide = f.op(f"shl i32 {f.op(f'zext i16 {raw} to i32')}, 16")
            return f.op(f"bitcast i32 {wide} to float")
        if dtype is DType.BOOL:
            return f.op(f"icmp ne i8 {raw}, 0")
        return raw

    def narrow(self, value: str, src: DType, dst: DType) -> str:
        """A computed value of dtype `src` as the stored element of a `dst` buffer."""
        f = self.fn
        if dst is DType.F16:
            return f.op(f"call i16 @dn_f32_to_f16(float {self.convert(value, src, DType.F32)})")
        if dst is DType.BF16:
            return f.op(f"call i16 @dn_f32_to_bf16(float {self.convert(value, src, DType.F32)})")
        if dst is DType.BOOL:
            return f.op(f"zext i1 {self.convert(value, src, DType.BOOL)} to i8")
        return self.convert(value, src, dst)

    def ref(self, e: Ref) -> str:
        return self.env[e.name][0]

    def where(self, e: Where) -> str:
        c, a, b = self.expr(e.cond), self.expr(e.a), self.expr(e.b)
        return self.fn.op(f"select i1 {c}, {COMPUTE[e.dtype]} {a}, {COMPUTE[e.dtype]} {b}")

    def in_bounds(self, e: InBounds) -> str:
        i, lo, hi = self.index(e.index), self.index(e.lo), self.index(e.hi)
        f = self.fn
        return f.op(f"and i1 {f.op(f'icmp sle i64 {lo}, {i}')}, {f.op(f'icmp slt i64 {i}, {hi}')}")

    def round(self, value: str, dtype: DType) -> str:
        """A value computed in float brought back to its half dtype's values."""
        if dtype is DType.F16:
            return self.fn.op(f"call float @dn_round_f16(float {value})")
        if dtype is DType.BF16:
            return self.fn.op(f"call float @dn_round_bf16(float {value})")
        return value

    def unary(self, e: Unary) -> str:
        x = self.expr(e.x)
        f, ty = self.fn, COMPUTE[e.dtype]
        if e.op is Op.NOT:
            return f.op(f"icmp eq {ty} {x}, 0") if ty != "i1" else f.op(f"xor i1 {x}, true")
        if e.dtype is DType.BOOL and e.op in (Op.NEG, Op.ABS):
            return x
        if e.dtype.is_float:
            name, how = self.lookup_pair(UNARY_FLOAT, e.op, e.dtype)
            v = f.op(f"fneg float {x}") if how == "inst" else f.op(f"call float {name}(float {x})")
            return self.round(v, e.dtype)
        if e.op is Op.NEG:
            return f.op(f"sub {ty} 0, {x}")
        if e.op is Op.ABS:
            neg = f.op(f"icmp slt {ty} {x}, 0")
            return f.op(f"select i1 {neg}, {ty} {f.op(f'sub {ty} 0, {x}')}, {ty} {x}")
        raise self.missing(e.op, e.dtype)

    def lookup_pair(self, table, op: Op, dtype: DType):
        found = table.get(op)
        if found is None:
            raise self.missing(op, dtype)
        return found

    def binary(self, e: Binary) -> str:
        a, b = self.expr(e.a), self.expr(e.b)
        f, src = self.fn, e.a.dtype
        ty = COMPUTE[src]
        if e.op in COMPARE_FLOAT:
            if src.is_float:
                return f.op(f"fcmp {COMPARE_FLOAT[e.op]} float {a}, {b}")
            table = COMPARE_BOOL if src is DType.BOOL else COMPARE_INT
            return f.op(f"icmp {table[e.op]} {ty} {a}, {b}")
        if e.op in (Op.AND, Op.OR) or e.dtype is DType.BOOL:
            a1, b1 = self.convert(a, src, DType.BOOL), self.convert(b, e.b.dtype, DType.BOOL)
            if e.op in BINARY_BOOL:
                return f.op(f"{BINARY_BOOL[e.op]} i1 {a1}, {b1}")
            if e.op is Op.MOD:
                return "false"       # a mod 1 and a mod 0 are 0 in the reference
            return a1                # bool div/pow: a's truth (the reference's cast of the result)
        out = COMPUTE[e.dtype]
        if e.dtype.is_float:
            name, how = self.lookup_pair(BINARY_FLOAT, e.op, e.dtype)
            v = f.op(f"{name} float {a}, {b}") if how == "inst" else f.op(f"call float {name}(float {a}, float {b})")
            return self.round(v, e.dtype)
        name, how = self.lookup_pair(BINARY_INT, e.op, e.dtype)
        if how == "inst":
            return f.op(f"{name} {out} {a}, {b}")
        if how == "select":
            return f.op(f"select i1 {f.op(f'icmp {name} {out} {a}, {b}')}, {out} {a}, {out} {b}")
        wide = f.op(f"call i64 {name}(i64 {self.convert(a, e.dtype, DType.I64)}, i64 {self.convert(b, e.dtype, DType.I64)})")
        return self.convert(wide, DType.I64, e.dtype)

    def cast(self, e: Cast) -> str:
        x, src, dst = self.expr(e.x), e.x.dtype, e.dtype
        if dst in HALF:
            return self.round(self.convert(x, src, DType.F32), dst)
        return self.convert(x, src, dst)

    def convert(self, x: str, src: DType, dst: DType) -> str:
        """C's conversion between computed types (no rounding to half types)."""
        s, d = COMPUTE[src], COMPUTE[dst]
        f = self.fn
        if s == d:
            return x
        if d == "i1":
            return f.op(f"fcmp une float {x}, 0.0") if s == "float" else f.op(f"icmp ne {s} {x}, 0")
        if d == "float":
            return f.op(f"{'uitofp' if s == 'i1' else 'sitofp'} {s} {x} to float")
        if s == "float":
            wide = f.op(f"fptosi float {x} to i64")     # via i64: an out-of-range float wraps, never poisons
            return wide if d == "i64" else f.op(f"trunc i64 {wide} to {d}")
        if INT_BITS[s] < INT_BITS[d]:
            return f.op(f"{'zext' if s == 'i1' else 'sext'} {s} {x} to {d}")
        return f.op(f"trunc {s} {x} to {d}")

    # -- statements --------------------------------------------------------------------
    def stmts(self, body) -> None:
        for s in body:
            self.stmt(s)

    def stmt(self, s) -> None:
        method = self._STATEMENTS.get(type(s))
        if method is None:
            raise self.missing(type(s).__name__)
        getattr(self, method)(s)

    def let(self, s: Let) -> None:
        self.env[s.name] = (self.expr(s.value), COMPUTE[s.value.dtype])

    def index_let(self, s: IndexLet) -> None:
        v = self.convert(self.expr(s.value), s.value.dtype, DType.I64)
        self.env[s.name] = (self.fn.op(f"call i64 @dn_clamp(i64 {v}, i64 {self.index(s.bound)})"), "i64")

    def store(self, s: Store) -> None:
        dst = self.buffers[s.buffer]
        value = self.narrow(self.expr(s.value), s.value.dtype, dst)
        ptr = self.fn.gep(STORAGE[dst], self.env[s.buffer][0], self.index(s.index))
        self.fn.emit(f"store {STORAGE[dst]} {value}, ptr {ptr}")

    def loop(self, s: Loop) -> None:
        if s.parallel:
            self.parallel_loop(s)
            return
        with self.fn.loop("0", self.index(s.extent)) as var:
            self.env[s.var] = (var, "i64")
            self.stmts(s.body)

    def parallel_loop(self, s: Loop) -> None:
        """The first `s.parallel` loops, flattened and run in chunks on the thread pool."""
        loops = [s]
        while len(loops) < s.parallel:
            loops.append(loops[-1].body[-1])
        extents = [self.index(l.extent) for l in loops]
        count = "1"
        for e in extents:
            count = self.fn.mul(count, e)
        work = "1"
        for l in _inner_loops(loops[-1]):
            work = self.fn.mul(work, self.index(l.extent))
        grain = self._grain(work)

        def body(fn_self: "LLVMRenderer", begin: str, end: str) -> None:
            f = fn_self.fn
            with f.loop(begin, end, hint="g") as flat:
                stride = "1"
                for l, e in reversed(list(zip(loops, _extents(fn_self, loops)))):
                    v = flat if len(loops) == 1 else f.op(f"srem i64 {f.op(f'sdiv i64 {flat}, {stride}')}, {e}")
                    fn_self.env[l.var] = (v, "i64")
                    stride = f.mul(stride, e)
                fn_self.stmts(loops[-1].body)
        self.outline(body, count, grain)

    def _grain(self, work: str) -> str:
        """Chunks of at least PARALLEL_MIN_WORK elements: iterations per chunk for `work` per iteration."""
        f = self.fn
        big = f.op(f"icmp sge i64 {work}, {PARALLEL_MIN_WORK}")
        empty = f.op(f"icmp sle i64 {work}, 0")
        one = f.op(f"or i1 {big}, {empty}")
        safe = f.op(f"select i1 {empty}, i64 1, i64 {work}")
        return f.op(f"select i1 {one}, i64 1, i64 {f.op(f'sdiv i64 {PARALLEL_MIN_WORK}, {safe}')}")

    def outline(self, body, count: str, grain: str) -> None:
        """Move `body(renderer, begin, end)` into a function the pool calls on chunks of [0, count),
        passing it every value in scope (buffers, dims, top-level values) in a struct."""
        captured = list(self.env.items())
        struct = "{" + ", ".join(ty for _, (_, ty) in captured) + "}" if captured else "{i8}"
        name = f"{self.kernel.name}_body{len(self.helpers)}"
        outer_fn, outer_env = self.fn, self.env
        ctx = outer_fn.alloca(struct)
        for i, (_, (value, ty)) in enumerate(captured):
            slot = outer_fn.op(f"getelementptr inbounds {struct}, ptr {ctx}, i32 0, i32 {i}")
            outer_fn.emit(f"store {ty} {value}, ptr {slot}")
        inner = Function(f"define internal void {quote(name)}(ptr noalias %ctx, i64 %begin, i64 %end) nounwind")
        self.fn, self.env = inner, {}
        for i, (key, (_, ty)) in enumerate(captured):
            slot = inner.op(f"getelementptr inbounds {struct}, ptr %ctx, i32 0, i32 {i}")
            self.env[key] = (inner.op(f"load {ty}, ptr {slot}"), ty)
        body(self, "%begin", "%end")
        inner.emit("ret void")
        self.helpers.append(inner)
        self.fn, self.env = outer_fn, outer_env
        outer_fn.emit(f"call void @dn_parallel(ptr {quote(name)}, ptr {ctx}, i64 {count}, i64 {grain})")

    def reduce(self, s: Reduce) -> None:
        f = self.fn
        ty = COMPUTE[s.dtype]
        if s.op is Op.ARGMAX:
            acc = f.alloca("i64", "0")
            best = f.alloca(ty, reduce_init(Op.REDUCE_MAX, s.dtype))
        else:
            acc = f.alloca(ty, reduce_init(s.op, s.dtype))
        self._reduce_loops(s, list(s.loops), acc, best if s.op is Op.ARGMAX else None)
        if s.op is Op.ARGMAX:
            self.env[s.acc] = (f.op(f"load i64, ptr {acc}"), "i64")
            self.env[s.acc + "_v"] = (f.op(f"load {ty}, ptr {best}"), ty)
        else:
            self.env[s.acc] = (f.op(f"load {ty}, ptr {acc}"), ty)

    def _reduce_loops(self, s: Reduce, loops: list, acc: str, best: str | None) -> None:
        if loops:
            var, extent = loops[0]
            with self.fn.loop("0", self.index(extent)) as v:
                self.env[var] = (v, "i64")
                self._reduce_loops(s, loops[1:], acc, best)
            return
        self.stmts(s.body)
        f, ty = self.fn, COMPUTE[s.dtype]
        x = self.convert(self.expr(s.value), s.value.dtype, s.dtype)
        if s.op is Op.ARGMAX:
            cur = f.op(f"load {ty}, ptr {best}")
            better = f.op(_greater(ty, x, cur))
            f.emit(f"store {ty} {f.op(f'select i1 {better}, {ty} {x}, {ty} {cur}')}, ptr {best}")
            old = f.op(f"load i64, ptr {acc}")
            at = self.index(s.arg_index)
            f.emit(f"store i64 {f.op(f'select i1 {better}, i64 {at}, i64 {old}')}, ptr {acc}")
            return
        cur = f.op(f"load {ty}, ptr {acc}")
        if s.op is Op.SUM:
            # reassoc: a float sum may be computed in vector lanes (the C backend's `omp simd reduction`)
            new = f.op({"float": f"fadd reassoc float {cur}, {x}", "i1": f"or i1 {cur}, {x}"}.get(ty, f"add {ty} {cur}, {x}"))
        elif s.op in (Op.REDUCE_MAX, Op.REDUCE_MIN) and ty == "float":
            # maxnum(x, acc) is `x > acc ? x : acc` (a NaN x keeps acc, and acc is never NaN), and LLVM
            # vectorises a maxnum reduction where it keeps a compare-and-select one scalar
            name = "@llvm.maxnum.f32" if s.op is Op.REDUCE_MAX else "@llvm.minnum.f32"
            new = f.op(f"call float {name}(float {x}, float {cur})")
        elif s.op in (Op.REDUCE_MAX, Op.REDUCE_MIN):
            cmp = _greater(ty, x, cur) if s.op is Op.REDUCE_MAX else _greater(ty, cur, x)
            new = f.op(f"select i1 {f.op(cmp)}, {ty} {x}, {ty} {cur}")
        else:
            raise self.missing(s.op, s.dtype)
        f.emit(f"store {ty} {new}, ptr {acc}")

    def gemm(self, s: Gemm) -> None:
        from dnet.backends.llvm.gemm import render_gemm

        render_gemm(self, s)

    def qmatmul(self, s: QMatmul) -> None:
        from dnet.backends.llvm.quant import render_qmatmul

        render_qmatmul(self, s)

    def gpu(self, s) -> None:
        raise self.missing(f"GPU statement {type(s).__name__}")


def _extents(r: LLVMRenderer, loops: list) -> list[str]:
    """The loops' extents, evaluated in the renderer's current function."""
    return [r.index(l.extent) for l in loops]


def _inner_loops(loop: Loop) -> list[Loop]:
    """The loops nested (last statement first) under `loop`, which together make one row of work."""
    out, node = [], loop.body[-1] if loop.body else None
    while isinstance(node, Loop):
        out.append(node)
        node = node.body[-1] if node.body else None
    return out


def _greater(ty: str, a: str, b: str) -> str:
    if ty == "float":
        return f"fcmp ogt float {a}, {b}"
    return f"icmp {'ugt' if ty == 'i1' else 'sgt'} {ty} {a}, {b}"


def const(value, dtype: DType) -> str:
    if dtype is DType.BOOL:
        return "true" if value else "false"
    if dtype.is_int:
        return str(int(value))
    return float_literal(float(np.asarray(value, dtype=dtype.np).astype(np.float32)))


def reduce_init(op: Op, dtype: DType) -> str:
    if op is Op.SUM:
        return {"float": "0.0", "i1": "false"}.get(COMPUTE[dtype], "0")
    low = op is Op.REDUCE_MAX
    if dtype.is_float or dtype.is_block:
        return float_literal(-np.inf if low else np.inf)
    if dtype is DType.BOOL:
        return "false" if low else "true"
    lo, hi = INT_LIMITS[dtype]
    return str(lo if low else hi)
