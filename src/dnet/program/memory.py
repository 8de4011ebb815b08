"""The memory planner: every intermediate gets an offset in one arena, from liveness.

A buffer lives from its Alloc to its Free. Buffers are placed largest first, each at
the lowest 64-byte-aligned offset where it overlaps no placed buffer that is alive at
the same time (greedy by size, as TFLite's and TVM's planners do). Sizes may be
symbolic, so a plan is made for one binding of the symbols and cached by the runtime.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from dnet.core.shapes import substitute
from dnet.program.instructions import Alloc, Free, Program

ALIGN = 64


@dataclass(frozen=True)
class ArenaPlan:
    offsets: dict[int, int]     # buffer id -> byte offset in the arena
    size: int                   # arena bytes
    naive: int                  # bytes if every intermediate had its own allocation


def lifetimes(program: Program) -> dict[int, tuple[int, int]]:
    """Buffer id -> (index of its Alloc, index of its Free) in the instruction stack."""
    start: dict[int, int] = {}
    span: dict[int, tuple[int, int]] = {}
    for pos, ins in enumerate(program.instrs):
        if isinstance(ins, Alloc):
            start[ins.buffer] = pos
        elif isinstance(ins, Free):
            span[ins.buffer] = (start.pop(ins.buffer), pos)
    for buf, pos in start.items():      # never freed: alive to the end
        span[buf] = (pos, len(program.instrs))
    return span


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan_arena(program: Program, env: Mapping[str, int]) -> ArenaPlan:
    spans = lifetimes(program)
    sizes = {}
    for b in program.temps():
        sizes[b.id] = _aligned(max(1, int(substitute(b.elements, env))) * b.dtype.itemsize)
    placed: list[tuple[int, int, int]] = []     # (offset, size, buffer)
    offsets: dict[int, int] = {}
    for buf in sorted(sizes, key=lambda b: (-sizes[b], b)):
        lo, hi = spans[buf]
        busy = sorted((off, size) for off, size, other in placed
                      if spans[other][0] <= hi and lo <= spans[other][1])
        offset = 0
        for off, size in busy:
            if offset + sizes[buf] <= off:
                break
            offset = max(offset, off + size)
        offsets[buf] = offset
        placed.append((offset, sizes[buf], buf))
    size = max((off + s for off, s, _ in placed), default=0)
    return ArenaPlan(offsets, size, sum(sizes.values()))
