"""CUDA C -> PTX or a cubin with NVRTC (through cuda-bindings), cached on disk.

NVRTC needs no GPU: it compiles for a named architecture (`compute_XX` gives PTX, which the
driver compiles for its GPU when the module loads; `sm_XX` gives a cubin, machine code for that
GPU family, which also skips the driver's PTX compiler and its limits on the PTX version it
reads). The runtime asks for a cubin of its device's architecture; the tests compile every op's
kernels for a fixed one on machines without a GPU, so NVRTC's errors fail them there too.

An entry of the cache is keyed by the source, the architecture, the options and NVRTC's version,
and stored as the SHA-256 of the image followed by the image, written atomically; an entry whose
digest does not match is discarded and rebuilt, never loaded.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

from dnet.backends.c.cache import cache_dir
from dnet.core.files import write_atomic
from dnet.errors import BackendError

INSTALL_HINT = "pip install 'dnet[cuda]' (cuda-bindings and NVIDIA's NVRTC wheel)"
# the helpers of the prelude are device functions without annotations; no fast-math: exp, tanh and
# erf keep CUDA's documented accuracy (a few ulp), which the tests' tolerances assume
OPTIONS = ("-default-device", "--std=c++17")
FORMAT = "dnet-cuda-image/1"


def nvrtc() -> Any:
    """The `cuda.bindings.nvrtc` module with its library loaded, or a one-line BackendError."""
    try:
        from cuda.bindings import nvrtc as module
    except ImportError:
        raise BackendError("target 'cuda' needs cuda-bindings, which is not installed", hint=INSTALL_HINT) from None
    try:
        version()
    except Exception as err:    # noqa: BLE001 - cuda-pathfinder's errors when libnvrtc is missing
        raise BackendError(f"NVRTC cannot be loaded: {str(err).splitlines()[0]}", hint=INSTALL_HINT) from None
    return module


@functools.lru_cache(maxsize=1)
def version() -> tuple[int, int]:
    from cuda.bindings import nvrtc as module

    err, major, minor = module.nvrtcVersion()
    _check(module, err, "nvrtcVersion")
    return int(major), int(minor)


def supported_architectures() -> list[int]:
    """The sm_XX numbers (80, 90, ...) this NVRTC compiles for."""
    module = nvrtc()
    err, archs = module.nvrtcGetSupportedArchs()
    _check(module, err, "nvrtcGetSupportedArchs")
    return sorted(int(a) for a in archs)


def _check(module: Any, err: Any, what: str) -> None:
    if err != module.nvrtcResult.NVRTC_SUCCESS:
        _, name = module.nvrtcGetErrorString(err)
        raise BackendError(f"NVRTC: {what} failed: {name.decode(errors='replace')}")


def compile_cuda(source: str, arch: str, name: str = "dnet.cu") -> bytes:
    """`source` compiled for `arch` ("sm_90": a cubin; "compute_90": PTX text, NUL-terminated).
    A compile error is a BackendError carrying NVRTC's first error lines."""
    module = nvrtc()
    err, prog = module.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], [])
    _check(module, err, "nvrtcCreateProgram")
    try:
        options = [f"--gpu-architecture={arch}".encode(), *(o.encode() for o in OPTIONS)]
        err, = module.nvrtcCompileProgram(prog, len(options), options)
        if err != module.nvrtcResult.NVRTC_SUCCESS:
            errors = [line for line in _log(module, prog).splitlines() if "error" in line]
            raise BackendError("NVRTC refused dnet's CUDA kernels: " + " | ".join(errors[:4] or ["(no log)"]),
                               hint=f"architecture {arch}, NVRTC {'.'.join(map(str, version()))}")
        if arch.startswith("sm_"):
            err, size = module.nvrtcGetCUBINSize(prog)
            _check(module, err, "nvrtcGetCUBINSize")
            image = b" " * size
            err, = module.nvrtcGetCUBIN(prog, image)
            _check(module, err, "nvrtcGetCUBIN")
        else:
            err, size = module.nvrtcGetPTXSize(prog)
            _check(module, err, "nvrtcGetPTXSize")
            image = b" " * size
            err, = module.nvrtcGetPTX(prog, image)
            _check(module, err, "nvrtcGetPTX")
        return image
    finally:
        module.nvrtcDestroyProgram(prog)


def _log(module: Any, prog: Any) -> str:
    err, size = module.nvrtcGetProgramLogSize(prog)
    log = b" " * size
    module.nvrtcGetProgramLog(prog, log)
    return log.rstrip(b"\0").decode(errors="replace")


class ImageCache:
    """Compiled images on disk under `<cache>/cuda/`, one file per (source, architecture, NVRTC)."""

    def __init__(self, root: Path | None = None):
        self.root = (Path(root) if root is not None else cache_dir()) / "cuda"
        self.hits = self.misses = 0

    @staticmethod
    def key(source: str, arch: str) -> str:
        nvrtc_version = ".".join(map(str, version()))
        text = "\n--\n".join([FORMAT, arch, nvrtc_version, " ".join(OPTIONS), source])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.root / f"{key}.bin"

    def get_or_compile(self, source: str, arch: str) -> bytes:
        key = self.key(source, arch)
        cached = self._get(key)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        image = compile_cuda(source, arch)
        self._put(key, image)
        return image

    def _get(self, key: str) -> bytes | None:
        try:
            data = self.path(key).read_bytes()
        except OSError:
            return None
        digest, image = data[:64], data[64:]
        if hashlib.sha256(image).hexdigest().encode() != digest:
            self.path(key).unlink(missing_ok=True)     # a torn write or a stray edit: rebuilt, never loaded
            return None
        return image

    def _put(self, key: str, image: bytes) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path(key), lambda tmp: Path(tmp).write_bytes(
                hashlib.sha256(image).hexdigest().encode() + image))
        except OSError:
            pass                           # a read-only cache only costs the next compile its time
