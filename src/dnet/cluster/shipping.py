"""A stage graph as it travels: the graph IR's own document plus its weights by content hash.

`dnet.graph.serialize` names every weight by `weight_hash` (dtype, shape, bytes); the
transport uses the same names, so a worker's cache, the document and the check on
arrival all agree, and a weight shared by several stages is sent to a worker once. A weight
that lies in a model file the worker holds travels as a reference to its bytes there
(`file_references`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection

import numpy as np

from dnet.cluster.messages import FileRef
from dnet.cluster.protocol import wire_dtype
from dnet.core.origins import origin_of
from dnet.graph.ir import Graph
from dnet.graph.serialize import dumps, loads


@dataclass
class PackedGraph:
    doc: bytes
    arrays: dict[str, np.ndarray]      # content hash -> array


def pack(graph: Graph) -> PackedGraph:
    doc, weights = dumps(graph)
    return PackedGraph(doc, dict(weights))


def unpack(doc: bytes, hashes: list[str], fetch: Callable[[str], np.ndarray]) -> Graph:
    """Rebuild a graph; `fetch(hash)` returns a verified array from the worker's cache."""
    return loads(doc, {h: fetch(h) for h in hashes})


def file_references(arrays: dict[str, np.ndarray], files: Collection[str]) -> dict[str, FileRef]:
    """For the weights (by content hash) whose bytes lie in one of `files` (SHA-256s a worker holds): where
    they are, for the worker to read them there (`dnet.cluster.model_files`) instead of receiving them."""
    if not files:
        return {}
    refs: dict[str, FileRef] = {}
    shas: dict[int, str | None] = {}     # per mapped file: its SHA-256, worked out once
    for digest, array in arrays.items():
        origin = origin_of(array)
        if origin is None:
            continue
        if id(origin.file) not in shas:
            shas[id(origin.file)] = origin.file.sha256()
        sha = shas[id(origin.file)]
        if sha in files:
            refs[digest] = FileRef(sha, wire_dtype(array), tuple(array.shape),
                                   tuple(tuple(p.to_json()) for p in origin.pieces))
    return refs
