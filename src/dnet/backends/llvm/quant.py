"""GGUF block weights on the LLVM backend: element loads and the `QMatmul` statement, blocks never expanded.

Each format's element load (`dn_dq_<format>(ptr base, i64 i)`) decodes element i of a row of
whole blocks as the C backend's `dn_dq_*` do (and so as the `gguf` package's reference code and the
numpy oracle): the scale's f16 widened, each product rounded on its own (no fused multiply-add).
A `QMatmul` runs over the weight's rows on the thread pool: each thread decodes one weight row at a
time into a buffer of k floats and takes its dot product with every row of the activations (f32,
unquantized: the reference's arithmetic, within summation order), then the epilogue. That is the
portable path; the C backend's integer kernels (VNNI, AVX2) are faster at prefill.

Formats: Q8_0, Q4_0 and Q4_1 (SmolLM2's file holds Q4_1 and Q8_0). The K-quants (Q4_K, Q5_K,
Q6_K) are not here yet: a MissingOpError naming the format.
"""
from __future__ import annotations

from dnet.core.dtypes import DType
from dnet.kernel.ir import QMatmul
from dnet.backends.llvm.renderer import PARALLEL_MIN_WORK

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


def quant_support() -> str:
    """Every format's element load (LLVM drops the ones a module does not call)."""
    return "\n\n".join(DEQUANT.values())


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
    wide = f.op(f"call ptr @malloc(i64 {k * 4})")
    a = f.gep("float", r.env[q.a.buffer][0], ix(q.a.offset))
    rs = ix(q.a.row_stride)
    out_dtype = r.buffers[q.out]
    from dnet.backends.llvm.ir_text import STORAGE

    with f.loop(begin, end, hint="qj") as j:
        w = f.gep("i8", r.env[q.weight][0], f.mul(j, str(row_bytes)))
        with f.loop("0", str(k), hint="qk") as kk:
            v = f.op(f"call float @dn_dq_{q.weight_dtype.value}(ptr {w}, i64 {kk})")
            f.emit(f"store float {v}, ptr {f.gep('float', wide, kk)}")
        with f.loop("0", m, hint="qi") as i:
            row = f.gep("float", a, f.mul(i, rs))
            acc = f.alloca("float")
            f.emit(f"store float 0.0, ptr {acc}")
            with f.loop("0", str(k), hint="qd") as kk:
                x = f.op(f"load float, ptr {f.gep('float', row, kk)}")
                y = f.op(f"load float, ptr {f.gep('float', wide, kk)}")
                cur = f.op(f"load float, ptr {acc}")
                # reassoc: the dot product in vector lanes (the reference sums in its own order too)
                product = f.op(f"fmul float {x}, {y}")
                f.emit(f"store float {f.op(f'fadd reassoc float {cur}, {product}')}, ptr {acc}")
            r.env[q.vars[0]], r.env[q.vars[1]] = (i, "i64"), (j, "i64")
            r.env["acc"] = (f.op(f"load float, ptr {acc}"), "float")
            r.stmts(q.epilogue_lets)
            value = r.narrow(r.expr(q.epilogue), q.epilogue.dtype, out_dtype)
            ptr = f.gep(STORAGE[out_dtype], r.env[q.out][0], f.add(f.mul(i, str(n)), j))
            f.emit(f"store {STORAGE[out_dtype]} {value}, ptr {ptr}")
    f.emit(f"call void @free(ptr {wide})")


__all__ = ["FORMATS", "PARALLEL_MIN_WORK", "quant_support", "render_qmatmul", "load_block"]
