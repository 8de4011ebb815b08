"""`dnet cluster ray` and `dnet cluster discover`: topologies found rather than written by hand."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from dnet.cli.cluster_commands import _read_secret, cluster
from dnet.cli.progress_view import note, progress_options
from dnet.errors import DnetError


def _console() -> Any:
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=140)   # a log or CI: tables unwrapped


def nodes_table(title: str, topology: Any, extra: dict[str, list[str]] | None = None) -> Any:
    """A row per node: its worker's address and its device as the plan will see it."""
    from rich.table import Table

    from dnet.topology import format_quantity

    table = Table(title=title)
    columns = ["node", "address", "backend", "cores", "memory", "f32 matmul", *(extra or {})]
    for col in columns:
        table.add_column(col)
    for i, node in enumerate(topology.nodes):
        d = node.devices[0]
        table.add_row(node.name, node.address or "", d.kind, str(d.cores), format_quantity(d.memory, "bytes"),
                      format_quantity(d.compute.get("f32", 0.0), "rate"), *[v[i] for v in (extra or {}).values()])
    return table


def links_line(topology: Any) -> str:
    from dnet.topology import format_quantity

    return "; ".join(f"{l.src} -> {l.dst} {format_quantity(l.bandwidth, 'bandwidth')} {1e6 * l.latency:.0f} µs"
                     for l in topology.links.values()) or "none measured"


@cluster.command("ray")
@click.option("--address", default=None, help="The Ray cluster to join (default: $RAY_ADDRESS, the running one, "
                                              "or a new one on this machine).")
@click.option("--backend", default="numpy", show_default=True, help="Backend of every worker.")
@progress_options()
def cluster_ray(address: str | None, backend: str) -> None:
    """Place one dnet worker per Ray node (a Ray actor each; a second, on cuda, where the node's GPUs can run
    it), and print the topology they report, and why any GPU Ray lists is not used.
    The workers go when this command ends: in Python, `dnet.Topology.from_ray()` keeps them."""
    import logging

    from dnet.cluster.ray_cluster import RayCluster

    # the GPU notes are printed below the table: not once more on stderr (where --json's lines go)
    logging.getLogger("dnet.ray").addHandler(logging.NullHandler())
    start = time.perf_counter()
    with RayCluster(address, backend) as ray_cluster:
        topology = ray_cluster.topology()
        formed = time.perf_counter() - start
        actor = [i for i, backends in enumerate(ray_cluster.backends) for _ in backends]   # each row's Ray node
        ray_view = {"Ray CPUs": [f"{ray_cluster.resources[i]['CPU']:g}" for i in actor],
                    "Ray GPUs": [f"{ray_cluster.resources[i]['GPU']:g}" for i in actor],
                    "node's workers": [", ".join(ray_cluster.backends[i]) for i in actor]}
        console = _console()
        console.print(nodes_table(f"dnet on Ray: {_count(len(topology.nodes), 'worker')}, formed in {formed:.1f} s",
                                  topology, ray_view))
        console.print(f"links (measured by the workers): {links_line(topology)}")
        for line in ray_cluster.notes:
            console.print(line, markup=False, highlight=False)
        note(f"formed in {formed:.1f} s", formed_s=round(formed, 3), workers=len(topology.nodes))


@cluster.command("discover")
@click.option("--timeout", "timeout_s", type=float, default=3.0, show_default=True,
              help="Seconds to listen for announcements.")
@click.option("-o", "--output", default=None, help="Write the accepted workers' topology to this TOML file.")
@click.option("--secret-file", default=None, help="File holding the cluster secret (default: $DNET_CLUSTER_SECRET).")
@click.option("--tls", "tls_dir", default=None, envvar="DNET_TLS_DIR",
              help="This node's TLS directory, to verify workers' certificates [default: $DNET_TLS_DIR].")
@progress_options()
def cluster_discover(timeout_s: float, output: str | None, secret_file: str | None, tls_dir: str | None) -> None:
    """List the workers announcing themselves on the LAN (`dnet worker --announce`) with their fingerprints;
    accept those holding the cluster secret (and certificate), and write their topology."""
    from dnet.cluster.discovery import discover
    from dnet.cluster.tls import ClusterTls

    if timeout_s <= 0:
        raise DnetError(f"--timeout must be positive, got {timeout_s}")
    secret = _read_secret(secret_file)
    found, topology = discover(timeout_s, secret, ClusterTls(tls_dir) if tls_dir else None)
    console = _console()
    if not found:
        raise DnetError(f"no dnet worker announced itself within {timeout_s:g} s",
                        hint="start workers with `dnet worker --announce`; mDNS needs multicast on the LAN")
    from rich.table import Table

    table = Table(title=f"dnet workers heard in {timeout_s:g} s")
    for col in ("", "name", "address", "backend", "cores", "hardware fingerprint", "certificate sha256", "why"):
        table.add_column(col)
    for f in found:
        s = f.heard.summary
        table.add_row("accepted" if f.accepted else "refused", f.heard.name, f.heard.address, s.get("backend", ""),
                      s.get("cores", ""), s.get("fingerprint", ""), s.get("cert", "")[:16] or "(no TLS)", f.reason)
    console.print(table)
    if topology is None:
        raise DnetError("no worker heard holds the cluster secret; no topology written",
                        hint="give the workers this cluster's secret (and certificates)")
    console.print(nodes_table("accepted workers as they report themselves", topology))
    if output:
        Path(output).write_text(topology.dumps())
        console.print(f"topology of {_count(len(topology.nodes), 'worker')} written to {output}")
    else:
        click.echo(topology.dumps())   # as is: a console would wrap its long lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
