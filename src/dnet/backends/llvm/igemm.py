"""The LLVM form of a low-precision `Gemm`: int8 activations x int8 weights, or bf16 x bf16, f32 results.

The same two Gemms as the C backend's `backends/c/igemm.py`, on the same packed weights
(`program/panels.py`: panels of nr columns, 4 (int8) or 2 (bf16) values of k per column side by side;
an int8 panel holds b + 128 and is followed by its column sums):

- int8: out[i, j] = (sum_k a[i, k] b[k, j] + z_i * colsum_j) * (s_i * scale_j), the sum exact in int32,
  then f32 rounding as the C backend's (row i's step s and zero offset z at rows[2i], rows[2i + 1]);
- bf16: out[i, j] = sum_k f32(a[i, k]) f32(b[k, j]) in f32.

The portable path: one task per (block of rows, panel), each row's nr sums kept in a small array while k
runs, the loop over the panel's columns left to LLVM's vectoriser; no dot-product instructions (VNNI,
AVX512-BF16) yet. Then each result gets the Gemm's epilogue.
"""
from __future__ import annotations

from dnet.core.dtypes import DType
from dnet.kernel.ir import Gemm

SLIVERS = 8         # rows of a task: 8 slivers of mr (the C backend's block)
ROWS = 4            # rows of a at once on the dot-product instruction paths (2 accumulators each)


def render_low_precision(r, g: Gemm) -> None:
    f, t, ix = r.fn, g.tile, r.index
    M, N = ix(g.m), ix(g.n)
    panels = f.ceil_div(N, t.nr)
    rows = SLIVERS * t.mr
    blocks = f.ceil_div(M, rows)
    r.env["\0igemm:panels"] = (panels, "i64")
    r.outline(lambda rr, begin, end: _tasks(rr, g, begin, end), f.mul(blocks, panels), "1")


def _tasks(r, g: Gemm, begin: str, end: str) -> None:
    f, t, ix = r.fn, g.tile, r.index
    int8 = g.a.dtype is DType.I8
    group = 4 if int8 else 2
    M, N, K = ix(g.m), ix(g.n), ix(g.k)
    panels = r.env["\0igemm:panels"][0]
    groups = f.ceil_div(K, group)
    pstride = f.add(f.mul(groups, str(t.nr * group)), str(4 * t.nr if int8 else 0))   # bytes (int8) or elements
    acc_ty = "i32" if int8 else "float"
    acc = f.alloca(f"[{ROWS * t.nr} x {acc_ty}]")
    a_ty, lda = ("i8" if int8 else "i16"), ix(g.a.row_stride)
    a_base = f.gep(a_ty, r.env[g.a.buffer][0], ix(g.a.offset))
    rows = SLIVERS * t.mr
    with f.loop(begin, end, hint="t") as task:
        blk = f.op(f"sdiv i64 {task}, {panels}")
        p = f.op(f"srem i64 {task}, {panels}")
        i0 = f.mul(blk, str(rows))
        i1 = f.imin(f.add(i0, str(rows)), M)
        j0 = f.mul(p, str(t.nr))
        nr = f.imin(f.sub(N, j0), str(t.nr))
        panel = f.gep(a_ty, r.env[g.b.buffer][0], f.mul(p, pstride))
        fast = _fast_path(int8, t.nr)
        step = ROWS if fast else 1
        with f.loop(i0, i1, str(step), hint="i") as i:
            a_row = f.gep(a_ty, a_base, f.mul(i, lda))
            if fast:
                count = f.imin(f.sub(i1, i), str(ROWS))
                f.emit(f"call void {_rows_function(r, int8)}(ptr {a_row}, i64 {lda}, i64 {count}, ptr {panel}, "
                       f"i64 {K}, ptr {acc})")
            else:
                count = "1"
                sums_of_row = f.op(f"call <{t.nr} x {acc_ty}> {_row_function(r, t.nr, int8)}(ptr {a_row}, "
                                   f"ptr {panel}, i64 {K})")
                f.emit(f"store <{t.nr} x {acc_ty}> {sums_of_row}, ptr {acc}")
            with f.loop("0", count, hint="ii") as ii:
                row = f.add(i, ii)
                sums_of = f.gep(acc_ty, acc, f.mul(ii, str(t.nr)))
                _finish_row(r, g, row, sums_of, panel, groups, group, j0, nr, N, int8)


def _finish_row(r, g: Gemm, i: str, sums_of: str, panel: str, groups: str, group: int, j0: str, nr: str, N: str,
                int8: bool) -> None:
    """Row i's results from its integer (or f32) sums at `sums_of`: the int8 scales, then the epilogue."""
    f, t = r.fn, g.tile
    acc_ty = "i32" if int8 else "float"
    if int8:
        params = f.gep("float", r.env[g.a.scale][0], f.mul(i, "2"))
        s = f.op(f"load float, ptr {params}")
        z = f.op(f"load float, ptr {f.gep('float', params, '1')}")
        sums = f.gep("i8", panel, f.mul(groups, str(t.nr * group)))
    with f.loop("0", nr, hint="e") as jj:
        total = f.op(f"load {acc_ty}, ptr {f.gep(acc_ty, sums_of, jj)}")
        j = f.add(j0, jj)
        if int8:
            colsum_at = f.gep("i32", sums, jj)
            colsum = f.op(f"sitofp i32 {f.op(f'load i32, ptr {colsum_at}, align 1')} to float")
            exact = f.op(f"sitofp i32 {total} to float")
            shifted = f.op(f"fadd float {exact}, {f.op(f'fmul float {z}, {colsum}')}")
            sb = f.op(f"load float, ptr {f.gep('float', r.env[g.b.scale][0], j)}")
            total = f.op(f"fmul float {shifted}, {f.op(f'fmul float {s}, {sb}')}")
        _store(r, g, i, j, total, N)


def _row_function(r, nr: int, int8: bool) -> str:
    """The function summing one row of a against a panel: nr sums in one vector register file, per group
    of k one load of the panel's nr x group values, split by shuffles, and multiply-adds on all nr."""
    name = f"@dn_lprow_{'i8' if int8 else 'bf16'}_{nr}"
    support = r.gemm_support
    if name in support.extra:
        return name
    group, elem, acc = (4, "i8", "i32") if int8 else (2, "i16", "float")
    vec, wide = f"<{nr} x {acc}>", f"<{nr * group} x {elem}>"
    lines = [f"define internal {vec} {name}(ptr noalias %a, ptr noalias %b, i64 %K) nounwind {{", "entry:",
             f"  %g0 = add i64 %K, {group - 1}", f"  %groups = sdiv i64 %g0, {group}", "  %last = add i64 %K, -1",
             "  %any = icmp sgt i64 %groups, 0", "  br i1 %any, label %loop, label %exit", "loop:",
             "  %g = phi i64 [0, %entry], [%g1, %loop]",
             f"  %acc = phi {vec} [zeroinitializer, %entry], [%acc{group}, %loop]",
             f"  %bo = mul nsw i64 %g, {nr * group}",
             f"  %bp = getelementptr inbounds {elem}, ptr %b, i64 %bo",
             f"  %bv = load {wide}, ptr %bp, align 1"]
    for t in range(group):
        mask = ", ".join(f"i32 {t + group * c}" for c in range(nr))
        lines += [f"  %k{t}0 = mul nsw i64 %g, {group}", f"  %k{t}1 = add nsw i64 %k{t}0, {t}",
                  # past K: any value of a (the panel's padding is zero), so read a's last one
                  f"  %k{t}c = icmp slt i64 %k{t}1, %K", f"  %k{t} = select i1 %k{t}c, i64 %k{t}1, i64 %last",
                  f"  %ap{t} = getelementptr inbounds {elem}, ptr %a, i64 %k{t}",
                  f"  %ax{t} = load {elem}, ptr %ap{t}",
                  f"  %bt{t} = shufflevector {wide} %bv, {wide} poison, <{nr} x i32> <{mask}>"]
        if int8:
            lines += [f"  %x{t} = sext i8 %ax{t} to i32",
                      f"  %bf{t} = xor <{nr} x i8> %bt{t}, splat (i8 -128)",      # stored as b + 128
                      f"  %bw{t} = sext <{nr} x i8> %bf{t} to {vec}"]
        else:
            lines += [f"  %xz{t} = zext i16 %ax{t} to i32", f"  %xs{t} = shl i32 %xz{t}, 16",
                      f"  %x{t} = bitcast i32 %xs{t} to float",
                      f"  %bz{t} = zext <{nr} x i16> %bt{t} to <{nr} x i32>",
                      f"  %bs{t} = shl <{nr} x i32> %bz{t}, splat (i32 16)",
                      f"  %bw{t} = bitcast <{nr} x i32> %bs{t} to {vec}"]
        lines += [f"  %x1{t} = insertelement {vec} poison, {acc} %x{t}, i64 0",
                  f"  %xv{t} = shufflevector {vec} %x1{t}, {vec} poison, <{nr} x i32> zeroinitializer"]
        before = "%acc" if t == 0 else f"%acc{t}"
        if int8:   # the product in 16 bits (|a b| <= 2^14, exact; a cheap multiply), widened to add
            lines += [f"  %xh{t} = trunc {vec} %xv{t} to <{nr} x i16>", f"  %bh{t} = trunc {vec} %bw{t} to <{nr} x i16>",
                      f"  %ph{t} = mul <{nr} x i16> %xh{t}, %bh{t}", f"  %p{t} = sext <{nr} x i16> %ph{t} to {vec}",
                      f"  %acc{t + 1} = add {vec} {before}, %p{t}"]
        else:   # a product of two bf16 values is exact in f32: fused or not, the same sum
            lines += [f"  %p{t} = fmul {vec} %xv{t}, %bw{t}", f"  %acc{t + 1} = fadd {vec} {before}, %p{t}"]
    lines += ["  %g1 = add nsw i64 %g, 1", "  %more = icmp slt i64 %g1, %groups",
              "  br i1 %more, label %loop, label %exit", "exit:",
              f"  %r = phi {vec} [zeroinitializer, %entry], [%acc{group}, %loop]", f"  ret {vec} %r", "}"]
    support.extra[name] = "\n".join(lines)
    return name


def _has_bf16_dot() -> bool:
    """AVX512-BF16 on this host: `vdpbf16ps` adds two products of bf16 pairs to each f32 lane."""
    from dnet.backends.llvm.jit import jit

    return {"+avx512bf16", "+avx512f"} <= set(jit().features.split(","))


def _has_vnni() -> bool:
    """AVX512-VNNI (and BW) on this host: `vpdpbusd` multiplies 4 unsigned by 4 signed bytes into an int32."""
    from dnet.backends.llvm.jit import jit

    return {"+avx512vnni", "+avx512bw", "+avx512f"} <= set(jit().features.split(","))


def _fast_path(int8: bool, nr: int) -> bool:
    return nr == 32 and (_has_vnni() if int8 else _has_bf16_dot())


def _rows_function(r, int8: bool) -> str:
    """The sums of ROWS rows of a against a 32-column panel with the CPU's dot-product instruction, into
    `out` (ROWS x 32): int8 `vpdpbusd` (the panel's b + 128 is its unsigned operand, a's 4 bytes
    broadcast; 128 * sum_k a taken back out per row), bf16 `vdpbf16ps` (a's 2 values broadcast; the
    products exact in f32, as the C backend's path). Per group of k, one load of the panel's 32 x group
    values meets every row: ROWS x 2 independent accumulators hide the instruction's latency. Rows past
    `rows` read row 0; a last partial group goes through a zero-padded word of a (the panel's padding
    is zero too)."""
    name = f"@dn_lprows_{'i8_vnni' if int8 else 'bf16_dot'}_32"
    support = r.gemm_support
    if name in support.extra:
        return name
    group, elem, acc, half = (4, "i8", "i32", 64) if int8 else (2, "bfloat", "float", 32)
    intrinsic = "@llvm.x86.avx512.vpdpbusd.512" if int8 else "@llvm.x86.avx512bf16.dpbf16ps.512"
    vec, ops = f"<16 x {acc}>", f"<{half} x {elem}>"
    support.declared.add(f"declare {vec} {intrinsic}({vec}, {ops}, {ops})")
    unit = "i8" if int8 else "i16"
    lo = ", ".join(f"i32 {i}" for i in range(half))
    hi = ", ".join(f"i32 {i}" for i in range(half, 2 * half))
    R = ROWS

    def step(label: str, words: list[str], accs: list[str], outs: list[str]) -> list[str]:
        out = [f"  %bo{label} = mul nsw i64 %go{label}, {32 * group}",
               f"  %bp{label} = getelementptr inbounds {unit}, ptr %b, i64 %bo{label}",
               f"  %bv{label} = load <{2 * half} x {elem}>, ptr %bp{label}, align 1",
               f"  %blo{label} = shufflevector <{2 * half} x {elem}> %bv{label}, <{2 * half} x {elem}> poison, "
               f"<{half} x i32> <{lo}>",
               f"  %bhi{label} = shufflevector <{2 * half} x {elem}> %bv{label}, <{2 * half} x {elem}> poison, "
               f"<{half} x i32> <{hi}>"]
        for i in range(R):
            w = f"%w{label}{i}"
            out += [f"  {w}1 = insertelement <16 x i32> poison, i32 {words[i]}, i64 0",
                    f"  {w}v = shufflevector <16 x i32> {w}1, <16 x i32> poison, <16 x i32> zeroinitializer",
                    f"  {w}b = bitcast <16 x i32> {w}v to {ops}"]
            first, second = (f"%blo{label}", f"{w}b") if int8 else (f"{w}b", f"%blo{label}")
            out.append(f"  {outs[2 * i]} = call {vec} {intrinsic}({vec} {accs[2 * i]}, {ops} {first}, {ops} {second})")
            first, second = (f"%bhi{label}", f"{w}b") if int8 else (f"{w}b", f"%bhi{label}")
            out.append(f"  {outs[2 * i + 1]} = call {vec} {intrinsic}({vec} {accs[2 * i + 1]}, {ops} {first}, "
                       f"{ops} {second})")
        return out
    lines = [f"define internal void {name}(ptr noalias %a, i64 %lda, i64 %rows, ptr noalias %b, i64 %K, "
             "ptr noalias %out) nounwind {", "entry:",
             f"  %full = sdiv i64 %K, {group}", f"  %rem = srem i64 %K, {group}", "  %last = add i64 %rem, -1"]
    for i in range(R):                         # row i's base, row 0 past `rows`
        lines += [f"  %in{i} = icmp slt i64 {i}, %rows", f"  %ri{i} = select i1 %in{i}, i64 {i}, i64 0",
                  f"  %ro{i} = mul nsw i64 %ri{i}, %lda", f"  %a{i} = getelementptr inbounds {unit}, ptr %a, i64 %ro{i}"]
    accs = [f"%acc{n}" for n in range(2 * R)]
    nexts = [f"%nx{n}" for n in range(2 * R)]
    lines += ["  %any = icmp sgt i64 %full, 0", "  br i1 %any, label %loop, label %sums", "loop:",
              "  %g = phi i64 [0, %entry], [%g1, %loop]"]
    lines += [f"  {accs[n]} = phi {vec} [zeroinitializer, %entry], [{nexts[n]}, %loop]" for n in range(2 * R)]
    lines += ["  %goL = add i64 %g, 0", f"  %ao = mul nsw i64 %g, {group}"]
    words = []
    for i in range(R):
        lines += [f"  %ap{i} = getelementptr inbounds {unit}, ptr %a{i}, i64 %ao", f"  %word{i} = load i32, ptr %ap{i}, align 1"]
        words.append(f"%word{i}")
    lines += step("L", words, accs, nexts)
    lines += ["  %g1 = add nsw i64 %g, 1", "  %more = icmp slt i64 %g1, %full", "  br i1 %more, label %loop, label %sums",
              "sums:"]
    sums = [f"%s{n}" for n in range(2 * R)]
    lines += [f"  {sums[n]} = phi {vec} [zeroinitializer, %entry], [{nexts[n]}, %loop]" for n in range(2 * R)]
    lines += ["  %tail = icmp sgt i64 %rem, 0", "  br i1 %tail, label %lastg, label %store", "lastg:",
              "  %goT = add i64 %full, 0", f"  %t0 = mul nsw i64 %full, {group}"]
    tails = []
    for i in range(R):
        word = "0"
        for t in range(group - 1):             # a's last values, the rest of the word zero
            lines += [f"  %lt{i}_{t} = icmp slt i64 {t}, %rem", f"  %ct{i}_{t} = select i1 %lt{i}_{t}, i64 {t}, i64 %last",
                      f"  %it{i}_{t} = add nsw i64 %t0, %ct{i}_{t}",
                      f"  %pt{i}_{t} = getelementptr inbounds {unit}, ptr %a{i}, i64 %it{i}_{t}",
                      f"  %bt{i}_{t} = load {unit}, ptr %pt{i}_{t}", f"  %zt{i}_{t} = zext {unit} %bt{i}_{t} to i32",
                      f"  %st{i}_{t} = shl i32 %zt{i}_{t}, {(8 if int8 else 16) * t}",
                      f"  %vt{i}_{t} = select i1 %lt{i}_{t}, i32 %st{i}_{t}, i32 0",
                      f"  %wt{i}_{t} = or i32 {word}, %vt{i}_{t}"]
            word = f"%wt{i}_{t}"
        tails.append(word)
    lasts = [f"%m{n}" for n in range(2 * R)]
    lines += step("T", tails, sums, lasts)
    lines += ["  br label %store", "store:"]
    finals = [f"%u{n}" for n in range(2 * R)]
    lines += [f"  {finals[n]} = phi {vec} [{sums[n]}, %sums], [{lasts[n]}, %lastg]" for n in range(2 * R)]
    for i in range(R):
        res = [finals[2 * i], finals[2 * i + 1]]
        if int8:                               # 128 * sum_k a[i, k] back out
            lines += [f"  %sa{i} = call i32 @dn_i8_sum(ptr %a{i}, i64 %K)", f"  %off{i} = mul i32 %sa{i}, 128",
                      f"  %of1{i} = insertelement <16 x i32> poison, i32 %off{i}, i64 0",
                      f"  %ofv{i} = shufflevector <16 x i32> %of1{i}, <16 x i32> poison, <16 x i32> zeroinitializer",
                      f"  %r0{i} = sub <16 x i32> {res[0]}, %ofv{i}", f"  %r1{i} = sub <16 x i32> {res[1]}, %ofv{i}"]
            res = [f"%r0{i}", f"%r1{i}"]
        for h in range(2):
            lines += [f"  %op{i}_{h} = getelementptr inbounds {acc}, ptr %out, i64 {32 * i + 16 * h}",
                      f"  store {vec} {res[h]}, ptr %op{i}_{h}, align 4"]
    lines += ["  ret void", "}"]
    if int8 and "@dn_i8_sum" not in support.extra:
        support.extra["@dn_i8_sum"] = "\n".join([
            "define internal i32 @dn_i8_sum(ptr noalias %a, i64 %K) nounwind {", "entry:",
            "  %any = icmp sgt i64 %K, 0", "  br i1 %any, label %loop, label %done", "loop:",
            "  %k = phi i64 [0, %entry], [%k1, %loop]", "  %s = phi i32 [0, %entry], [%s1, %loop]",
            "  %p = getelementptr inbounds i8, ptr %a, i64 %k", "  %x = load i8, ptr %p", "  %xw = sext i8 %x to i32",
            "  %s1 = add i32 %s, %xw", "  %k1 = add nsw i64 %k, 1", "  %more = icmp slt i64 %k1, %K",
            "  br i1 %more, label %loop, label %done", "done:", "  %r = phi i32 [0, %entry], [%s1, %loop]",
            "  ret i32 %r", "}"])
    support.extra[name] = "\n".join(lines)
    return name


def _bf16(f, raw: str) -> str:
    wide = f.op(f"shl i32 {f.op(f'zext i16 {raw} to i32')}, 16")
    return f.op(f"bitcast i32 {wide} to float")


def _store(r, g: Gemm, i: str, j: str, acc: str, N: str) -> None:
    """out[i, j] = the epilogue of acc (the Gemm's row and column variables bound to i and j)."""
    f = r.fn
    r.env[g.vars[-2]], r.env[g.vars[-1]] = (i, "i64"), (j, "i64")
    r.env["acc"] = (acc, "float")
    r.stmts(g.epilogue_lets)
    value = r.narrow(r.expr(g.epilogue), g.epilogue.dtype, DType.F32)
    f.emit(f"store float {value}, ptr {f.gep('float', r.env[g.out][0], f.add(f.mul(i, N), j))}")
