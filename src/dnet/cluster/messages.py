"""The cluster's control messages: one typed record per kind, checked on receipt.

Each kind of control message is a record here (`dnet.cluster.codec`: a frozen dataclass whose
fields are the frame's JSON meta), so the wire is what it was and tensors still travel beside
it, uncopied. Some kinds travel both ways with different contents (CAPS asks, and CAPS
answers): which record a frame becomes depends on who reads it, so each reader decodes through
its own table, `WORKER_ACCEPTS` or `COORDINATOR_ACCEPTS`. A message that does not decode is a
`MessageError` naming the message and the field; a worker answers it (with the request's ids,
`reply_ids`, where they are readable) and a coordinator drops the worker that sent it, as for
any other protocol error.

A new message: a `@record` class with `kind` (its `MsgType`), `tensors` (those it must carry)
and annotated fields, listed in the table of the side that reads it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

# the codec's names are used through this module too (`from dnet.cluster.messages import Run, encode`)
from dnet.cluster.codec import (  # noqa: F401
    Accepted, MessageError, Record, decode_as, encode, parse, record, to_json,
)
from dnet.cluster.link import LinkShape
from dnet.cluster.protocol import MsgType
from dnet.topology.model import Device


def reply_ids(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The request ids of a message that did not decode, where they have the right types: an error reply
    carries them so its sender can tell which request failed."""
    out = {}
    for name, kind in (("rid", int), ("epoch", int), ("key", str)):
        if type(meta.get(name)) is kind:
            out[name] = meta[name]
    return out


def _positive(value: int, what: str) -> None:
    if value < 1:
        raise ValueError(f"'{what}' must be a positive integer, got {value}")


# -- the handshake (auth.py) ----------------------------------------------------------------------

@record
class Hello(Record):
    kind = MsgType.HELLO
    client_nonce: str           # 32 bytes as hex


@record
class Challenge(Record):
    kind = MsgType.CHALLENGE
    server_nonce: str
    proof: str                  # the server's HMAC over both nonces


@record
class Auth(Record):
    kind = MsgType.AUTH
    proof: str


@record
class Welcome(Record):
    kind = MsgType.WELCOME


# -- either way --------------------------------------------------------------------------------

@record
class Error(Record):
    """What went wrong, and for which request (ids absent when the failure was not a request's)."""

    kind = MsgType.ERROR
    reason: str
    rid: int | None = None
    epoch: int | None = None
    key: str | None = None
    stage: int | None = None


@record
class Ping(Record):
    """Liveness and round trips; any tensors it carries are counted and dropped."""

    kind = MsgType.PING
    heartbeat: bool = False     # the coordinator's heartbeat: its PONG is not a reply anyone waits for


@record
class Pong(Record):
    kind = MsgType.PONG
    heartbeat: bool = False
    bytes: int = 0              # the PING's tensor bytes


@record
class Reset(Record):
    """Drop a session's stages and queued requests (asked, and answered the same)."""

    kind = MsgType.RESET
    session: str


@record
class Shutdown(Record):
    kind = MsgType.SHUTDOWN


# -- coordinator -> worker --------------------------------------------------------------------

@record
class CapsQuery(Record):
    kind = MsgType.CAPS
    probe: bool = False         # measure the device too (takes a while)


@record
class Load(Record):
    """A stage: its serialised graph (tensor 'graph'), the hashes of its weights, and optionally (tensor
    'mapped', a JSON document of `FileRef`s by hash) where a model file held by the worker has them."""

    kind = MsgType.LOAD
    tensors = ("graph",)
    key: str                    # session/epoch/stage
    weights: tuple[str, ...]
    stage: int = 0
    slots: int = 1              # sequences of state a stateful stage holds
    rank: int = 0               # of a tensor-parallel group's member (dnet.cluster.collective)
    size: int = 1               # members in its group (1: not a member of one)

    def __post_init__(self) -> None:
        _positive(self.slots, "slots")
        _positive(self.size, "size")
        if not 0 <= self.rank < self.size:
            raise ValueError(f"'rank' {self.rank} is outside a group of {self.size}")


@dataclass(frozen=True)
class FileRef:
    """Where a weight lies in a model file a worker holds (dnet.cluster.model_files)."""

    file: str                   # the file's SHA-256
    dtype: str                  # a wire dtype
    shape: tuple[int, ...]
    pieces: tuple[tuple[int, int, int, int], ...]   # [offset, size, count, stride] (dnet.core.origins.Piece)


@record
class Weights(Record):
    """Weights for a stage being loaded, as tensors named by their content hash."""

    kind = MsgType.WEIGHTS
    key: str
    last: bool = False


@dataclass(frozen=True)
class NextStage:
    host: str
    port: int
    key: str


@record
class Route(Record):
    """Where a stage sends its outputs: the next stage's worker, or (None) back; shaped like `shape`."""

    kind = MsgType.ROUTE
    key: str
    next: NextStage | None = None
    shape: LinkShape | None = None


@dataclass(frozen=True)
class Peer:
    rank: int
    host: str
    port: int
    key: str                    # its stage
    shape: LinkShape | None = None   # the link to it from the member told: shaped on a local cluster


@dataclass(frozen=True)
class Group(Record):
    """A tensor-parallel member's peers: it dials those of higher rank (JOIN); the others dial it. Its
    partials to a peer are sent shaped like that peer's `shape`, where the coordinator shapes links."""

    kind = MsgType.GROUP
    key: str
    peers: tuple[Peer, ...]


@dataclass(frozen=True)
class Join(Record):
    """First on a connection one member dialled to another: the connection becomes their mesh link, read
    by the receiving member's compute thread from now on."""

    kind = MsgType.JOIN
    key: str                    # the receiving member's stage
    rank: int                   # the sender's


@dataclass(frozen=True)
class Partial(Record):
    """One member's partial sum (tensor 'x') of the group's all-reduce number `n`."""

    kind = MsgType.PARTIAL
    tensors = ("x",)
    n: int


Hop = tuple[int, str, float]    # (stage, worker name, compute seconds) of one stage a request went through


@record
class Run(Record):
    """One request's tensors into a stage (inputs, or the previous stage's activations)."""

    kind = MsgType.RUN
    key: str
    rid: int
    epoch: int
    slots: tuple[int, int] | None = None    # (first, count): the state slots of its sequences
    trace: tuple[Hop, ...] = ()


@record
class StatsQuery(Record):
    kind = MsgType.STATS


@record
class LinkProbe(Record):
    """Measure the link to the worker at host:port (latency, and bandwidth with `bytes`-sized pings)."""

    kind = MsgType.LINK
    host: str
    port: int
    bytes: int = 4 << 20

    def __post_init__(self) -> None:
        if not 0 < self.bytes <= 256 << 20:
            raise ValueError(f"'bytes' must be in (0, 256 MiB], got {self.bytes}")


# -- worker -> coordinator --------------------------------------------------------------------

@record
class Caps(Record):
    """What a worker is."""

    kind = MsgType.CAPS
    name: str
    backend: str
    threads: int | None
    slowdown: float
    cores: tuple[int, ...]
    pid: int
    host: str
    advertise: str              # host:port other workers reach it at
    tls: bool
    models: tuple[str, ...] = ()    # SHA-256s of the model files it holds
    device: Device | None = None    # its probed device, when asked


@record
class Need(Record):
    kind = MsgType.NEED
    key: str
    hashes: tuple[str, ...]     # weights it does not have


@record
class Loaded(Record):
    kind = MsgType.LOADED
    key: str
    compile_s: float
    mapped_bytes: int = 0       # weight bytes read from its own model files


@dataclass(frozen=True)
class Grouped(Record):
    kind = MsgType.GROUPED
    key: str


@record
class Routed(Record):
    kind = MsgType.ROUTED
    key: str


@record
class Result(Record):
    """The last stage's outputs for one request."""

    kind = MsgType.RESULT
    rid: int
    epoch: int
    slots: tuple[int, int] | None = None
    trace: tuple[Hop, ...] = ()


@dataclass(frozen=True)
class StageCounters:
    runs: int
    compute_s: float
    mean_ms: float


@record
class Stats(Record):
    kind = MsgType.STATS
    stages: dict[str, StageCounters]        # stage key -> its runner's counters (runtime.runner.StageStats.to_json)


@record
class LinkMeasured(Record):
    kind = MsgType.LINK
    host: str
    port: int
    latency: float              # one way, seconds
    bandwidth: float            # bytes/s


WORKER_ACCEPTS = Accepted("a worker", [Ping, CapsQuery, Load, Weights, Route, Run, Reset, StatsQuery, Shutdown,
                                       LinkProbe, Group, Join])
COORDINATOR_ACCEPTS = Accepted("a coordinator", [Pong, Caps, Need, Loaded, Routed, Result, Error, Reset, Stats,
                                                 Shutdown, LinkMeasured, Grouped])
