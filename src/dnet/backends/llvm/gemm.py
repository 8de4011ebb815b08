"""The LLVM form of a `Gemm`: the C backend's packed, register-blocked GEMM in LLVM vector types.

The micro-kernel keeps an mr x nr block of the result in `<lanes x float>` registers (mr rows of
nr / lanes vectors: 24 zmm registers with AVX-512, 12 ymm with AVX2), and per step of k loads nr
floats of a packed b panel and broadcasts one float of each of the mr rows of a, fused
multiply-adds (`llvm.fmuladd`, an FMA where the CPU has one). Variants for a third and two thirds
of mr rows serve the last sliver of a block. Around it, the C backend's loops and blocking
(`backends/c/gemm.py`): b packed once into nr-wide panels (weights at load time, by
`program.build`; other operands by a parallel packing pass into the kernel's scratch buffer, a
convolution's im2col gathered as it is packed), a read in place (rows at any stride), tasks of
(batch, row block, column chunk) on the thread pool, an L2-sized block of b panels streamed past
each mr x kc sliver of a, and the epilogue applied to each tile after its last k block, while it is
in L1.

int8 weights (`quantize="int8"`) stay packed as int8 and are widened, times their per-column scales,
one L2 block at a time into a workspace of the task (as the C backend does). int8 or bf16 activations
(`quantize="int8-dynamic"`, `precision="bf16"`) are `backends/llvm/igemm.py`'s.
"""
from __future__ import annotations

from dnet.core.dtypes import DType
from dnet.kernel.ir import Gemm, GemmTile, Ref
from dnet.backends.llvm.ir_text import Function

# k steps per trip of the micro-kernel's loop. Not unrolled: unrolled 4 times (the C backend's
# `GCC unroll 4`), LLVM's scheduler hoists the broadcasts of a and spills them (MiniLM's FFN matmul
# 5.8 ms against 4.3 ms, one thread); 1 keeps the 12 x 2 accumulators and their operands in registers
UNROLL = 1


class GemmSupport:
    """The micro-kernels a module's Gemms call, made once per (tile, a's column stride kind)."""

    def __init__(self) -> None:
        self.functions: dict[tuple, str] = {}
        self.extra: dict[str, str] = {}         # other per-module functions (the low-precision row sums)
        self.metadata: list[str] = []
        self.declared: set[str] = set()

    def ukernel(self, tile: GemmTile, unit: bool) -> str:
        """The name of the dispatcher picking the smallest row variant that covers `mr` rows."""
        sfx = f"{tile.mr}x{tile.nr}_{'u' if unit else 's'}"
        name = f"@dn_uk_{sfx}"
        if (tile, unit) in self.functions:
            return name
        counts = sorted({tile.mr} | {tile.mr * i // 3 for i in (1, 2) if tile.mr * i // 3 > 0})
        parts = [self._variant(tile, rows, unit, f"@dn_uk_{sfx}_r{rows}") for rows in counts]
        parts.append(self._dispatch(name, sfx, counts))
        self.functions[(tile, unit)] = "\n\n".join(parts)
        return name

    def _vector(self, tile: GemmTile) -> str:
        lanes = tile.lanes if tile.lanes > 1 else 1
        vec = f"<{lanes} x float>"
        if lanes != 16:                 # the 16-lane one is the prelude's (block weights use it too)
            self.declared.add(f"declare {vec} @llvm.fmuladd.v{lanes}f32({vec}, {vec}, {vec})")
        return vec

    def _loop_metadata(self) -> str:
        return self.loop_hint('!"llvm.loop.unroll.disable"' if UNROLL == 1 else
                              f'!"llvm.loop.unroll.count", i32 {UNROLL}')

    def loop_hint(self, hint: str) -> str:
        """`!llvm.loop !N` for a loop carrying `hint` (numbered here: one metadata list per module)."""
        n = len(self.metadata)
        self.metadata += [f"!{n} = distinct !{{!{n}, !{n + 1}}}", f"!{n + 1} = !{{{hint}}}"]
        return f"!llvm.loop !{n}"

    def _variant(self, tile: GemmTile, rows: int, unit: bool, name: str) -> str:
        """c[0:mr, 0:nr] (+)= a[0:mr, 0:kc] . b_panel[0:kc, 0:nr], for mr <= rows."""
        nr, lanes = tile.nr, max(tile.lanes, 1)
        nv = nr // lanes
        vec = self._vector(tile)
        width = f'"min-legal-vector-width"="{lanes * 32}"'
        f = Function(f"define internal void {name}(i64 %kc, ptr noalias %a, i64 %lda, i64 %cs, ptr noalias %b, "
                     f"ptr noalias %c, i64 %ldc, i1 %add, i64 %mr, i64 %nr) alwaysinline nounwind {width}")
        a_rows = []
        for i in range(rows):      # rows past mr read row 0 (valid memory; their results are dropped)
            inside = f.op(f"icmp slt i64 {i}, %mr")
            row = f.op(f"select i1 {inside}, i64 {i}, i64 0")
            a_rows.append(f.gep("float", "%a", f.mul(row, "%lda")))
        has = f.op("icmp sgt i64 %kc, 0")
        f.emit(f"br i1 {has}, label %loop, label %exit")
        f.start("loop")
        acc = [[f"%acc{i}_{v}" for v in range(nv)] for i in range(rows)]
        nxt = [[f"%nacc{i}_{v}" for v in range(nv)] for i in range(rows)]
        f.lines.append("  %k = phi i64 [0, %entry], [%k1, %loop]")
        for i in range(rows):
            for v in range(nv):
                f.lines.append(f"  {acc[i][v]} = phi {vec} [zeroinitializer, %entry], [{nxt[i][v]}, %loop]")
        boff = f.op(f"mul nsw i64 %k, {nr}")
        bvec = []
        for v in range(nv):
            ptr = f.gep("float", "%b", f.add(boff, str(v * lanes)))
            bvec.append(f.op(f"load {vec}, ptr {ptr}, align 4"))
        kk = "%k" if unit else f.op("mul nsw i64 %k, %cs")
        for i in range(rows):
            x = f.op(f"load float, ptr {f.gep('float', a_rows[i], kk)}, align 4")
            one = f.op(f"insertelement {vec} poison, float {x}, i64 0")
            splat = f.op(f"shufflevector {vec} {one}, {vec} poison, <{lanes} x i32> zeroinitializer")
            for v in range(nv):
                f.lines.append(f"  {nxt[i][v]} = call {vec} @llvm.fmuladd.v{lanes}f32({vec} {splat}, {vec} {bvec[v]}, "
                               f"{vec} {acc[i][v]})")
        f.lines.append("  %k1 = add nsw i64 %k, 1")
        f.lines.append("  %more = icmp slt i64 %k1, %kc")
        f.lines.append(f"  br i1 %more, label %loop, label %exit, {self._loop_metadata()}")
        f.start("exit")
        fin = [[f"%fin{i}_{v}" for v in range(nv)] for i in range(rows)]
        for i in range(rows):
            for v in range(nv):
                f.lines.append(f"  {fin[i][v]} = phi {vec} [zeroinitializer, %entry], [{nxt[i][v]}, %loop]")
        rows_full = f.op(f"icmp eq i64 %mr, {rows}")
        cols_full = f.op(f"icmp eq i64 %nr, {nr}")
        full = f.op(f"and i1 {rows_full}, {cols_full}")
        f.emit(f"br i1 {full}, label %whole, label %part")
        f.start("whole")
        for i in range(rows):
            row = f.mul(str(i), "%ldc")
            for v in range(nv):
                ptr = f.gep("float", "%c", f.add(row, str(v * lanes)))
                old = f.op(f"load {vec}, ptr {ptr}, align 4")
                summed = f.op(f"fadd {vec} {old}, {fin[i][v]}")
                f.emit(f"store {vec} {f.op(f'select i1 %add, {vec} {summed}, {vec} {fin[i][v]}')}, ptr {ptr}, align 4")
        f.emit("ret void")
        f.start("part")              # an edge tile: through a buffer on the stack, element by element
        tmp = f.alloca(f"[{rows * nr} x float]")
        for i in range(rows):
            for v in range(nv):
                f.emit(f"store {vec} {fin[i][v]}, ptr {f.gep('float', tmp, str(i * nr + v * lanes))}, align 4")
        with f.loop("0", "%mr", hint="r") as i:
            with f.loop("0", "%nr", hint="q") as j:
                t = f.op(f"load float, ptr {f.gep('float', tmp, f.add(f.mul(i, str(nr)), j))}")
                ptr = f.gep("float", "%c", f.add(f.mul(i, "%ldc"), j))
                old = f.op(f"load float, ptr {ptr}")
                summed = f.op(f"fadd float {old}, {t}")
                f.emit(f"store float {f.op(f'select i1 %add, float {summed}, float {t}')}, ptr {ptr}")
        f.emit("ret void")
        return f.text()

    @staticmethod
    def _dispatch(name: str, sfx: str, counts: list[int]) -> str:
        args = "i64 %kc, ptr %a, i64 %lda, i64 %cs, ptr %b, ptr %c, i64 %ldc, i1 %add, i64 %mr, i64 %nr"
        lines = [f"define internal void {name}(i64 %kc, ptr noalias %a, i64 %lda, i64 %cs, ptr noalias %b, "
                 f"ptr noalias %c, i64 %ldc, i1 %add, i64 %mr, i64 %nr) nounwind {{", "entry:"]
        for n, rows in enumerate(counts):
            if n == len(counts) - 1:
                lines += [f"  call void @dn_uk_{sfx}_r{rows}({args})", "  ret void"]
                break
            lines += [f"  %fits{rows} = icmp sle i64 %mr, {rows}",
                      f"  br i1 %fits{rows}, label %r{rows}, label %not{rows}",
                      f"r{rows}:", f"  call void @dn_uk_{sfx}_r{rows}({args})", "  ret void", f"not{rows}:"]
        lines.append("}")
        return "\n".join(lines)

    def text(self) -> str:
        return "\n\n".join(sorted(self.declared) + list(self.functions.values()) + list(self.extra.values())
                           + self.metadata)


def render_gemm(r, g: Gemm) -> None:
    """The body of a Gemm kernel (`r`: the LLVMRenderer of the kernel): sizes, blocking, two pool loops."""
    if g.a.dtype in (DType.I8, DType.BF16):      # int8-dynamic or bf16 activations: the low-precision Gemm
        from dnet.backends.llvm.igemm import render_low_precision

        render_low_precision(r, g)
        return
    int8_b = g.b.dtype is DType.I8 and g.b.scale and g.b.packed
    if g.a.dtype is not DType.F32 or g.a.scale or not (g.b.dtype is DType.F32 and not g.b.scale or int8_b):
        raise r.missing(f"gemm on {g.a.dtype} x {g.b.dtype} operands", g.b.dtype)
    f, t, ix = r.fn, g.tile, r.index
    M, N, K = ix(g.m), ix(g.n), ix(g.k)
    NB = "1"
    for b in g.batch:
        NB = f.mul(NB, ix(b))
    panels = f.ceil_div(N, t.nr)
    # an empty batch has no tasks to share: one thread, so the blocking never divides by NB
    nt = f.op(f"select i1 {f.op(f'icmp sgt i64 {NB}, 0')}, i64 {f.op('call i64 @dn_threads()')}, i64 1")
    S = f.ceil_div(M, t.mr)                                           # slivers of mr rows
    blocking = _blocking(f, t, S, NB, panels, nt, K)
    r.env.update({"\0gemm:" + k: (v, "i64") for k, v in dict(M=M, N=N, K=K, NB=NB, panels=panels, S=S,
                                                                  **blocking).items()})
    if not g.b.packed:
        groups = f.ceil_div(panels, 8)
        grain = _pack_grain(f, K, t.nr)
        r.outline(lambda rr, begin, end: _pack_b(rr, g, begin, end), f.mul(NB, groups), grain)
    tasks = r.env["\0gemm:tasks"][0]
    r.outline(lambda rr, begin, end: _tasks(rr, g, begin, end), f.mul(NB, tasks), "1")


def _blocking(f: Function, t: GemmTile, S: str, NB: str, panels: str, nt: str, K: str) -> dict[str, str]:
    """Row blocks, column chunks and k/n blocks, as the C backend chooses them (`render_gemm` there)."""
    mblocks = f.alloca("i64", f.ceil_div(S, t.mc // t.mr))
    chunks = f.alloca("i64", "1")

    def get(slot: str) -> str:
        return f.op(f"load i64, ptr {slot}")

    def put(slot: str, value: str) -> None:
        f.emit(f"store i64 {value}, ptr {slot}")
    many = f.op(f"icmp sgt i64 {nt}, 1")
    nt4, nt8 = f.mul(nt, "4"), f.mul(nt, "8")
    # fewer row blocks than threads: split the columns first, into chunks of 2 panels or more
    # (a thread then streams only its part of b); then rows until 4 tasks a thread

    def split_columns() -> str:
        mb = f.mul(get(mblocks), NB)
        c = get(chunks)
        conds = [many, f.op(f"icmp slt i64 {mb}, {nt}"), f.op(f"icmp slt i64 {f.mul(mb, c)}, {nt4}"),
                 f.op(f"icmp sle i64 {f.add(f.mul(c, '2'), '2')}, {panels}")]
        return _all(f, conds)
    with f.while_(split_columns):
        put(chunks, f.add(get(chunks), "1"))
    few = f.op(f"icmp slt i64 {f.mul(f.mul(get(mblocks), NB), get(chunks))}, {nt4}")
    with f.if_(f.op(f"and i1 {many}, {few}")):
        per = f.mul(NB, get(chunks))
        put(mblocks, f.op(f"sdiv i64 {f.add(nt4, f.sub(per, '1'))}, {per}"))

    def balance_rows() -> str:   # a multiple of the threads, so they balance without splitting columns
        mb = f.mul(get(mblocks), NB)
        rem = f.op(f"srem i64 {mb}, {nt}")
        return _all(f, [many, f.op(f"icmp ne i64 {rem}, 0"), f.op(f"icmp slt i64 {get(mblocks)}, {S}")])
    with f.while_(balance_rows):
        put(mblocks, f.add(get(mblocks), "1"))
    over = f.op(f"icmp sgt i64 {get(mblocks)}, {S}")
    none = f.op(f"icmp slt i64 {get(mblocks)}, 1")              # no rows: one empty block
    with f.if_(f.op(f"or i1 {over}, {none}")):
        pos = f.op(f"icmp sgt i64 {S}, 0")
        put(mblocks, f.op(f"select i1 {pos}, i64 {S}, i64 1"))

    def split_more() -> str:     # split the columns further (each split reads a again) until the threads balance
        total = f.mul(f.mul(get(mblocks), NB), get(chunks))
        below = f.op(f"icmp slt i64 {total}, {nt}")
        uneven = f.op(f"icmp ne i64 {f.op(f'srem i64 {total}, {nt}')}, 0")
        under8 = f.op(f"icmp slt i64 {total}, {nt8}")
        want = f.op(f"or i1 {below}, {f.op(f'and i1 {uneven}, {under8}')}")
        return f.op(f"and i1 {f.op(f'icmp slt i64 {get(chunks)}, {panels}')}, {want}")
    with f.while_(split_more):
        put(chunks, f.add(get(chunks), "1"))
    has_panels = f.op(f"icmp sgt i64 {panels}, 0")
    c = get(chunks)
    spread = f.op(f"sdiv i64 {f.add(panels, f.sub(c, '1'))}, {c}")
    per_chunk = f.op(f"select i1 {has_panels}, i64 {spread}, i64 1")
    chunks_v = f.op(f"sdiv i64 {f.add(panels, f.sub(per_chunk, '1'))}, {per_chunk}")   # no empty chunks
    mblocks_v = get(mblocks)
    tasks = f.mul(mblocks_v, chunks_v)
    near = f.op(f"icmp sle i64 {K}, {t.kc * 3 // 2}")                  # one k block when K is a little over kc
    kcb = f.op(f"select i1 {near}, i64 {K}, i64 {t.kc}")
    wide = f.op(f"icmp sge i64 {f.mul(kcb, str(t.nr))}, {t.nc * t.kc}")
    zero = f.op(f"icmp eq i64 {kcb}, 0")
    one = f.op(f"or i1 {wide}, {zero}")
    safe = f.op(f"select i1 {zero}, i64 1, i64 {kcb}")
    ncp = f.op(f"select i1 {one}, i64 1, i64 {f.op(f'sdiv i64 {t.nc * t.kc}, {f.mul(safe, str(t.nr))}')}")
    return dict(mblocks=mblocks_v, chunks=chunks_v, per_chunk=per_chunk, tasks=tasks, kcb=kcb, ncp=ncp)


def _all(f: Function, conds: list[str]) -> str:
    out = conds[0]
    for c in conds[1:]:
        out = f.op(f"and i1 {out}, {c}")
    return out


def _pack_grain(f: Function, K: str, nr: int) -> str:
    work = f.mul(K, str(8 * nr))
    big = f.op(f"icmp sge i64 {work}, 16384")
    empty = f.op(f"icmp sle i64 {K}, 0")
    one = f.op(f"or i1 {big}, {empty}")
    safe = f.op(f"select i1 {empty}, i64 1, i64 {work}")
    return f.op(f"select i1 {one}, i64 1, i64 {f.op(f'sdiv i64 16384, {safe}')}")


def _sizes(r) -> dict[str, str]:
    return {k[len("\0gemm:"):]: v for k, (v, _) in r.env.items() if k.startswith("\0gemm:")}


def _batch(r, g: Gemm, bb: str) -> tuple[str, str]:
    """Bind the batch variables from the flat batch index; (a's offset, b's offset)."""
    f, ix = r.fn, r.index
    rest = bb
    names = g.vars[:-2]
    for k in reversed(range(len(names))):
        extent = ix(g.batch[k])
        r.env[names[k]] = (f.op(f"srem i64 {rest}, {extent}"), "i64")
        rest = f.op(f"sdiv i64 {rest}, {extent}")
    off_a, off_b = ix(g.a.offset), ix(g.b.offset)
    for n, sa, sb in zip(names, g.a.batch_strides, g.b.batch_strides):
        off_a = f.add(off_a, f.mul(r.env[n][0], ix(sa)))
        off_b = f.add(off_b, f.mul(r.env[n][0], ix(sb)))
    return off_a, off_b


def _pack_b(r, g: Gemm, begin: str, end: str) -> None:
    """Panels of b (k x n, strided, or a convolution's im2col matrix) into the scratch buffer:
    panel p holds k rows of nr floats, columns past n zero."""
    f, ix, nr = r.fn, r.index, g.tile.nr
    z = _sizes(r)
    N, K, panels = z["N"], z["K"], z["panels"]
    groups = f.ceil_div(panels, 8)
    with f.loop(begin, end, hint="g") as flat:
        bb = f.op(f"sdiv i64 {flat}, {groups}")
        p0 = f.mul(f.op(f"srem i64 {flat}, {groups}"), "8")
        p1 = f.imin(f.add(p0, "8"), panels)
        _, off_b = _batch(r, g, bb)
        dst = f.gep("float", r.env[g.scratch][0], f.mul(f.mul(bb, panels), f.mul(str(nr), K)))
        src = f.gep("float", r.env[g.b.buffer][0], off_b)
        last = f.sub(N, "1")
        with f.loop("0", K, hint="k") as kk:
            with f.loop(p0, p1, hint="p") as p:
                j0 = f.mul(p, str(nr))
                out = f.gep("float", dst, f.add(f.mul(p, f.mul(str(nr), K)), f.mul(kk, str(nr))))
                if g.b.im2col is None:     # a whole panel: a plain copy (vectorised where b's columns are contiguous)
                    whole = f.op(f"icmp sle i64 {f.add(j0, str(nr))}, {N}")
                    then, other, done = f.label("whole"), f.label("edge"), f.label("packed")
                    f.emit(f"br i1 {whole}, label %{then}, label %{other}")
                    f.start(then)
                    row = f.gep("float", src, f.add(f.mul(kk, ix(g.b.row_stride)), f.mul(j0, ix(g.b.col_stride))))
                    with f.loop("0", str(nr), hint="j") as jj:
                        v = f.op(f"load float, ptr {f.gep('float', row, f.mul(jj, ix(g.b.col_stride)))}")
                        f.emit(f"store float {v}, ptr {f.gep('float', out, jj)}")
                    f.branch(done)
                    f.start(other)
                with f.loop("0", str(nr), hint="j") as jj:
                    j = f.add(j0, jj)
                    inside = f.op(f"icmp slt i64 {j}, {N}")
                    jc = f.imin(j, last)
                    if g.b.im2col is None:
                        at = f.add(f.mul(kk, ix(g.b.row_stride)), f.mul(jc, ix(g.b.col_stride)))
                    else:
                        at, ok = _im2col_at(r, g, kk, jc)
                        inside = f.op(f"and i1 {inside}, {ok}")
                    v = f.op(f"load float, ptr {f.gep('float', src, at)}")
                    f.emit(f"store float {f.op(f'select i1 {inside}, float {v}, float 0.0')}, "
                           f"ptr {f.gep('float', out, jj)}")
                if g.b.im2col is None:
                    f.branch(done)
                    f.start(done)


def _im2col_at(r, g: Gemm, kk: str, j: str) -> tuple[str, str]:
    """(offset into x, inside the image) of im2col element (kk, j), clamped to a valid address."""
    f, ix, c = r.fn, r.index, g.b.im2col
    kh, kw = c.kernel
    ch = f.op(f"sdiv i64 {kk}, {kh * kw}")
    y = f.op(f"srem i64 {f.op(f'sdiv i64 {kk}, {kw}')}, {kh}")
    zc = f.op(f"srem i64 {kk}, {kw}")
    ow = ix(c.out_width)
    row, col = f.op(f"sdiv i64 {j}, {ow}"), f.op(f"srem i64 {j}, {ow}")
    hh = f.sub(f.add(f.mul(row, str(c.stride[0])), f.mul(y, str(c.dilation[0]))), str(c.pad[0]))
    ww = f.sub(f.add(f.mul(col, str(c.stride[1])), f.mul(zc, str(c.dilation[1]))), str(c.pad[1]))
    h, w = ix(c.height), ix(c.width)
    ok = _all(f, [f.op(f"icmp sge i64 {hh}, 0"), f.op(f"icmp slt i64 {hh}, {h}"),
                  f.op(f"icmp sge i64 {ww}, 0"), f.op(f"icmp slt i64 {ww}, {w}")])
    hc = f.imax(f.imin(hh, f.sub(h, "1")), "0")
    wc = f.imax(f.imin(ww, f.sub(w, "1")), "0")
    sc, sh, sw = (ix(s) for s in c.strides)
    return f.add(f.add(f.mul(ch, sc), f.mul(hc, sh)), f.mul(wc, sw)), ok


def _tasks(r, g: Gemm, begin: str, end: str) -> None:
    """Tasks [begin, end) of (batch item, row block, column chunk): the blocked loops around the micro-kernel."""
    f, ix, t = r.fn, r.index, g.tile
    z = _sizes(r)
    M, N, K, S, panels = z["M"], z["N"], z["K"], z["S"], z["panels"]
    unit = g.a.col_stride == 1
    ukernel = r.gemm_support.ukernel(t, unit)
    rs, cs = ix(g.a.row_stride), ix(g.a.col_stride)
    out = r.env[g.out][0]
    with f.loop(begin, end, hint="g") as flat:
        bb = f.op(f"sdiv i64 {flat}, {z['tasks']}")
        task = f.op(f"srem i64 {flat}, {z['tasks']}")
        off_a, off_b = _batch(r, g, bb)
        blk = f.op(f"sdiv i64 {task}, {z['chunks']}")
        i0 = f.mul(f.op(f"sdiv i64 {f.mul(blk, S)}, {z['mblocks']}"), str(t.mr))
        i1 = f.mul(f.op(f"sdiv i64 {f.mul(f.add(blk, '1'), S)}, {z['mblocks']}"), str(t.mr))
        mcur = f.sub(f.imin(i1, M), i0)
        p0 = f.mul(f.op(f"srem i64 {task}, {z['chunks']}"), z["per_chunk"])
        p1 = f.imin(f.add(p0, z["per_chunk"]), panels)
        if g.b.packed:
            bpan = r.env[g.b.buffer][0]
        else:
            bpan = f.gep("float", r.env[g.scratch][0], f.mul(f.mul(bb, panels), f.mul(str(t.nr), K)))
        cblock = f.gep("float", out, f.mul(bb, f.mul(M, N)))
        abase = f.gep("float", r.env[g.a.buffer][0], off_a)
        kcb = z["kcb"]
        wide = None
        if g.b.scale:       # int8 weights: a block of panels widened to f32 for every sliver of a
            floats = max(t.nc * t.kc, t.nr * (t.kc * 3 // 2))
            wide = f.op(f"call ptr @malloc(i64 {floats * 4})")
        kstep = f.op(f"select i1 {f.op(f'icmp sgt i64 {kcb}, 0')}, i64 {kcb}, i64 1")
        kend = f.imax(K, "1")                                    # once, with kc = 0, when K = 0
        with f.loop("0", kend, kstep, hint="pc") as pc:
            kc = f.imin(f.sub(K, pc), kcb)
            add = f.op(f"icmp sgt i64 {pc}, 0")
            last = f.op(f"icmp sge i64 {f.add(pc, kc)}, {K}")
            with f.loop(p0, p1, z["ncp"], hint="jc") as jc:
                jc1 = f.imin(f.add(jc, z["ncp"]), p1)
                if wide is not None:
                    _widen(r, g, wide, bpan, jc, jc1, pc, kc, K)
                # an mr x kc sliver of a stays in L1 while the b panels of one L2 block stream past it
                with f.loop("0", mcur, str(t.mr), hint="ir") as ir:
                    mr = f.imin(f.sub(mcur, ir), str(t.mr))
                    row0 = f.add(i0, ir)
                    a = f.gep("float", abase, f.add(f.mul(row0, rs), f.mul(pc, cs)))
                    with f.loop(jc, jc1, hint="p") as p:
                        j0 = f.mul(p, str(t.nr))
                        nr = f.imin(f.sub(N, j0), str(t.nr))
                        c = f.gep("float", cblock, f.add(f.mul(row0, N), j0))
                        if wide is None:
                            b = f.gep("float", bpan, f.add(f.mul(p, f.mul(str(t.nr), K)), f.mul(pc, str(t.nr))))
                        else:
                            b = f.gep("float", wide, f.mul(f.sub(p, jc), f.mul(str(t.nr), kc)))
                        f.emit(f"call void {ukernel}(i64 {kc}, ptr {a}, i64 {rs}, i64 {cs}, ptr {b}, ptr {c}, "
                               f"i64 {N}, i1 {add}, i64 {mr}, i64 {nr})")
                        if not _identity(g):
                            with f.if_(last):
                                _epilogue(r, g, c, row0, j0, mr, nr, N)
        if wide is not None:
            f.emit(f"call void @free(ptr {wide})")


def _widen(r, g: Gemm, wide: str, q: str, jc: str, jc1: str, pc: str, kc: str, K: str) -> None:
    """Panels [jc, jc1) of int8 b, rows [pc, pc + kc), as f32 times each column's scale, into `wide`
    (panel after panel, kc rows of nr each)."""
    f, nr = r.fn, g.tile.nr
    scale = r.env[g.b.scale][0]
    with f.loop(jc, jc1, hint="wp") as p:
        src = f.gep("i8", q, f.add(f.mul(p, f.mul(str(nr), K)), f.mul(pc, str(nr))))
        dst = f.gep("float", wide, f.mul(f.sub(p, jc), f.mul(str(nr), kc)))
        scales = f.gep("float", scale, f.mul(p, str(nr)))
        with f.loop("0", kc, hint="wk") as kk:
            with f.loop("0", str(nr), hint="wj") as jj:
                at = f.add(f.mul(kk, str(nr)), jj)
                byte = f.op(f"load i8, ptr {f.gep('i8', src, at)}")
                v = f.op(f"sitofp i8 {byte} to float")
                sv = f.op(f"load float, ptr {f.gep('float', scales, jj)}")
                f.emit(f"store float {f.op(f'fmul float {v}, {sv}')}, ptr {f.gep('float', dst, at)}")


def _identity(g: Gemm) -> bool:
    return isinstance(g.epilogue, Ref) and g.epilogue.name == "acc" and not g.epilogue_lets


def _epilogue(r, g: Gemm, c: str, row0: str, j0: str, mr: str, nr: str, N: str) -> None:
    """The epilogue over the tile just written (mr x nr at `c`, rows N apart)."""
    f = r.fn
    i_name, j_name = g.vars[-2], g.vars[-1]
    with f.loop("0", mr, hint="ei") as ii:
        r.env[i_name] = (f.add(row0, ii), "i64")
        rowp = f.gep("float", c, f.mul(ii, N))
        with f.loop("0", nr, hint="ej") as jj:
            r.env[j_name] = (f.add(j0, jj), "i64")
            ptr = f.gep("float", rowp, jj)
            r.env["acc"] = (f.op(f"load float, ptr {ptr}"), "float")
            r.stmts(g.epilogue_lets)
            value = r.narrow(r.expr(g.epilogue), g.epilogue.dtype, DType.F32)
            f.emit(f"store float {value}, ptr {ptr}")


__all__ = ["GemmSupport", "render_gemm"]
