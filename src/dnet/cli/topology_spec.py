"""The `--topology` argument of the commands that run across a cluster: a TOML file or a local cluster."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from dnet.errors import DnetError

TOPOLOGY_HELP = ("a topology file (TOML, docs/cluster.md), local:N for N equal worker processes on this machine, "
                 "or local:1,2,4 for workers simulating devices that many times slower; @SIZE after either "
                 "(local:1,2,4@120M) gives each worker only that much memory")
SIZE_UNITS = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}     # decimal, as the plan tables print bytes


def parse_topology(spec: str) -> tuple[Any, dict[str, Any]]:
    """The topology and the options `dnet.cluster.session.compile_distributed` needs to run it."""
    from dnet.topology import Topology

    if not spec.startswith("local:"):
        if not Path(spec).exists():
            raise DnetError(f"no topology file '{spec}'", hint=TOPOLOGY_HELP)
        return Topology.load(spec), {}
    body, _, size = spec[len("local:"):].partition("@")
    try:
        factors = [float(x) for x in body.split(",")] if "," in body else [1.0] * int(body)
    except ValueError:
        raise DnetError(f"cannot read the local topology '{spec}'", hint=TOPOLOGY_HELP) from None
    if not factors or any(f < 1 for f in factors):
        raise DnetError(f"'{spec}': give at least one worker, each slowdown at least 1", hint=TOPOLOGY_HELP)
    # the planner is told how much slower each is; the workers make it so (the machine's cores are shared)
    topology = Topology.local(len(factors), scales=[1 / f for f in factors])
    if size:   # the planner honours each node's memory: a model no single worker can hold is split to fit
        memory = _size(size, spec)
        for node in topology.nodes:
            node.devices = [replace(d, memory=memory) for d in node.devices]
    return topology, {"slowdowns": factors} if any(f != 1 for f in factors) else {}


def _size(text: str, spec: str) -> float:
    """Bytes from '120M', '1.5G', '64000K' or '5000000' (decimal units, an optional trailing B)."""
    digits = text.upper().removesuffix("B")
    unit = digits[-1:] if digits[-1:] in SIZE_UNITS else ""
    try:
        value = float(digits[:len(digits) - len(unit)]) * SIZE_UNITS[unit]
    except ValueError:
        value = 0.0
    if not value > 0:
        raise DnetError(f"'{spec}': cannot read the memory size '{text}'", hint="a size such as 120M, 1.5G or 64000K")
    return value
