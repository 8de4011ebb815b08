"""The tuning cache: the kernel choices `dnet tune` measured best on this host, kept on disk.

One JSON file per host fingerprint (`<cache dir>/tune/<fingerprint>.json`), mapping a kernel's key
(a hash of the kernel and what it runs with, made by the layer that tunes it) to a record of plain
data: the chosen parameters, the seconds measured for them and for the untuned default, and where
they were measured. The file is written whole through `files.write_atomic`, so a process killed
mid-write leaves the old file or the new one, never half of one; a file that is not a tuning cache
(written by hand, another version) is read as empty rather than trusted.

Plain data only: which parameters a record holds is the tuning layer's business (`kernel.tune`),
so this module knows nothing of kernels.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from dnet.core.files import write_text_atomic

FORMAT = "dnet-tune/1"


def cache_root() -> Path:
    """$DNET_CACHE_DIR, else ~/.cache/dnet (under $XDG_CACHE_HOME when set), as the compile cache."""
    env = os.environ.get("DNET_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dnet"


class TuneCache:
    """The tuned records of one host: `get(key)`, `update(records)` (merged and written atomically)."""

    def __init__(self, fingerprint: str, root: str | os.PathLike | None = None):
        self.fingerprint = fingerprint
        self.path = Path(root if root is not None else cache_root()) / "tune" / f"{fingerprint}.json"

    @classmethod
    def at(cls, path: str | os.PathLike) -> "TuneCache":
        """The cache whose file is `path` (`<root>/tune/<fingerprint>.json`)."""
        path = Path(path)
        return cls(path.stem, path.parent.parent)

    def load(self) -> dict[str, dict[str, Any]]:
        """Every record, by key; {} when there is no file or it is not a tuning cache of this host."""
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if (not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("host") != self.fingerprint
                or not isinstance(doc.get("records"), dict)):
            return {}
        return {k: v for k, v in doc["records"].items() if isinstance(v, dict)}

    def get(self, key: str) -> dict[str, Any] | None:
        return self.load().get(key)

    def update(self, records: Mapping[str, Mapping[str, Any]]) -> None:
        """Merge `records` over what the file holds now (another process may have added some) and
        write the result atomically."""
        merged = {**self.load(), **{k: dict(v) for k, v in records.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"format": FORMAT, "host": self.fingerprint, "records": merged}
        write_text_atomic(self.path, json.dumps(doc, indent=1, sort_keys=True))

    def matmul_rate(self, backend: str, threads: int | None = None) -> float | None:
        """FLOP/s of this host's tuned kernels for `backend` together (their flops over their seconds, at
        the sizes each was tuned at; on `threads` threads where given), or None when none is recorded:
        what a cost model may take as the node's matmul rate on the shapes its models have."""
        flops = seconds = 0.0
        for r in self.load().values():
            if r.get("backend") != backend or (threads is not None and r.get("threads") != threads):
                continue
            f, t = r.get("flops"), r.get("seconds")
            if isinstance(f, (int, float)) and isinstance(t, (int, float)) and f > 0 and t > 0:
                flops, seconds = flops + f, seconds + t
        return flops / seconds if seconds else None
