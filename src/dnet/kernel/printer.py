"""Kernel IR as readable text (what `dnet inspect --kernels` shows)."""
from __future__ import annotations

from dnet.kernel.ir import (Barrier, Binary, Cast, Const, Gemm, GpuLoop, InBounds, IndexLet, IndexValue, Kernel, Let,
                            Load, LocalAlloc, Loop, QMatmul, Reduce, Ref, Store, Unary, Where, index_str)


def expr_str(e) -> str:
    if isinstance(e, Const):
        return repr(e.value)
    if isinstance(e, IndexValue):
        return f"{e.dtype}({index_str(e.index)})"
    if isinstance(e, Load):
        return f"{e.buffer}[{index_str(e.index)}]"
    if isinstance(e, Ref):
        return e.name
    if isinstance(e, Unary):
        return f"{e.op}({expr_str(e.x)})"
    if isinstance(e, Binary):
        return f"{e.op}({expr_str(e.a)}, {expr_str(e.b)})"
    if isinstance(e, Where):
        return f"where({expr_str(e.cond)}, {expr_str(e.a)}, {expr_str(e.b)})"
    if isinstance(e, Cast):
        return f"{e.dtype}({expr_str(e.x)})"
    if isinstance(e, InBounds):
        return f"({index_str(e.lo)} <= {index_str(e.index)} < {index_str(e.hi)})"
    raise TypeError(e)


def _stmts(body, depth: int) -> list[str]:
    pad = "  " * depth
    out = []
    for s in body:
        if isinstance(s, Let):
            out.append(f"{pad}{s.name} = {expr_str(s.value)}")
        elif isinstance(s, IndexLet):
            out.append(f"{pad}{s.name} = clamp({expr_str(s.value)}, 0, {index_str(s.bound)})")
        elif isinstance(s, Store):
            out.append(f"{pad}{s.buffer}[{index_str(s.index)}] = {expr_str(s.value)}")
        elif isinstance(s, Loop):
            tags = (["parallel"] if s.parallel else []) + (["vector"] if s.vector else [])
            tag = f"  # {', '.join(tags)}" if tags else ""
            out.append(f"{pad}for {s.var} in 0..{index_str(s.extent)}:{tag}")
            out += _stmts(s.body, depth + 1)
        elif isinstance(s, Reduce):
            loops = ", ".join(f"{v} in 0..{index_str(e)}" for v, e in s.loops)
            out.append(f"{pad}{s.acc} = {s.op} over {loops}:")
            out += _stmts(s.body, depth + 1)
            out.append(f"{pad}  {expr_str(s.value)}")
        elif isinstance(s, Gemm):
            out.append(f"{pad}gemm {s.out}[{', '.join(s.vars)}] = "
                       f"{s.a.buffer} @ {s.b.buffer}{' (packed)' if s.b.packed else ''}{f' x {s.b.scale} (int8, scaled)' if s.b.scale else ''} "
                       f"m={index_str(s.m)} n={index_str(s.n)} k={index_str(s.k)} "
                       f"tile {s.tile.mr}x{s.tile.nr}, epilogue:")
            out += _stmts(s.epilogue_lets, depth + 1)
            out.append(f"{pad}  {expr_str(s.epilogue)}")
        elif isinstance(s, QMatmul):
            out.append(f"{pad}qmatmul {s.out}[{', '.join(s.vars)}] = {s.a.buffer} @ {s.weight}.T ({s.weight_dtype}) "
                       f"m={index_str(s.m)} n={s.n} k={s.k}, epilogue:")
            out += _stmts(s.epilogue_lets, depth + 1)
            out.append(f"{pad}  {expr_str(s.epilogue)}")
        elif isinstance(s, GpuLoop):
            out.append(f"{pad}for {s.var} in 0..{index_str(s.extent)}:  # gpu {s.level} {s.axis}")
            out += _stmts(s.body, depth + 1)
        elif isinstance(s, LocalAlloc):
            out.append(f"{pad}local {s.dtype} {s.name}[{s.size}]:")
            out += _stmts(s.body, depth + 1)
        elif isinstance(s, Barrier):
            out.append(f"{pad}barrier")
    return out


def print_kernel(k: Kernel) -> str:
    params = ", ".join(f"{'out ' if p.output else ''}{p.dtype} {p.name}" for p in k.params)
    dims = "".join(f", i64 {d}" for d in k.dims)
    return "\n".join([f"kernel {k.name}({params}{dims}):"] + _stmts(k.body, 1))
