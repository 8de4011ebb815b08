"""Rendering a `QMatmul`: one call of the format's kernel (`dnet.backends.c.quant`), then the epilogue.

The kernel quantizes the activations per 32-element block to 16 bits (`dn_qmatmul16_*`, the default:
within float rounding of the f32 product) or to 8 (`dn_qmatmul_*`, llama.cpp's scheme: prefill twice as
fast, logits a few per cent off), as the backend's `activation_bits` says.

The kernel writes the raw products into `out`; the element-wise epilogue (a residual add,
SiLU times the up projection, ...) then runs over `out` in place, row by row across threads.
"""
from __future__ import annotations

from dnet.backends.c.renderer import PARALLEL_MIN_WORK, store
from dnet.kernel.ir import QMatmul, Ref


def render_qmatmul(r, q: QMatmul, pad: str) -> list[str]:
    m, n = r.index(q.m), q.n
    a = f"{q.a.buffer} + {r.index(q.a.offset)}"
    entry = {8: "dn_qmatmul_", 16: "dn_qmatmul16_"}[r.activation_bits]
    lines = [f"{pad}{entry}{q.weight_dtype.value}({m}, {n}, {q.k}, {a}, {r.index(q.a.row_stride)}, "
             f"{q.weight}, {q.out}, {n});"]
    if isinstance(q.epilogue, Ref) and q.epilogue.name == "acc" and not q.epilogue_lets:
        return lines
    i, j = q.vars
    body = [f"for (int64_t {i} = g_begin; {i} < g_end; ++{i}) {{",
            f"    for (int64_t {j} = 0; {j} < {n}; ++{j}) {{",
            f"        const float acc = {q.out}[{i} * {n} + {j}];",
            *r.stmts(q.epilogue_lets, "        "),
            f"        {q.out}[{i} * {n} + {j}] = {store(r.expr(q.epilogue), q.epilogue.dtype, r._dtype(q.out))};",
            "    }", "}"]
    grain = str(max(1, PARALLEL_MIN_WORK // n))
    return lines + r.outline(body, m, grain, pad)
