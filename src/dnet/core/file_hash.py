"""A file's SHA-256, computed once per version of the file and remembered on disk.

Hashing a 100 MB model file takes a noticeable fraction of a second and a 10 GB one many
seconds, so the digest is kept in a small JSON table in dnet's cache directory, keyed by the
file's path, size, modification time and inode: a file rewritten in place or replaced gets a
new key and is hashed again. The table is a cache: losing it (or two processes writing it at
once, the later write winning) only costs a hash.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from dnet.core.files import write_text_atomic

_lock = threading.Lock()
MAX_ENTRIES = 4096   # a table that outgrows this starts afresh (stale versions pile up otherwise)


def cache_file() -> Path:
    root = os.environ.get("DNET_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "dnet")
    return Path(root) / "file-sha256.json"


def stat_key(path: str | os.PathLike) -> str:
    """What identifies one version of the file at `path` (raises OSError if it cannot be read)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return f"{real}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"


def file_sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of the file's bytes (from the cache when this version was hashed before)."""
    key = stat_key(path)
    with _lock:
        table = _read_table()
        digest = table.get(key)
    if isinstance(digest, str):
        return digest
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if stat_key(path) != key:   # written while hashed: the digest belongs to no version, do not keep it
        return digest
    with _lock:
        table = _read_table()
        if len(table) >= MAX_ENTRIES:
            table = {}
        table[key] = digest
        try:
            cache_file().parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(cache_file(), json.dumps(table))
        except OSError:
            pass   # a read-only cache directory: hash again next time
    return digest


def _read_table() -> dict:
    try:
        table = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}
