"""The wire format: one frame per message, tensors as raw bytes after a small header.

A frame is

    header   20 bytes, network order: magic b"DNET", version u8, type u8, flags u16 (0),
             meta length u32, payload length u64
    meta     UTF-8 JSON object; its "tensors" entry lists [name, dtype, shape] per tensor
             (absent when there are none); the rest is the message's fields, a typed record
             per kind in dnet.cluster.messages, checked there when a side decodes it
    payload  the tensors' bytes, C order, each starting at a multiple of ALIGN bytes

Every length is checked against `Limits` before a byte of the body is read, and the
tensor list must describe the payload exactly, so a peer can never make the reader
allocate more than the limits allow or read past what it declared. Parsing is pure
(`parse_header`, `parse_meta`, `tensor_layout`) so it can be fuzzed without sockets;
`decode_frame` runs the same checks over a byte string.
"""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, NamedTuple

import numpy as np

from dnet.core.dtypes import DType
from dnet.errors import DnetError

MAGIC = b"DNET"
VERSION = 1
HEADER = struct.Struct("!4sBBHIQ")
ALIGN = 64  # payload offsets: cache-line aligned, so received arrays are aligned views
# A frame this small is built as one byte string (one buffer, one send, no partial-send bookkeeping);
# a larger one goes out as views of its tensors, never copied (sendmsg over a list of buffers)
COALESCE_BYTES = 64 << 10


class ProtocolError(DnetError):
    """A frame that breaks the protocol: the connection it came on is closed, nothing else."""


class ConnectionClosed(DnetError):
    """The peer closed the connection cleanly, between two frames."""


class MsgType(IntEnum):
    HELLO = 1      # client -> server: opens the handshake with the client's nonce
    CHALLENGE = 2  # server -> client: server nonce and the server's proof
    AUTH = 3       # client -> server: the client's proof
    WELCOME = 4    # server -> client: handshake accepted
    ERROR = 5      # either way: what went wrong ("reason"), and for which request
    PING = 6       # liveness and round trips; its tensors are counted, not kept
    PONG = 7
    CAPS = 8       # what a worker is: backend, threads, cores, probed speed
    LOAD = 9       # a stage: serialised graph + the hashes of its weights
    NEED = 10      # worker -> coordinator: the weight hashes it does not have yet
    WEIGHTS = 11   # coordinator -> worker: tensors named by their content hash
    LOADED = 12    # a stage is compiled and ready
    ROUTE = 13     # where a stage sends its outputs: the next worker, or back
    ROUTED = 14
    RUN = 15       # one request's tensors into a stage (inputs or activations)
    RESULT = 16    # the last stage's outputs for one request
    RESET = 17     # drop every stage and queued request (before a re-plan)
    STATS = 18     # per-stage counters and timings
    SHUTDOWN = 19
    LINK = 20      # coordinator -> worker: measure the link to another worker; the reply: its latency, bandwidth
    GROUP = 21     # coordinator -> a tensor-parallel member: its peers (it dials those of higher rank)
    GROUPED = 22   # the member's links to every peer are up
    JOIN = 23      # member -> member, first on a connection it dialled: the connection is now their mesh link
    PARTIAL = 24   # member -> member: a partial sum of an all-reduce


WIRE_DTYPES: dict[str, np.dtype] = {d.value: d.np for d in DType} | {"u8": np.dtype(np.uint8)}


@dataclass(frozen=True)
class Limits:
    """The largest frame a reader accepts; anything claiming more is refused unread."""

    max_meta: int = 1 << 20
    max_payload: int = 1 << 31
    max_tensors: int = 4096
    max_rank: int = 16


DEFAULT_LIMITS = Limits()
HANDSHAKE_LIMITS = Limits(max_meta=4096, max_payload=0, max_tensors=0)  # before a peer is trusted


@dataclass(slots=True)   # every frame read or written makes one: slots make it and its reads cheaper
class Message:
    type: MsgType
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def payload_bytes(self) -> int:
        return sum(int(a.nbytes) for a in self.tensors.values())


class Header(NamedTuple):  # named tuples, not dataclasses: cheaper to make, and every frame makes some
    type: MsgType
    meta_len: int
    payload_len: int


class TensorSlot(NamedTuple):
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


_TYPES = {int(t): t for t in MsgType}
_DECODE_JSON = json.JSONDecoder().decode
_SCAN_JSON = json.JSONDecoder().scan_once  # one value from a position: decode without its whitespace handling


def _json_encoder() -> Any:
    """Compact JSON (`json.dumps(obj, separators=(",", ":"))`) with the C encoder made once: `JSONEncoder.encode`
    makes a new one per call, half the cost of writing a small meta."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:   # no C accelerator: the pure-Python encoder, the same text
        return json.JSONEncoder(separators=(",", ":")).encode
    default = json.JSONEncoder().default   # what cannot be written: its TypeError, as json.dumps raises it
    encoder = make(None, default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)

    def encode(value: Any) -> str:
        return "".join(encoder(value, 0))   # (no circular check: metas are trees the code builds)
    return encode


_ENCODE_JSON = _json_encoder()


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


# -- parsing (pure) ----------------------------------------------------------------

def parse_header(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Header:
    if len(data) != HEADER.size:
        raise ProtocolError(f"truncated header: {len(data)} of {HEADER.size} bytes")
    return Header(*unpack_header(data, 0, limits))


def unpack_header(buffer: Any, offset: int, limits: Limits = DEFAULT_LIMITS) -> tuple[MsgType, int, int]:
    """The header at `offset` of a buffer holding at least HEADER.size bytes there: (type, meta length,
    payload length), every field checked (a reader's fast path: no copy, one test when all is well)."""
    magic, version, type_code, flags, meta_len, payload_len = fields = HEADER.unpack_from(buffer, offset)
    msg_type = _TYPES.get(type_code)
    if (msg_type is None or magic != MAGIC or version != VERSION or flags
            or meta_len > limits.max_meta or payload_len > limits.max_payload):
        _refuse_header(fields, limits)
    return msg_type, meta_len, payload_len


def _refuse_header(fields: tuple, limits: Limits) -> None:
    """Raise the error of the first check a header fails."""
    magic, version, type_code, flags, meta_len, payload_len = fields
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version}, this side speaks {VERSION}")
    if type_code not in _TYPES:
        raise ProtocolError(f"unknown message type {type_code}")
    if flags:
        raise ProtocolError(f"reserved flags set: {flags:#06x}")
    if meta_len > limits.max_meta:
        raise ProtocolError(f"oversized meta: {meta_len} bytes claimed, limit {limits.max_meta}")
    if payload_len > limits.max_payload:
        raise ProtocolError(f"oversized payload: {payload_len} bytes claimed, limit {limits.max_payload}")


MAX_META_DEPTH = 32   # a meta nests a few levels; deeper is an attack on the JSON parser's recursion
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def check_meta_depth(data: bytes, limit: int = MAX_META_DEPTH) -> None:
    """Refuse JSON nested deeper than `limit` before parsing it (counting brackets is cheap)."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return
    depth = 0
    for byte in _JSON_STRING.sub(b"", data):
        if byte in b"[{":
            depth += 1
            if depth > limit:
                raise ProtocolError(f"meta nested too deeply: more than {limit} levels")
        elif byte in b"]}":
            depth -= 1


def parse_meta(data: bytes) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ProtocolError(f"meta is not UTF-8 JSON: {err}") from None
    return meta_from_text(text)


def meta_from_text(text: str) -> dict[str, Any]:
    """`parse_meta` of meta bytes already decoded from UTF-8."""
    if text.count("[") + text.count("{") > MAX_META_DEPTH:   # (the brackets are ASCII: the same count as bytes)
        check_meta_depth(text.encode("utf-8"))
    try:
        meta, end = _SCAN_JSON(text, 0)   # the usual case: one compact object, nothing around it
    except (StopIteration, ValueError):
        end = -1
    if end != len(text):
        try:
            meta = _DECODE_JSON(text)    # whitespace around it, or the error to report
        except ValueError as err:
            raise ProtocolError(f"meta is not UTF-8 JSON: {err}") from None
    if type(meta) is not dict:
        raise ProtocolError(f"meta must be a JSON object, got {type(meta).__name__}")
    return meta


def tensor_layout(meta: dict[str, Any], payload_len: int, limits: Limits = DEFAULT_LIMITS) -> list[TensorSlot]:
    """Where each tensor lies in the payload; the list must cover the payload exactly."""
    specs = meta.get("tensors", [])
    if not isinstance(specs, list):
        raise ProtocolError("meta 'tensors' must be a list")
    if len(specs) > limits.max_tensors:
        raise ProtocolError(f"too many tensors: {len(specs)}, limit {limits.max_tensors}")
    slots: list[TensorSlot] = []
    names: set[str] = set()
    end = 0
    for spec in specs:
        slot = _slot(spec, _aligned(end), limits)
        if slot.name in names:
            raise ProtocolError(f"tensor '{slot.name}' listed twice")
        names.add(slot.name)
        end = slot.offset + slot.nbytes
        if end > payload_len:
            raise ProtocolError(f"tensor '{slot.name}' ends at byte {end}, past the {payload_len}-byte payload")
        slots.append(slot)
    if end != payload_len:
        raise ProtocolError(f"payload is {payload_len} bytes but its tensors cover {end}")
    return slots


def _slot(spec: Any, offset: int, limits: Limits) -> TensorSlot:
    if not (isinstance(spec, list) and len(spec) == 3):
        raise ProtocolError(f"tensor spec must be [name, dtype, shape], got {str(spec)[:80]}")
    name, dtype, shape = spec
    if not isinstance(name, str):
        raise ProtocolError(f"tensor name must be a string, got {str(name)[:80]}")
    if dtype not in WIRE_DTYPES:
        raise ProtocolError(f"tensor '{name}': unknown dtype {str(dtype)[:20]!r}")
    if not (isinstance(shape, list) and len(shape) <= limits.max_rank
            and all(type(d) is int and d >= 0 for d in shape)):
        raise ProtocolError(f"tensor '{name}': bad shape {str(shape)[:80]}")
    np_dtype = WIRE_DTYPES[dtype]
    return TensorSlot(name, np_dtype, tuple(shape), offset, math.prod(shape) * np_dtype.itemsize)


def tensors_from_payload(slots: list[TensorSlot], payload: np.ndarray) -> dict[str, np.ndarray]:
    """Views into the payload buffer (no copies); bool tensors must hold only 0 and 1."""
    out = {}
    for s in slots:
        arr = payload[s.offset:s.offset + s.nbytes].view(s.dtype).reshape(s.shape)
        if s.dtype == np.bool_ and arr.size and arr.view(np.uint8).max() > 1:
            raise ProtocolError(f"tensor '{s.name}': bool bytes other than 0 and 1")
        out[s.name] = arr
    return out


def decode_frame(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Message:
    """One whole frame from bytes (the same checks as reading it from a socket)."""
    header = parse_header(bytes(data[:HEADER.size]), limits)
    body_end = HEADER.size + header.meta_len + header.payload_len
    if len(data) != body_end:
        raise ProtocolError(f"frame is {len(data)} bytes, its header declares {body_end}")
    meta = parse_meta(bytes(data[HEADER.size:HEADER.size + header.meta_len]))
    slots = tensor_layout(meta, header.payload_len, limits)
    payload = np.frombuffer(bytes(data[HEADER.size + header.meta_len:]), np.uint8).copy()
    tensors = tensors_from_payload(slots, payload)
    meta.pop("tensors", None)
    return Message(header.type, meta, tensors)


# -- encoding ----------------------------------------------------------------------

def wire_dtype(arr: np.ndarray) -> str:
    name = _WIRE_NAMES.get(arr.dtype)
    if name is None:
        name = _WIRE_NAMES[arr.dtype] = "u8" if arr.dtype == np.uint8 else DType.from_numpy(arr.dtype).value
    return name


_WIRE_NAMES: dict[np.dtype, str] = {}


def frame_buffers(msg: Message) -> list[memoryview | bytes]:
    """The frame as a list of buffers for `sendmsg`: one byte string for a small frame (its tensors
    copied in), else the header and meta, then views of the tensors' bytes (not copies)."""
    if not msg.tensors and "tensors" not in msg.meta:  # a control message: its meta alone (no list, no tensors)
        meta = _ENCODE_JSON(msg.meta).encode()
        return [HEADER.pack(MAGIC, VERSION, int(msg.type), 0, len(meta), 0) + meta]
    arrays = [np.asarray(a, order="C") for a in msg.tensors.values()]  # (ascontiguousarray makes 0-d 1-d)
    specs = [[name, wire_dtype(a), list(a.shape)] for name, a in zip(msg.tensors, arrays)]
    meta = _ENCODE_JSON({**msg.meta, "tensors": specs}).encode()
    pads, end = [], 0
    for a in arrays:
        pads.append(_aligned(end) - end)
        end += pads[-1] + a.nbytes
    bufs: list[memoryview | bytes] = [HEADER.pack(MAGIC, VERSION, int(msg.type), 0, len(meta), end) + meta]
    small = len(bufs[0]) + end <= COALESCE_BYTES
    for pad, a in zip(pads, arrays):
        if pad:
            bufs.append(bytes(pad))
        bufs.append(memoryview(a.reshape(-1).view(np.uint8)))  # (as bytes: bfloat16 has no buffer format)
    return [b"".join(bufs)] if small else bufs


def encode_frame(msg: Message) -> bytes:
    """The whole frame as one byte string (tests and fuzzing; sockets use `frame_buffers`)."""
    return b"".join(bytes(b) for b in frame_buffers(msg))
