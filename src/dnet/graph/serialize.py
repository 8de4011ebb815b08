"""Lossless serialisation of the graph IR, with weights stored by content hash.

A graph becomes a JSON document (nodes, attributes, types, inputs, outputs, names)
and a blob store `{sha256: array}`: the document refers to each weight by the hash of
its dtype, shape and bytes, so a weight shared by many subgraphs travels once and is
verified on arrival. On disk: `graph.json` beside `weights.safetensors` (keyed by hash).

`subgraph` cuts a piece out of a graph as a graph of its own: the form in which a
pipeline stage travels to the node that runs it.
"""
from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import struct
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from safetensors.numpy import save_file as save_tensors

from dnet.core.dtypes import DType
from dnet.core.files import write_atomic
from dnet.core.shapes import Dim, dim_from_json, dim_to_json
from dnet.core.types import TensorType
from dnet.errors import SerializationError, did_you_mean
from dnet.graph.analysis import ancestors, constant_values, verify
from dnet.graph.ir import Graph, Node
from dnet.graph.ops import OPS_BY_NAME, Op
from dnet.graph.rebuild import GraphRebuilder

FORMAT, VERSION = "dnet-graph", 1
GRAPH_FILE, WEIGHTS_FILE = "graph.json", "weights.safetensors"


def weight_hash(array: np.ndarray) -> str:
    """sha256 of a weight's dtype, shape and bytes: its name in the blob store."""
    array = np.ascontiguousarray(array)
    kind = array.dtype.name if array.dtype == np.uint8 else DType.from_numpy(array.dtype).value  # u8: block storage
    h = hashlib.sha256(f"{kind}{list(array.shape)}".encode())
    h.update(array.reshape(-1).view(np.uint8))
    return h.hexdigest()


# -- attribute values -----------------------------------------------------------------------------
# JSON keeps ints, finite floats (repr round-trips exactly), bools, strings and lists. Everything
# else is a one-key object: {"float": "nan"}, {"list": [...]}, {"dim": ...}, {"dtype": "f32"}.
# Tuples are plain JSON lists, since attributes are tuples far more often than lists.

def _encode(v: Any, where: str) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else {"float": repr(v)}
    if isinstance(v, tuple):
        return [_encode(x, where) for x in v]
    if isinstance(v, list):
        return {"list": [_encode(x, where) for x in v]}
    if isinstance(v, Dim):
        return dim_to_json(v)
    if isinstance(v, DType):
        return {"dtype": v.value}
    raise SerializationError(f"{where}: cannot serialise a {type(v).__name__} ({v!r})")


def _decode(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_decode(x) for x in v)
    if not isinstance(v, dict):
        return v
    if len(v) != 1:
        raise ValueError(f"a tagged value has one key, got {sorted(v)}")
    tag, body = next(iter(v.items()))
    if tag == "list":
        return [_decode(x) for x in body]
    if tag == "float" and body in ("inf", "-inf", "nan"):
        return float(body)
    if tag == "dim":
        return dim_from_json(v)
    if tag == "dtype":
        return DType(body)
    raise ValueError(f"unknown tagged value {v!r}")


# -- documents ------------------------------------------------------------------------------------

def _canonical(body: dict) -> str:
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def dumps(graph: Graph) -> tuple[bytes, dict[str, np.ndarray]]:
    """The graph as a JSON document and its weights as `{hash: array}`."""
    blobs, names = {}, {}
    for node in graph.nodes:
        if node.op is Op.CONST:
            name = node.attrs["name"]
            if name not in graph.weights:
                raise SerializationError(f"%{node.id} = const: weight '{name}' is not in graph.weights")
            names[name] = weight_hash(graph.weights[name])
            blobs[names[name]] = graph.weights[name]
    body = {
        "nodes": [_node_to_json(n) for n in graph.nodes],
        "inputs": list(graph.inputs),
        "outputs": list(graph.outputs),
        "output_names": list(graph.output_names),
        "weights": names,
    }
    doc = {"format": FORMAT, "version": VERSION, "sha256": _sha(_canonical(body)), "graph": body}
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode(), blobs


def _node_to_json(n: Node) -> dict:
    where = f"%{n.id} = {n.op}"
    attrs = {k: _encode(v, f"{where}, attribute '{k}'") for k, v in n.attrs.items()}
    return {"op": n.op.name.lower(), "inputs": list(n.inputs), "attrs": attrs, "type": n.type.to_json(),
            "name": n.name}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def loads(doc: bytes | str, weights: Mapping[str, np.ndarray]) -> Graph:
    """The graph of `dumps`; every weight is looked up by hash and checked against it."""
    try:
        outer = json.loads(doc, parse_constant=_not_json, parse_float=_finite)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SerializationError(f"graph document is not valid JSON (truncated or corrupted?): {e}") from None
    body = _check_header(outer)
    graph = Graph()
    for i, obj in enumerate(_field(body, "nodes", list)):
        graph.nodes.append(_node_from_json(i, obj))
    graph.inputs = _ints(_field(body, "inputs", list), "inputs")
    graph.outputs = _ints(_field(body, "outputs", list), "outputs")
    graph.output_names = _field(body, "output_names", list)
    graph.weights = _weights(_field(body, "weights", dict), weights)
    try:
        verify(graph)
    except Exception as e:  # untrusted input: any failure to check it is a bad document
        raise SerializationError(f"graph document describes an invalid graph: {e}") from e
    return graph


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: dumps writes non-finite floats as tagged values
        raise ValueError(f"{text} is out of range")
    return value


def _check_header(outer: Any) -> dict:
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise SerializationError(f"not a {FORMAT} document")
    if outer.get("version") != VERSION:
        raise SerializationError(f"{FORMAT} version {outer.get('version')!r}, this dnet reads version {VERSION}")
    body = outer.get("graph")
    if not isinstance(body, dict) or _sha(_canonical(body)) != outer.get("sha256"):
        raise SerializationError("graph document is corrupted: its content does not match its sha256")
    return body


def _field(obj: dict, key: str, kind: type) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind):
        raise SerializationError(f"graph document: '{key}' should be a {kind.__name__}, got {value!r:.60}")
    return value


def _ints(values: list, what: str) -> list[int]:
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise SerializationError(f"graph document: {what} should be node ids, got {values!r:.60}")
    return values


def _node_from_json(i: int, obj: Any) -> Node:
    try:
        op = OPS_BY_NAME.get(obj["op"])
        if op is None:
            raise SerializationError(f"node %{i}: unknown op '{obj['op']}'", hint=did_you_mean(obj["op"], OPS_BY_NAME))
        attrs = {k: _decode(v) for k, v in obj["attrs"].items()}
        inputs = tuple(_ints(obj["inputs"], f"the inputs of node %{i}"))
        if not isinstance(obj["name"], str):
            raise TypeError(f"name {obj['name']!r} is not a string")
        return Node(i, op, inputs, attrs, TensorType.from_json(obj["type"]), obj["name"])
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as e:
        raise SerializationError(f"node %{i}: malformed entry ({type(e).__name__}: {e})") from None


def _weights(names: dict[str, str], store: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for name, digest in names.items():
        if not isinstance(digest, str):
            raise SerializationError(f"graph document: weight '{name}' should name a sha256, got {digest!r:.60}")
        if digest not in store:
            raise SerializationError(f"missing weight '{name}' (sha256 {digest})")
        array = store[digest]
        actual = weight_hash(array)
        if actual != digest:
            raise SerializationError(f"weight '{name}' does not match its hash: expected sha256 {digest}, "
                                     f"the array given hashes to {actual}")
        out[name] = array
    return out


# -- files ----------------------------------------------------------------------------------------

def save(graph: Graph, directory: str | os.PathLike) -> Path:
    """Write `graph.json` and `weights.safetensors` into `directory`, each atomically."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    doc, blobs = dumps(graph)
    # safetensors' numpy binding lacks bf16: store its bits as u16 and say so in the metadata
    bf16 = {h: "bf16" for h, a in blobs.items() if a.dtype == DType.BF16.np}
    tensors = {h: np.ascontiguousarray(a.view(np.uint16) if h in bf16 else a) for h, a in blobs.items()}
    # weights first: a document on disk never refers to weights that are not there yet
    write_atomic(path / WEIGHTS_FILE, lambda tmp: save_tensors(tensors, tmp, metadata=bf16 or None))
    write_atomic(path / GRAPH_FILE, lambda tmp: Path(tmp).write_bytes(doc))
    return path


def load(directory: str | os.PathLike) -> Graph:
    path = Path(directory)
    try:
        doc = (path / GRAPH_FILE).read_bytes()
    except OSError as e:
        raise SerializationError(f"cannot read {path / GRAPH_FILE}: {e.strerror}") from None
    weights, mapped = _read_weights(path / WEIGHTS_FILE)
    graph = loads(doc, weights)
    if hasattr(mapped, "madvise"):
        # hashing paged every weight in; nothing has written to them, so the pages can go back to
        # the page cache and return when read (a backend that packs a weight never reads it again)
        mapped.madvise(mmap.MADV_DONTNEED)
    return graph


def _read_weights(file: Path) -> tuple[dict[str, np.ndarray], mmap.mmap]:
    """The tensors of a safetensors file as copy-on-write views of one memory map (returned too).

    Nothing is copied: a weight costs resident memory only while its pages are in use.
    (safetensors' own reader maps the file and copies each tensor out of it, which briefly
    holds every weight twice.)
    """
    try:
        with open(file, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        (size,) = struct.unpack("<Q", mapped[:8])
        header = json.loads(mapped[8:8 + size])
        bf16 = header.pop("__metadata__", None) or {}
        return {h: _from_stored(_tensor(mapped, 8 + size, entry), bf16.get(h)) for h, entry in header.items()}, mapped
    except FileNotFoundError:
        raise SerializationError(f"cannot read {file}: no such file") from None
    except (OSError, ValueError, struct.error, KeyError, TypeError) as e:
        raise SerializationError(f"cannot read {file}: {e}") from None


_STORED = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "U16": np.uint16, "U32": np.uint32,
           "U64": np.uint64, "BOOL": np.bool_}


def _tensor(mapped: mmap.mmap, start: int, entry: dict) -> np.ndarray:
    dtype = np.dtype(_STORED[entry["dtype"]])
    begin, end = entry["data_offsets"]
    shape = tuple(int(d) for d in entry["shape"])
    count = math.prod(shape)
    if end - begin != count * dtype.itemsize or start + end > len(mapped):
        raise ValueError(f"tensor of shape {list(shape)} does not fit its byte range [{begin}, {end})")
    return np.frombuffer(mapped, dtype, count, start + begin).reshape(shape)


def _from_stored(array: np.ndarray, dtype: str | None) -> np.ndarray:
    return array.view(DType.BF16.np) if dtype == "bf16" else array


# -- pieces ---------------------------------------------------------------------------------------

def boundary_name(node_id: int) -> str:
    """The input/output name under which a value crosses between pieces of one graph."""
    return f"%{node_id}"


def subgraph(graph: Graph, node_ids: Iterable[int]) -> Graph:
    """The nodes `node_ids` as a graph of their own.

    Values it reads from outside become INPUTs: graph inputs keep their names, other
    values are named by `boundary_name`. Constants it reads (weights, fills and what is
    computed from them alone) are copied in rather than sent. Its outputs are the graph
    outputs among its nodes, under their names, and the values that nodes outside read,
    under `boundary_name`. Pieces run in order, each fed the outputs of the earlier
    ones, compute what the whole graph does.
    """
    chosen = set(node_ids)
    bad = sorted(i for i in chosen if not isinstance(i, int) or not 0 <= i < len(graph.nodes))
    if bad:
        raise SerializationError(f"subgraph: {bad} are not node ids of a graph of {len(graph.nodes)} nodes")
    constants = constant_values(graph)
    outside = {i for n in chosen for i in graph.nodes[n].inputs} - chosen
    copied = chosen | {i for i in outside if i in constants}
    copied |= ancestors(graph, copied & constants)
    rebuilder = GraphRebuilder(graph)
    for i in sorted(outside - copied):
        node = graph.nodes[i]
        name = node.attrs["name"] if node.op is Op.INPUT else boundary_name(i)
        rebuilder.value[i] = rebuilder.add(Op.INPUT, (), {"name": name, "shape": node.shape, "dtype": node.dtype},
                                           node.type, node.name)
    for i in sorted(copied):
        rebuilder.copy(graph.nodes[i])
    _add_piece_outputs(graph, chosen, constants, rebuilder)
    return rebuilder.new


def _add_piece_outputs(graph: Graph, chosen: set[int], constants: set[int], rebuilder: GraphRebuilder) -> None:
    piece, value = rebuilder.new, rebuilder.value
    for name, i in zip(graph.output_names, graph.outputs):
        if i in chosen:
            piece.outputs.append(value[i])
            piece.output_names.append(name)
    read_outside = {i for n in graph.nodes if n.id not in chosen for i in n.inputs} & chosen
    for i in sorted(read_outside - constants):
        if graph.nodes[i].op is not Op.INPUT:  # other pieces take graph inputs by their own name
            piece.outputs.append(value[i])
            piece.output_names.append(boundary_name(i))
