"""Kernel IR -> C source: the C dialect of `kernel.render.CStyleRenderer`.

What is C's own is here: loops carry OpenMP SIMD pragmas, parallel loops are outlined into
functions the backend's thread pool runs (`dn_parallel`), a `Gemm` is the packed register-blocked
micro-kernel (`backends/c/gemm.py`), a `QMatmul` a call into the block-format kernels
(`backends/c/qmatmul.py`), and block-dtype elements are dequantized one by one on load. The op
tables are the base's (C is the family's reference spelling).

f16/bf16 values live in `float` variables holding an exactly rounded value: loads
widen, stores narrow, and every op producing a half type rounds its result, which
reproduces the reference backend bit for bit apart from float summation order.
"""
from __future__ import annotations

from dnet.core.dtypes import DType
from dnet.core.shapes import numel
from dnet.graph.ops import Op
from dnet.kernel.ir import Gemm, GpuLoop, IndexLet, Kernel, Let, Loop, QMatmul, Reduce
from dnet.kernel.render import HALF, CStyleRenderer

TINY_REDUCTION = 16   # static trip counts up to this: no SIMD pragma on the reduction (see `reduce_hint`)
STORAGE = CStyleRenderer.storage
COMPUTE = CStyleRenderer.compute
_HALF = HALF
PARALLEL_MIN_WORK = 16384   # elements of work per chunk of a parallel loop, at least


def c_name(symbol: str) -> str:
    """A graph dim's C parameter name."""
    return CStyleRenderer.dim_name(symbol)


class CRenderer(CStyleRenderer):
    backend = "c"
    dialect = "c"

    def __init__(self, kernel: Kernel, activation_bits: int = 16):
        super().__init__(kernel)
        self.activation_bits = activation_bits     # QMatmul: activations quantized to 16 or 8 bits per block
        self.helpers: list[str] = []                 # outlined parallel bodies, emitted before the kernel
        self.locals: list[tuple[str, str]] = []      # top-level values declared so far (captured by bodies)

    # -- C's own spellings -------------------------------------------------------------
    def load(self, buffer: str, index: str, dtype: DType) -> str:
        return load(buffer, index, dtype)

    def _dtype(self, buffer: str) -> DType:
        return self.buffer_dtype(buffer)

    def _param_type(self, p) -> str:
        return self.param_type(p)

    def gemm(self, s: Gemm, pad: str) -> list[str]:
        if s.b.im2col is not None:   # a convolution: direct, from a padded copy of the input (no im2col)
            from dnet.backends.c import conv

            if conv.DIRECT:
                return conv.render_conv(self, s, pad)
        from dnet.backends.c.gemm import render_gemm

        return render_gemm(self, s, pad)

    def qmatmul(self, s: QMatmul, pad: str) -> list[str]:
        from dnet.backends.c.qmatmul import render_qmatmul

        return render_qmatmul(self, s, pad)

    def gpu_loop(self, s: GpuLoop, pad: str) -> list[str]:
        """A grid loop run on the CPU one work-item after another: what it means without barriers (the C
        dialect has no barrier or local memory, so a kernel with them is a MissingOpError there). Lets the
        C backend check a GPU pass (`kernel.grid.map_to_grid`) against the reference."""
        return super().loop(Loop(s.var, s.extent, s.body), pad)

    # -- loops: SIMD pragmas and the thread pool ---------------------------------------
    def loop(self, s: Loop, pad: str) -> list[str]:
        if s.parallel:
            return self.parallel_loop(s, pad)
        out = []
        if s.vector and _simple(s.body):
            out.append(f"{pad}#pragma omp simd")
        return out + super().loop(s, pad)

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

    def reduce_hint(self, s: Reduce, pad: str) -> list[str]:
        simple = _simple(s.body) and s.op is not Op.ARGMAX
        # a few iterations known here (a 3x3 pooling window): the compiler unrolls them, and the loop
        # around (the output's) is the one to vectorise; a SIMD reduction over 9 would only add masks
        tiny = all(isinstance(e, int) for _, e in s.loops) and numel([e for _, e in s.loops]) <= TINY_REDUCTION
        if simple and not tiny and s.dtype is not DType.BOOL:
            red = {Op.SUM: "+", Op.REDUCE_MAX: "max", Op.REDUCE_MIN: "min"}[s.op]
            clause = f" collapse({len(s.loops)})" if len(s.loops) > 1 else ""
            return [f"{pad}#pragma omp simd reduction({red}:{s.acc}){clause}"]
        return []

    # -- whole kernels -----------------------------------------------------------------
    def signature(self) -> str:
        params = [f"{self._param_type(p)} {p.name}" for p in self.kernel.params]
        params += [f"int64_t {c_name(d)}" for d in self.kernel.dims]
        return f"static void {self.kernel.name}({', '.join(params)})"

    def render(self) -> str:
        body = []
        pool = self.kernel.meta.get("pool")
        if pool is not None:                  # a pool with its geometry: vectorised (backends/c/pool.py)
            from dnet.backends.c.pool import render_pool

            body = render_pool(self, pool, "    ")
        for stmt in self.kernel.body if pool is None else ():   # top-level values are visible to outlined loops
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

