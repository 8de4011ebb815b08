"""The on-disk compile cache: one immutable directory per (source, compiler, flags, CPU).

An entry is built in a private temporary directory and renamed into place in one
step, so no reader ever sees half an entry, and two processes compiling the same key
at once both succeed (the second rename finds the entry there and drops its own).
Each entry records the SHA-256 of its library; an entry whose library does not match
(a torn disk write, a stray edit) is moved aside and rebuilt, never loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from dnet.backends.c.compiler import Compiler, compile_shared
from dnet.core import progress
from dnet.errors import BackendError

LIB, SOURCE, MANIFEST = "lib.so", "kernels.c", "entry.json"


def cache_dir() -> Path:
    """$DNET_CACHE_DIR, else ~/.cache/dnet (under $XDG_CACHE_HOME when set)."""
    env = os.environ.get("DNET_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dnet"


def cache_key(source: str, compiler: Compiler, cpu: str) -> str:
    text = "\n--\n".join([source, compiler.key(), cpu])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class CompileCache:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else cache_dir()
        self.hits = self.misses = 0

    def entry(self, key: str) -> Path:
        return self.root / "c" / key

    def get_or_build(self, source: str, compiler: Compiler, cpu: str) -> Path:
        """The path of a shared library built from `source`, compiling only on a miss."""
        key = cache_key(source, compiler, cpu)
        entry = self.entry(key)
        if self._valid(entry):
            self.hits += 1
            return entry / LIB
        self.misses += 1
        self._discard(entry)
        tmp = entry.parent / f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            (tmp / SOURCE).write_text(source)
            # one compiler call on the whole library: a step with no count inside it (a hit skips it)
            with progress.task("compile C library"):
                compile_shared(compiler, tmp / SOURCE, tmp / LIB)
            (tmp / MANIFEST).write_text(json.dumps({"sha256": _sha256(tmp / LIB), "compiler": compiler.key(),
                                                    "cpu": cpu}))
            try:
                os.rename(tmp, entry)
            except OSError:            # another process put an entry there first: use it
                if not self._valid(entry):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BackendError as err:
            failed = self.root / "c" / "failed" / f"{key}.c"
            failed.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp / SOURCE, failed)
            shutil.rmtree(tmp, ignore_errors=True)
            message = err.message.replace(str(tmp / SOURCE), str(failed))
            raise BackendError(message, hint=f"generated source: {failed}") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return entry / LIB

    def _valid(self, entry: Path) -> bool:
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
            return _sha256(entry / LIB) == manifest["sha256"]
        except (OSError, ValueError, KeyError):
            return False

    def _discard(self, entry: Path) -> None:
        """Move a corrupt entry aside (atomically) and delete it."""
        if not entry.exists():
            return
        trash = entry.parent / f".trash.{uuid.uuid4().hex[:8]}"
        try:
            os.rename(entry, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)
