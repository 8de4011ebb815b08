"""One LLVM module per program: prelude, GEMM micro-kernels, kernels, and entry points.

The entry points are the C backend's: each run of launches between transfers becomes
`dnet_segment_<k>(ptr bufs, ptr dims)` calling its kernels in order (so a whole model is one call
from Python), and each launch gets `dnet_launch_<i>` for per-kernel timing. `bufs` is the table
of buffer addresses (`program.device.HostAllocator`), `dims` the symbols' values.
"""
from __future__ import annotations

from dnet.backends.llvm.gemm import GemmSupport
from dnet.backends.llvm.ir_text import quote
from dnet.backends.llvm.prelude import prelude
from dnet.backends.llvm.quant import quant_support
from dnet.backends.llvm.renderer import LLVMRenderer
from dnet.core import progress
from dnet.kernel.ir import Kernel
from dnet.program.instructions import Launch, Program, segments


def render_module(kernels: dict[str, Kernel], program: Program, native_half: bool = True) -> str:
    """The program's LLVM IR module, as text; `native_half`: the CPU converts f16 itself."""
    support = GemmSupport()
    parts = [prelude(native_half), quant_support()]
    with progress.task("render LLVM kernels", total=len(kernels), unit="kernels") as task:
        for kernel in kernels.values():
            parts.append(LLVMRenderer(kernel, support).render())
            task.advance()
    parts.append(support.text())
    parts += [_entry(f"dnet_segment_{i}", seg, kernels, program)
              for i, seg in enumerate(segments(program)) if i % 2 == 0]
    launches = [ins for ins in program.instrs if isinstance(ins, Launch)]
    parts += [_entry(f"dnet_launch_{i}", [ins], kernels, program) for i, ins in enumerate(launches)]
    return "\n\n".join(parts) + "\n"


def _entry(name: str, launches: list, kernels: dict[str, Kernel], program: Program) -> str:
    lines = [f"define void @{name}(ptr %bufs, ptr %dims) nounwind {{", "entry:"]
    count = 0

    def op(text: str) -> str:
        nonlocal count
        count += 1
        lines.append(f"  %v{count} = {text}")
        return f"%v{count}"
    for ins in launches:
        assert isinstance(ins, Launch)
        args = []
        for buf in ins.args:
            slot = op(f"getelementptr inbounds ptr, ptr %bufs, i64 {buf}")
            args.append(f"ptr {op(f'load ptr, ptr {slot}')}")
        for d in ins.dims:
            slot = op(f"getelementptr inbounds i64, ptr %dims, i64 {program.symbols.index(d)}")
            args.append(f"i64 {op(f'load i64, ptr {slot}')}")
        lines.append(f"  call void {quote(ins.kernel)}({', '.join(args)})")
    lines += ["  ret void", "}"]
    return "\n".join(lines)
