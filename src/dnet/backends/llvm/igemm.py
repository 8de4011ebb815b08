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
    acc = f.alloca(f"[{t.nr} x {acc_ty}]")
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
        with f.loop(i0, i1, hint="i") as i:
            a_row = f.gep(a_ty, a_base, f.mul(i, lda))
            sums_of_row = f.op(f"call <{t.nr} x {acc_ty}> {_row_function(r, t.nr, int8)}(ptr {a_row}, ptr {panel}, "
                               f"i64 {K})")
            f.emit(f"store <{t.nr} x {acc_ty}> {sums_of_row}, ptr {acc}")
            if int8:
                params = f.gep("float", r.env[g.a.scale][0], f.mul(i, "2"))
                s = f.op(f"load float, ptr {params}")
                z = f.op(f"load float, ptr {f.gep('float', params, '1')}")
                sums = f.gep("i8", panel, f.mul(groups, str(t.nr * group)))
            with f.loop("0", nr, hint="e") as jj:
                total = f.op(f"load {acc_ty}, ptr {f.gep(acc_ty, acc, jj)}")
                j = f.add(j0, jj)
                if int8:
                    colsum_at = f.gep("i32", sums, jj)
                    colsum = f.op(f"sitofp i32 {f.op(f'load i32, ptr {colsum_at}, align 1')} to float")
                    shifted = f.op(f"fadd float {f.op(f'sitofp i32 {total} to float')}, {f.op(f'fmul float {z}, {colsum}')}")
                    sb = f.op(f"load float, ptr {f.gep('float', r.env[g.b.scale][0], j)}")
                    total = f.op(f"fmul float {shifted}, {f.op(f'fmul float {s}, {sb}')}")
                _store(r, g, i, j, total, N)


def _row_function(r, nr: int, int8: bool) -> str:
    """The function summing one row of a against a panel: nr sums in one vector register file, per group
    of k one load of the panel's nr x group values, split by shuffles, and multiply-adds on all nr."""
    if int8 and nr == 32 and _has_vnni():
        return _vnni_row_function(r)
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


def _has_vnni() -> bool:
    """AVX512-VNNI (and BW) on this host: `vpdpbusd` multiplies 4 unsigned by 4 signed bytes into an int32."""
    from dnet.backends.llvm.jit import jit

    features = set(jit().features.split(","))
    return {"+avx512vnni", "+avx512bw", "+avx512f"} <= features


def _vnni_row_function(r) -> str:
    """The int8 row sums of a 32-column panel with `vpdpbusd`: per group of 4 values of k, a's 4 bytes
    broadcast against the panel's 128 bytes (stored b + 128, the instruction's unsigned operand) into two
    vectors of 16 int32 sums; then 128 * sum_k a taken back out. A last partial group reads a's bytes
    into a zero-padded word (the panel's padding is zero too)."""
    name = "@dn_lprow_i8_vnni_32"
    support = r.gemm_support
    if name in support.extra:
        return name
    support.declared.add("declare <16 x i32> @llvm.x86.avx512.vpdpbusd.512(<16 x i32>, <64 x i8>, <64 x i8>)")
    lo = ", ".join(f"i32 {i}" for i in range(64))
    hi = ", ".join(f"i32 {i}" for i in range(64, 128))
    cat = ", ".join(f"i32 {i}" for i in range(32))

    def group(label: str, word: str) -> list[str]:   # acc{0,1} of `label` from the group at %go, a's word
        return [f"  %bo{label} = mul nsw i64 %go{label}, 128",
                f"  %bp{label} = getelementptr inbounds i8, ptr %b, i64 %bo{label}",
                f"  %bv{label} = load <128 x i8>, ptr %bp{label}, align 1",
                f"  %blo{label} = shufflevector <128 x i8> %bv{label}, <128 x i8> poison, <64 x i32> <{lo}>",
                f"  %bhi{label} = shufflevector <128 x i8> %bv{label}, <128 x i8> poison, <64 x i32> <{hi}>",
                f"  %w1{label} = insertelement <16 x i32> poison, i32 {word}, i64 0",
                f"  %wv{label} = shufflevector <16 x i32> %w1{label}, <16 x i32> poison, <16 x i32> zeroinitializer",
                f"  %wb{label} = bitcast <16 x i32> %wv{label} to <64 x i8>"]
    lines = [f"define internal <32 x i32> {name}(ptr noalias %a, ptr noalias %b, i64 %K) nounwind {{", "entry:",
             "  %full = sdiv i64 %K, 4", "  %rem = srem i64 %K, 4",
             "  %any = icmp sgt i64 %full, 0", "  br i1 %any, label %loop, label %sums", "loop:",
             "  %g = phi i64 [0, %entry], [%g1, %loop]",
             "  %acc0 = phi <16 x i32> [zeroinitializer, %entry], [%n0, %loop]",
             "  %acc1 = phi <16 x i32> [zeroinitializer, %entry], [%n1, %loop]",
             "  %goL = add i64 %g, 0", "  %ao = mul nsw i64 %g, 4",
             "  %ap = getelementptr inbounds i8, ptr %a, i64 %ao", "  %word = load i32, ptr %ap, align 1",
             *group("L", "%word"),
             "  %n0 = call <16 x i32> @llvm.x86.avx512.vpdpbusd.512(<16 x i32> %acc0, <64 x i8> %bloL, <64 x i8> %wbL)",
             "  %n1 = call <16 x i32> @llvm.x86.avx512.vpdpbusd.512(<16 x i32> %acc1, <64 x i8> %bhiL, <64 x i8> %wbL)",
             "  %g1 = add nsw i64 %g, 1", "  %more = icmp slt i64 %g1, %full",
             "  br i1 %more, label %loop, label %sums", "sums:",
             "  %s0 = phi <16 x i32> [zeroinitializer, %entry], [%n0, %loop]",
             "  %s1 = phi <16 x i32> [zeroinitializer, %entry], [%n1, %loop]",
             "  %tail = icmp sgt i64 %rem, 0", "  br i1 %tail, label %last, label %rowsum", "last:",
             "  %goT = add i64 %full, 0", "  %t0 = mul nsw i64 %full, 4", "  %rm1 = add i64 %rem, -1"]
    word = "0"
    for t in range(3):                       # a's last 1-3 bytes, the rest of the word zero
        lines += [f"  %lt{t} = icmp slt i64 {t}, %rem", f"  %ct{t} = select i1 %lt{t}, i64 {t}, i64 %rm1",
                  f"  %it{t} = add nsw i64 %t0, %ct{t}", f"  %pt{t} = getelementptr inbounds i8, ptr %a, i64 %it{t}",
                  f"  %bt{t} = load i8, ptr %pt{t}", f"  %zt{t} = zext i8 %bt{t} to i32",
                  f"  %st{t} = shl i32 %zt{t}, {8 * t}", f"  %vt{t} = select i1 %lt{t}, i32 %st{t}, i32 0",
                  f"  %wt{t} = or i32 {word}, %vt{t}"]
        word = f"%wt{t}"
    lines += [*group("T", word),
              "  %m0 = call <16 x i32> @llvm.x86.avx512.vpdpbusd.512(<16 x i32> %s0, <64 x i8> %bloT, <64 x i8> %wbT)",
              "  %m1 = call <16 x i32> @llvm.x86.avx512.vpdpbusd.512(<16 x i32> %s1, <64 x i8> %bhiT, <64 x i8> %wbT)",
              "  br label %rowsum", "rowsum:",
              "  %u0 = phi <16 x i32> [%s0, %sums], [%m0, %last]",
              "  %u1 = phi <16 x i32> [%s1, %sums], [%m1, %last]",
              "  %kk = icmp sgt i64 %K, 0", "  br i1 %kk, label %sumloop, label %done", "sumloop:",
              "  %k = phi i64 [0, %rowsum], [%k1, %sumloop]", "  %sum = phi i32 [0, %rowsum], [%sum1, %sumloop]",
              "  %akp = getelementptr inbounds i8, ptr %a, i64 %k", "  %ak = load i8, ptr %akp",
              "  %akw = sext i8 %ak to i32", "  %sum1 = add i32 %sum, %akw", "  %k1 = add nsw i64 %k, 1",
              "  %kmore = icmp slt i64 %k1, %K", "  br i1 %kmore, label %sumloop, label %done", "done:",
              "  %total = phi i32 [0, %rowsum], [%sum1, %sumloop]",
              f"  %both = shufflevector <16 x i32> %u0, <16 x i32> %u1, <32 x i32> <{cat}>",
              "  %off = mul i32 %total, 128", "  %o1 = insertelement <32 x i32> poison, i32 %off, i64 0",
              "  %ov = shufflevector <32 x i32> %o1, <32 x i32> poison, <32 x i32> zeroinitializer",
              "  %r = sub <32 x i32> %both, %ov", "  ret <32 x i32> %r", "}"]
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
