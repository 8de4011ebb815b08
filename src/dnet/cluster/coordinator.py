"""The coordinator: ships a pipeline's stages to workers, feeds requests, collects results.

Requests are pipelined: up to `max_in_flight` travel the stages at once, so while
stage 2 works on request 7, stage 1 is already on request 8. Inputs go to the first
stage's worker; activations move worker to worker; only the last stage's outputs
come back here.

Answers. A caller waiting for its answer reads the last stage's connection itself while no
other thread does (`dnet.cluster.reading`), so one request in the air (decoding one stream) is
answered on the thread that asked, with no hand-off; each connection's own thread reads when no
caller does.

Faults. Every worker connection is read (by its thread or a caller), and a heartbeat pings each
worker; a closed connection or `dead_after` seconds of silence marks the worker
lost, naming it and the stages it ran. If a spare worker (connected, running no
stage) is alive, its stages move there under a new epoch, every request not yet
answered is sent again, and results from the old epoch are dropped: each request
is answered exactly once. Without a spare, every waiting request fails with
`WorkerLost`.

Poison requests. A request that crashes a worker would crash every spare in turn if
it were simply sent again. So every request in the air when a worker is lost is
charged that loss (the worker and the stages it ran), and a request with a loss
travels alone when it is sent again (the others wait for it): a second loss then
falls on it only. When it is the `MAX_LOSSES`th and a stage it crashed before is
among the lost worker's (a poison request crashes the same op each time; two workers
killed at once, at different stages, are a coincidence), the request fails alone
with `PoisonRequest`, naming it and the workers lost with it, and the cluster goes
on serving the rest.
"""
from __future__ import annotations

import itertools
import json
import math
from collections import deque
import logging
import queue
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from dnet.cluster.auth import connect
from dnet.cluster.channel import Channel
from dnet.cluster.link import LinkShape, Outbox
from dnet.cluster.messages import (
    COORDINATOR_ACCEPTS, Caps, CapsQuery, Error, Group, Grouped, LinkMeasured, LinkProbe, Load, Loaded, Need,
    NextStage, Peer, Ping, Pong, Reset, Result, Route, Routed, Run, Shutdown, StageCounters, Stats, StatsQuery, Weights,
    encode, to_json,
)
from dnet.cluster.protocol import DEFAULT_LIMITS, Limits, Message
from dnet.cluster.reading import SharedReader
from dnet.cluster.shipping import file_references, pack
from dnet.cluster.tls import ClusterTls, require_tls
from dnet.core import progress
from dnet.errors import DnetError
from dnet.graph.ir import Graph
from dnet.graph.ops import Op

log = logging.getLogger("dnet.coordinator")

WEIGHT_BATCH_BYTES = 256 << 20
MAX_LOSSES = 2   # losses of a worker running the same stage a request may be in the air for
LEAD_RECHECK_S = 0.05   # a caller reading for its answer looks this often whether it still comes there


class WorkerLost(DnetError):
    """A worker stopped answering; names it and the stage(s) it ran."""


# A worker's error that means a peer of it died, not that the request failed: ConnectionError (the link to
# the next stage broke), GroupError (a tensor-parallel member's exchange broke)
PEER_LOST = ("ConnectionError", "GroupError")


class RemoteError(DnetError):
    """A worker refused or failed a request; carries its reason."""


class PoisonRequest(WorkerLost):
    """A request was in the air when `MAX_LOSSES` workers running the same stage were lost, the last time
    alone: it is taken to crash workers and fails, without being sent to another."""


class StateLost(WorkerLost):
    """The pipeline was re-planned while this request travelled, and its stages held state (KV caches):
    the new stages start empty, so the request is not sent again; whoever owns the sequences rebuilds
    their state (re-running their tokens) and asks again."""


@dataclass
class WorkerHandle:
    index: int
    host: str
    port: int
    chan: Channel
    outbox: Outbox
    caps: Caps | None = None
    alive: bool = True
    last_seen: float = field(default_factory=time.monotonic)
    replies: queue.Queue = field(default_factory=queue.Queue)
    call_lock: threading.Lock = field(default_factory=threading.Lock)
    reader: SharedReader | None = None      # reads the connection: its own thread, or a caller awaiting an answer

    @property
    def name(self) -> str:
        return f"worker {self.index} ({self.caps.name if self.caps else f'{self.host}:{self.port}'})"

    @property
    def peer_address(self) -> tuple[str, int]:
        if self.caps is None:
            return self.host, self.port
        host, _, port = self.caps.advertise.rpartition(":")
        if not host or not port.isdigit():
            raise DnetError(f"{self.name} advertises a bad address '{self.caps.advertise}'", hint="expected HOST:PORT")
        return host, int(port)


class _Answer(Future):
    """A request's future whose `result()` reads the answer's connection itself, on the waiting thread, while
    no other thread reads it (`SharedReader.lead`): one request in the air is answered with no hand-off."""

    def __init__(self, lead: Callable[[Future, float], None]):
        super().__init__()
        self._lead = lead

    def result(self, timeout: float | None = None) -> Any:
        if not self.done():
            deadline = time.monotonic() + (timeout if timeout is not None else math.inf)
            self._lead(self, deadline)
            if timeout is not None:
                timeout = max(0.0, deadline - time.monotonic())
        return super().result(timeout)


@dataclass
class _Request:
    rid: int
    inputs: dict[str, np.ndarray]
    future: Future
    submitted: float
    slots: tuple[int, int] | None = None                  # travel with it through every stage
    state_epoch: int | None = None                        # the plan its state was built under, if any
    lost_with: list[tuple[str, frozenset[int]]] = field(default_factory=list)   # workers lost while it was
                                                                                # in the air, and their stages
    parts: dict[int, tuple] = field(default_factory=dict)      # a group's answers by member: (outputs, trace)

    def poisonous(self) -> bool:
        """Lost MAX_LOSSES workers, the last running a stage that an earlier loss ran too."""
        if len(self.lost_with) < MAX_LOSSES:
            return False
        earlier = frozenset().union(*(stages for _, stages in self.lost_with[:-1]))
        return bool(self.lost_with[-1][1] & earlier)


@dataclass(frozen=True)
class Answer:
    """One answered request: when its result arrived (time.monotonic()) and each stage's compute seconds."""

    at: float
    stage_seconds: dict[int, float]


@dataclass
class StageTiming:
    stage: int
    worker: str
    runs: int = 0
    compute_s: float = 0.0

    @property
    def mean_ms(self) -> float:
        return 1e3 * self.compute_s / self.runs if self.runs else 0.0


def parse_address(address: str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(address, tuple):
        return address[0], int(address[1])
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise DnetError(f"bad address '{address}'", hint="expected HOST:PORT")
    if int(port) > 65535:
        raise DnetError(f"bad address '{address}': port {port} is past 65535")
    return host, int(port)


class Coordinator:
    def __init__(self, addresses: Sequence[str | tuple[str, int]], secret: str, *,
                 max_in_flight: int = 8, heartbeat_s: float = 0.5, dead_after_s: float = 3.0,
                 call_timeout_s: float = 60.0, load_timeout_s: float = 900.0, limits: Limits = DEFAULT_LIMITS,
                 tls: ClusterTls | None = None, allow_plain: bool = False):
        self.secret = secret
        self.tls = tls                  # mutual TLS to every worker (required off loopback unless allow_plain)
        self.allow_plain = allow_plain
        self.limits = limits
        self.session = secrets.token_hex(4)
        self.epoch = 0
        self.call_timeout_s = call_timeout_s
        # a LOAD is answered once the worker has compiled its stage: minutes for a large stage on a busy
        # machine. The worker keeps answering heartbeats meanwhile, so a lost one is still noticed at once
        self.load_timeout_s = max(load_timeout_s, call_timeout_s)
        self.dead_after_s = dead_after_s
        self.heartbeat_s = heartbeat_s
        self.stages: list[Graph] = []
        self.placement: list[int] = []
        self.slots = 1                     # sequences of state each stateful stage holds
        # alive worker indices -> (stages, placement): a plan over the survivors when too few spares are left
        self.replanner: Callable[[list[int]], tuple[list[Graph], list[int]]] | None = None
        self.links: dict[tuple[int, int], LinkShape] = {}   # (from worker, to worker); -1 is the coordinator
        self.timings: dict[int, StageTiming] = {}
        self.dropped_results = 0
        self.weight_bytes_sent = 0
        self.weight_bytes_mapped = 0       # weights the workers read from model files of their own instead
        self.broken: str | None = None
        self._pending: dict[int, _Request] = {}
        self._in_air: set[int] = set()         # requests sent under the current epoch and not yet answered
        self._queue: deque[_Request] = deque() # waiting their turn behind a suspect (one with a loss)
        self._alone: _Request | None = None    # a suspect travelling alone
        self._feeds: list[Outbox] = []     # inputs into the first stage (every member of a group), shaped links
        # the stages are the members of one tensor-parallel group (dnet.cluster.collective): every request goes
        # to each, and its answer joins theirs along the last axis, in member order
        self.parallel = False
        self.latencies: deque[float] = deque(maxlen=100_000)   # seconds from submit to answer
        self.answers: deque[Answer] = deque(maxlen=100_000)    # in the order they arrived
        self._ids = itertools.count()
        self._lock = threading.RLock()
        self._recovery_lock = threading.Lock()
        self._window = threading.BoundedSemaphore(max_in_flight)
        self._ready = threading.Event()
        self._closing = threading.Event()
        self.workers: list[WorkerHandle] = []
        try:
            for i, address in enumerate(addresses):
                self.workers.append(self._connect(i, address))
        except BaseException:
            self.close()
            raise
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()

    # -- connections -------------------------------------------------------------------
    def _connect(self, index: int, address: str | tuple[str, int]) -> WorkerHandle:
        host, port = parse_address(address)
        require_tls(host, self.tls, self.allow_plain, f"worker {index} at")
        try:
            chan = connect(host, port, self.secret, self.limits, tls=self.tls)
        except (OSError, DnetError) as err:
            raise WorkerLost(f"cannot connect to worker {index} at {host}:{port}: {err}") from None
        handle = WorkerHandle(index, host, port, chan, Outbox(chan))
        handle.reader = SharedReader(chan, lambda msg: self._on_message(handle, msg),
                                     lambda err: self._connection_ended(handle, err), name=f"reader-{index}").start()
        handle.caps = self._call(handle, encode(CapsQuery()), Caps)
        return handle

    def add_worker(self, address: str | tuple[str, int]) -> int:
        """Connect one more worker (a restarted one, say): a spare, until a re-plan gives it stages."""
        with self._lock:
            index = len(self.workers)
        handle = self._connect(index, address)
        with self._lock:
            self.workers.append(handle)
        return handle.index

    def _on_message(self, w: WorkerHandle, msg: Message) -> None:
        """One message from worker `w`, on whichever thread read it (`SharedReader`). A message that does not
        decode raises ProtocolError: a worker that breaks the protocol is lost, like one that closed."""
        w.last_seen = time.monotonic()
        record = COORDINATOR_ACCEPTS.decode(msg)
        if type(record) is Result:
            self._on_result(record, msg.tensors)
        elif type(record) is Error and record.rid is not None:
            self._on_request_error(w, record)
        elif not (type(record) is Pong and record.heartbeat):
            w.replies.put(record)

    def _connection_ended(self, w: WorkerHandle, err: Exception) -> None:
        if not self._closing.is_set():
            self._lost(w, str(err) or type(err).__name__)

    def _lead(self, answer: Future, deadline: float) -> None:
        """Read the connection `answer` comes back on, on this thread, until it is in or `deadline` passes
        (`SharedReader.lead`). Looked up again every `LEAD_RECHECK_S`: a re-plan may move the last stage."""
        while not answer.done() and time.monotonic() < deadline:
            with self._lock:   # a group's answers come on every member's connection: their threads read
                last = self.workers[self.placement[-1]] if self.placement and not self.parallel else None
            if last is None or last.reader is None:
                return
            if not last.reader.lead(answer, min(deadline, time.monotonic() + LEAD_RECHECK_S)):
                return

    def _heartbeat(self) -> None:
        while not self._closing.wait(self.heartbeat_s):
            for w in list(self.workers):
                if not w.alive:
                    continue
                silent = time.monotonic() - w.last_seen
                if silent > self.dead_after_s:
                    self._lost(w, f"no reply for {silent:.1f} s")
                    continue
                try:
                    w.outbox.put(encode(Ping(heartbeat=True)))
                except ConnectionError as err:
                    self._lost(w, str(err))

    def _call(self, w: WorkerHandle, msg: Message, *expect: type, timeout: float | None = None) -> Any:
        """A control request and its reply, a record of one of the `expect` types (one at a time per worker);
        `timeout` (default `call_timeout_s`) bounds the wait for a worker that stays alive."""
        timeout = self.call_timeout_s if timeout is None else timeout
        with w.call_lock:
            if not w.alive:
                raise WorkerLost(f"{w.name} is lost")
            w.outbox.put(msg)
            try:
                with w.reader.wanted():
                    reply = w.replies.get(timeout=timeout)
            except queue.Empty:
                raise WorkerLost(f"{w.name} did not answer {msg.type.name} within {timeout:.0f} s") from None
        if reply is None:
            raise WorkerLost(f"{w.name} was lost during {msg.type.name}")
        if type(reply) is Error:
            raise RemoteError(f"{w.name} refused {msg.type.name}: {reply.reason}")
        if type(reply) not in expect:
            raise RemoteError(f"{w.name} answered {msg.type.name} with {reply.kind.name}")
        return reply

    # -- plans ----------------------------------------------------------------------------
    def load(self, stages: Sequence[Graph], placement: Sequence[int] | None = None,
             links: Mapping[tuple[int, int], LinkShape] | None = None, slots: int | None = None,
             parallel: bool = False) -> None:
        """Ship `stages` (a pipeline, in order) to workers: stage k runs on `placement[k]`; stages with
        STATE inputs hold it on their worker, `slots` sequences of it (kept from the last load if None).
        With `parallel`, the stages are the members of one tensor-parallel group instead (each on its own
        worker): every request goes to all of them, their outputs joined along the last axis.

        Loading again moves the cluster to the new pipeline the way a re-plan after a fault does: a
        new epoch, the old stages dropped, requests still travelling sent again, their old answers dropped."""
        placement = list(placement) if placement is not None else list(range(len(stages)))
        if len(placement) != len(stages) or not all(0 <= p < len(self.workers) for p in placement):
            raise DnetError(f"placement {placement} does not fit {len(stages)} stages on "
                            f"{len(self.workers)} workers")
        if parallel and len(set(placement)) != len(placement):
            raise DnetError(f"a tensor-parallel group's members need a worker each, got placement {placement}")
        with self._recovery_lock:
            with self._lock:
                again = bool(self.stages)
                if again:
                    self._ready.clear()
                    self.epoch += 1
                self.stages, self.placement, self.links = list(stages), placement, dict(links or {})
                self.slots = slots or self.slots
                self.parallel = parallel
            if again:
                self._replan()
            else:
                self._install()

    def _key(self, stage: int) -> str:
        return f"{self.session}/{self.epoch}/{stage}"

    def _install(self) -> None:
        """Load every stage on its worker (in parallel), then wire each stage to the next."""
        self._ready.clear()
        # a stage counts once its worker said LOADED: its weights are there and it has compiled them.
        # The task is advanced here, in the calling thread, where the caller's reporter is installed.
        with progress.task("ship stages to workers", total=len(self.stages), unit="stages") as task, \
                ThreadPoolExecutor(max_workers=max(1, len(self.stages))) as pool:
            for shipped in as_completed([pool.submit(self._ship, s) for s in range(len(self.stages))]):
                shipped.result()
                task.advance()
        if self.parallel:
            self._form_group()
        for s, w in enumerate(self.placement):
            self._route(s, self.workers[w])
        for feed in self._feeds:
            feed.close(timeout=0.1)
        firsts = [self.workers[p] for p in (self.placement if self.parallel else self.placement[:1])]
        self._feeds = [Outbox(w.chan, self.links.get((-1, w.index)), on_error=lambda err: None) for w in firsts]
        self.timings = {s: StageTiming(s, self.workers[w].name) for s, w in enumerate(self.placement)}
        self._ready.set()

    def _ship(self, s: int) -> None:
        w = self.workers[self.placement[s]]
        packed = pack(self.stages[s])
        rank, size = (s, len(self.stages)) if self.parallel else (0, 1)
        load = Load(self._key(s), tuple(sorted(packed.arrays)), s, self.slots, rank, size)
        tensors = {"graph": np.frombuffer(packed.doc, np.uint8)}
        refs = file_references(packed.arrays, w.caps.models if w.caps else ())
        if refs:   # weights in a model file the worker holds: it reads them there (a document, like the graph)
            tensors["mapped"] = np.frombuffer(json.dumps(to_json(refs)).encode(), np.uint8)
        reply = self._call(w, encode(load, tensors), Need, Loaded, timeout=self.load_timeout_s)
        if type(reply) is Need:  # weights it has cached are not sent again
            unknown = [h for h in reply.hashes if h not in packed.arrays]
            if unknown:
                raise RemoteError(f"{w.name} asked for weight {unknown[0][:12]}, which stage {s} does not have")
            reply = self._send_weights(w, load.key, {h: packed.arrays[h] for h in reply.hashes})
        with self._lock:
            self.weight_bytes_mapped += reply.mapped_bytes

    def _send_weights(self, w: WorkerHandle, key: str, arrays: dict[str, np.ndarray]) -> Loaded:
        """Send `arrays` in batches; the worker's LOADED answers the last."""
        with self._lock:
            self.weight_bytes_sent += sum(a.nbytes for a in arrays.values())
        batch: dict[str, np.ndarray] = {}
        size = 0
        items = list(arrays.items())
        for i, (digest, arr) in enumerate(items):
            batch[digest] = arr
            size += arr.nbytes
            last = i == len(items) - 1
            if last or size >= WEIGHT_BATCH_BYTES:
                msg = encode(Weights(key, last), batch)
                if last:
                    return self._call(w, msg, Loaded, timeout=self.load_timeout_s)
                else:
                    w.outbox.put(msg)
                batch, size = {}, 0
        return self._call(w, encode(Weights(key, last=True)), Loaded, timeout=self.load_timeout_s)  # none asked

    def _form_group(self) -> None:
        """Give each member its peers, lowest rank first: a member dials those above it, so by its turn
        every member below has dialled it. Each peer comes with the shape of the link to it from the member
        told (where this coordinator shapes links: a local cluster), so partials cross it as they would the
        network the plan was made for."""
        for s, p in enumerate(self.placement):
            peers = tuple(Peer(r, *self.workers[q].peer_address, self._key(r), self.links.get((p, q)))
                          for r, q in enumerate(self.placement))
            self._call(self.workers[p], encode(Group(self._key(s), peers)), Grouped)

    def _route(self, s: int, w: WorkerHandle) -> None:
        nxt: NextStage | None = None
        if s + 1 < len(self.stages) and not self.parallel:
            worker = self.workers[self.placement[s + 1]]
            host, port = worker.peer_address
            nxt = NextStage(host, port, self._key(s + 1))
            shape = self.links.get((w.index, worker.index))
        else:
            shape = self.links.get((w.index, -1))
        self._call(w, encode(Route(self._key(s), nxt, shape)), Routed)

    # -- requests -------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        """What a request carries (a stage's STATE inputs stay on its worker)."""
        if not self.stages:
            return []
        first = self.stages[0]
        return [first.nodes[i].attrs["name"] for i in first.inputs if first.nodes[i].op is Op.INPUT]

    @property
    def stateful(self) -> bool:
        """Whether a stage holds state (a KV cache): then requests name their sequences' `slots`."""
        return any(n.op is Op.STATE for g in self.stages for n in g.nodes)

    def submit(self, inputs: Mapping[str, np.ndarray], timeout: float | None = None,
               slots: tuple[int, int] | None = None, epoch: int | None = None) -> Future:
        """Send one request into the pipeline; waits while `max_in_flight` are already travelling.
        `slots` (first, count): the state slots of the sequences it advances, for stateful stages;
        `epoch`: the plan that state was built under: under another one the request fails with `StateLost`."""
        if not self.stages:
            raise DnetError("no model loaded on the cluster", hint="call load() first")
        missing = set(self.input_names) - set(inputs)
        if missing:
            raise DnetError(f"missing input(s) {sorted(missing)}", hint="inputs are " + ", ".join(self.input_names))
        if not self._window.acquire(timeout=timeout if timeout is not None else self.call_timeout_s):
            raise DnetError("no room in the pipeline: earlier requests are not finishing")
        req = _Request(next(self._ids), {n: np.asarray(inputs[n]) for n in self.input_names},
                       _Answer(self._lead), time.monotonic(), tuple(slots) if slots is not None else None, epoch)
        req.future.add_done_callback(lambda _: self._window.release())
        with self._lock:
            if self.broken:
                req.future.set_exception(WorkerLost(self.broken))
                return req.future
            self._pending[req.rid] = req
        self._send(req)
        return req.future

    def _send(self, req: _Request) -> None:
        self._ready.wait(self.call_timeout_s)
        with self._lock:
            if self._alone is not None or self._queue:   # a suspect travels alone: wait behind it
                self._queue.append(req)
                return
        self._put(req)

    def _put(self, req: _Request) -> None:
        with self._lock:
            feeds, epoch = self._feeds, self.epoch
            stale = req.state_epoch is not None and req.state_epoch != epoch and self._pending.pop(req.rid, None)
            if not stale:
                self._in_air.add(req.rid)
        if stale:
            req.future.set_exception(StateLost(f"request {req.rid} reads state built under plan epoch "
                                               f"{req.state_epoch}, and the cluster now runs epoch {epoch}"))
            return
        req.parts.clear()
        for s, feed in enumerate(feeds):
            try:
                feed.put(encode(Run(f"{self.session}/{epoch}/{s}", req.rid, epoch, req.slots), req.inputs))
            except ConnectionError:
                pass  # the reader notices the loss and re-plans or fails the request

    def _dispatch(self) -> None:
        """Send what waits in the queue, in order, until a suspect comes up: it goes once nothing else is
        in the air, alone; the rest wait for its answer."""
        ready: list[_Request] = []
        with self._lock:
            while self._alone is None and self._queue and self._ready.is_set():
                head = self._queue[0]
                if head.rid not in self._pending:   # answered or failed meanwhile
                    self._queue.popleft()
                    continue
                if head.lost_with:
                    if self._in_air or ready:
                        break
                    self._alone = head
                ready.append(self._queue.popleft())
        for req in ready:
            self._put(req)

    def _answered(self, req: _Request) -> None:
        """Under the lock: `req` left the air."""
        self._in_air.discard(req.rid)
        if self._alone is req:
            self._alone = None

    def run(self, inputs: Mapping[str, np.ndarray], timeout: float | None = None) -> dict[str, np.ndarray]:
        return self.submit(inputs).result(timeout if timeout is not None else self.call_timeout_s)

    def run_many(self, requests: Sequence[Mapping[str, np.ndarray]],
                 timeout: float | None = None) -> list[dict[str, np.ndarray]]:
        """Many requests pipelined through the stages; results in request order."""
        futures = [self.submit(r) for r in requests]
        deadline = time.monotonic() + (timeout if timeout is not None else self.call_timeout_s)
        return [f.result(max(0.0, deadline - time.monotonic())) for f in futures]

    def _on_result(self, result: Result, outputs: dict[str, np.ndarray]) -> None:
        with self._lock:
            req = self._pending.get(result.rid)
            if req is None or result.epoch != self.epoch:
                self.dropped_results += 1  # a stale copy from before a re-plan
                return
            hops = result.trace
            if self.parallel:   # one member's slice: the answer is whole once every member's is in
                req.parts[result.trace[-1][0]] = (outputs, result.trace)
                if len(req.parts) < len(self.stages):
                    return
                parts = [req.parts[s][0] for s in range(len(self.stages))]
                outputs = {name: np.concatenate([p[name] for p in parts], axis=-1) for name in parts[0]}
                hops = tuple(hop for _, trace in req.parts.values() for hop in trace)
            del self._pending[req.rid]
            self._answered(req)
            waiting = bool(self._queue)
            now = time.monotonic()
            self.latencies.append(now - req.submitted)
            trace = {stage: seconds for stage, _worker, seconds in hops}
            self.answers.append(Answer(now, trace))
            for stage, seconds in trace.items():
                if stage in self.timings:
                    self.timings[stage].runs += 1
                    self.timings[stage].compute_s += seconds
        req.future.set_result(outputs)
        if waiting:
            self._dispatch()

    def _on_request_error(self, w: WorkerHandle, error: Error, waited: bool = False) -> None:
        if error.reason.startswith(PEER_LOST) and not waited:
            # a stage whose next stage (or group member) died under it: the heartbeat will find the lost worker
            # and re-plan, sending the request again (or failing it as StateLost, its sequences rebuilt); only if
            # no worker turns out lost does it fail as is
            def later() -> None:
                time.sleep(2 * self.dead_after_s)
                self._on_request_error(w, error, waited=True)

            threading.Thread(target=later, name="group-error", daemon=True).start()
            return
        with self._lock:
            if error.epoch != self.epoch:
                return
            req = self._pending.pop(error.rid, None)
            if req is not None:
                self._answered(req)
        if req is not None:
            req.future.set_exception(RemoteError(f"{w.name}, stage {error.stage}: {error.reason}"))
            self._dispatch()

    # -- faults ---------------------------------------------------------------------------
    def _lost(self, w: WorkerHandle, reason: str) -> None:
        with self._lock:
            if not w.alive:
                return
            w.alive = False
            stages = [s for s, p in enumerate(self.placement) if p == w.index]
        w.replies.put(None)  # wake a control call waiting on it
        w.chan.close()
        where = f"running stage {', '.join(map(str, stages))}" if stages else "(a spare)"
        message = f"{w.name} {where} lost: {reason}"
        log.warning(message)
        if not stages or self._closing.is_set():
            return
        threading.Thread(target=self._recover, args=(message,), name="recover", daemon=True).start()

    def _recover(self, message: str) -> None:
        """Move the stages of every lost worker to spares, one spare per lost worker, or (without enough
        spares) re-plan over the survivors with `replanner`; then resend what was in flight."""
        with self._recovery_lock:  # two workers lost at once: one re-plan after the other
            for _ in range(len(self.workers)):  # every failed attempt has lost one more worker
                change = self._move_lost_stages(message)
                if not change:
                    return
                log.warning("re-planning (epoch %d): %s", self.epoch, change)
                try:
                    self._replan()  # outside the lock: the readers need it to deliver the replies
                    return
                except WorkerLost as err:  # another worker died meanwhile: plan again without it
                    message = f"{message}; then {err}"
                except DnetError as err:
                    self._fail_all(f"{message}; re-plan failed: {err}")
                    return

    def _move_lost_stages(self, message: str) -> str:
        """Reassign the stages of lost workers (a new epoch): what changed, or "" if none is lost or none can move."""
        with self._lock:
            lost = sorted({p for p in self.placement if not self.workers[p].alive})
            if not lost:
                return ""
            alive = [w.index for w in self.workers if w.alive]
            spares = [i for i in alive if i not in self.placement]
            self._charge_loss([(self.workers[i].name, frozenset(s for s, p in enumerate(self.placement) if p == i))
                               for i in lost])
            if len(spares) >= len(lost):
                moves = dict(zip(lost, spares))
                self._ready.clear()
                self.epoch += 1
                self.placement = [moves.get(p, p) for p in self.placement]
                return ", ".join(f"{self.workers[a].name} -> {self.workers[b].name}" for a, b in moves.items())
        if self.replanner is None or not alive:
            self._fail_all(f"{message}; no spare worker to re-plan onto")
            return ""
        try:
            stages, placement = self.replanner(alive)
        except DnetError as err:
            self._fail_all(f"{message}; no plan over the {len(alive)} surviving worker(s): {err}")
            return ""
        with self._lock:
            self._ready.clear()
            self.epoch += 1
            self.stages, self.placement = list(stages), list(placement)
            self.parallel = False    # the replanner gives a pipeline
        return f"{len(stages)} stage(s) over the surviving " + ", ".join(self.workers[i].name for i in alive)

    def _charge_loss(self, lost: list[tuple[str, frozenset[int]]]) -> None:
        """Under the lock: every request in the air when workers were lost is charged with them (each is a
        suspect; one that was alone is the only one). Sent again, they are in the air afresh."""
        for rid in self._in_air:
            req = self._pending.get(rid)
            if req is not None:
                req.lost_with.extend(lost)
        self._in_air.clear()
        self._alone = None

    def _replan(self) -> None:
        stateful = self.stateful
        if stateful:   # the new stages' state starts empty: what travelled cannot simply be sent again
            with self._lock:
                lost, self._pending = list(self._pending.values()), {}
                self._in_air.clear()
                self._queue.clear()
                self._alone = None
            for req in lost:
                req.future.set_exception(StateLost(f"re-planned (epoch {self.epoch}) while request {req.rid} "
                                                   "travelled; its sequences' state must be rebuilt"))
        for w in self.workers:
            if w.alive:
                self._call(w, encode(Reset(self.session)), Reset)
        self._install()
        if stateful:
            return
        with self._lock:   # everything not yet answered goes again, in order, suspects alone
            waiting = sorted(self._pending.values(), key=lambda r: r.rid)
            poisoned = [r for r in waiting if r.poisonous()]
            for req in poisoned:
                del self._pending[req.rid]
            self._in_air.clear()
            self._alone = None
            self._queue = deque(r for r in waiting if not r.poisonous())
        for req in poisoned:
            req.future.set_exception(PoisonRequest(
                f"request {req.rid} failed: it was in the air each time a worker was lost "
                f"({', '.join(name for name, _ in req.lost_with)}), the last time alone and at the same stage; "
                "it is not sent to another",
                hint="a request that crashes workers: check its inputs"))
        self._dispatch()

    def _fail_all(self, message: str) -> None:
        with self._lock:
            self.broken = message
            waiting, self._pending = list(self._pending.values()), {}
            self._in_air.clear()
            self._queue.clear()
            self._alone = None
        self._ready.set()
        for req in waiting:
            req.future.set_exception(WorkerLost(message))

    # -- reports and teardown ------------------------------------------------------------
    def reset_timings(self) -> None:
        """Start the per-stage timings afresh (after a warm-up, say)."""
        with self._lock:
            self.timings = {s: StageTiming(s, t.worker) for s, t in self.timings.items()}
            self.latencies.clear()
            self.answers.clear()

    def capabilities(self, probe: bool = False) -> list[Caps]:
        """What each live worker reports of itself; with `probe`, its measured device too
        (`Caps.device`, a `dnet.topology.Device`: compute rates, memory, caches), as topologies use."""
        live = [w for w in self.workers if w.alive]
        if not probe:       # a few bytes each way: nothing worth showing
            return [self._call(w, encode(CapsQuery(False)), Caps) for w in live]
        out = []
        with progress.task("probe workers", total=len(live), unit="workers") as task:    # seconds each, uncached
            for w in live:
                out.append(self._call(w, encode(CapsQuery(True)), Caps))
                task.advance()
        return out

    def measure_links(self, nbytes: int = 4 << 20) -> dict[tuple[int, int], LinkShape]:
        """Latency and bandwidth of the link from every live worker to every other, measured by the workers
        themselves over dnet's transport (one pair at a time, so the measurements do not share the wire)."""
        out = {}
        live = [w for w in self.workers if w.alive]
        with progress.task("measure links between workers", total=len(live) * (len(live) - 1), unit="links") as task:
            for a in live:
                for b in live:
                    if a is not b:
                        host, port = b.peer_address
                        measured = self._call(a, encode(LinkProbe(host, port, nbytes)), LinkMeasured)
                        out[(a.index, b.index)] = LinkShape(measured.bandwidth, measured.latency)
                        task.advance()
        return out

    def worker_stats(self) -> dict[str, dict[str, StageCounters]]:
        """Each live worker's own counters per stage."""
        return {w.name: self._call(w, encode(StatsQuery()), Stats).stages for w in self.workers if w.alive}

    def close(self, shutdown_workers: bool = False) -> None:
        self._closing.set()
        for feed in self._feeds:
            feed.close(timeout=1.0)
        for w in self.workers:
            if w.alive:   # the worker frees this session's stages, their state and links now (or exits)
                try:
                    w.outbox.put(encode(Shutdown()) if shutdown_workers else encode(Reset(self.session)))
                except ConnectionError:
                    pass
            w.outbox.close(timeout=1.0)
            w.chan.close()

    def __enter__(self) -> "Coordinator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
