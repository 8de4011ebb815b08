"""The kernel-IR verifier: a kernel that passes renders to code that means what the IR says.

`verify_kernel(kernel)` checks, and raises `KernelVerifyError` (a dnet error naming the kernel, the
pass that produced it, and the statement) on the first problem:

- buffers: every Load and Store names a parameter or a `LocalAlloc` in scope; a Store writes an
  output parameter or local memory, never an input; parameter and dim names are unique;
- defined before use: every `Ref` names a let, an accumulator (argmax's `acc_v` too) or, in a
  Gemm/QMatmul epilogue, `acc`; every symbol of an index is a loop variable in scope, an index-let
  defined before it, or one of the kernel's dims;
- loops: a variable is bound once in its scope; a loop's extent uses only names in scope;
  `parallel=n` heads a perfect nest of at least n loops (the C dialect flattens them);
- GPU: a `GpuLoop` has a known level and axis 0-2, not reused by an enclosing grid loop; a work-group
  size ("local" extent) is a constant; `LocalAlloc` sits outside work-item loops (it is per group);
  a `Barrier` sits under a "local" grid loop, never under a "global" one (its guard diverges),
  inside no reduction, and under no loop whose trip count differs between the work-items of a
  group (one that depends on the work-item's id or on data).

`check_bounds(kernel, sizes, env)` checks every unguarded Load and every Store against its
buffer's size (elements), for one binding of the symbols: interval arithmetic over the loop
ranges. Loads under a `Where` are skipped: a pad or a concat reads out of range only in the
branch its guard does not take.

Kernel passes call `checked(pass_name, kernel)`: free unless verification is on (`enable()`, or
DNET_VERIFY_KERNELS=1 in the environment); the tests turn it on for every kernel they build.
"""
from __future__ import annotations

import os
from typing import Iterator, Mapping

from dnet.core.shapes import Dim
from dnet.errors import DnetError
from dnet.graph.ops import Op
from dnet.kernel.ir import (GRID_LEVELS, Barrier, Binary, Cast, Const, Gemm, GpuLoop, InBounds, IndexLet, IndexValue,
                            Kernel, Let, Load, LocalAlloc, Loop, QMatmul, Reduce, Ref, Store, Unary, Where)
from dnet.kernel.walk import _symbols

_enabled = os.environ.get("DNET_VERIFY_KERNELS", "") not in ("", "0")


class KernelVerifyError(DnetError):
    """A kernel pass produced ill-formed kernel IR (a compiler bug, not a user error)."""


def enable(on: bool = True) -> bool:
    """Verify every kernel a pass produces from now on (or stop); returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, on
    return previous


def enabled() -> bool:
    return _enabled


def checked(pass_name: str, kernel: Kernel) -> Kernel:
    """`kernel`, verified first when verification is on; what every kernel pass returns through."""
    if _enabled:
        verify_kernel(kernel, pass_name)
    return kernel


def verify_kernel(kernel: Kernel, pass_name: str = "") -> None:
    _Verifier(kernel, pass_name).run()


class _Scope:
    """Names visible at a point: values (lets, accumulators), index names, local buffers, grid loops."""

    def __init__(self, values=(), indices=(), locals_=(), grid=(), barrier_ok=None):
        self.values = frozenset(values)
        self.indices = frozenset(indices)
        self.locals = frozenset(locals_)
        self.grid = tuple(grid)                 # enclosing GpuLoops, outermost first
        self.barrier_ok = barrier_ok            # None: no local grid loop; else why a barrier cannot go here ("")
        self.divergent: frozenset[str] = frozenset()   # names that differ between work-items of a group

    def with_(self, **changes) -> "_Scope":
        new = _Scope(self.values, self.indices, self.locals, self.grid, self.barrier_ok)
        new.divergent = self.divergent
        for key, value in changes.items():
            setattr(new, key, value)
        return new


class _Verifier:
    def __init__(self, kernel: Kernel, pass_name: str):
        self.kernel = kernel
        self.pass_name = pass_name
        self.params = {p.name: p for p in kernel.params}
        self.is_gpu = _has_grid(kernel.body)

    def fail(self, message: str, node=None) -> KernelVerifyError:
        where = f"kernel {self.kernel.name or '(unnamed)'}" + (f" after pass '{self.pass_name}'" if self.pass_name else "")
        what = f": {type(node).__name__} {_short(node)}" if node is not None else ""
        return KernelVerifyError(f"{where}: {message}{what}")

    def run(self) -> None:
        names = [p.name for p in self.kernel.params]
        if len(set(names)) != len(names):
            raise self.fail(f"parameter names repeat: {names}")
        if len(set(self.kernel.dims)) != len(self.kernel.dims):
            raise self.fail(f"dims repeat: {self.kernel.dims}")
        # a dim may share a parameter's name (an LLM's logits rows are the dim "out", its result buffer
        # the parameter "out"): buffers and indices are separate namespaces here, and every renderer
        # spells a dim apart from any buffer (C and OpenCL `n_out`, LLVM `%d0`)
        self.block(self.kernel.body, _Scope(indices=self.kernel.dims))

    # -- statements ----------------------------------------------------------------------
    def block(self, body, scope: _Scope) -> None:
        for s in body:
            scope = self.stmt(s, scope)

    def stmt(self, s, scope: _Scope) -> _Scope:
        """Check one statement; returns the scope after it (with what it defined)."""
        if isinstance(s, Let):
            self.expr(s.value, scope, s)
            self.fresh(s.name, scope, s)
            divergent = scope.divergent | ({s.name} if self.reads_divergent(s.value, scope) else set())
            return scope.with_(values=scope.values | {s.name}, divergent=frozenset(divergent))
        if isinstance(s, IndexLet):
            self.expr(s.value, scope, s)
            self.index(s.bound, scope, s)
            self.fresh(s.name, scope, s)
            # an index read from data differs between work-items: a loop bounded by it may not hold a barrier
            return scope.with_(indices=scope.indices | {s.name}, divergent=scope.divergent | {s.name})
        if isinstance(s, Store):
            self.buffer(s.buffer, scope, s, write=True)
            self.index(s.index, scope, s)
            self.expr(s.value, scope, s)
            return scope
        if isinstance(s, Loop):
            self.loop(s, scope)
            return scope
        if isinstance(s, Reduce):
            self.reduce(s, scope)
            extra = {s.acc, f"{s.acc}_v"} if s.op is Op.ARGMAX else {s.acc}
            return scope.with_(values=scope.values | extra)
        if isinstance(s, (Gemm, QMatmul)):
            self.template(s, scope)
            return scope
        if isinstance(s, GpuLoop):
            self.gpu_loop(s, scope)
            return scope
        if isinstance(s, LocalAlloc):
            if any(g.level in ("local", "global") for g in scope.grid):
                raise self.fail("local memory is per work-group: allocate it outside work-item loops", s)
            if s.size <= 0:
                raise self.fail(f"local memory of {s.size} elements", s)
            self.fresh(s.name, scope, s)
            self.block(s.body, scope.with_(locals=scope.locals | {s.name}))
            return scope
        if isinstance(s, Barrier):
            if not self.is_gpu:
                raise self.fail("a barrier in a kernel with no GPU grid", s)
            if scope.barrier_ok is None:
                raise self.fail("a barrier outside every work-item ('local') grid loop", s)
            if scope.barrier_ok:
                raise self.fail(f"a barrier {scope.barrier_ok}", s)
            return scope
        raise self.fail("unknown statement", s)

    def loop(self, s: Loop, scope: _Scope) -> None:
        self.index(s.extent, scope, s)
        self.fresh(s.var, scope, s)
        if s.parallel:
            node, depth = s, 1
            while depth < s.parallel:
                node = node.body[-1] if node.body else None
                if not isinstance(node, Loop):
                    raise self.fail(f"parallel={s.parallel} but the nest below holds {depth} loop(s)", s)
                depth += 1
        inner = scope.with_(indices=scope.indices | {s.var})
        if scope.barrier_ok == "" and _symbols_of(s.extent) & scope.divergent:
            inner = inner.with_(barrier_ok="inside a loop whose trip count differs between work-items")
        self.block(s.body, inner)

    def reduce(self, s: Reduce, scope: _Scope) -> None:
        names = set()
        for var, extent in s.loops:
            self.index(extent, scope, s)
            if var in names or var in scope.indices or var in scope.values:
                raise self.fail(f"reduction variable '{var}' is already bound", s)
            names.add(var)
        if s.acc in scope.values:
            raise self.fail(f"accumulator '{s.acc}' is already defined", s)
        inner = scope.with_(indices=scope.indices | names)
        if inner.barrier_ok is not None:
            inner = inner.with_(barrier_ok="inside a reduction")
        after = inner
        for b in s.body:
            after = self.stmt(b, after)
        self.expr(s.value, after, s)
        self.index(s.arg_index, after, s)

    def template(self, s, scope: _Scope) -> None:
        """A Gemm or QMatmul: its buffers, its sizes, and an epilogue over `acc` and its variables."""
        operands = [s.a] + ([s.b] if isinstance(s, Gemm) else [])
        for op in operands:
            self.buffer(op.buffer, scope, s, write=False)
            if op.scale:
                self.buffer(op.scale, scope, s, write=False)
        if isinstance(s, QMatmul):
            self.buffer(s.weight, scope, s, write=False)
        elif s.scratch:                          # '' : a Gemm that reads b unpacked needs no workspace
            self.buffer(s.scratch, scope, s, write=True)
        self.buffer(s.out, scope, s, write=True)
        sizes = (*s.batch, s.m, s.n, s.k) if isinstance(s, Gemm) else (s.m, s.n, s.k)
        for size in sizes:
            self.index(size, scope, s)
        inner = scope.with_(values=scope.values | {"acc"}, indices=scope.indices | set(s.vars))
        for b in s.epilogue_lets:
            inner = self.stmt(b, inner)
        self.expr(s.epilogue, inner, s)

    def gpu_loop(self, s: GpuLoop, scope: _Scope) -> None:
        if s.level not in GRID_LEVELS:
            raise self.fail(f"grid level '{s.level}' (levels: {', '.join(GRID_LEVELS)})", s)
        if s.axis not in (0, 1, 2):
            raise self.fail(f"grid axis {s.axis} (axes are 0, 1, 2)", s)
        if any(g.level == s.level and g.axis == s.axis for g in scope.grid):
            raise self.fail(f"grid {s.level} axis {s.axis} is already mapped by an enclosing loop", s)
        if s.level == "local" and not isinstance(s.extent, int):
            raise self.fail("a work-group's size ('local' extent) must be a constant", s)
        self.index(s.extent, scope, s)
        self.fresh(s.var, scope, s)
        inner = scope.with_(indices=scope.indices | {s.var}, grid=scope.grid + (s,))
        if s.level == "global":
            inner = inner.with_(barrier_ok="under a 'global' grid loop (its bounds guard diverges)")
        elif s.level == "local":
            inner = inner.with_(divergent=inner.divergent | {s.var})
            if scope.barrier_ok is None:
                inner = inner.with_(barrier_ok="")
        self.block(s.body, inner)

    # -- expressions and names -------------------------------------------------------------
    def expr(self, e, scope: _Scope, at) -> None:
        if isinstance(e, Const):
            return
        if isinstance(e, Ref):
            if e.name not in scope.values:
                raise self.fail(f"'{e.name}' is used before it is defined", at)
        elif isinstance(e, Load):
            self.buffer(e.buffer, scope, at, write=False)
            self.index(e.index, scope, at)
        elif isinstance(e, IndexValue):
            self.index(e.index, scope, at)
        elif isinstance(e, InBounds):
            for i in (e.index, e.lo, e.hi):
                self.index(i, scope, at)
        elif isinstance(e, (Unary, Cast)):
            self.expr(e.x, scope, at)
        elif isinstance(e, Binary):
            self.expr(e.a, scope, at)
            self.expr(e.b, scope, at)
        elif isinstance(e, Where):
            for x in (e.cond, e.a, e.b):
                self.expr(x, scope, at)
        else:
            raise self.fail(f"unknown expression {type(e).__name__}", at)

    def index(self, i, scope: _Scope, at) -> None:
        unknown = _symbols_of(i) - scope.indices
        if unknown:
            raise self.fail(f"index uses {sorted(unknown)} outside their scope (or before definition)", at)

    def buffer(self, name: str, scope: _Scope, at, write: bool) -> None:
        if name in scope.locals:
            return
        param = self.params.get(name)
        if param is None:
            raise self.fail(f"buffer '{name}' is neither a parameter nor local memory in scope", at)
        if write and not param.output:
            raise self.fail(f"writes '{name}', an input parameter", at)

    def fresh(self, name: str, scope: _Scope, at) -> None:
        if name in scope.indices or name in scope.values or name in scope.locals or name in self.params:
            raise self.fail(f"'{name}' is bound twice", at)

    def reads_divergent(self, e, scope: _Scope) -> bool:
        return bool(scope.divergent & (_expr_names(e)))


# -- bounds ------------------------------------------------------------------------------------
def check_bounds(kernel: Kernel, sizes: Mapping[str, int], env: Mapping[str, int], pass_name: str = "") -> None:
    """Every unguarded Load and every Store of `kernel` stays inside its buffer (`sizes`: elements
    per parameter), with the kernel's dims bound as in `env`."""
    ranges: dict[str, tuple[int, int]] = {d: (env[d], env[d]) for d in kernel.dims}
    for buffer, index, node in _accesses(kernel.body, ranges, sizes):
        if buffer not in sizes:
            continue
        lo, hi = _interval(index, ranges_at(node))
        if lo < 0 or hi >= sizes[buffer]:
            where = f"kernel {kernel.name}" + (f" after pass '{pass_name}'" if pass_name else "")
            raise KernelVerifyError(f"{where}: index of '{buffer}' spans [{lo}, {hi}], outside its "
                                    f"{sizes[buffer]} elements (with {dict(env)}): {_short(node)}")


def ranges_at(node) -> dict:
    return node[1]


def _accesses(body, ranges: dict, sizes) -> Iterator[tuple[str, object, tuple]]:
    """(buffer, index, (statement, the variable ranges there)) for each checked access."""
    for s in body:
        if isinstance(s, (Loop, GpuLoop)):
            hi = _interval(s.extent, ranges)[1] - 1
            if hi < 0:
                continue                                   # an empty loop accesses nothing
            yield from _accesses(s.body, {**ranges, s.var: (0, hi)}, sizes)
        elif isinstance(s, LocalAlloc):
            yield from _accesses(s.body, ranges, {**sizes, s.name: s.size})
        elif isinstance(s, Reduce):
            inner = dict(ranges)
            for var, extent in s.loops:
                inner[var] = (0, _interval(extent, inner)[1] - 1)
            if all(inner[v][1] >= 0 for v, _ in s.loops):
                yield from _accesses(s.body, inner, sizes)
                yield from ((b, i, (s, inner)) for b, i in _loads(s.value))
        elif isinstance(s, IndexLet):
            ranges[s.name] = (0, max(0, _interval(s.bound, ranges)[1] - 1))
            yield from ((b, i, (s, dict(ranges))) for b, i in _loads(s.value))
        elif isinstance(s, Let):
            yield from ((b, i, (s, dict(ranges))) for b, i in _loads(s.value))
        elif isinstance(s, Store):
            yield s.buffer, s.index, (s, dict(ranges))
            yield from ((b, i, (s, dict(ranges))) for b, i in _loads(s.value))


def _loads(e) -> Iterator[tuple[str, object]]:
    """Loads of an expression outside every Where branch (a guarded load may be out of range)."""
    if isinstance(e, Load):
        yield e.buffer, e.index
    elif isinstance(e, (Unary, Cast)):
        yield from _loads(e.x)
    elif isinstance(e, Binary):
        yield from _loads(e.a)
        yield from _loads(e.b)
    elif isinstance(e, Where):
        yield from _loads(e.cond)


def _interval(i, ranges: Mapping[str, tuple[int, int]]) -> tuple[int, int]:
    """[lo, hi] of an index expression over variables in the given ranges (interval arithmetic)."""
    if isinstance(i, int):
        return i, i
    lo = hi = 0
    for monomial, coefficient in i.terms:
        mlo, mhi = _interval(coefficient, ranges) if isinstance(coefficient, Dim) else (coefficient, coefficient)
        for atom in monomial:
            alo, ahi = _atom_interval(atom, ranges)
            products = (mlo * alo, mlo * ahi, mhi * alo, mhi * ahi)
            mlo, mhi = min(products), max(products)
        lo, hi = lo + mlo, hi + mhi
    return lo, hi


def _atom_interval(atom, ranges) -> tuple[int, int]:
    if isinstance(atom, str):
        if atom not in ranges:
            raise KernelVerifyError(f"index symbol '{atom}' has no range")
        return ranges[atom]
    op, inner, k = atom
    ilo, ihi = _interval(inner, ranges)
    klo, khi = _interval(k, ranges)
    if klo <= 0:
        raise KernelVerifyError(f"index divides by {k}, which may be < 1")
    if op == "//":
        return min(ilo // klo, ilo // khi), max(ihi // klo, ihi // khi)
    if ilo >= 0 and ihi < klo:
        return ilo, ihi
    return 0, khi - 1


# -- helpers -----------------------------------------------------------------------------------
def _symbols_of(i) -> set[str]:
    return _symbols(i) if isinstance(i, Dim) else set()


def _expr_names(e) -> set[str]:
    if isinstance(e, Ref):
        return {e.name}
    if isinstance(e, (Load, IndexValue)):
        return _symbols_of(e.index)
    if isinstance(e, InBounds):
        return _symbols_of(e.index) | _symbols_of(e.lo) | _symbols_of(e.hi)
    if isinstance(e, (Unary, Cast)):
        return _expr_names(e.x)
    if isinstance(e, Binary):
        return _expr_names(e.a) | _expr_names(e.b)
    if isinstance(e, Where):
        return _expr_names(e.cond) | _expr_names(e.a) | _expr_names(e.b)
    return set()


def _has_grid(body) -> bool:
    for s in body:
        if isinstance(s, GpuLoop):
            return True
        inner = getattr(s, "body", ())
        if isinstance(inner, tuple) and _has_grid(inner):
            return True
    return False


def _short(node) -> str:
    text = repr(node)
    return text if len(text) <= 160 else text[:157] + "..."
