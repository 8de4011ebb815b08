"""GGUF block weights on the LLVM backend: element loads and the `QMatmul` statement, blocks never expanded.

Each format's element load (`dn_dq_<format>(ptr base, i64 i)`) decodes element i of a row of
whole blocks as the C backend's `dn_dq_*` do (and so as the `gguf` package's reference code and the
numpy oracle): the scale's f16 widened, each product rounded on its own (no fused multiply-add).
A `QMatmul` runs over the weight's rows on the thread pool: for each weight row and activation row,
`dn_qdot_<format>` widens the row's blocks in vector registers and sums their products with the
activations (f32, unquantized: the reference's values, within summation order), then the epilogue
is applied. Each weight byte is read once per activation row and never stored decoded. That is the
portable path; the C backend's integer kernels (VNNI, AVX2) are faster at prefill.

Formats: all six. Q8_0, Q4_0 and Q4_1 (SmolLM2's file holds Q4_1 and Q8_0) by blocks of 32; the
K-quants (Q4_K, Q5_K, Q6_K) by groups of 32 values of a 256-value super-block, their 6-bit scales and
minimums (Q4_K, Q5_K) or int8 scales (Q6_K) unpacked per group.
"""
from __future__ import annotations

from dnet.core.dtypes import DType
from dnet.kernel.ir import QMatmul

FORMATS = (DType.Q8_0, DType.Q4_0, DType.Q4_1)

_HEADER = """
  %blk = lshr i64 %i, 5
  %e = and i64 %i, 31
  %off = mul i64 %blk, {bytes}
  %b = getelementptr inbounds i8, ptr %base, i64 %off
  %h = load i16, ptr %b, align 1
  %d = call float @dn_f16_to_f32(i16 %h)"""

_NIBBLE = """
  %low = icmp slt i64 %e, 16
  %e16 = add i64 %e, -16
  %at = select i1 %low, i64 %e, i64 %e16
  %qo = add i64 %at, {start}
  %qp = getelementptr inbounds i8, ptr %b, i64 %qo
  %byte = load i8, ptr %qp, align 1
  %lo = and i8 %byte, 15
  %hi = lshr i8 %byte, 4
  %q = select i1 %low, i8 %lo, i8 %hi
  %qf = uitofp i8 %q to float"""

DEQUANT = {
    DType.Q8_0: "define internal float @dn_dq_q8_0(ptr %base, i64 %i) #0 {" + _HEADER.format(bytes=34) + """
  %qo = add i64 %e, 2
  %qp = getelementptr inbounds i8, ptr %b, i64 %qo
  %q = load i8, ptr %qp, align 1
  %qf = sitofp i8 %q to float
  %v = fmul float %d, %qf
  ret float %v
}""",
    DType.Q4_0: "define internal float @dn_dq_q4_0(ptr %base, i64 %i) #0 {" + _HEADER.format(bytes=18)
    + _NIBBLE.format(start=2) + """
  %qc = fsub float %qf, 8.0
  %v = fmul float %d, %qc
  ret float %v
}""",
    DType.Q4_1: "define internal float @dn_dq_q4_1(ptr %base, i64 %i) #0 {" + _HEADER.format(bytes=20)
    + _NIBBLE.format(start=4) + """
  %mp = getelementptr inbounds i8, ptr %b, i64 2
  %mh = load i16, ptr %mp, align 1
  %m = call float @dn_f16_to_f32(i16 %mh)
  %dq = fmul float %d, %qf
  %v = fadd float %dq, %m
  ret float %v
}"""}


def _dot(dtype: DType) -> str:
    """`dn_qdot_<format>(ptr a, ptr w, i64 blocks)`: the dot product of `blocks` x 32 f32 activations with
    one weight row, block by block in vector registers: per block the 32 values are widened in
    registers, multiplied by the activations, and the block's sum scaled by d (d * sum(a q)) is added
    to a vector of partial sums (Q4_1 adds m * sum(a) the same way), reduced once at the end. Each
    weight is read once and never stored decoded; the sums differ from the decoded row's only in
    rounding order."""
    v16, v32 = "<16 x float>", "<32 x float>"
    name = dtype.value
    body = [f"define internal float @dn_qdot_{name}(ptr noalias %a, ptr noalias %w, i64 %blocks) nounwind {{",
            "entry:", "  br label %loop", "loop:",
            "  %blk = phi i64 [0, %entry], [%next, %loop]",
            f"  %acc = phi {v16} [zeroinitializer, %entry], [%acc2, %loop]",
            f"  %off = mul nsw i64 %blk, {dtype.block_bytes}",
            "  %b = getelementptr inbounds i8, ptr %w, i64 %off",
            "  %h = load i16, ptr %b, align 1",
            "  %d = call float @dn_f16_to_f32(i16 %h)",
            f"  %d1 = insertelement {v16} poison, float %d, i64 0",
            f"  %dv = shufflevector {v16} %d1, {v16} poison, <16 x i32> zeroinitializer",
            "  %ao = mul nsw i64 %blk, 32",
            "  %ap = getelementptr inbounds float, ptr %a, i64 %ao",
            f"  %alo = load {v16}, ptr %ap, align 4",
            "  %aph = getelementptr inbounds float, ptr %ap, i64 16",
            f"  %ahi = load {v16}, ptr %aph, align 4"]
    if dtype is DType.Q8_0:
        body += ["  %qp = getelementptr inbounds i8, ptr %b, i64 2",
                 "  %q = load <32 x i8>, ptr %qp, align 1",
                 f"  %qf = sitofp <32 x i8> %q to {v32}",
                 f"  %qlo = shufflevector {v32} %qf, {v32} poison, <16 x i32> <{', '.join(f'i32 {i}' for i in range(16))}>",
                 f"  %qhi = shufflevector {v32} %qf, {v32} poison, <16 x i32> <{', '.join(f'i32 {i}' for i in range(16, 32))}>"]
    else:
        start = 2 if dtype is DType.Q4_0 else 4
        body += [f"  %qp = getelementptr inbounds i8, ptr %b, i64 {start}",
                 "  %q = load <16 x i8>, ptr %qp, align 1",
                 "  %lo = and <16 x i8> %q, splat (i8 15)",
                 "  %hi = lshr <16 x i8> %q, splat (i8 4)"]
        if dtype is DType.Q4_0:
            body += ["  %lo8 = sub <16 x i8> %lo, splat (i8 8)", "  %hi8 = sub <16 x i8> %hi, splat (i8 8)",
                     f"  %qlo = sitofp <16 x i8> %lo8 to {v16}", f"  %qhi = sitofp <16 x i8> %hi8 to {v16}"]
        else:
            body += [f"  %qlo = uitofp <16 x i8> %lo to {v16}", f"  %qhi = uitofp <16 x i8> %hi to {v16}"]
    body += [f"  %t0 = fmul {v16} %alo, %qlo",
             f"  %t1 = call {v16} @llvm.fmuladd.v16f32({v16} %ahi, {v16} %qhi, {v16} %t0)",
             f"  %acc1 = call {v16} @llvm.fmuladd.v16f32({v16} %dv, {v16} %t1, {v16} %acc)"]
    if dtype is DType.Q4_1:
        body += ["  %mp = getelementptr inbounds i8, ptr %b, i64 2",
                 "  %mh = load i16, ptr %mp, align 1",
                 "  %m = call float @dn_f16_to_f32(i16 %mh)",
                 f"  %m1 = insertelement {v16} poison, float %m, i64 0",
                 f"  %mv = shufflevector {v16} %m1, {v16} poison, <16 x i32> zeroinitializer",
                 f"  %as = fadd {v16} %alo, %ahi",
                 f"  %acc2 = call {v16} @llvm.fmuladd.v16f32({v16} %mv, {v16} %as, {v16} %acc1)"]
    else:
        body += [f"  %acc2 = fadd {v16} %acc1, zeroinitializer"]
    body += ["  %next = add nsw i64 %blk, 1",
             "  %more = icmp slt i64 %next, %blocks",
             "  br i1 %more, label %loop, label %done",
             "done:",
             f"  %sum = call reassoc float @llvm.vector.reduce.fadd.v16f32(float 0.0, {v16} %acc2)",
             "  ret float %sum", "}"]
    return "\n".join(body)


def _block_start(size: int, bytes_: int) -> str:
    shift = size.bit_length() - 1
    return f"""
  %blk = lshr i64 %i, {shift}
  %off = mul i64 %blk, {bytes_}
  %b = getelementptr inbounds i8, ptr %base, i64 %off
  %e = and i64 %i, {size - 1}"""


def _byte(name: str, base: str, index: str) -> str:
    """%name (i32) = the byte at base[index]."""
    return f"""
  %{name}.p = getelementptr inbounds i8, ptr {base}, i64 {index}
  %{name}.b = load i8, ptr %{name}.p, align 1
  %{name} = zext i8 %{name}.b to i32"""


# sub-block j's 6-bit scale and minimum from the 12 bytes at b + 4 (Q4_K, Q5_K; llama.cpp's get_scale_min_k4)
_SCALE_MIN = """
  %s = getelementptr inbounds i8, ptr %b, i64 4
  %low4 = icmp ult i64 %j, 4
  %jm4 = add i64 %j, -4
  %ja = select i1 %low4, i64 %j, i64 %jm4
  %j4 = add i64 %j, 4""" + _byte("sj", "%s", "%j") + _byte("sj4", "%s", "%j4") + _byte("sjm4", "%s", "%ja") + """
  %scl = and i32 %sj, 63
  %mnl = and i32 %sj4, 63
  %sc0 = and i32 %sj4, 15
  %sc1 = lshr i32 %sjm4, 6
  %sc2 = shl i32 %sc1, 4
  %sch = or i32 %sc0, %sc2
  %mn0 = lshr i32 %sj4, 4
  %mn1 = lshr i32 %sj, 6
  %mn2 = shl i32 %mn1, 4
  %mnh = or i32 %mn0, %mn2
  %sc = select i1 %low4, i32 %scl, i32 %sch
  %mn = select i1 %low4, i32 %mnl, i32 %mnh"""

# w = (d * sc) * q - dmin * mn, each product rounded alone (as the C backend's dn_q_exact)
_SCALED = """
  %d = call float @dn_f16_to_f32(i16 %dh)
  %dmp = getelementptr inbounds i8, ptr %b, i64 2
  %dmh = load i16, ptr %dmp, align 1
  %dmin = call float @dn_f16_to_f32(i16 %dmh)
  %scf = uitofp i32 %sc to float
  %qf = uitofp i32 %q to float
  %mnf = uitofp i32 %mn to float
  %t0 = fmul float %d, %scf
  %t1 = fmul float %t0, %qf
  %t2 = fmul float %dmin, %mnf
  %v = fsub float %t1, %t2
  ret float %v
}"""

_SUB = """
  %dh = load i16, ptr %b, align 1
  %j = lshr i64 %e, 5
  %jh = lshr i64 %j, 1
  %jo = and i64 %j, 1
  %el = and i64 %e, 31
  %sh64 = mul i64 %jo, 4
  %sh = trunc i64 %sh64 to i32"""

K_DEQUANT = {
    DType.Q4_K: "define internal float @dn_dq_q4_k(ptr %base, i64 %i) #0 {" + _block_start(256, 144) + _SUB
    + _SCALE_MIN + """
  %qo0 = mul i64 %jh, 32
  %qo1 = add i64 %qo0, %el
  %qo = add i64 %qo1, 16""" + _byte("qb", "%b", "%qo") + """
  %q0 = lshr i32 %qb, %sh
  %q = and i32 %q0, 15""" + _SCALED,
    DType.Q5_K: "define internal float @dn_dq_q5_k(ptr %base, i64 %i) #0 {" + _block_start(256, 176) + _SUB
    + _SCALE_MIN + """
  %qo0 = mul i64 %jh, 32
  %qo1 = add i64 %qo0, %el
  %qo = add i64 %qo1, 48""" + _byte("qb", "%b", "%qo") + """
  %hoff = add i64 %el, 16""" + _byte("hb", "%b", "%hoff") + """
  %q0 = lshr i32 %qb, %sh
  %q1 = and i32 %q0, 15
  %j32 = trunc i64 %j to i32
  %h0 = lshr i32 %hb, %j32
  %h1 = and i32 %h0, 1
  %h2 = shl i32 %h1, 4
  %q = or i32 %q1, %h2""" + _SCALED,
    DType.Q6_K: "define internal float @dn_dq_q6_k(ptr %base, i64 %i) #0 {" + _block_start(256, 210) + """
  %h = lshr i64 %e, 7
  %r = and i64 %e, 127
  %r63 = and i64 %r, 63
  %h64 = mul i64 %h, 64
  %lo_at = add i64 %h64, %r63""" + _byte("lb", "%b", "%lo_at") + """
  %r6 = lshr i64 %r, 6
  %ls64 = mul i64 %r6, 4
  %ls = trunc i64 %ls64 to i32
  %lo0 = lshr i32 %lb, %ls
  %lo = and i32 %lo0, 15
  %r31 = and i64 %r, 31
  %h32 = mul i64 %h, 32
  %hi_at0 = add i64 %h32, %r31
  %hi_at = add i64 %hi_at0, 128""" + _byte("hb", "%b", "%hi_at") + """
  %r5 = lshr i64 %r, 5
  %hs64 = mul i64 %r5, 2
  %hs = trunc i64 %hs64 to i32
  %hi0 = lshr i32 %hb, %hs
  %hi1 = and i32 %hi0, 3
  %hi = shl i32 %hi1, 4
  %q = or i32 %lo, %hi
  %qc = sub i32 %q, 32
  %e16 = lshr i64 %e, 4
  %sc_at = add i64 %e16, 192
  %scp = getelementptr inbounds i8, ptr %b, i64 %sc_at
  %scb = load i8, ptr %scp, align 1
  %dp = getelementptr inbounds i8, ptr %b, i64 208
  %dh = load i16, ptr %dp, align 1
  %d = call float @dn_f16_to_f32(i16 %dh)
  %scf = sitofp i8 %scb to float
  %qf = sitofp i32 %qc to float
  %t0 = fmul float %d, %scf
  %v = fmul float %t0, %qf
  ret float %v
}"""}
DEQUANT.update(K_DEQUANT)


def _k_dot(dtype: DType) -> str:
    """`dn_qdot_q4_k` / `dn_qdot_q5_k` in vector registers: per super-block of 256, each pair of sub-blocks'
    32 bytes of nibbles (and Q5_K's fifth bits) widened to two <32 x float>, each sub-block's dot product
    with the activations scaled by d * sc_j, minus dmin * m_j times the activations' sum, added to a
    vector of partial sums (the scales' 6 bits unpacked per sub-block, j known here)."""
    name, five = dtype.value, dtype is DType.Q5_K
    v = "<32 x float>"
    nibbles_at = 48 if five else 16
    lines = [f"define internal float @dn_qdot_{name}(ptr noalias %a, ptr noalias %w, i64 %blocks) nounwind {{",
             "entry:", "  br label %loop", "loop:",
             "  %sb = phi i64 [0, %entry], [%sb1, %loop]",
             f"  %acc = phi {v} [zeroinitializer, %entry], [%acc8, %loop]",
             f"  %bo = mul nsw i64 %sb, {dtype.block_bytes}",
             "  %b = getelementptr inbounds i8, ptr %w, i64 %bo",
             "  %ao = mul nsw i64 %sb, 256",
             "  %as = getelementptr inbounds float, ptr %a, i64 %ao",
             "  %dh = load i16, ptr %b, align 1", "  %d = call float @dn_f16_to_f32(i16 %dh)",
             "  %dmp = getelementptr inbounds i8, ptr %b, i64 2", "  %dmh = load i16, ptr %dmp, align 1",
             "  %dmin = call float @dn_f16_to_f32(i16 %dmh)"]
    for i in range(12):
        lines += [f"  %sp{i} = getelementptr inbounds i8, ptr %b, i64 {4 + i}", f"  %sr{i} = load i8, ptr %sp{i}",
                  f"  %s{i} = zext i8 %sr{i} to i32"]
    if five:
        lines += ["  %qhp = getelementptr inbounds i8, ptr %b, i64 16", "  %qh = load <32 x i8>, ptr %qhp, align 1"]
    for j in range(8):
        if j < 4:
            lines += [f"  %sc{j} = and i32 %s{j}, 63", f"  %mn{j} = and i32 %s{j + 4}, 63"]
        else:
            lines += [f"  %sca{j} = and i32 %s{j + 4}, 15", f"  %scb{j} = lshr i32 %s{j - 4}, 6",
                      f"  %scc{j} = shl i32 %scb{j}, 4", f"  %sc{j} = or i32 %sca{j}, %scc{j}",
                      f"  %mna{j} = lshr i32 %s{j + 4}, 4", f"  %mnb{j} = lshr i32 %s{j}, 6",
                      f"  %mnc{j} = shl i32 %mnb{j}, 4", f"  %mn{j} = or i32 %mna{j}, %mnc{j}"]
        if j % 2 == 0:
            m = j // 2
            lines += [f"  %qp{m} = getelementptr inbounds i8, ptr %b, i64 {nibbles_at + 32 * m}",
                      f"  %qv{m} = load <32 x i8>, ptr %qp{m}, align 1"]
        shift = "and" if j % 2 == 0 else "lshr"
        operand = "splat (i8 15)" if j % 2 == 0 else "splat (i8 4)"
        lines.append(f"  %n{j} = {shift} <32 x i8> %qv{j // 2}, {operand}")
        q = f"%n{j}"
        if five:
            lines += [f"  %hb{j} = lshr <32 x i8> %qh, splat (i8 {j})", f"  %hm{j} = and <32 x i8> %hb{j}, splat (i8 1)",
                      f"  %hs{j} = shl <32 x i8> %hm{j}, splat (i8 4)", f"  %q5{j} = or <32 x i8> {q}, %hs{j}"]
            q = f"%q5{j}"
        lines += [f"  %qf{j} = uitofp <32 x i8> {q} to {v}",
                  f"  %ap{j} = getelementptr inbounds float, ptr %as, i64 {32 * j}",
                  f"  %av{j} = load {v}, ptr %ap{j}, align 4",
                  f"  %scf{j} = uitofp i32 %sc{j} to float", f"  %mnf{j} = uitofp i32 %mn{j} to float",
                  f"  %ds{j} = fmul float %d, %scf{j}", f"  %dm{j} = fmul float %dmin, %mnf{j}",
                  f"  %ndm{j} = fneg float %dm{j}",
                  f"  %ds1{j} = insertelement {v} poison, float %ds{j}, i64 0",
                  f"  %dsv{j} = shufflevector {v} %ds1{j}, {v} poison, <32 x i32> zeroinitializer",
                  f"  %dm1{j} = insertelement {v} poison, float %ndm{j}, i64 0",
                  f"  %dmv{j} = shufflevector {v} %dm1{j}, {v} poison, <32 x i32> zeroinitializer",
                  f"  %pq{j} = fmul {v} %av{j}, %qf{j}",
                  f"  %acq{j} = call {v} @llvm.fmuladd.v32f32({v} %dsv{j}, {v} %pq{j}, {v} {'%acc' if j == 0 else f'%acc{j}'})",
                  f"  %acc{j + 1} = call {v} @llvm.fmuladd.v32f32({v} %dmv{j}, {v} %av{j}, {v} %acq{j})"]
    lines += ["  %sb1 = add nsw i64 %sb, 1", "  %more = icmp slt i64 %sb1, %blocks",
              "  br i1 %more, label %loop, label %done", "done:",
              f"  %sum = call reassoc float @llvm.vector.reduce.fadd.v32f32(float 0.0, {v} %acc8)",
              "  ret float %sum", "}"]
    return "\n".join(lines)


def _q6_k_dot() -> str:
    """`dn_qdot_q6_k` in vector registers: per super-block, eight groups of 32 values (half h, quarter c):
    low 4 bits from 32 bytes of ql, high 2 bits from 32 bytes of qh, minus 32, widened to <32 x float>;
    each group's two 16-value scales d * sc as one vector; their products with the activations summed."""
    v = "<32 x float>"
    half = ", ".join(f"i32 {i}" for i in range(16)) + ", " + ", ".join(f"i32 {32 + i}" for i in range(16))
    lines = ["define internal float @dn_qdot_q6_k(ptr noalias %a, ptr noalias %w, i64 %blocks) nounwind {",
             "entry:", "  br label %loop", "loop:",
             "  %sb = phi i64 [0, %entry], [%sb1, %loop]",
             f"  %acc = phi {v} [zeroinitializer, %entry], [%acc8, %loop]",
             "  %bo = mul nsw i64 %sb, 210", "  %b = getelementptr inbounds i8, ptr %w, i64 %bo",
             "  %ao = mul nsw i64 %sb, 256", "  %as = getelementptr inbounds float, ptr %a, i64 %ao",
             "  %dp = getelementptr inbounds i8, ptr %b, i64 208", "  %dh = load i16, ptr %dp, align 1",
             "  %d = call float @dn_f16_to_f32(i16 %dh)"]
    for g in range(8):
        h, c = divmod(g, 4)
        lines += [f"  %lp{g} = getelementptr inbounds i8, ptr %b, i64 {64 * h + 32 * (c % 2)}",
                  f"  %lv{g} = load <32 x i8>, ptr %lp{g}, align 1",
                  f"  %ls{g} = lshr <32 x i8> %lv{g}, splat (i8 {4 * (c // 2)})",
                  f"  %lo{g} = and <32 x i8> %ls{g}, splat (i8 15)",
                  f"  %hp{g} = getelementptr inbounds i8, ptr %b, i64 {128 + 32 * h}",
                  f"  %hv{g} = load <32 x i8>, ptr %hp{g}, align 1",
                  f"  %hs{g} = lshr <32 x i8> %hv{g}, splat (i8 {2 * c})",
                  f"  %hm{g} = and <32 x i8> %hs{g}, splat (i8 3)",
                  f"  %hi{g} = shl <32 x i8> %hm{g}, splat (i8 4)",
                  f"  %q{g} = or <32 x i8> %lo{g}, %hi{g}",
                  f"  %qc{g} = sub <32 x i8> %q{g}, splat (i8 32)",
                  f"  %qf{g} = sitofp <32 x i8> %qc{g} to {v}"]
        for k in range(2):
            idx = 192 + 8 * h + 2 * c + k
            lines += [f"  %scp{g}_{k} = getelementptr inbounds i8, ptr %b, i64 {idx}",
                      f"  %scb{g}_{k} = load i8, ptr %scp{g}_{k}",
                      f"  %scf{g}_{k} = sitofp i8 %scb{g}_{k} to float",
                      f"  %ds{g}_{k} = fmul float %d, %scf{g}_{k}",
                      f"  %d1{g}_{k} = insertelement {v} poison, float %ds{g}_{k}, i64 0",
                      f"  %dv{g}_{k} = shufflevector {v} %d1{g}_{k}, {v} poison, <32 x i32> zeroinitializer"]
        lines += [f"  %dv{g} = shufflevector {v} %dv{g}_0, {v} %dv{g}_1, <32 x i32> <{half}>",
                  f"  %ap{g} = getelementptr inbounds float, ptr %as, i64 {32 * g}",
                  f"  %av{g} = load {v}, ptr %ap{g}, align 4",
                  f"  %pq{g} = fmul {v} %av{g}, %qf{g}",
                  f"  %acc{g + 1} = call {v} @llvm.fmuladd.v32f32({v} %dv{g}, {v} %pq{g}, {v} {'%acc' if g == 0 else f'%acc{g}'})"]
    lines += ["  %sb1 = add nsw i64 %sb, 1", "  %more = icmp slt i64 %sb1, %blocks",
              "  br i1 %more, label %loop, label %done", "done:",
              f"  %sum = call reassoc float @llvm.vector.reduce.fadd.v32f32(float 0.0, {v} %acc8)",
              "  ret float %sum", "}"]
    return "\n".join(lines)


def quant_support() -> str:
    """Every format's element load and row dot product (LLVM drops the ones a module does not call)."""
    dots = [_dot(d) for d in FORMATS] + [_k_dot(DType.Q4_K), _k_dot(DType.Q5_K), _q6_k_dot()]
    return "\n\n".join(list(DEQUANT.values()) + dots)


def check_format(r, dtype: DType) -> None:
    if dtype not in DEQUANT:
        raise r.missing(f"{dtype} blocks", dtype)


def load_block(r, buffer: str, index: str, dtype: DType) -> str:
    """Element `index` of a block-dtype buffer, decoded to f32."""
    check_format(r, dtype)
    return r.fn.op(f"call float @dn_dq_{dtype.value}(ptr {r.env[buffer][0]}, i64 {index})")


def render_qmatmul(r, q: QMatmul) -> None:
    """out[i, j] = epilogue(a[i, :] . dequantized w[j, :]), the weight's rows in chunks on the pool."""
    check_format(r, q.weight_dtype)
    f = r.fn
    work = f.mul(r.index(q.m), str(q.k))          # per weight row: m dot products of length k
    grain = r._grain(work)
    r.outline(lambda rr, begin, end: _rows(rr, q, begin, end), str(q.n), grain)


def _rows(r, q: QMatmul, begin: str, end: str) -> None:
    f, ix = r.fn, r.index
    k, n = q.k, q.n
    row_bytes = q.weight_dtype.storage_bytes(k)
    m = ix(q.m)
    a = f.gep("float", r.env[q.a.buffer][0], ix(q.a.offset))
    rs = ix(q.a.row_stride)
    out_dtype = r.buffers[q.out]
    from dnet.backends.llvm.ir_text import STORAGE

    with f.loop(begin, end, hint="qj") as j:
        w = f.gep("i8", r.env[q.weight][0], f.mul(j, str(row_bytes)))
        with f.loop("0", m, hint="qi") as i:
            row = f.gep("float", a, f.mul(i, rs))
            blocks = k // q.weight_dtype.block
            acc = f.op(f"call float @dn_qdot_{q.weight_dtype.value}(ptr {row}, ptr {w}, i64 {blocks})")
            r.env[q.vars[0]], r.env[q.vars[1]] = (i, "i64"), (j, "i64")
            r.env["acc"] = (acc, "float")
            r.stmts(q.epilogue_lets)
            value = r.narrow(r.expr(q.epilogue), q.epilogue.dtype, out_dtype)
            ptr = f.gep(STORAGE[out_dtype], r.env[q.out][0], f.add(f.mul(i, str(n)), j))
            f.emit(f"store {STORAGE[out_dtype]} {value}, ptr {ptr}")


__all__ = ["FORMATS", "quant_support", "render_qmatmul", "load_block"]
