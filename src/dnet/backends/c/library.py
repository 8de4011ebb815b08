"""One C translation unit per program: prelude, gemm support, kernels, and entry points.

Each run of launches between transfers becomes one exported function
`dnet_segment_<k>(void** bufs, const int64_t* dims)` that calls its kernels in order,
so running a whole model is one call from Python. Each launch also gets its own entry,
`dnet_launch_<i>`, for per-kernel timing (`CModule.profile`).
"""
from __future__ import annotations

from dnet.backends.c.gemm import support
from dnet.backends.c.prelude import PRELUDE
from dnet.backends.c.renderer import STORAGE, render_kernel
from dnet.core import progress
from dnet.core.dtypes import DType
from dnet.kernel.ir import Gemm, Kernel
from dnet.program.instructions import Launch, Program, segments


def render_library(kernels: dict[str, Kernel], program: Program, activation_bits: int = 16) -> str:
    tiles = sorted({s.tile for k in kernels.values() for s in k.body if isinstance(s, Gemm)},
                   key=lambda t: (t.mr, t.nr, t.kc, t.mc, t.unroll))
    unrolls: dict[tuple[int, int], set[int]] = {}
    for t in tiles:
        unrolls.setdefault((t.mr, t.nr), set()).add(t.unroll)
    parts = [PRELUDE, *(support(t, tuple(unrolls[t.mr, t.nr])) for t in {(t.mr, t.nr): t for t in tiles}.values())]
    low = {(s.tile.mr, s.tile.nr): s.tile for k in kernels.values() for s in k.body
           if isinstance(s, Gemm) and s.a.dtype is not DType.F32}
    if low:   # int8 / bf16 Gemms (dnet.backends.c.igemm)
        from dnet.backends.c import igemm

        parts += [igemm.COMMON, *(igemm.support(t) for t in low.values())]
    blocks = sorted({p.dtype for k in kernels.values() for p in k.params if p.dtype.is_block}, key=lambda d: d.value)
    if blocks:
        from dnet.backends.c.quant import quant_support

        parts.append(quant_support(blocks))
    with progress.task("render C kernels", total=len(kernels), unit="kernels") as task:
        for kernel in kernels.values():
            parts.append(render_kernel(kernel, activation_bits))
            task.advance()
    parts += [_segment(f"segment_{i}", seg, kernels, program)
              for i, seg in enumerate(segments(program)) if i % 2 == 0]
    launches = [ins for ins in program.instrs if isinstance(ins, Launch)]
    parts += [_segment(f"launch_{i}", [ins], kernels, program) for i, ins in enumerate(launches)]
    return "\n\n".join(parts) + "\n"


def render_variants(kernels: dict[str, Kernel], entries: dict[str, Launch], program: Program) -> str:
    """A small library of f32 Gemm kernels alone (variants of a program's, `dnet tune`), each entry
    `dnet_<name>(bufs, dims)` running its launch on the program's buffer table."""
    tiles = {s.tile for k in kernels.values() for s in k.body if isinstance(s, Gemm)}
    unrolls: dict[tuple[int, int], set[int]] = {}
    for t in tiles:
        unrolls.setdefault((t.mr, t.nr), set()).add(t.unroll)
    firsts = {(t.mr, t.nr): t for t in sorted(tiles, key=lambda t: (t.mr, t.nr, t.kc, t.mc, t.unroll))}
    parts = [PRELUDE, *(support(t, tuple(unrolls[key])) for key, t in firsts.items())]
    parts += [render_kernel(kernel) for kernel in kernels.values()]
    parts += [_segment(name, [launch], kernels, program) for name, launch in entries.items()]
    return "\n\n".join(parts) + "\n"


def _segment(name: str, seg: list, kernels: dict[str, Kernel], program: Program) -> str:
    lines = [f"void dnet_{name}(void** bufs, const int64_t* dims) {{", "    (void)bufs; (void)dims;"]
    for ins in seg:
        assert isinstance(ins, Launch)
        kernel = kernels[ins.kernel]
        args = []
        for param, buf in zip(kernel.params, ins.args):
            const = "" if param.output else "const "
            args.append(f"({const}{STORAGE[param.dtype]}*)bufs[{buf}]")
        args += [f"dims[{program.symbols.index(d)}]" for d in ins.dims]
        lines.append(f"    {ins.kernel}({', '.join(args)});")
    lines.append("}")
    return "\n".join(lines)
