"""A cluster of worker processes on this machine, each with its own cores, threads and backend.

`LocalCluster` starts the workers (`python -m dnet.cluster ...`), waits a bounded
time for each to say where it listens, and on exit always terminates them, killing
any that do not stop. The secret travels in the environment, never on a command
line (where `ps` would show it). With `tls`, the cluster gets a CA of its own (in a
temporary directory, gone with the cluster) and every worker and the coordinator a
certificate from it: mutual TLS on every link, as a cluster across machines has.
"""
from __future__ import annotations

import atexit
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from dnet.cluster.auth import SECRET_ENV, new_secret
from dnet.cluster.tls import ClusterTls
from dnet.core import progress
from dnet.core.file_hash import file_sha256
from dnet.errors import DnetError

READY_PREFIX = "DNET_WORKER_READY "


@dataclass
class WorkerSpec:
    backend: str = "numpy"
    threads: int | None = None                       # default 1: n workers must not fight over the cores
    cores: list[int] | None = None
    slowdown: float = 1.0                            # simulate a slower device (see WorkerConfig)
    idle_timeout: float | None = None                # free sessions unused this long (default: the worker's)
    name: str = ""
    listen: str = "127.0.0.1:0"
    advertise: str | None = None
    prefix: list[str] = field(default_factory=list)   # e.g. ["ip", "netns", "exec", "ns0"]
    tls_dir: str | None = None                       # the node's TLS files (ca.pem, node.pem, node.key)
    models: list[str] = field(default_factory=list)  # model files (or their directories) it reads weights from

    def command(self) -> list[str]:
        cmd = [*self.prefix, sys.executable, "-m", "dnet.cluster", "--listen", self.listen,
               "--backend", self.backend]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        if self.cores:
            cmd += ["--cores", ",".join(map(str, self.cores))]
        if self.slowdown != 1.0:
            cmd += ["--slowdown", str(self.slowdown)]
        if self.idle_timeout is not None:
            cmd += ["--idle-timeout", str(self.idle_timeout)]
        if self.name:
            cmd += ["--name", self.name]
        if self.advertise:
            cmd += ["--advertise", self.advertise]
        if self.tls_dir:
            cmd += ["--tls", self.tls_dir]
        for directory in self.models:
            cmd += ["--models", str(directory)]
        return cmd

    def env(self, secret: str, cache_dir: str | None) -> dict[str, str]:
        env = {**os.environ, SECRET_ENV: secret, "PYTHONUNBUFFERED": "1"}
        if cache_dir:
            env["DNET_CACHE_DIR"] = cache_dir
        # BLAS pools size themselves when numpy loads, so this is set before the process starts;
        # oversubscribed spinning BLAS threads slow a shared machine down several times over
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(self.threads or 1)
        return env


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, be sent SIGTERM when the process that started it dies, so a
    crashed coordinator leaves no worker processes behind (elsewhere `close` is the only way)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))   # PR_SET_PDEATHSIG


def core_sets(threads: Sequence[int | None], available: int | None = None) -> list[list[int] | None]:
    """Disjoint cores for workers with these thread counts, where the machine has enough;
    otherwise none are pinned (pinning two busy workers to one core is worse than letting them roam)."""
    available = available or os.cpu_count() or 1
    counts = [t or 1 for t in threads]
    if sum(counts) > available:
        return [None] * len(counts)
    starts = [sum(counts[:i]) for i in range(len(counts))]
    return [list(range(start, start + count)) for start, count in zip(starts, counts)]


class LocalCluster:
    def __init__(self, workers: int | Sequence[WorkerSpec], secret: str | None = None,
                 cache_dir: str | None = None, start_timeout_s: float = 30.0, tls: bool = False):
        self.specs = [WorkerSpec(name=f"w{i}") for i in range(workers)] if isinstance(workers, int) else list(workers)
        self.secret = secret or new_secret()
        self.cache_dir = cache_dir
        self.start_timeout_s = start_timeout_s
        self.procs: list[subprocess.Popen] = []
        self.addresses: list[str] = []
        self.log_dir = Path(tempfile.mkdtemp(prefix="dnet-cluster-"))
        # a script that raises before close() still stops its workers and removes the log directory
        # (which holds a TLS cluster's throwaway CA key); PR_SET_PDEATHSIG covers deaths that skip atexit
        atexit.register(self.close)
        self.tls: ClusterTls | None = self._make_pki() if tls else None   # the coordinator's side

    def _make_pki(self) -> ClusterTls:
        """A CA for this cluster only, a certificate per worker (given to its spec) and one for the coordinator."""
        from dnet.cluster.certs import create_ca, issue_node

        root = self.log_dir / "tls"
        create_ca(root, cluster="dnet local cluster")
        for i, spec in enumerate(self.specs):
            spec.tls_dir = spec.tls_dir or str(issue_node(root, f"worker{i}"))
        return ClusterTls(issue_node(root, "coordinator"))

    def start(self) -> "LocalCluster":
        for spec in self.specs:   # said here in one line, not as a worker that did not start
            missing = [d for d in spec.models if not os.path.exists(d)]
            if missing:
                raise DnetError(f"--models {missing[0]}: no such file or directory",
                                hint="a directory holding model files, or a model file")
            for path in spec.models:   # hashed once here, found in the digest cache by every worker that starts
                if os.path.isfile(path):
                    file_sha256(path)
        try:
            for i in range(len(self.specs)):
                self.procs.append(self._spawn(i))
            deadline = time.monotonic() + self.start_timeout_s
            # each worker is a fresh Python process importing dnet: about a second apiece on a busy machine
            with progress.task("start local workers", total=len(self.procs), unit="workers") as task:
                for i in range(len(self.procs)):
                    self.addresses.append(self._wait_ready(i, deadline))
                    task.advance()
        except BaseException:
            self.close()
            raise
        return self

    def _spawn(self, i: int) -> subprocess.Popen:
        spec = self.specs[i]
        with open(self.log_dir / f"worker{i}.log", "ab") as log:
            return subprocess.Popen(spec.command(), env=spec.env(self.secret, self.cache_dir),
                                    stdout=subprocess.PIPE, stderr=log, text=True, preexec_fn=_die_with_parent)

    def restart(self, i: int) -> str:
        """Start worker i afresh (killing it first if it still runs), as a machine back from a crash;
        returns its new address (a coordinator takes it back with `add_worker`)."""
        if self.alive(i):
            self.kill(i)
        if self.procs[i].stdout:
            self.procs[i].stdout.close()
        self.procs[i] = self._spawn(i)
        self.addresses[i] = self._wait_ready(i, time.monotonic() + self.start_timeout_s)
        return self.addresses[i]

    def _wait_ready(self, i: int, deadline: float) -> str:
        proc = self.procs[i]
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while (left := deadline - time.monotonic()) > 0:
                if sel.select(timeout=left):
                    line = proc.stdout.readline()
                    if line.startswith(READY_PREFIX):
                        return line[len(READY_PREFIX):].strip()
                    if not line:  # the process ended
                        break
        raise DnetError(f"worker {i} did not start within {self.start_timeout_s:.0f} s",
                        hint=f"its log: {self.log(i)[-500:]!r}")

    def log(self, i: int) -> str:
        """What worker i has logged so far (its stderr); gone once the cluster is closed."""
        path = self.log_dir / f"worker{i}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self, i: int) -> None:
        """Kill worker i at once (SIGKILL), as a crash would."""
        self.procs[i].kill()
        self.procs[i].wait(timeout=5)

    def alive(self, i: int) -> bool:
        return self.procs[i].poll() is None

    def coordinator(self, **options: Any):
        from dnet.cluster.coordinator import Coordinator

        return Coordinator(self.addresses, self.secret, **{"tls": self.tls, **options})

    def close(self, timeout_s: float = 5.0) -> None:
        atexit.unregister(self.close)
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            if proc.stdout:
                proc.stdout.close()
        shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
