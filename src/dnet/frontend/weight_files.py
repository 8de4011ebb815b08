"""Reading weight files: a .safetensors file as {name: array}, any failure a WeightError naming the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dnet.errors import WeightError


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file  # an optional dependency, needed only here

    try:
        return load_file(str(path))
    except Exception as err:  # OSError for a missing file; safetensors' own error types for a damaged one
        raise WeightError(f"cannot read weights from {path}: {err}") from None
