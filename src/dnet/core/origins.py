"""Where a weight's bytes come from: byte ranges of a model file, so a node holding the same file
can read them there instead of receiving them.

A reader that memory-maps a model file read-only registers the mapping (`register_mapping`).
From then on any C-contiguous array lying inside it has an origin found from its address alone
(`origin_of`): views survive every graph pass, stage cut and serialisation unchanged, and no
graph attribute has to be carried along. An array copied out of file bytes in a new order (rows
permuted, several tensors stacked) is given its origin where it is made (`take_rows`,
`stack_rows`). A copy made any other way has no origin: its bytes travel, which is always correct.

An origin is a list of `Piece`s: runs of bytes at file offsets, read in order. It says where
bytes were, not what they are: the receiver checks what it reads against the weight's content
hash, so a file changed since it was mapped costs a transfer, never a wrong weight.
"""
from __future__ import annotations

import mmap
import os
import threading
import weakref
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from dnet.core.file_hash import file_sha256, stat_key


@dataclass(frozen=True)
class Piece:
    """`count` runs of `size` bytes, the first at file offset `offset`, each `stride` bytes after the last."""
    offset: int
    size: int
    count: int = 1
    stride: int = 0

    @property
    def nbytes(self) -> int:
        return self.size * self.count

    @property
    def end(self) -> int:
        """One past the last byte it reads."""
        return self.offset + (self.count - 1) * self.stride + self.size

    def to_json(self) -> list[int]:
        return [self.offset, self.size, self.count, self.stride]

    @staticmethod
    def from_json(value: object) -> "Piece":
        if not (isinstance(value, list) and len(value) == 4
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
            raise ValueError(f"a piece is [offset, size, count, stride] of non-negative integers, got {value!r:.60}")
        piece = Piece(*value)
        if piece.size < 1 or piece.count < 1 or (piece.count > 1 and piece.stride < piece.size):
            raise ValueError(f"piece {value} reads no bytes or overlapping runs")
        return piece


class MappedFile:
    """One registered read-only mapping of a file: the address range it occupies in this process."""

    def __init__(self, path: str, mapping: np.ndarray, offset: int):
        self.path = os.path.realpath(path)
        self.key = stat_key(self.path)            # the version of the file that was mapped
        self.lo = int(mapping.__array_interface__["data"][0])
        self.hi = self.lo + int(mapping.nbytes)
        self.offset = offset                      # file offset of address `lo`
        self.alive = weakref.ref(mapping)

    def sha256(self) -> str | None:
        """The file's SHA-256, or None if the file on disk is no longer the version mapped."""
        try:
            if stat_key(self.path) != self.key:
                return None
            return file_sha256(self.path)
        except OSError:
            return None


@dataclass(frozen=True)
class Origin:
    file: MappedFile
    pieces: tuple[Piece, ...]

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.pieces)


_lock = threading.Lock()
_mappings: list[MappedFile] = []
_noted: dict[int, tuple[weakref.ref, Origin]] = {}   # id(array) -> (the array, its origin): copies
# What finalizers leave to do, done under the lock by the next caller (`_locked`). A finalizer may run on any
# allocation (the cyclic GC), inside a section holding the lock on the same thread: taking the lock there
# deadlocked a test run (origin_of -> gc -> _unnote). deque.append is atomic, so finalizers take no lock.
_pending: deque[Callable[[], None]] = deque()


@contextmanager
def _locked() -> Iterator[None]:
    with _lock:
        while _pending:
            _pending.popleft()()
        yield


def register_mapping(mapping: np.ndarray, path: str | os.PathLike) -> None:
    """Record that `mapping` (a read-only `np.memmap` of the file at `path`, not a slice of one) holds its
    bytes: arrays inside it get origins. Forgotten when the mapping is."""
    if not isinstance(mapping, np.memmap) or not isinstance(mapping.base, mmap.mmap):
        raise TypeError("register_mapping takes the np.memmap of a whole mapping")
    if mapping.flags.writeable:   # a writable (or copy-on-write) map may no longer hold the file's bytes
        raise ValueError("only read-only mappings have origins")
    entry = MappedFile(str(path), mapping, int(mapping.offset))
    with _locked():
        _mappings.append(entry)
    weakref.finalize(mapping, _pending.append, lambda: _forget(entry))


def _forget(entry: MappedFile) -> None:
    """(The lock held.)"""
    if entry in _mappings:
        _mappings.remove(entry)


def origin_of(array: np.ndarray) -> Origin | None:
    """Where `array`'s bytes are in a registered file, if they are there (or were copied from there)."""
    with _locked():
        noted = _noted.get(id(array))
        if noted is not None and noted[0]() is array:
            return noted[1]
        if not _mappings or not array.flags.c_contiguous or array.nbytes == 0:
            return None
        start = int(array.__array_interface__["data"][0])
        for entry in _mappings:
            if entry.lo <= start and start + array.nbytes <= entry.hi and entry.alive() is not None:
                return Origin(entry, (Piece(entry.offset + start - entry.lo, int(array.nbytes)),))
    return None


def files_of(arrays: Iterable[np.ndarray]) -> list[str]:
    """The registered files that these arrays' bytes come from (in first-seen order)."""
    paths: dict[str, None] = {}
    for array in arrays:
        origin = origin_of(array)
        if origin is not None:
            paths.setdefault(origin.file.path, None)
    return list(paths)


def _note(array: np.ndarray, origin: Origin) -> np.ndarray:
    key = id(array)
    with _locked():
        _noted[key] = (weakref.ref(array), origin)
    weakref.finalize(array, _pending.append, lambda: _unnote(key, origin))
    return array


def _unnote(key: int, origin: Origin) -> None:
    """(The lock held.) Forget a copy's origin, unless its id has been taken by a newer copy since."""
    if key in _noted and _noted[key][1] is origin:
        del _noted[key]


def take_rows(array: np.ndarray, order: Sequence[int] | np.ndarray) -> np.ndarray:
    """`array[order]` (rows picked along axis 0), a new C-contiguous array that keeps its origin."""
    out = np.ascontiguousarray(array[np.asarray(order)])
    origin = origin_of(array)
    if origin is None or len(origin.pieces) != 1 or origin.pieces[0].count != 1 or array.ndim == 0:
        return out
    row = array.nbytes // max(1, array.shape[0])
    if row == 0:
        return out
    base = origin.pieces[0].offset
    return _note(out, Origin(origin.file, _row_pieces(base, row, [int(r) for r in np.asarray(order)])))


def stack_rows(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """`np.concatenate(arrays)` along axis 0; it keeps an origin when every array has one in the same file."""
    out = np.concatenate([np.asarray(a) for a in arrays])
    origins = [origin_of(a) for a in arrays]
    if not origins or any(o is None for o in origins) or len({id(o.file) for o in origins}) != 1:
        return out
    pieces: list[Piece] = []
    for origin in origins:
        for piece in origin.pieces:
            _append(pieces, piece)
    return _note(out, Origin(origins[0].file, tuple(pieces)))


def _row_pieces(base: int, row: int, rows: list[int]) -> tuple[Piece, ...]:
    """Rows `rows` of `row` bytes each from file offset `base`, as few pieces: runs with one step between rows."""
    pieces: list[Piece] = []
    i = 0
    while i < len(rows):
        step = rows[i + 1] - rows[i] if i + 1 < len(rows) else 0
        j = i + 1
        if step > 0:
            while j < len(rows) and rows[j] - rows[j - 1] == step:
                j += 1
        run = Piece(base + rows[i] * row, row, j - i, step * row if j - i > 1 else 0)
        _append(pieces, run)
        i = j
    return tuple(pieces)


def _append(pieces: list[Piece], piece: Piece) -> None:
    """Add `piece`, joining it to the last one where they read adjacent bytes."""
    if piece.count > 1 and piece.stride == piece.size:          # back to back: one run
        piece = Piece(piece.offset, piece.nbytes)
    last = pieces[-1] if pieces else None
    if last is not None and last.count == 1 and piece.count == 1 and last.offset + last.size == piece.offset:
        pieces[-1] = Piece(last.offset, last.size + piece.size)
    else:
        pieces.append(piece)


def gather(buffer: np.ndarray, pieces: Sequence[Piece]) -> np.ndarray:
    """The bytes `pieces` name in `buffer` (a whole file's uint8 map), in order: a view when they are one run,
    a copy otherwise. Raises ValueError when a piece runs past the buffer's end."""
    for piece in pieces:
        if piece.end > buffer.size:
            raise ValueError(f"bytes [{piece.offset}, {piece.end}) run past the end of a {buffer.size}-byte file")
    if len(pieces) == 1 and pieces[0].count == 1:
        return buffer[pieces[0].offset:pieces[0].end]
    parts = [np.lib.stride_tricks.as_strided(buffer[p.offset:p.end], (p.count, p.size), (p.stride, 1)).reshape(-1)
             for p in pieces]
    return np.concatenate(parts)


def take_columns(array: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Bytes [lo, hi) of every row of a 2-D uint8 `array` (a column block of a matrix stored by rows), a new
    C-contiguous array that keeps its origin: one strided piece, a run per row."""
    out = np.ascontiguousarray(array[:, lo:hi])
    origin = origin_of(array)
    if origin is None or len(origin.pieces) != 1 or origin.pieces[0].count != 1 or out.size == 0:
        return out
    rows, row = array.shape[0], array.shape[1] * array.itemsize
    piece = Piece(origin.pieces[0].offset + lo * array.itemsize, (hi - lo) * array.itemsize, rows,
                  row if rows > 1 else 0)
    pieces: list[Piece] = []
    _append(pieces, piece)
    return _note(out, Origin(origin.file, tuple(pieces)))
