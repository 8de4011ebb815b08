"""dnet workers on a Ray cluster: one per Ray node, each inside a Ray actor.

Ray owns the processes: an actor is placed on every alive node that has CPUs (node affinity, so exactly
one per node), restarted when its process dies (`max_restarts`), and removed with the cluster or the
driver. dnet owns the rest: each actor runs the ordinary worker daemon (`dnet.cluster.worker.Worker`),
probes its node and reports a `Device` sized to what Ray says the node has (its CPUs and memory);
a node with GPUs in Ray's books has them claimed by its actor and gets a second worker, on the `cuda` backend,
where that backend runs there (otherwise the report says why, in one line);
activations travel over dnet's own links between the workers (mutual TLS with a CA made for this cluster),
never through Ray's object store. A worker lost mid-run is planned around by the coordinator, as any is.

Why the worker runs on a thread of the actor rather than as a child process: it then lives and dies with
the actor's process. Killed (SIGKILL, the OOM killer, a node lost), the actor leaves nothing behind holding
a port or a CPU, and Ray's restart (the actor's `__init__` run again in a fresh process) starts a fresh
worker. A child would outlive a SIGKILLed actor unless the kernel were told to kill it (PR_SET_PDEATHSIG),
and that follows the *thread* that spawned it, where Ray runs actor methods on threads of its own.

The secret and the node certificates reach the actors as arguments of their creation, through Ray's own
control plane; a Ray cluster can run any code on its nodes already, so it is trusted with them.

Why a GPU gets a worker (a topology node) of its own rather than a second `Device` on the CPU worker's node: a
worker compiles every stage it is given with its one backend, and the planner takes a node's devices as a team
that splits ops between them, which one backend cannot run. Two workers make two nodes the planner can give
stages to, each run by the backend its device was probed with.
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
GPU_BACKEND = "cuda"      # the backend a node's GPU worker runs


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


def gpu_note(gpus: int, reason: str | None) -> str | None:
    """One line on the claimed GPUs a node's workers leave unused: all where the cuda backend cannot run
    there (`reason`), all but one where it can (a worker drives one GPU: `open_device`); None: none left."""
    if reason is not None:
        return f"{_count(gpus, 'GPU')} not used: {reason}"
    return f"{gpus - 1} of its {gpus} GPUs not used: a dnet worker drives one GPU" if gpus > 1 else None


class DnetNodeActor:
    """Runs in the Ray actor: a worker daemon on a thread per backend, and what it reports of its node."""

    def __init__(self, name: str, host: str, secret: str, tls_files: dict[str, bytes], backend: str,
                 cpus: float, memory: float | None, gpus: int = 0):
        from dnet.backends import registry

        # the node's certificate in a directory only this process's user can read; gone when it exits
        self.tls_dir = Path(tempfile.mkdtemp(prefix="dnet-ray-tls-"))
        for filename, data in tls_files.items():
            fd = os.open(self.tls_dir / filename, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        weakref.finalize(self, shutil.rmtree, str(self.tls_dir), True)
        self.cpus, self.memory = cpus, memory
        self.workers = {backend: self._start(secret, host, name, backend, max(1, int(cpus)))}
        # Ray set CUDA_VISIBLE_DEVICES to the claimed GPUs before this process started: asked here, the
        # backend sees what this actor was given, on this node's driver
        reason = registry.unavailable(GPU_BACKEND) if gpus else None
        self.gpu_note = gpu_note(gpus, reason)
        if gpus and reason is None:
            self.workers[GPU_BACKEND] = self._start(secret, host, f"{name}-{GPU_BACKEND}", GPU_BACKEND, None)

    def _start(self, secret: str, host: str, name: str, backend: str, threads: int | None) -> Any:
        from dnet.cluster.worker import Worker, WorkerConfig

        config = WorkerConfig(host=host, port=0, backend=backend, threads=threads, name=name,
                              tls=ClusterTls(self.tls_dir))
        worker = Worker(secret, config)
        worker.start()
        return worker

    def report(self) -> dict[str, Any]:
        """The process the workers live in, a line on unused GPUs, and each worker: its name, where it listens,
        its backend and its device, probed through that backend (as `dnet probe --backend` does; the probe
        is cached on disk per hardware and backend, so only the first actor on a machine measures). The CPU
        worker's device is cut to Ray's CPUs and memory; the GPU worker's is the probe's."""
        from dnet.topology.probe import probe_device

        workers = []
        for backend, worker in self.workers.items():
            device = probe_device(backend, quick=True)
            if backend != GPU_BACKEND:
                device = node_device(device, self.cpus, self.memory)
            workers.append({"name": worker.name, "address": worker.address, "backend": backend,
                            "device": asdict(device)})
        return {"pid": os.getpid(), "workers": workers, "gpu_note": self.gpu_note}

    def pid(self) -> int:
        """The actor's process: a new one after each restart (what the watcher polls, cheaply)."""
        return os.getpid()


class RayCluster:
    """The actors of one dnet cluster on Ray, with the secret and certificates they were given.

    `start()` connects to Ray (`address`; None: the running cluster, else a new local one) and places the
    actors; `topology()` asks each where its workers listen now (a restarted actor listens on new ports) and
    returns the Topology (a node per worker), which keeps this object alive; `close()` removes the actors.
    `notes` says, a line per node, which of the GPUs Ray lists are not used, and why."""

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
        self.claimed: list[int] = []                  # the GPUs each actor holds in Ray's books
        self.backends: list[list[str]] = []           # the backends of each actor's workers, once started
        self.notes: list[str] = []                    # "node ray-1a2b3c4d: 1 GPU not used: <why>"
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
            free = _free_gpus(ray)
            for node in nodes:
                self._place(actor_class, node, free.get(node["NodeID"]))
            self._await_workers()   # every worker up and probed before anything plans over it
        except BaseException:
            self.close()
            raise
        return self

    def _place(self, actor_class: Any, node: dict, free_gpus: float | None) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        resources = node["Resources"]
        name = f"ray-{node['NodeID'][:8]}"
        cpus = float(resources.get("CPU", 1))
        threads = str(max(1, int(cpus)))
        gpus = int(resources.get("GPU", 0))
        # a GPU, unlike the CPUs, is claimed: Ray then gives it to this actor alone and sets the process's
        # CUDA_VISIBLE_DEVICES. Only GPUs free now: one held by other Ray work (another dnet cluster) would
        # leave the actor waiting for it until the start timed out
        claimed = gpus if free_gpus is None else min(gpus, int(free_gpus))
        if claimed < gpus:
            self.notes.append(f"node {name}: {_count(gpus - claimed, 'GPU')} not used: held by other Ray work")
        actor = actor_class.options(
            # the worker computes with the node's CPUs without claiming them in Ray's books: claiming all would
            # stall the node's other Ray work, claiming some would be a fiction
            num_cpus=0, num_gpus=claimed, max_restarts=self.max_restarts, max_task_retries=-1,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
            # BLAS pools size themselves when numpy loads: set before the actor's process starts
            runtime_env={"env_vars": {v: threads for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                            "MKL_NUM_THREADS")}},
        ).remote(name, node["NodeManagerAddress"], self.secret, _node_files(issue_node(self.pki, name)),
                 self.backend, cpus, resources.get("memory"), claimed)
        self.names.append(name)
        self.actors.append(actor)
        self.resources.append({k: float(resources.get(k, 0)) for k in ("CPU", "GPU", "memory")})
        self.claimed.append(claimed)

    def _await_workers(self) -> None:
        """Wait for every actor's first report (its worker started, its node probed), counting them as they
        come: a Ray node may first have to start a worker process or build a runtime environment."""
        ray = _ray()
        index = {a.report.remote(): i for i, a in enumerate(self.actors)}
        pending, reports = list(index), [{}] * len(self.actors)
        deadline = time.monotonic() + self.start_timeout_s
        with progress.task("start dnet workers on Ray nodes", total=len(pending), unit="workers") as task:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
                if not done:
                    raise DnetError(f"the dnet actors did not report within {self.start_timeout_s:.0f} s",
                                    hint=_START_HINT)
                try:
                    reports[index[done[0]]] = ray.get(done[0])
                except ray.exceptions.RayActorError as err:
                    raise DnetError(f"a dnet actor died: {str(err).splitlines()[0]}") from None
                task.advance()
        self.backends = [[w["backend"] for w in r["workers"]] for r in reports]
        self.notes += [f"node {name}: {r['gpu_note']}" for name, r in zip(self.names, reports) if r["gpu_note"]]
        for line in self.notes:   # said once, where `Topology.from_ray()`'s caller sees it: never silently
            log.warning("%s", line)

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
                except Exception:  # noqa: BLE001 - an actor gone from Ray's books (removed, Ray shutting down):
                    del pids[i]    # Ray raises a bare Exception ("Can't find actor") from the submission
                    continue
                if pid == pids[i]:
                    continue
                generation[i] += 1
                pids[i] = pid                        # a worker not added is not retried: lost again, it restarts
                for node in _nodes(ray.get(actor.report.remote()), f".{generation[i]}"):
                    try:
                        exe.add_node(node)
                        log.info("actor %s restarted: worker %s back as a spare", self.names[i], node.address)
                    except DnetError as err:         # lost again meanwhile, or the session closing
                        log.warning("actor %s restarted, its worker not added: %s", self.names[i], err)

    def pids(self) -> list[int]:
        """The process of each worker, in the topology's order (its actor's): what a test kills."""
        return [r["pid"] for r in self._reports() for _ in r["workers"]]

    def topology(self, measure_links: bool = True) -> Topology:
        """The nodes as the actors report them now; with `measure_links`, the links between them measured by
        the workers over dnet's transport (otherwise the planner is left to measure them)."""
        topo = Topology([n for r in self._reports() for n in _nodes(r)], source="ray", cluster=self)
        if measure_links and len(topo.nodes) > 1:
            from dnet.cluster.coordinator import Coordinator

            names = topo.names
            with Coordinator([n.address for n in topo.nodes], self.secret, tls=self.tls) as coordinator:
                for (i, j), shape in coordinator.measure_links().items():
                    topo.add_link(names[i], names[j], shape.bandwidth, shape.latency, symmetric=False)
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


def _nodes(report: dict[str, Any], suffix: str = "") -> list[Node]:
    """A topology node per worker of an actor's report (`suffix`: a restarted actor's generation)."""
    return [Node(w["name"] + suffix, [Device(**w["device"])], address=w["address"], backend=w["backend"])
            for w in report["workers"]]


def _free_gpus(ray: Any) -> dict[str, float]:
    """The GPUs free now on each Ray node, by node id; empty where this Ray cannot say (then all are taken
    as free). Ray's own developer API: `ray.nodes()` lists totals only."""
    try:
        from ray._private.state import available_resources_per_node

        return {node: free.get("GPU", 0.0) for node, free in available_resources_per_node().items()}
    except Exception as err:  # noqa: BLE001 - a private module that may move: claim all rather than fail
        log.debug("GPUs free per Ray node unknown: %s", err)
        return {}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def topology_from_ray(address: str | None = None, *, backend: str = "numpy", max_restarts: int = 4,
                      measure_links: bool = True, start_timeout_s: float = START_TIMEOUT_S) -> Topology:
    """`Topology.from_ray`: start a `RayCluster` and return its topology. The topology holds the cluster
    (`topology.cluster`, which `dnet.compile` takes the secret and TLS from); `topology.cluster.close()`
    removes the actors, as leaving Ray does."""
    return RayCluster(address, backend, max_restarts, start_timeout_s).start().topology(measure_links)
