"""The `--topology` argument of the commands that run across a cluster: a TOML file or a local cluster."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dnet.errors import DnetError

TOPOLOGY_HELP = ("a topology file (TOML, docs/cluster.md), local:N for N equal worker processes on this machine, "
                 "or local:1,2,4 for workers simulating devices that many times slower")


def parse_topology(spec: str) -> tuple[Any, dict[str, Any]]:
    """The topology and the options `dnet.cluster.session.compile_distributed` needs to run it."""
    from dnet.topology import Topology

    if not spec.startswith("local:"):
        if not Path(spec).exists():
            raise DnetError(f"no topology file '{spec}'", hint=TOPOLOGY_HELP)
        return Topology.load(spec), {}
    body = spec[len("local:"):]
    try:
        factors = [float(x) for x in body.split(",")] if "," in body else [1.0] * int(body)
    except ValueError:
        raise DnetError(f"cannot read the local topology '{spec}'", hint=TOPOLOGY_HELP) from None
    if not factors or any(f < 1 for f in factors):
        raise DnetError(f"'{spec}': give at least one worker, each slowdown at least 1", hint=TOPOLOGY_HELP)
    # the planner is told how much slower each is; the workers make it so (the machine's cores are shared)
    topology = Topology.local(len(factors), scales=[1 / f for f in factors])
    return topology, {"slowdowns": factors} if any(f != 1 for f in factors) else {}
