"""The memory planner: every intermediate gets an offset in one arena, from liveness.

A buffer lives from its Alloc to its Free. Buffers are placed largest first, each at
the lowest 64-byte-aligned offset where it overlaps no placed buffer that is alive at
the same time (greedy by size, as TFLite's and TVM's planners do). Sizes may be
symbolic, so a plan is made for one binding of the symbols and cached by the runtime.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from dnet.core.shapes import Dim, substitute
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


def grows_with_symbols(program: Program) -> bool:
    """Whether every intermediate's size is non-decreasing in every symbol (a polynomial with
    non-negative coefficients, floor-divided by constants at most): then a plan made for larger
    symbol values holds any smaller binding, and one plan serves a range of lengths."""
    return all(_monotone(b.elements) for b in program.temps())


def _monotone(d) -> bool:
    if not isinstance(d, Dim):
        return True
    for monomial, coefficient in d.terms:
        if coefficient < 0:
            return False
        for atom in monomial:
            if not isinstance(atom, str) and not (atom[0] == "//" and isinstance(atom[2], int) and atom[2] > 0
                                                  and _monotone(atom[1])):
                return False
    return True


def bucket(env: Mapping[str, int]) -> dict[str, int]:
    """Each symbol rounded up to a power of two: plans for at most 2x the memory (per symbol), made
    once per bucket instead of once per length (a decode step's context grows every token)."""
    return {name: 1 << max(0, int(v) - 1).bit_length() for name, v in env.items()}


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
