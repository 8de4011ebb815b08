"""Arrays copied into memory that the kernel may back with 2 MiB pages (Linux transparent huge pages).

An LLM's decode step reads every weight once a token: SmolLM2's 94 MiB, mapped from its GGUF file in 4 KiB
pages, is a TLB miss every 4 KiB, and each miss a page walk (in a virtual machine a two-dimensional one).
Copied into one anonymous mapping advised MADV_HUGEPAGE, the same bytes take 47 TLB entries' worth of pages:
measured on a 2-core Xeon VM, a decode step 12.7-13.0 -> 10.6-10.8 ms with one thread, 2-7 % with two.

Only arrays that are views of a registered file mapping (`dnet.core.origins`: a model file's weights) move,
and their bytes are read from the file rather than copied from the mapping, so the file's pages are never
mapped into this process: its resident memory holds each weight once. Arrays already in anonymous memory
(weights a reader rearranged) stay: moving them would hold them twice while the loader runs. Elsewhere (no
THP in this kernel, or not Linux) the arrays are returned as they are.
"""
from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from dnet.core.file_hash import stat_key
from dnet.core.origins import origin_of

THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
ALIGN = 64            # each array starts on a cache line
MIN_BYTES = 1 << 16   # smaller arrays (norms, biases) stay where they are


def available() -> bool:
    """Whether this kernel backs anonymous memory advised MADV_HUGEPAGE with huge pages."""
    if not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        setting = THP_SETTING.read_text()
    except OSError:
        return False
    return "[always]" in setting or "[madvise]" in setting


def in_huge_pages(arrays: Mapping[str, np.ndarray], enabled: bool | None = None) -> dict[str, np.ndarray]:
    """The arrays of MIN_BYTES or more that are views of a mapped file, as copies read from that file into
    one huge-page arena (equal bit for bit); the others as given. All as given where huge pages are not
    `available()` (or `enabled` is False), and any whose file changed since it was mapped."""
    if not (available() if enabled is None else enabled):
        return dict(arrays)
    runs = {name: run for name, a in arrays.items() if a.nbytes >= MIN_BYTES and (run := _file_run(a))}
    if not runs:
        return dict(arrays)
    offsets, size = {}, 0
    for name in runs:
        offsets[name] = size
        size += -(-arrays[name].nbytes // ALIGN) * ALIGN
    arena = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    arena.madvise(mmap.MADV_HUGEPAGE)    # before the first touch: the pages are made huge as they fault in
    memory = np.frombuffer(arena, np.uint8)     # keeps the arena alive as long as any copy
    out = dict(arrays)
    for name, (path, offset) in runs.items():
        a = arrays[name]
        copy = memory[offsets[name]:offsets[name] + a.nbytes]
        if _read(path, offset, copy):
            out[name] = copy.view(a.dtype).reshape(a.shape)
    return out


def _file_run(a: np.ndarray) -> tuple[str, int] | None:
    """(path, offset) where `a` is one run of bytes of a registered file mapping whose file is unchanged."""
    origin = origin_of(a) if a.flags.c_contiguous else None
    if origin is None or len(origin.pieces) != 1 or origin.pieces[0].count != 1:
        return None
    try:
        unchanged = stat_key(origin.file.path) == origin.file.key
    except OSError:
        return None
    return (origin.file.path, origin.pieces[0].offset) if unchanged else None


def _read(path: str, offset: int, into: np.ndarray) -> bool:
    """Fills `into` (bytes) from the file at `offset`, without mapping the file: whether it all came."""
    target, done = memoryview(into), 0
    try:
        with open(path, "rb", buffering=0) as f:
            while done < len(target):
                got = os.preadv(f.fileno(), [target[done:]], offset + done)
                if got <= 0:
                    break
                done += got
    except OSError:
        return False
    return done == len(target)
