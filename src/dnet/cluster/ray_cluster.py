"""dnet workers on a Ray cluster: one per Ray node, each inside a Ray actor.

Ray owns the processes: an actor is placed on every alive node that has CPUs (node affinity, so exactly
one per node), restarted when its process dies (`max_restarts`), and removed with the cluster or the
driver. dnet owns the rest: each actor runs the ordinary worker daemon (`dnet.cluster.worker.Worker`),
probes its node and reports a `Device` sized to what Ray says the node has (its CPUs and memory);
activations travel over dnet's own links between the workers (mutual TLS with a CA made for this cluster),
never through Ray's object store. A worker lost mid-run is planned around by the coordinator, as any is.

Why the worker runs on a thread of the actor rather than as a child process: it then lives and dies with
the actor's process. Killed (SIGKILL, the OOM killer, a node lost), the actor leaves nothing behind holding
a port or a CPU, and Ray's restart (the actor's `__init__` run again in a fresh process) starts a fresh
worker. A child would outlive a SIGKILLed actor unless the kernel were told to kill it (PR_SET_PDEATHSIG),
and that follows the *thread* that spawned it, where Ray runs actor methods on threads of its own.

The secret and the node certificates reach the actors as arguments of their creation, through Ray's own
control plane; a Ray cluster can run any code on its nodes already, so it is trusted with them.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from dnet.cluster.auth import new_secret
from dnet.cluster.certs import create_ca, issue_node
from dnet.cluster.tls import CA_FILE, CERT_FILE, KEY_FILE, ClusterTls
from dnet.core import progress
from dnet.errors import DnetError
from dnet.topology import Device, Node, Topology

log = logging.getLogger("dnet.ray")
START_TIMEOUT_S = 120.0   # placing actors may wait for a runtime environment or a node to join
WATCH_S = 1.0             # how often a running executable's actors are checked for restarts
_START_HINT = "is every Ray node able to import dnet? (`ray status`, the actors' logs)"


def _ray() -> Any:
    """The `ray` package, imported only here: an optional extra (`pip install dnet[ray]`)."""
    try:
        import ray
    except ImportError:
        raise DnetError("Ray is not installed", hint="pip install 'dnet[ray]' (or pip install ray)") from None
    return ray


def node_device(probed: Device, cpus: float, memory: float | None) -> Device:
    """The probed device cut to what Ray gives the node: its CPUs (rates scale with the share of the
    probed cores, so nodes Ray sizes differently on one machine plan as unlike devices) and its memory."""
    cores = max(1, int(cpus))
    share = min(1.0, cores / max(1, probed.cores))
    return replace(probed, cores=min(cores, probed.cores) if probed.cores else cores,
                   compute={k: v * share for k, v in probed.compute.items()},
                   op_rates={k: v * share for k, v in probed.op_rates.items()},
                   memory=min(probed.memory, memory) if memory else probed.memory,
                   memory_bandwidth=probed.memory_bandwidth * share, cache=dict(probed.cache))


class DnetNodeActor:
    """Runs in the Ray actor: a worker daemon on a thread, and what it reports of its node."""

    def __init__(self, name: str, host: str, secret: str, tls_files: dict[str, bytes], backend: str,
                 cpus: float, memory: float | None):
        from dnet.cluster.worker import Worker, WorkerConfig

        # the node's certificate in a directory only this process's user can read; gone when it exits
        self.tls_dir = Path(tempfile.mkdtemp(prefix="dnet-ray-tls-"))
        for filename, data in tls_files.items():
            fd = os.open(self.tls_dir / filename, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        weakref.finalize(self, shutil.rmtree, str(self.tls_dir), True)
        self.cpus, self.memory, self.backend = cpus, memory, backend
        config = WorkerConfig(host=host, port=0, backend=backend, threads=max(1, int(cpus)), name=name,
                              tls=ClusterTls(self.tls_dir))
        self.worker = Worker(secret, config)
        self.worker.start()

    def report(self) -> dict[str, Any]:
        """Where the worker listens, the process it lives in, and the node's device (the probe is cached on
        disk per hardware, so only the first actor on a machine measures)."""
        from dnet.topology.probe import probe_device

        device = node_device(probe_device(self.backend, quick=True), self.cpus, self.memory)
        return {"address": self.worker.address, "pid": os.getpid(), "device": asdict(device)}

    def pid(self) -> int:
        """The actor's process: a new one after each restart (what the watcher polls, cheaply)."""
        return os.getpid()


class RayCluster:
    """The actors of one dnet cluster on Ray, with the secret and certificates they were given.

    `start()` connects to Ray (`address`; None: the running cluster, else a new local one) and places the
    actors; `topology()` asks each where it listens now (a restarted actor listens on a new port) and
    returns the Topology, which keeps this object alive; `close()` removes the actors."""

    def __init__(self, address: str | None = None, backend: str = "numpy", max_restarts: int = 4,
                 start_timeout_s: float = START_TIMEOUT_S):
        if max_restarts < 0:
            raise DnetError(f"max_restarts cannot be negative, got {max_restarts}")
        self.address, self.backend = address, backend
        self.max_restarts, self.start_timeout_s = max_restarts, start_timeout_s
        self.secret = new_secret()
        self.pki = Path(tempfile.mkdtemp(prefix="dnet-ray-pki-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.pki), True)
        self.tls: ClusterTls | None = None      # the coordinator's side, once started
        self.names: list[str] = []
        self.actors: list[Any] = []
        self.resources: list[dict[str, float]] = []   # Ray's view of each node: CPU, GPU, memory
        self._started_ray = False
        self._closed = threading.Event()

    def start(self) -> "RayCluster":
        """Connect to Ray (this process's connection if it has one) and place a worker on every node."""
        ray = _ray()
        if not ray.is_initialized():
            with progress.task("connect to Ray"):      # a new local Ray takes seconds to start its processes
                ray.init(address=self.address, logging_level=logging.WARNING)
            self._started_ray = True
        try:
            nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) > 0]
            if not nodes:
                raise DnetError(f"the Ray cluster at {self.address or 'this machine'} has no alive node with CPUs")
            create_ca(self.pki, cluster="dnet on Ray")
            self.tls = ClusterTls(issue_node(self.pki, "coordinator"))
            actor_class = ray.remote(DnetNodeActor)
            for node in nodes:
                self._place(actor_class, node)
            self._await_workers()   # every worker up and probed before anything plans over it
        except BaseException:
            self.close()
            raise
        return self

    def _place(self, actor_class: Any, node: dict) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        resources = node["Resources"]
        name = f"ray-{node['NodeID'][:8]}"
        cpus = float(resources.get("CPU", 1))
        threads = str(max(1, int(cpus)))
        actor = actor_class.options(
            # the worker computes with the node's CPUs without claiming them in Ray's books: claiming all would
            # stall the node's other Ray work, claiming some would be a fiction
            num_cpus=0, max_restarts=self.max_restarts, max_task_retries=-1,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
            # BLAS pools size themselves when numpy loads: set before the actor's process starts
            runtime_env={"env_vars": {v: threads for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                            "MKL_NUM_THREADS")}},
        ).remote(name, node["NodeManagerAddress"], self.secret, _node_files(issue_node(self.pki, name)),
                 self.backend, cpus, resources.get("memory"))
        self.names.append(name)
        self.actors.append(actor)
        self.resources.append({k: float(resources.get(k, 0)) for k in ("CPU", "GPU", "memory")})

    def _await_workers(self) -> None:
        """Wait for every actor's first report (its worker started, its node probed), counting them as they
        come: a Ray node may first have to start a worker process or build a runtime environment."""
        ray = _ray()
        pending = [a.report.remote() for a in self.actors]
        deadline = time.monotonic() + self.start_timeout_s
        with progress.task("start dnet workers on Ray nodes", total=len(pending), unit="workers") as task:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
                if not done:
                    raise DnetError(f"the dnet actors did not report within {self.start_timeout_s:.0f} s",
                                    hint=_START_HINT)
                try:
                    ray.get(done)
                except ray.exceptions.RayActorError as err:
                    raise DnetError(f"a dnet actor died: {str(err).splitlines()[0]}") from None
                task.advance()

    def _reports(self) -> list[dict[str, Any]]:
        ray = _ray()
        try:
            return ray.get([a.report.remote() for a in self.actors], timeout=self.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise DnetError(f"the dnet actors did not report within {self.start_timeout_s:.0f} s",
                            hint=_START_HINT) from None
        except ray.exceptions.RayActorError as err:
            raise DnetError(f"a dnet actor died: {str(err).splitlines()[0]}") from None

    def attach(self, exe: Any, poll_s: float = WATCH_S) -> threading.Thread:
        """While `exe` (a DistributedExecutable over these workers) runs, bring each restarted actor's fresh
        worker back to it as a spare node (`exe.add_node`). `dnet.compile` calls this for a Ray topology."""
        ray = _ray()
        pids = dict(enumerate(ray.get([a.pid.remote() for a in self.actors])))   # the processes `exe` reached
        thread = threading.Thread(target=self._watch, args=(weakref.ref(exe), pids, poll_s), name="dnet-ray-watch",
                                  daemon=True)
        thread.start()
        return thread

    def _watch(self, exe_ref: Any, pids: dict[int, int], poll_s: float) -> None:
        ray = _ray()
        generation = [0] * len(self.actors)
        while not self._closed.wait(poll_s):
            exe = exe_ref()
            if exe is None or exe.closed:
                return
            for i, actor in enumerate(list(self.actors)):
                if i not in pids:
                    continue                         # gone for good (its restarts spent)
                try:
                    pid = ray.get(actor.pid.remote(), timeout=poll_s)
                except ray.exceptions.GetTimeoutError:
                    continue                         # restarting: look again next time
                except ray.exceptions.RayActorError:
                    del pids[i]
                    continue
                if pid == pids[i]:
                    continue
                report = ray.get(actor.report.remote())
                generation[i] += 1
                node = Node(f"{self.names[i]}.{generation[i]}", [Device(**report["device"])], report["address"])
                try:
                    exe.add_node(node)
                    pids[i] = pid
                    log.info("actor %s restarted: worker %s back as a spare", self.names[i], node.address)
                except DnetError as err:             # lost again meanwhile, or the session closing
                    log.warning("actor %s restarted, its worker not added: %s", self.names[i], err)

    def pids(self) -> list[int]:
        """The process of each actor (its worker lives there): what a test kills."""
        return [r["pid"] for r in self._reports()]

    def topology(self, measure_links: bool = True) -> Topology:
        """The nodes as the actors report them now; with `measure_links`, the links between them measured by
        the workers over dnet's transport (otherwise the planner is left to measure them)."""
        reports = self._reports()
        topo = Topology([Node(name, [Device(**r["device"])], address=r["address"])
                         for name, r in zip(self.names, reports)], source="ray", cluster=self)
        if measure_links and len(reports) > 1:
            from dnet.cluster.coordinator import Coordinator

            with Coordinator([r["address"] for r in reports], self.secret, tls=self.tls) as coordinator:
                for (i, j), shape in coordinator.measure_links().items():
                    topo.add_link(self.names[i], self.names[j], shape.bandwidth, shape.latency, symmetric=False)
        return topo

    def close(self) -> None:
        self._closed.set()
        ray = _ray()
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception as err:  # noqa: BLE001 - Ray may be gone already; the rest must still go
                log.debug("ray.kill: %s", err)
        self.actors.clear()
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
        self._cleanup()

    def __enter__(self) -> "RayCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _node_files(directory: Path) -> dict[str, bytes]:
    return {f: (directory / f).read_bytes() for f in (CA_FILE, CERT_FILE, KEY_FILE)}


def topology_from_ray(address: str | None = None, *, backend: str = "numpy", max_restarts: int = 4,
                      measure_links: bool = True, start_timeout_s: float = START_TIMEOUT_S) -> Topology:
    """`Topology.from_ray`: start a `RayCluster` and return its topology. The topology holds the cluster
    (`topology.cluster`, which `dnet.compile` takes the secret and TLS from); `topology.cluster.close()`
    removes the actors, as leaving Ray does."""
    return RayCluster(address, backend, max_restarts, start_timeout_s).start().topology(measure_links)
