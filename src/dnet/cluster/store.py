"""Weights by content hash, cached on a worker's disk: sent once, verified twice.

A weight's hash (the graph serialiser's `weight_hash`) covers its dtype, shape and
bytes, so two weights with the same bytes but different shapes never collide. A blob is verified when it arrives (the
sender cannot slip in other bytes under a name) and when it is read back (a
corrupted cache file is dropped, not used). Files are written to a temporary name
and renamed into place, so a reader never sees half a file, and two workers sharing
a cache directory can write the same blob at once.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from dnet.cluster.protocol import WIRE_DTYPES, wire_dtype
from dnet.core.files import write_atomic
from dnet.errors import WeightError
from dnet.graph.serialize import weight_hash as content_hash

_HEADER_BYTES = 256  # a JSON line {dtype, shape}, space padded; the raw bytes follow


def default_cache_dir() -> Path:
    root = os.environ.get("DNET_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "dnet")
    return Path(root) / "weights"


class WeightStore:
    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise WeightError(f"'{digest[:80]}' is not a weight hash (64 hex digits)")
        return self.root / digest[:2] / f"{digest}.bin"

    def has(self, digest: str) -> bool:
        return self._path(digest).exists()

    def missing(self, digests: list[str]) -> list[str]:
        return [d for d in digests if not self.has(d)]

    def put(self, digest: str, array: np.ndarray) -> None:
        """Store `array` under `digest`, which must be its content hash."""
        actual = content_hash(array)
        if actual != digest:
            raise WeightError(f"weight {digest[:12]}: its bytes hash to {actual[:12]}", hint="corrupt or forged")
        path = self._path(digest)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        header = json.dumps({"dtype": wire_dtype(array), "shape": list(array.shape)}).encode()

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                f.write(header.ljust(_HEADER_BYTES))
                f.write(memoryview(np.asarray(array, order="C").reshape(-1).view(np.uint8)))

        write_atomic(path, write)

    def get(self, digest: str) -> np.ndarray:
        path = self._path(digest)
        try:
            raw = np.fromfile(path, np.uint8)
            header = json.loads(raw[:_HEADER_BYTES].tobytes())
            array = raw[_HEADER_BYTES:].view(WIRE_DTYPES[header["dtype"]]).reshape(header["shape"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise WeightError(f"weight {digest[:12]} not readable from the cache: {err}") from None
        if content_hash(array) != digest:
            path.unlink(missing_ok=True)
            raise WeightError(f"weight {digest[:12]}: cache file corrupt, removed")
        return array
