"""`dnet worker` (one node's daemon) and `dnet cluster up` (n workers on this machine)."""
from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from dnet.cli.main import cli
from dnet.cli.progress_view import progress_options
from dnet.errors import DnetError


def _cores(text: str | None) -> list[int] | None:
    if not text:
        return None
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        try:
            out += list(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise DnetError(f"bad core list '{text}'", hint="e.g. 0,1 or 0-3") from None
    return out


def _read_secret(secret_file: str | None) -> str:
    from dnet.cluster.auth import SECRET_ENV

    if secret_file:
        try:
            return Path(secret_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as err:
            raise DnetError(f"cannot read the secret file {secret_file}: {getattr(err, 'strerror', None) or err}",
                            hint="`dnet cluster init --secret-file FILE` writes one") from None
    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        raise DnetError("no cluster secret", hint=f"set {SECRET_ENV} or pass --secret-file")
    return secret


@cli.command()
@click.option("--listen", default="127.0.0.1:0", show_default=True, help="HOST:PORT to listen on (port 0: any).")
@click.option("--backend", default="numpy", show_default=True, help="Backend that compiles this node's stages.")
@click.option("--threads", type=int, default=None, help="Threads for this node's kernels.")
@click.option("--cores", default=None, help="CPU cores to run on, e.g. 0,1 or 2-3.")
@click.option("--name", default="", help="Name shown in plans and timings.")
@click.option("--advertise", default=None, help="HOST:PORT other workers reach this one at (default: --listen).")
@click.option("--secret-file", default=None, help="File holding the cluster secret (default: $DNET_CLUSTER_SECRET).")
@click.option("--cache-dir", default=None, help="Where verified weights are cached.")
@click.option("--slowdown", type=float, default=1.0, help="Simulate a device this many times slower (>= 1).")
@click.option("--idle-timeout", type=float, default=600.0, show_default=True,
              help="Seconds after which an unused session's stages and KV caches are freed.")
@click.option("--tls", "tls_dir", default=None, envvar="DNET_TLS_DIR",
              help="This node's TLS directory (ca.pem, node.pem, node.key): mutual TLS on every link "
                   "[default: $DNET_TLS_DIR].")
@click.option("--no-tls", is_flag=True, help="Allow plain TCP on a non-loopback address (a trusted network, a tunnel).")
@click.option("--models", "models", multiple=True,
              help="A model file or a directory of them (repeatable): weights found there are read from them, "
                   "not sent.")
@click.option("--announce", is_flag=True,
              help="Advertise this worker on the LAN (mDNS) with its probe summary, for `dnet cluster discover`.")
def worker(listen: str, backend: str, threads: int | None, cores: str | None, name: str, advertise: str | None,
           secret_file: str | None, cache_dir: str | None, slowdown: float, idle_timeout: float,
           tls_dir: str | None, no_tls: bool, models: tuple[str, ...], announce: bool) -> None:
    """Run a worker daemon: accept stages from a coordinator holding the cluster secret, run them."""
    from dnet.cluster.coordinator import parse_address
    from dnet.cluster.local import READY_PREFIX
    from dnet.cluster.tls import ClusterTls
    from dnet.cluster.worker import Worker, WorkerConfig

    host, port = parse_address(listen)
    core_list = _cores(cores)
    if core_list:
        os.sched_setaffinity(0, core_list)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {name or listen} %(levelname)s %(message)s")
    config = WorkerConfig(host=host, port=port, backend=backend, threads=threads, name=name,
                          advertise=advertise, cache_dir=cache_dir, slowdown=max(1.0, slowdown),
                          idle_timeout_s=idle_timeout, tls=ClusterTls(tls_dir) if tls_dir and not no_tls else None,
                          allow_plain=no_tls, models=list(models))
    daemon = Worker(_read_secret(secret_file), config)
    if announce:   # heard from the moment it says it is ready
        from dnet.cluster.discovery import announce as announce_worker

        announcement = announce_worker(daemon, backend, config.tls)
    click.echo(f"{READY_PREFIX}{daemon.address}", nl=True)
    sys.stdout.flush()
    try:
        daemon.serve_forever()
    finally:
        if announce:
            announcement.close()


@cli.group()
def cluster() -> None:
    """Local clusters of worker processes."""


@cluster.command("init")
@click.option("--secret-file", default=None,
              help="Where to write a new 256-bit secret (mode 0600; default: the dnet cache directory).")
@click.option("--tls-dir", default=None,
              help="Where to create the cluster's CA and node certificates (default: tls/ beside the secret).")
@click.option("--nodes", default="coordinator", show_default=True,
              help="Nodes to give a certificate, comma separated (more later with `dnet cluster issue`).")
def cluster_init(secret_file: str | None, tls_dir: str | None, nodes: str) -> None:
    """Write a new random 256-bit cluster secret (mode 0600), and a cluster CA with a TLS directory per node."""
    from dnet.cluster.auth import SECRET_ENV, new_secret
    from dnet.cluster.certs import create_ca, issue_node

    path = Path(secret_file) if secret_file else _cache_dir() / "cluster.secret"
    tls_root = Path(tls_dir) if tls_dir else path.parent / "tls"   # beside the secret: a cluster's keys together
    if path.exists():
        raise DnetError(f"{path} exists; not overwriting a cluster secret", hint="remove it first")
    if (tls_root / "ca.key").exists():
        raise DnetError(f"{tls_root} already holds a cluster CA; not overwriting it", hint="remove it first")
    names = _node_names(nodes)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(new_secret())
    click.echo(f"secret in {path} (export {SECRET_ENV}=$(cat {path}))")
    create_ca(tls_root)
    click.echo(f"cluster CA in {tls_root} (its key, ca.key, stays here: it issues certificates)")
    for name in names:
        click.echo(f"node {name}: {issue_node(tls_root, name)} (copy to the node; --tls DIR or DNET_TLS_DIR)")


@cluster.command("issue")
@click.argument("nodes")
@click.option("--tls-dir", default=None, help="The cluster CA's directory (default: the dnet cache directory's tls/).")
def cluster_issue(nodes: str, tls_dir: str | None) -> None:
    """Give more nodes (comma separated) a TLS directory with a certificate from the cluster's CA."""
    from dnet.cluster.certs import issue_node

    tls_root = Path(tls_dir) if tls_dir else _cache_dir() / "tls"
    for name in _node_names(nodes):
        click.echo(f"node {name}: {issue_node(tls_root, name)}")


def _node_names(text: str) -> list[str]:
    from dnet.cluster.certs import check_node_name

    names = [check_node_name(n.strip()) for n in text.split(",") if n.strip()]
    if len(set(names)) != len(names):
        raise DnetError(f"node names repeat in '{text}'")
    return names


def _write_secret(path: Path, secret: str) -> None:
    """Write `secret` into a file only its owner can read: created 0600, or an existing one that others
    cannot read already (one they can is refused: the secret would be readable the moment it is written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)   # not truncated before the check
    except OSError as err:
        raise DnetError(f"cannot write the secret file {path}: {err.strerror or err}") from None
    with os.fdopen(fd, "w") as out:
        mode = os.fstat(fd).st_mode & 0o777
        if mode & 0o077:
            raise DnetError(f"{path} can be read by others (mode {oct(mode)}); not writing the cluster secret "
                            "into it", hint=f"chmod 600 {path}, or name another file")
        os.ftruncate(fd, 0)
        out.write(secret)


def _cache_dir() -> Path:
    return Path(os.environ.get("DNET_CACHE_DIR") or Path.home() / ".cache" / "dnet")


@cluster.command("up")
@click.argument("n", type=int)
@click.option("--backends", "--backend", "backends", default="numpy", show_default=True,
              help="Backend per worker, comma separated (one name: all), e.g. c,llvm,opencl.")
@click.option("--threads", default="", help="Threads per worker, comma separated, e.g. 1,2,4.")
@click.option("--secret-file", default=None, help="Where to write the cluster secret (mode 0600).")
@click.option("-o", "--output", default=None,
              help="Where to write the workers' topology file (default: cluster.toml beside the secret).")
@click.option("--models", "models", multiple=True,
              help="A model file or a directory of them (repeatable) every worker reads weights from.")
@progress_options()
def cluster_up(n: int, backends: str, threads: str, secret_file: str | None, output: str | None,
               models: tuple[str, ...]) -> None:
    """Start N workers on loopback with unequal threads/backends; stop them with Ctrl-C."""
    from dnet.backends import registry
    from dnet.cluster.auth import new_secret
    from dnet.cluster.local import WorkerSpec, core_sets

    if n < 1:
        raise DnetError(f"cluster up needs at least one worker, got {n}")
    names = backends.split(",")
    for backend in dict.fromkeys(names):   # unknown, or not on this machine: one line now, before any worker starts
        registry.require_available(backend)
    try:
        counts = [int(t) for t in threads.split(",") if t] or [0]
    except ValueError:
        raise DnetError(f"bad --threads '{threads}'", hint="whole numbers, comma separated: e.g. 1,2,4") from None
    if any(c < 0 for c in counts):
        raise DnetError(f"bad --threads '{threads}': a thread count cannot be negative")
    per_worker = [counts[i % len(counts)] or None for i in range(n)]
    specs = [WorkerSpec(backend=names[i % len(names)], threads=t, cores=cores, name=f"w{i}", models=list(models))
             for i, (t, cores) in enumerate(zip(per_worker, core_sets(per_worker)))]
    secret = new_secret()
    path = Path(secret_file) if secret_file else _cache_dir() / "cluster.secret"
    _write_secret(path, secret)
    # SIGTERM (a service manager, `kill`) stops the workers as Ctrl-C does; by default it would end this
    # process at once, leaving the workers to PR_SET_PDEATHSIG and the log directory behind
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        _serve_local(specs, secret, path, output)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _serve_local(specs: list[Any], secret: str, path: Path, output: str | None) -> None:
    """Run the local workers until one exits or this process is interrupted."""
    from dnet.cluster.auth import SECRET_ENV
    from dnet.cluster.local import LocalCluster

    n = len(specs)
    with LocalCluster(specs, secret) as local:
        for spec, address in zip(specs, local.addresses):
            click.echo(f"{spec.name}  {address}  backend={spec.backend} threads={spec.threads} cores={spec.cores}")
        topology_file = Path(output) if output else path.parent / "cluster.toml"
        _write_topology(topology_file, local.addresses, secret, [spec.name for spec in specs])
        click.echo(f"topology in {topology_file} (`--topology {topology_file}`, or Topology.load)")
        click.echo(f"secret in {path} (export {SECRET_ENV}=$(cat {path})); Ctrl-C stops the workers")
        try:
            while all(local.alive(i) for i in range(n)):
                time.sleep(0.5)
            click.echo("a worker exited; stopping the others", err=True)
        except KeyboardInterrupt:
            pass


def _write_topology(path: Path, addresses: list[str], secret: str, names: list[str]) -> None:
    """The workers' topology as they report themselves (probed devices, measured links), as a file."""
    from dnet.cluster.discovery import topology_of

    topology = topology_of(addresses, secret, None, names)
    try:
        path.write_text(topology.dumps())
    except OSError as err:
        raise DnetError(f"cannot write the topology file {path}: {err.strerror or err}") from None


DEMO_TEXTS = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
              "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods."]


@cluster.command("demo")
@click.option("--slowdowns", default="1,2,4", show_default=True,
              help="Three workers, each simulating a device this many times slower.")
@click.option("--requests", "n_requests", default=8, show_default=True, help="Batches sent through the pipeline.")
@click.option("--rounds", default=2, show_default=True, help="Feedback rounds after the first run (0: none).")
@progress_options()
def cluster_demo(slowdowns: str, n_requests: int, rounds: int) -> None:
    """The real all-MiniLM-L6-v2 across three unequal local workers: plan, agreement, per-stage timings,
    then the JIT's feedback rounds and the calibrated plan's stage times against measured ones."""
    from rich.console import Console

    from dnet.cluster.session import compile_distributed
    from dnet.models import load_minilm
    from dnet.partition.render import plan_table
    from dnet.topology import Topology

    console = Console()
    if not console.is_terminal:  # a log or CI: wide enough that the plan's table does not wrap
        console = Console(width=120)
    factors = [float(s) for s in slowdowns.split(",")]
    encoder = load_minilm()
    graph = encoder.executable.graph
    inputs = encoder.tokenize(DEMO_TEXTS)
    one_node = encoder.executable.run(inputs)[graph.output_names[0]]
    env = {"batch": inputs["input_ids"].shape[0], "seq": inputs["input_ids"].shape[1]}
    topology = Topology.local(len(factors), scales=[1 / f for f in factors], bandwidth=100e6, latency=0.5e-3)
    with compile_distributed(graph, topology, env=env, slowdowns=factors) as exe:
        console.print(plan_table(exe.plan))
        start = time.perf_counter()
        outputs = exe.run_many([inputs] * n_requests)
        elapsed = time.perf_counter() - start
        rate = n_requests / elapsed
        title = f"per-stage timings ({n_requests} requests of {len(DEMO_TEXTS)} sentences, {rate:.2f} requests/s)"
        console.print(stage_table(title, exe.plan, [t.mean_ms / 1e3 for t in exe.timings.values()]))
        console.print(f"throughput: measured {rate:.2f} requests/s (the pipeline filling included), planned "
                      f"{exe.plan.throughput:.2f} requests/s from this machine's probed rates, uncalibrated: "
                      "here the workers share its cores")
        if rounds > 0:
            _feedback(console, exe, inputs, rounds)
            outputs += exe.run_many([inputs] * 2)
    worst = max(float(np.abs(out[graph.output_names[0]] - one_node).max()) for out in outputs)
    cosine = min(float(np.min(np.sum(out[graph.output_names[0]] * one_node, axis=1))) for out in outputs)
    when = " (before and after retuning)" if rounds > 0 else ""
    console.print(f"agreement with one node over {len(outputs)} requests{when}: "
                  f"max |difference| {worst:.2e}, lowest cosine similarity {cosine:.8f}")


def _feedback(console: Any, exe: Any, inputs: dict[str, np.ndarray], rounds: int) -> None:
    """The JIT's feedback rounds, then a fresh measurement of the plan they leave against its calibrated plan."""
    from dnet.partition.feedback import factor_line, layout

    history = exe.retune(inputs, rounds=rounds, windows=3, window=4)
    for r in history:
        then = "moves to " + layout(exe.problem, r.proposal) if r.moved else "stays"
        console.print(f"feedback round {r.index}: {layout(exe.problem, r.stages)}; measured / modelled "
                      f"{factor_line(exe.problem, r.factors)}; predicted {r.predicted:.2f}, measured "
                      f"{r.measured.throughput:.2f} requests/s; {then}")
    fresh = exe.measure(inputs, windows=3, window=4)
    console.print(stage_table("after calibration: the deployed plan measured afresh", exe.plan, fresh.stage_seconds))
    console.print(f"throughput: measured {fresh.throughput:.2f} requests/s, planned {exe.plan.throughput:.2f} "
                  f"requests/s ({fresh.throughput / exe.plan.throughput:.0%})")


def stage_table(title: str, plan: Any, measured_seconds: list[float]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for col in ("stage", "node", "layers", "measured ms", "planned ms", "measured / planned"):
        table.add_column(col, justify="right")
    for k, (stage, seconds) in enumerate(zip(plan.stages, measured_seconds)):
        table.add_row(str(k), stage.node, str(len(stage.layers)), f"{1e3 * seconds:.1f}",
                      f"{1e3 * stage.compute_seconds:.1f}", f"{seconds / stage.compute_seconds:.2f}x")
    return table
