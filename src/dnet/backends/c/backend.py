"""The C backend: graph -> program -> C source -> cached shared library -> CModule.

Registered as target "c". Its runner saves the compiled library, the program (JSON)
and the packed weights next to the serialised graph, and `CBackend.load` runs them
again without a compiler.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from dnet.backends.c.device import CLoader
from dnet.backends.c.library import render_library
from dnet.backends.c.packing import PanelPacker
from dnet.backends.c.runtime import CModule
from dnet.backends.c.winograd import winograd_mode
from dnet.core import progress
from dnet.core.tuning import TuneCache
from dnet.errors import SerializationError
from dnet.graph.ir import Graph
from dnet.hardware import Host, detect
from dnet.kernel.target import CpuTarget
from dnet.kernel.tune import apply_tuned
from dnet.program.collective import Collective
from dnet.program.build import Compiled, build_program
from dnet.program.instructions import WEIGHT, Program
from dnet.program.inputs import GatherChecks

FORMAT = "dnet-c/1"
LIB, PROGRAM, WEIGHTS = "c_lib.so", "c_program.json", "c_weights.bin"


class CRunner:
    """What `dnet.compile(..., target='c')` runs: a CModule, plus the source it was built from."""

    def __init__(self, module: CModule, compiled: Compiled | None = None, source: str = ""):
        self.module = module
        self.compiled = compiled
        self.source = source
        self.gathered = GatherChecks()

    @property
    def program(self) -> Program:
        return self.module.program

    def run(self, inputs: Mapping[str, np.ndarray], collective: Collective | None = None) -> dict[str, np.ndarray]:
        self.gathered.check(inputs)   # the kernels clamp an index; the reference raises
        return self.module.run(inputs, collective=collective)

    def save(self, directory: Path) -> None:
        save_compiled(self.module, directory)


class CBackend:
    name = "c"

    def prepare(self, graph: Graph, threads: int | None = None, cache_dir: str | Path | None = None,
                host: Host | None = None, activation_bits: int = 16, tuned: bool = True) -> CRunner:
        """`activation_bits`: how matmuls against GGUF block weights quantize their activations, 16 (results
        within float rounding of f32) or 8 (llama.cpp's scheme: prefill twice as fast, a few % of logits off).
        `tuned`: give each f32 Gemm the tile `dnet tune` measured best on this host for it, where the
        host's tuning cache has one (else, and with False, the analytic tile)."""
        host = host or detect()
        # depthwise convolutions too (backends/c/conv.py), and 3x3 ones as Winograd's where the rule says
        target = CpuTarget(host, threads, conv_group_rows=1, conv_winograd=winograd_mode())
        compiled = build_program(graph, target, PanelPacker())
        if tuned:
            records = TuneCache(host.fingerprint(), cache_dir).load()
            if records:   # the tiles' register blocks are unchanged, so the packed weights still fit
                compiled.kernels = apply_tuned(compiled.kernels, records, target.thread_count(), "c")
        source = render_library(compiled.kernels, compiled.program, activation_bits)
        library = CLoader(cache_dir, host).library(source)
        runner = CRunner(CModule(compiled.program, library, compiled.weights, threads), compiled, source)
        runner.gathered = GatherChecks.of_graph(graph)
        return runner

    def load(self, graph: Graph, directory: Path, threads: int | None = None) -> CRunner:
        runner = CRunner(load_compiled(directory, graph.weights, threads))
        runner.gathered = GatherChecks.of_graph(graph)
        return runner


def save_compiled(module: CModule, directory: str | Path) -> Path:
    """Library, program and the weights the graph does not hold as they are (packed ones)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(module.library, out / LIB)
    offsets, position = {}, 0
    with open(out / WEIGHTS, "wb") as f:
        for buf, array in sorted(module.weights.items()):
            if "@" not in module.program.buffers[buf].name:
                continue                     # a plain weight: the serialised graph has it
            pad = -position % 64
            f.write(b"\0" * pad)
            offsets[str(buf)] = position + pad
            f.write(np.ascontiguousarray(array).tobytes())
            position += pad + array.nbytes
    program = module.program.to_json()
    manifest = {"format": FORMAT, "host": detect().fingerprint(), "program": program, "weights": offsets,
                "sha256": {LIB: _file_sha256(out / LIB), WEIGHTS: _file_sha256(out / WEIGHTS),
                           "program": _json_sha256(program)}}
    (out / PROGRAM).write_text(json.dumps(manifest))
    return out


def load_compiled(directory: str | Path, graph_weights: Mapping[str, np.ndarray],
                  threads: int | None = None) -> CModule:
    root = Path(directory)
    try:
        manifest = json.loads((root / PROGRAM).read_text())
    except (OSError, ValueError) as err:
        raise SerializationError(f"{root}: no compiled C program ({err})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("weights"), dict):
        raise SerializationError(f"{root}: {PROGRAM} is not a dnet C manifest")
    if manifest.get("format") != FORMAT:
        raise SerializationError(f"{root}: C program format {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("host") != detect().fingerprint():
        raise SerializationError(f"{root}: compiled for another CPU", hint="compile it again on this machine")
    _verify_digests(root, manifest)
    program = Program.from_json(manifest["program"])
    size = (root / WEIGHTS).stat().st_size
    blob = np.memmap(root / WEIGHTS, dtype=np.uint8, mode="r") if size else None
    weights = {}
    for b in program.buffers:
        if b.kind != WEIGHT:
            continue
        if str(b.id) in manifest["weights"]:
            count = int(np.prod(b.shape, dtype=np.int64))
            offset = manifest["weights"][str(b.id)]
            # the offsets sit outside the hashed program: an odd one is a dnet error, not numpy's
            if type(offset) is not int or offset < 0 or offset + count * b.dtype.np.itemsize > size:
                raise SerializationError(f"{root}: weight '{b.name}' has a bad offset {offset!r} in {PROGRAM}")
            weights[b.id] = np.frombuffer(blob, b.dtype.np, count, offset).reshape(b.shape)
        elif b.name in graph_weights:
            weights[b.id] = graph_weights[b.name]
        else:
            raise SerializationError(f"{root}: weight '{b.name}' is missing")
    return CModule(program, root / LIB, weights, threads)


_BLOCK = 1 << 20


def _file_sha256(path: Path, read: Callable[[], None] = lambda: None) -> str:
    """The file's SHA-256, read a MiB at a time; `read()` is called after each MiB."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
            read()
    return digest.hexdigest()


def _json_sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _verify_digests(root: Path, manifest: dict) -> None:
    """The library is native code and the weights feed it: both must be the bytes that were saved
    (a flipped byte gave wrong output, a truncated library SIGBUS)."""
    digests = manifest.get("sha256")
    if not isinstance(digests, dict) or not all(isinstance(digests.get(k), str) for k in (LIB, WEIGHTS, "program")):
        raise SerializationError(f"{root}: {PROGRAM} has no valid 'sha256' field",
                                 hint="save the artefact again with this dnet")
    try:
        # hashing reads every byte of the weights: a second or more per GiB, so it is counted in MiB
        sizes = [(root / name).stat().st_size for name in (LIB, WEIGHTS)]
        with progress.task(f"verify {root.name}", total=sum(-(-size // _BLOCK) for size in sizes),
                           unit="MiB") as task:
            found = {name: _file_sha256(root / name, task.advance) for name in (LIB, WEIGHTS)}
    except OSError as err:
        raise SerializationError(f"{root}: {err.strerror}: {err.filename}") from None
    found["program"] = _json_sha256(manifest.get("program"))
    for name, digest in found.items():
        if digest != digests[name]:
            raise SerializationError(f"{root}: {name} does not match its SHA-256 in {PROGRAM} "
                                     "(changed or damaged since it was saved)")
