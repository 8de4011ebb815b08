"""Writing a file atomically: readers see the old file or the new one, never half of one."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def write_atomic(file: str | os.PathLike, write: Callable[[str], object]) -> None:
    """`write(tmp)` a temporary file beside `file`, flush it to disk, then rename it over `file`.
    The temporary name is unique, so two processes writing the same file at once are safe."""
    file = Path(file)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.")
    os.close(fd)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the bytes are on disk before the name points at them
        finally:
            os.close(fd)
        os.replace(tmp, file)
    except BaseException:
        os.unlink(tmp)
        raise


def write_text_atomic(file: str | os.PathLike, text: str) -> None:
    write_atomic(file, lambda tmp: Path(tmp).write_text(text))
