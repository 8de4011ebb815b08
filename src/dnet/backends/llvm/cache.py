"""The LLVM backend's on-disk cache of machine code: one object file per (IR, LLVM, host CPU).

Optimising and compiling MiniLM's module takes LLVM about 1.4 s; loading its object takes
milliseconds. An entry is the SHA-256 of the object (64 hex digits) followed by the object,
written atomically (`core.files.write_atomic`); an entry whose digest does not match (a torn
write, a stray edit) is discarded and rebuilt, never loaded. The key covers the IR text, the
llvmlite/LLVM version and the host's triple, CPU name and features, so a cache moved to another
CPU is not reused.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from dnet.backends.c.cache import cache_dir
from dnet.core.files import write_atomic

FORMAT = "dnet-llvm-object/1"


class ObjectCache:
    def __init__(self, root: Path | None = None):
        self.root = (Path(root) if root is not None else cache_dir()) / "llvm"
        self.hits = self.misses = 0

    @staticmethod
    def key(source: str, target: str) -> str:
        """`target`: everything about the compiler and the CPU that changes the machine code."""
        return hashlib.sha256("\n--\n".join([FORMAT, target, source]).encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.root / f"{key}.o"

    def get(self, key: str) -> bytes | None:
        """The object stored under `key`, or None (absent, or damaged: then removed)."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except OSError:
            self.misses += 1
            return None
        digest, obj = data[:64], data[64:]
        if hashlib.sha256(obj).hexdigest().encode() != digest:
            path.unlink(missing_ok=True)
            self.misses += 1
            return None
        self.hits += 1
        return obj

    def put(self, key: str, obj: bytes) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path(key), lambda tmp: Path(tmp).write_bytes(
                hashlib.sha256(obj).hexdigest().encode() + obj))
        except OSError:
            pass                           # a read-only cache only costs the next compile its time
