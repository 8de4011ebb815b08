"""The model files a worker holds (`dnet worker --models DIR|FILE`): it reads its stage's weights there.

The worker indexes every file under its model directories (or named itself) by SHA-256 (`dnet.core.file_hash`
remembers the digests, so a restart does not hash gigabytes again) and tells the coordinator
which files it holds (CAPS `models`). For a weight whose bytes lie in such a file
(`dnet.core.origins`) the coordinator sends a reference instead of the bytes (a `messages.FileRef`):

    {"file": sha256, "dtype": "u8", "shape": [rows, row_bytes], "pieces": [[offset, size, count, stride], ...]}

The worker memory-maps the file read-only and takes the weight as a view of it (a copy only
when the pieces are not one run: rows the reader permuted, tensors it stacked), in the form the
file stores it (block-quantized weights stay blocks). The result must hash to the weight's name,
as a weight sent over the wire must: a file changed since it was indexed, or a reference that
does not fit, costs a transfer (the worker asks for the bytes), never a wrong weight.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from dnet.cluster.messages import FileRef
from dnet.cluster.protocol import WIRE_DTYPES
from dnet.core.file_hash import file_sha256, stat_key
from dnet.core.origins import Piece, gather
from dnet.errors import DnetError
from dnet.graph.serialize import weight_hash

log = logging.getLogger("dnet.worker")


class ModelFiles:
    """Files (named, or under directories) by SHA-256; each mapped read-only on first use and kept mapped."""

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self.paths = [Path(p) for p in paths]
        for p in self.paths:
            if not p.exists():
                raise DnetError(f"--models {p}: no such file or directory",
                                hint="a directory holding model files, or a model file")
        self._paths: dict[str, str] = {}     # sha256 -> path
        self._keys: dict[str, str] = {}      # sha256 -> the version of the file that was hashed
        self._maps: dict[str, np.memmap] = {}
        self._lock = threading.Lock()
        for p in self.paths:
            for path in sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]:
                self._index(str(path))

    def _index(self, path: str) -> str | None:
        try:
            key = stat_key(path)
            digest = file_sha256(path)
        except OSError as err:
            log.warning("model file %s not indexed: %s", path, err.strerror or err)
            return None
        with self._lock:
            self._paths.setdefault(digest, path)
            if self._paths[digest] == path:
                self._keys[digest] = key
        return digest

    def digests(self) -> list[str]:
        with self._lock:
            return sorted(self._paths)

    def weight(self, ref: FileRef, digest: str) -> np.ndarray:
        """The weight `ref` names, read from the file it names, checked against its content hash `digest`."""
        dtype, shape = WIRE_DTYPES.get(ref.dtype), list(ref.shape)
        if dtype is None or not all(d >= 0 for d in shape):
            raise DnetError(f"file reference with bad dtype or shape: {ref.dtype}{shape}")
        try:
            pieces = [Piece.from_json(list(p)) for p in ref.pieces]
        except ValueError as err:
            raise DnetError(f"file reference: {err}") from None
        expected = math.prod(shape) * dtype.itemsize
        if not pieces or sum(p.nbytes for p in pieces) != expected:
            raise DnetError(f"file reference reads {sum(p.nbytes for p in pieces)} bytes for a "
                            f"{ref.dtype}{shape} weight of {expected}")
        raw = self._read(ref.file, pieces)
        array = raw.view(dtype).reshape(shape)
        if weight_hash(array) != digest:
            raise DnetError(f"the bytes in {self._paths.get(ref.file, 'the file')} do not hash to "
                            f"weight {digest[:12]}")
        return array

    def _read(self, sha: str, pieces: list[Piece]) -> np.ndarray:
        mapping = self._mapping(sha)
        try:
            return gather(mapping, pieces)
        except ValueError as err:
            raise DnetError(f"file {sha[:12]}: {err}") from None

    def _mapping(self, sha: str) -> np.memmap:
        """The file's read-only map, after checking the file on disk is still the one indexed."""
        with self._lock:
            path, key = self._paths.get(sha), self._keys.get(sha)
        if path is None:
            raise DnetError(f"no model file with SHA-256 {sha[:12]} here")
        try:
            current = stat_key(path)
        except OSError as err:
            self._drop(sha)
            raise DnetError(f"model file {path} is gone: {err.strerror or err}") from None
        if current != key:            # rewritten or replaced: hashed again, used only if still the same bytes
            self._drop(sha)
            if self._index(path) != sha:
                raise DnetError(f"model file {path} changed since it was indexed")
        with self._lock:
            mapping = self._maps.get(sha)
            if mapping is None:
                try:
                    mapping = self._maps[sha] = np.memmap(path, dtype=np.uint8, mode="r")
                except (OSError, ValueError) as err:   # an empty file cannot be mapped
                    raise DnetError(f"cannot map model file {path}: {err}") from None
            return mapping

    def _drop(self, sha: str) -> None:
        with self._lock:
            self._paths.pop(sha, None)
            self._keys.pop(sha, None)
            self._maps.pop(sha, None)
