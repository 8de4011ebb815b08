"""A stage graph as it travels: the graph IR's own document plus its weights by content hash.

`dnet.graph.serialize` names every weight by `weight_hash` (dtype, shape, bytes); the
transport uses the same names, so a worker's cache, the document and the check on
arrival all agree, and a weight shared by several stages is sent to a worker once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

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
