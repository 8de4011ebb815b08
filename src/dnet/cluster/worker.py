"""The worker daemon: accepts stages and requests over TCP, runs them, streams results on.

Threads: one accepts connections; one per connection reads frames and answers
control messages (so pings are answered while a stage computes); one computes,
taking requests from a queue in arrival order. A stage's outputs go through an
`Outbox` straight to the next stage's worker (or back to the coordinator for the
last stage), so this worker is computing the next request while they travel.

A small request (at most `INLINE_BYTES`) that finds the worker idle (nothing
computing or queued) for a stage whose last run was short (under `INLINE_S`, on
inputs no larger) runs at once on the thread that read it: on the decode path no
request waits for another thread to wake, and a ping on that connection waits at
most about `INLINE_S`. Larger requests keep to the compute thread, whose memory
(one allocator arena) every such run reuses.

A bad frame costs only the connection it came on: the reason is logged, the peer is
told (where the stream still allows it) and the worker goes on serving the others.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dnet.backends import registry
from dnet.cluster.auth import AuthError, check_secret_strength, connect, server_handshake
from dnet.cluster.channel import Channel
from dnet.cluster.link import LinkShape, Outbox
from dnet.cluster.collective import Mesh
from dnet.cluster.messages import (
    WORKER_ACCEPTS, Caps, CapsQuery, Error, FileRef, Group, Grouped, Join, LinkMeasured, LinkProbe, Load, Loaded,
    Need, Ping, Pong, Reset, Result, Route, Routed, Run, Shutdown, StageCounters, Stats, StatsQuery, Weights,
    decode_as, encode, parse, reply_ids,
)
from dnet.cluster.model_files import ModelFiles
from dnet.cluster.protocol import (
    COALESCE_BYTES, DEFAULT_LIMITS, ConnectionClosed, Limits, Message, ProtocolError, encode_frame,
)
from dnet.cluster.shipping import unpack
from dnet.cluster.store import WeightStore
from dnet.cluster.tls import ClusterTls, require_tls
from dnet.errors import DnetError
from dnet.runtime.runner import StageRunner
from dnet.runtime.state import SlotState

log = logging.getLogger("dnet.worker")
MAX_UNAUTHENTICATED = 64   # connections mid-handshake at once; more are closed on accept
_OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

INLINE_S = 0.01               # a stage whose last run took less may run on the reading thread (see above)
INLINE_BYTES = COALESCE_BYTES  # ... given a request this small


@dataclass
class _Stage:
    key: str
    index: int
    runner: StageRunner
    reply: Outbox                      # back to the coordinator that loaded it
    next_link: Outbox | None = None    # the next stage's worker; None: the last stage
    next_key: str | None = None
    state: SlotState | None = None     # the stage's STATE (its layers' KV caches), a slot per sequence
    mesh: Mesh | None = None           # a tensor-parallel member's links to the rest of its group
    last_run: tuple[int, float] | None = None  # (input bytes, wall seconds) of its latest run: may the next inline


@dataclass
class _PendingLoad:
    load: Load
    doc: bytes
    reply: Channel
    mapped: dict[str, np.ndarray] = field(default_factory=dict)   # weights read from a model file held here


@dataclass
class WorkerConfig:
    host: str = "127.0.0.1"            # loopback unless told otherwise
    port: int = 0
    backend: str = "numpy"
    threads: int | None = None
    name: str = ""
    advertise: str | None = None       # host:port other workers reach this one at
    cache_dir: str | None = None
    limits: Limits = field(default_factory=lambda: DEFAULT_LIMITS)
    # > 1 simulates a slower device on a shared machine: after each stage run the worker idles
    # (slowdown - 1) x the work it did (its CPU seconds per thread, at most the wall time), like link
    # shaping does for the network. CPU time, not wall time: a slow device of its own does not feel the
    # other processes sharing this machine, so their delays must not be multiplied by the slowdown
    slowdown: float = 1.0
    # a session (a coordinator's stages, their state and links) unused this long is freed, as if closed
    idle_timeout_s: float = 600.0
    tls: ClusterTls | None = None      # mutual TLS on every link, served and dialled (dnet.cluster.tls)
    allow_plain: bool = False          # plain TCP on a non-loopback address (a trusted network, a tunnel)
    models: list[str] = field(default_factory=list)   # model files (or their directories) to read weights from


class Worker:
    def __init__(self, secret: str, config: WorkerConfig | None = None):
        if not secret:
            raise DnetError("a worker needs the cluster secret", hint="set DNET_CLUSTER_SECRET")
        check_secret_strength(secret)
        self.config = config or WorkerConfig()
        require_tls(self.config.host, self.config.tls, self.config.allow_plain, "a worker listening on")
        self.secret = secret
        # an unknown backend, or one this machine lacks (no driver, no GPU), is refused now, not at the first stage
        registry.require_available(self.config.backend)
        self.models = ModelFiles(self.config.models) if self.config.models else None
        try:
            self.listener = socket.create_server((self.config.host, self.config.port))
        except OSError as err:
            reason = os.strerror(err.errno) if err.errno else str(err)
            raise DnetError(f"cannot listen on {self.config.host}:{self.config.port}: {reason}",
                            hint="an address of this machine (or 0.0.0.0) and a free port") from None
        self._unauthenticated = threading.BoundedSemaphore(MAX_UNAUTHENTICATED)
        self.host, self.port = self.listener.getsockname()[:2]
        self.name = self.config.name or f"{self.host}:{self.port}"
        self.store = WeightStore(self.config.cache_dir)
        self.stages: dict[str, _Stage] = {}
        self._pending: dict[str, _PendingLoad] = {}
        self._replies: dict[tuple, Outbox] = {}       # per (control channel, link shape)
        self._links: dict[tuple, Outbox] = {}         # per (session, host, port, shape) of a next worker
        self._work: deque[tuple[Run, dict] | None] = deque()  # requests (and tensors) for the compute thread
        self._computing = False                       # a request is running (on the compute or a reading thread)
        self._has_work = threading.Condition()
        self._used: dict[str, float] = {}             # session -> when a request or load last named it
        self._expired: dict[str, None] = {}           # sessions freed for idleness (the latest, in order)
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._claimed: set[Channel] = set()             # accepted connections handed to a group's mesh (JOIN)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- lifecycle ------------------------------------------------------------------
    def serve_forever(self) -> None:
        threading.Thread(target=self._compute_loop, name="compute", daemon=True).start()
        threading.Thread(target=self._expire_idle, name="expire", daemon=True).start()
        log.info("worker %s listening on %s (backend %s)", self.name, self.address, self.config.backend)
        while not self._stopped.is_set():
            try:
                sock, addr = self.listener.accept()
            except OSError as err:
                if self._stopped.is_set():
                    break
                if err.errno in _OUT_OF_DESCRIPTORS:   # many connections at once: wait for some to end
                    log.warning("accept: %s; backing off", err.strerror)
                    time.sleep(0.1)
                    continue
                log.error("worker %s: accept failed: %s; exiting", self.name, err)
                raise DnetError(f"worker {self.name}: accept failed: {err}") from None
            if not self._unauthenticated.acquire(blocking=False):
                sock.close()                       # too many peers mid-handshake: refuse past the cap
                continue
            threading.Thread(target=self._serve, args=(sock, addr), daemon=True).start()

    def start(self) -> threading.Thread:
        """Serve from a background thread (in-process workers, for tests and embedding)."""
        thread = threading.Thread(target=self.serve_forever, name=f"worker-{self.name}", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stopped.set()
        with self._has_work:
            self._work.append(None)
            self._has_work.notify()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() in serve_forever; close() alone does not
        except OSError:
            pass
        self.listener.close()

    # -- connections ----------------------------------------------------------------
    def _serve(self, sock: socket.socket, addr: tuple) -> None:
        peer = f"{addr[0]}:{addr[1]}"
        try:
            chan = server_handshake(sock, self.secret, self.config.limits, self.config.tls)
        except (AuthError, ProtocolError, ConnectionClosed, OSError) as err:
            log.warning("refused %s: %s", peer, err)
            sock.close()
            return
        finally:
            self._unauthenticated.release()
        chan.peer = peer
        try:
            self._read_loop(chan)
        finally:
            if chan in self._claimed:     # a tensor-parallel group's link now: its mesh reads and closes it
                self._claimed.discard(chan)
            else:
                self._hang_up(chan)

    def _hang_up(self, chan: Channel) -> None:
        """A connection ended: what it loaded or was answered on goes with it."""
        with self._lock:   # a coordinator gone without closing: the sessions it loaded go with it
            sessions = {key.split("/")[0] for key, st in self.stages.items() if st.reply.channel is chan}
        self._drop_sessions(sessions)
        with self._lock:
            outboxes = [self._replies.pop(k) for k in list(self._replies) if k[0] == id(chan)]
        for outbox in outboxes:
            outbox.close(timeout=0.5)
        chan.close()

    def _read_loop(self, chan: Channel) -> None:
        while not self._stopped.is_set():
            try:
                msg = chan.recv()
            except ConnectionClosed:
                return
            except ProtocolError as err:
                log.warning("dropping connection from %s: %s", chan.peer, err)
                self._try_send(chan, encode(Error(str(err))))
                return
            except OSError as err:
                log.info("connection from %s ended: %s", chan.peer, err)
                return
            try:
                self._dispatch(chan, msg)
                if chan in self._claimed:
                    return
            except OSError as err:
                log.info("connection from %s ended: %s", chan.peer, err)
                return
            except Exception as err:  # noqa: BLE001 - a malformed message, or one asking for something wrong
                reason = str(err) if isinstance(err, DnetError) else f"{type(err).__name__}: {err}"
                log.warning("%s from %s refused: %s", msg.type.name, chan.peer, reason)
                self._try_send(chan, encode(Error(reason, **reply_ids(msg.meta))))

    @staticmethod
    def _try_send(chan: Channel, msg: Message) -> None:
        try:
            chan.send(msg)
        except OSError:
            pass

    def _reply_outbox(self, chan: Channel, shape: LinkShape | None = None) -> Outbox:
        """The outbox back to a coordinator (shaped where the link back is)."""
        with self._lock:
            key = (id(chan), shape)
            if key not in self._replies:
                self._replies[key] = Outbox(chan, shape)
            return self._replies[key]

    # -- control messages -------------------------------------------------------------
    def _dispatch(self, chan: Channel, msg: Message) -> None:
        record = WORKER_ACCEPTS.decode(msg)   # every field checked: a malformed one is answered, not run
        _HANDLERS[type(record)](self, chan, record, msg.tensors)

    def _on_ping(self, chan: Channel, ping: Ping, tensors: dict) -> None:
        if tensors:
            chan.send(encode(Pong(ping.heartbeat, _nbytes(tensors))))
        else:
            chan.send_frame(_PONGS[ping.heartbeat])

    def _on_caps(self, chan: Channel, query: CapsQuery, tensors: dict) -> None:
        """What this worker is; with `probe`, its device measured through its backend. A probe compiles and
        times kernels for seconds (a C compiler, an OpenCL build): off the reader thread, as a LINK is, so
        heartbeats are answered meanwhile and the coordinator does not take this worker for lost."""
        if not query.probe:
            chan.send(encode(self._caps(None)))
            return

        def probe() -> None:
            from dnet.topology.probe import probe_device

            try:
                reply = encode(self._caps(probe_device(self.config.backend, quick=True)))
            except Exception as err:  # noqa: BLE001 - reported to the coordinator, never fatal
                reply = encode(Error(str(err) if isinstance(err, DnetError) else f"{type(err).__name__}: {err}"))
            self._try_send(chan, reply)

        threading.Thread(target=probe, name="probe", daemon=True).start()

    def _caps(self, device: Any) -> Caps:
        return Caps(
            name=self.name, backend=self.config.backend, threads=self.config.threads, slowdown=self.config.slowdown,
            cores=tuple(sorted(os.sched_getaffinity(0))), pid=os.getpid(), host=socket.gethostname(),
            advertise=self.config.advertise or self.address, tls=self.config.tls is not None,
            models=tuple(self.models.digests()) if self.models is not None else (), device=device)

    def _on_load(self, chan: Channel, load: Load, tensors: dict) -> None:
        key = load.key
        refs: dict[str, FileRef] = {}
        if "mapped" in tensors:
            refs = parse(dict[str, FileRef], _json_tensor(tensors["mapped"], "mapped"), "LOAD's 'mapped' document")
        self._touch(key)
        pending = _PendingLoad(load, tensors["graph"].tobytes(), chan)
        with self._lock:
            self._pending[key] = pending
        if refs and self.models is not None:   # reading and hashing a model's weights takes a while: not here
            threading.Thread(target=self._map_then_load, args=(key, pending, refs), name=f"map-{key}",
                             daemon=True).start()
        else:
            self._need_or_compile(key, pending)

    def _map_then_load(self, key: str, pending: _PendingLoad, refs: dict[str, FileRef]) -> None:
        try:
            for digest in pending.load.weights:
                if digest in refs:
                    try:
                        pending.mapped[digest] = self.models.weight(refs[digest], digest)
                    except DnetError as err:   # this weight travels instead
                        log.warning("weight %s not read from a model file (%s): asking for it", digest[:12], err)
            with self._lock:
                dropped = self._pending.get(key) is not pending   # its session was reset meanwhile
            if not dropped:
                self._need_or_compile(key, pending)
        except Exception as err:  # noqa: BLE001 - reported to the coordinator, never fatal
            reason = str(err) if isinstance(err, DnetError) else f"{type(err).__name__}: {err}"
            self._try_send(pending.reply, encode(Error(reason, key=key)))

    def _need_or_compile(self, key: str, pending: _PendingLoad) -> None:
        missing = [h for h in self.store.missing(list(pending.load.weights)) if h not in pending.mapped]
        if missing:
            pending.reply.send(encode(Need(key, tuple(missing))))
        else:
            self._compile_in_background(key)

    def _on_weights(self, chan: Channel, weights: Weights, tensors: dict) -> None:
        key = weights.key
        for digest, array in tensors.items():
            self.store.put(digest, array)  # verifies the hash
        pending = self._pending.get(key)
        if pending is None:
            raise DnetError("weights for a stage that is not being loaded", where=key)
        if weights.last:
            missing = [h for h in self.store.missing(list(pending.load.weights)) if h not in pending.mapped]
            if missing:
                raise DnetError(f"still missing {len(missing)} weight(s), e.g. {missing[0][:12]}", where=key)
            self._compile_in_background(key)

    def _compile_in_background(self, key: str) -> None:
        """Compiling can take a while (a C compiler): the connection keeps answering pings meanwhile."""
        with self._lock:
            pending = self._pending.pop(key)
        threading.Thread(target=self._finish_load, args=(key, pending), name=f"compile-{key}", daemon=True).start()

    def _finish_load(self, key: str, pending: _PendingLoad) -> None:
        try:
            self._install(key, pending)
        except Exception as err:  # noqa: BLE001 - reported to the coordinator, never fatal
            reason = str(err) if isinstance(err, DnetError) else f"{type(err).__name__}: {err}"
            log.warning("stage %s failed to load: %s", key, reason)
            self._try_send(pending.reply, encode(Error(reason, key=key)))

    def _install(self, key: str, pending: _PendingLoad) -> None:
        graph = unpack(pending.doc, list(pending.load.weights),
                       lambda digest: pending.mapped[digest] if digest in pending.mapped else self.store.get(digest))
        # threads only for a backend that takes them (an OpenCL driver schedules its own)
        takes = self.config.threads and "threads" in registry.option_names(self.config.backend)
        options = {"threads": self.config.threads} if takes else {}
        runner = StageRunner(graph, self.config.backend, **options)
        state = SlotState.of(graph, pending.load.slots)
        mesh = Mesh(pending.load.rank, pending.load.size) if pending.load.size > 1 else None
        stage = _Stage(key, pending.load.stage, runner, self._reply_outbox(pending.reply), state=state, mesh=mesh)
        with self._lock:
            self.stages[key] = stage
        log.info("loaded stage %s (%d nodes) in %.3f s", key, len(graph), runner.compile_s)
        mapped = sum(int(a.nbytes) for a in pending.mapped.values())
        pending.reply.send(encode(Loaded(key, runner.compile_s, mapped)))

    def _on_group(self, chan: Channel, group: Group, tensors: dict) -> None:
        """Dial the group's members of higher rank (each then reads JOIN and hands that connection to its
        mesh), wait for those of lower rank to have dialled this one, and say so."""
        stage = self._stage(group.key)
        if stage.mesh is None:
            raise DnetError("not a member of a tensor-parallel group", where=group.key)
        stage.mesh.shape({peer.rank: peer.shape for peer in group.peers if peer.rank != stage.mesh.rank})
        for peer in group.peers:
            if peer.rank > stage.mesh.rank:
                try:
                    link = connect(peer.host, peer.port, self.secret, self.config.limits, tls=self.config.tls)
                except (OSError, DnetError) as err:
                    raise DnetError(f"cannot reach group member {peer.rank} at {peer.host}:{peer.port}: {err}") \
                        from None
                link.send(encode(Join(peer.key, stage.mesh.rank)))
                stage.mesh.add(peer.rank, link)
        stage.mesh.wait_complete()
        chan.send(encode(Grouped(group.key)))

    def _on_join(self, chan: Channel, join: Join, tensors: dict) -> None:
        stage = self._stage(join.key)
        if stage.mesh is None:
            raise DnetError("not a member of a tensor-parallel group", where=join.key)
        stage.mesh.add(join.rank, chan)
        self._claimed.add(chan)

    def _on_route(self, chan: Channel, route: Route, tensors: dict) -> None:
        stage = self._stage(route.key)
        if route.next is not None:
            session = stage.key.split("/")[0]
            stage.next_link = self._link(session, route.next.host, route.next.port, route.shape)
            stage.next_key = route.next.key
        elif route.shape is not None:
            stage.reply = self._reply_outbox(stage.reply.channel, route.shape)  # the last stage's link back
        chan.send(encode(Routed(stage.key)))

    def _link(self, session: str, host: str, port: int, shape: LinkShape | None) -> Outbox:
        ident = (session, host, port, shape)
        with self._lock:
            link = self._links.get(ident)
            if link is not None and link.error is None:
                return link
        try:
            chan = connect(host, port, self.secret, self.config.limits, tls=self.config.tls)
        except (OSError, DnetError) as err:
            raise DnetError(f"cannot reach the next worker at {host}:{port}: {err}") from None
        link = Outbox(chan, shape)
        with self._lock:
            self._links[ident] = link
        return link

    def _on_link(self, chan: Channel, probe: LinkProbe, tensors: dict) -> None:
        """Measure the link to another worker over dnet's own framed, authenticated transport: latency from
        small round trips, bandwidth from large ones. Off the reader thread: heartbeats go on meanwhile."""
        host, port = probe.host, probe.port

        def measure() -> None:
            try:
                latency, bandwidth = measure_link(host, port, self.secret, probe.bytes, self.config.limits,
                                                  tls=self.config.tls)
                reply = encode(LinkMeasured(host, port, latency, bandwidth))
            except (OSError, DnetError) as err:
                reply = encode(Error(f"cannot measure the link to {host}:{port}: {err}"))
            self._try_send(chan, reply)

        threading.Thread(target=measure, name=f"link->{host}:{port}", daemon=True).start()

    def _on_reset(self, chan: Channel, reset: Reset, tensors: dict) -> None:
        self._drop_sessions({reset.session})
        chan.send(encode(Reset(reset.session)))

    def _expire_idle(self) -> None:
        period = min(10.0, self.config.idle_timeout_s / 4)
        while not self._stopped.wait(period):
            now = time.monotonic()
            with self._lock:
                idle = {s for s, t in self._used.items() if now - t > self.config.idle_timeout_s}
            if idle:
                log.info("freeing %d session(s) idle for over %.0f s: %s", len(idle), self.config.idle_timeout_s,
                         ", ".join(sorted(idle)))
                self._drop_sessions(idle)
                with self._lock:
                    self._expired.update(dict.fromkeys(idle))
                    for old in list(self._expired)[:-1000]:
                        del self._expired[old]

    def _touch(self, key: str) -> None:
        with self._lock:
            self._used[key.split("/")[0]] = time.monotonic()

    def _drop_sessions(self, sessions: set[str]) -> None:
        """Forget these sessions' stages (their compiled code and state) and close their links."""
        with self._lock:
            for session in sessions:
                self._used.pop(session, None)
            meshes = [self.stages[k].mesh for k in self.stages if k.split("/")[0] in sessions]
            for key in [k for k in self.stages if k.split("/")[0] in sessions]:
                del self.stages[key]
            for key in [k for k in self._pending if k.split("/")[0] in sessions]:
                del self._pending[key]
            links = [self._links.pop(k) for k in list(self._links) if k[0] in sessions]
        for link in links:  # a send stuck on a next worker that hangs must not hold up the re-plan
            link.abort()
        for mesh in meshes:
            if mesh is not None:
                mesh.close()

    def _on_stats(self, chan: Channel, query: StatsQuery, tensors: dict) -> None:
        with self._lock:
            stats = {k: StageCounters(**s.runner.stats.to_json()) for k, s in self.stages.items()}
        chan.send(encode(Stats(stats)))

    def _on_shutdown(self, chan: Channel, shutdown: Shutdown, tensors: dict) -> None:
        log.info("shutdown requested by %s", chan.peer)
        chan.send(encode(Shutdown()))
        self.stop()

    def _stage(self, key: str) -> _Stage:
        with self._lock:
            stage = self.stages.get(key)
        if stage is None:
            raise DnetError("no such stage on this worker", where=key)
        return stage

    # -- requests -----------------------------------------------------------------------
    def _on_run(self, chan: Channel, run: Run, tensors: dict) -> None:
        key = run.key
        if key.split("/")[0] in self._expired:
            raise DnetError(f"session {key.split('/')[0]} was freed after {self.config.idle_timeout_s:.0f} s "
                            "idle; load the model again", where=key)
        self._touch(key)
        with self._has_work:
            if self._computing or self._work or not self._short(key, _nbytes(tensors)):
                self._work.append((run, tensors))
                self._has_work.notify()
                return
            self._computing = True
        try:
            self._request(run, tensors)
        finally:
            self._computed()

    def _short(self, key: str, nbytes: int) -> bool:
        """Whether a request may run on the thread that read it: it is small, its stage's last run short."""
        if nbytes > INLINE_BYTES:
            return False
        with self._lock:
            stage = self.stages.get(key)
        last = stage.last_run if stage is not None else None
        return last is not None and last[1] < INLINE_S and nbytes <= last[0]

    def _computed(self) -> None:
        with self._has_work:
            self._computing = False
            if self._work:
                self._has_work.notify()

    def _compute_loop(self) -> None:
        while True:
            with self._has_work:
                while self._computing or not self._work:
                    self._has_work.wait()
                item = self._work.popleft()
                self._computing = True
            if item is None:
                return
            try:
                self._request(*item)
            finally:
                self._computed()

    def _request(self, run: Run, tensors: dict) -> None:
        with self._lock:
            stage = self.stages.get(run.key)
        if stage is None:  # e.g. a request of a plan that was reset: its coordinator resends it
            log.info("dropping request %s for unknown stage %s", run.rid, run.key)
            return
        start = time.perf_counter()
        try:
            self._run(stage, run, tensors)
        except Exception as err:  # noqa: BLE001 - any failure of one request is reported, never fatal
            log.warning("stage %s request %s failed: %s", stage.key, run.rid, err)
            try:
                stage.reply.put(encode(Error(f"{type(err).__name__}: {err}", run.rid, run.epoch, run.key,
                                             stage.index)))
            except ConnectionError:
                pass
        stage.last_run = (_nbytes(tensors), time.perf_counter() - start)

    def _run(self, stage: _Stage, run: Run, inputs: dict) -> None:
        cpu = time.process_time()
        if stage.state is not None:   # the request names its sequences' slots; their state is bound in place
            if run.slots is None:
                raise DnetError("a stage with state needs the request's 'slots': [first, count]", where=run.key)
            inputs = {**inputs, **stage.state.bind(*run.slots)}
        outputs, seconds = stage.runner(inputs, stage.mesh.all_reduce if stage.mesh is not None else None)
        if self.config.slowdown > 1.0:
            work = min(seconds, (time.process_time() - cpu) / (self.config.threads or 1))
            time.sleep((self.config.slowdown - 1.0) * work)
            seconds += (self.config.slowdown - 1.0) * work
        trace = run.trace + ((stage.index, self.name, seconds),)
        if stage.next_link is not None:
            stage.next_link.put(encode(Run(stage.next_key, run.rid, run.epoch, run.slots, trace), outputs))
        else:
            stage.reply.put(encode(Result(run.rid, run.epoch, run.slots, trace), outputs))


def measure_link(host: str, port: int, secret: str, nbytes: int, limits: Limits, runs: int = 7,
                 tls: ClusterTls | None = None) -> tuple[float, float]:
    """(one-way latency in s, bandwidth in bytes/s) to the worker at host:port: medians of PING round trips,
    empty and carrying `nbytes`."""
    chan = connect(host, port, secret, limits, tls=tls)
    try:
        def round_trip(msg: Message) -> float:
            start = time.perf_counter()
            chan.send(msg)
            decode_as(Pong, chan.recv())   # (an ERROR instead is a MessageError, a DnetError)
            return time.perf_counter() - start

        small = sorted(round_trip(encode(Ping())) for _ in range(runs))[runs // 2]
        payload = {"probe": np.zeros(nbytes, np.uint8)}
        big = sorted(round_trip(encode(Ping(), payload)) for _ in range(max(3, runs // 2)))
        seconds = max(big[len(big) // 2] - small, 1e-9)
        return small / 2, nbytes / seconds
    finally:
        chan.close()


_HANDLERS = {
    Ping: Worker._on_ping, CapsQuery: Worker._on_caps, Load: Worker._on_load, Weights: Worker._on_weights,
    Route: Worker._on_route, Run: Worker._on_run, Reset: Worker._on_reset, StatsQuery: Worker._on_stats,
    Shutdown: Worker._on_shutdown, LinkProbe: Worker._on_link, Group: Worker._on_group, Join: Worker._on_join,
}
assert set(_HANDLERS) == set(WORKER_ACCEPTS.records.values()), "a message the worker accepts has no handler"


# an empty PING's answer, written once: liveness and latency probes (heartbeats, LINK, the benchmarks'
# small round trip) then cost the reading of a frame and one send, not a record, a meta and a frame made each time
_PONGS = {heartbeat: encode_frame(encode(Pong(heartbeat))) for heartbeat in (False, True)}


def _nbytes(tensors: dict[str, np.ndarray]) -> int:
    return sum(int(a.nbytes) for a in tensors.values())


def _json_tensor(tensor: np.ndarray, what: str) -> Any:
    """A JSON document that travelled as a uint8 tensor (too large for a message's meta)."""
    try:
        return json.loads(tensor.tobytes())
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise DnetError(f"'{what}' is not a JSON document: {err}") from None
