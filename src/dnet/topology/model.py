"""The topology: nodes with their devices, and the links between nodes.

All quantities are in base units (bytes, seconds, bytes/s, FLOP/s). A device's
`compute` gives its matmul rate per dtype; `op_rates` optionally gives a rate per
op (`"erf"`, `"add"`, ...) or per op class (`"unary"`, `"reduce"`, ...) where it differs. Links are directed:
a symmetric link is two entries.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from dnet.core.dtypes import DType
from dnet.errors import DnetError, did_you_mean
from dnet.graph.ops import Op


@dataclass
class Device:
    kind: str = "cpu"                      # the backend that runs on it: cpu (numpy, c), cuda, ...
    cores: int = 1
    compute: dict[str, float] = field(default_factory=dict)   # dtype name -> matmul FLOP/s
    memory: float = 0.0                    # capacity, bytes
    memory_bandwidth: float = 0.0          # bytes/s
    op_rates: dict[str, float] = field(default_factory=dict)  # op name or op class name -> FLOP/s
    cache: dict[str, float] = field(default_factory=dict)     # "l1", "l2", "l3" -> bytes
    vector_width: int = 0                  # bits; 0 where unknown
    op_overhead: float = 0.0               # seconds every op costs whatever its size (dispatch, launch)

    def rate(self, op: Op, dtype: DType) -> float:
        """FLOP/s of `op` on `dtype`: its own measured rate, else its op class's, else the matmul
        rate for that dtype (then for f32)."""
        for key in (op.name.lower(), op.cls.value):
            if key in self.op_rates:
                return self.op_rates[key]
        if dtype.value in self.compute:
            return self.compute[dtype.value]
        return self.compute.get("f32", max(self.compute.values(), default=0.0))

    @property
    def peak(self) -> float:
        return max(self.compute.values(), default=0.0)


@dataclass
class Node:
    name: str
    devices: list[Device] = field(default_factory=list)
    address: str | None = None             # host:port of its worker, where known
    interconnect: float = 0.0              # bytes/s between its devices; 0: they share memory
    # the backend its worker compiles with ("c", "llvm", "opencl", ...); None: the session's target.
    # A local cluster starts each node's worker with it; a worker at an address runs its own.
    backend: str | None = None

    @property
    def memory(self) -> float:
        return sum(d.memory for d in self.devices)

    @property
    def peak(self) -> float:
        return sum(d.peak for d in self.devices)


@dataclass(frozen=True)
class Link:
    src: str
    dst: str
    bandwidth: float                       # bytes/s
    latency: float = 0.0                   # seconds

    def time(self, nbytes: float) -> float:
        """Seconds to move `nbytes` over this link."""
        return self.latency + nbytes / self.bandwidth


@dataclass
class Topology:
    nodes: list[Node] = field(default_factory=list)
    links: dict[tuple[str, str], Link] = field(default_factory=dict)
    source: str | None = None              # the file it came from, for error messages
    # what started its workers for it and keeps them alive (a Ray cluster): `.secret` and `.tls` reach them,
    # `.attach(exe)` brings restarted ones back to an executable running on them.
    # Never saved: a file names workers by address, and the secret travels apart (docs/security.md)
    cluster: Any = field(default=None, repr=False, compare=False)

    # -- queries ----------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise DnetError(f"unknown node '{name}'", hint=did_you_mean(name, self.names) or
                        "nodes are " + ", ".join(self.names))

    def link(self, src: str, dst: str) -> Link | None:
        return self.links.get((src, dst))

    def add_link(self, a: str, b: str, bandwidth: float, latency: float = 0.0, symmetric: bool = True) -> None:
        """A link from node `a` to node `b` (and back, when `symmetric`); both must be nodes already."""
        names = self.names
        for end in (a, b):
            if end not in names:
                raise DnetError(f"cannot link unknown node '{end}'",
                                hint=did_you_mean(end, names) or "add the node first")
        if a == b:
            raise DnetError(f"a link joins two different nodes, got '{a}' twice")
        self.links[(a, b)] = Link(a, b, bandwidth, latency)
        if symmetric:
            self.links[(b, a)] = Link(b, a, bandwidth, latency)

    def subset(self, names: list[str]) -> "Topology":
        """The named nodes and the links between them (the survivors of a lost node, say)."""
        for name in names:
            self.node(name)
        keep = set(names)
        return Topology([n for n in self.nodes if n.name in keep],
                        {k: l for k, l in self.links.items() if l.src in keep and l.dst in keep}, self.source,
                        self.cluster)

    # -- construction -----------------------------------------------------------
    @staticmethod
    def local(n: int, device: Device | None = None, bandwidth: float = 10e9, latency: float = 50e-6,
              scales: list[float] | None = None) -> "Topology":
        """n nodes on this machine, joined by loopback links.

        Each node gets an equal share of this host's cores and memory (measured by
        `dnet.topology.probe`, cached) unless `device` is given; `scales` multiplies
        each node's compute rates and memory bandwidth (and divides its per-op overhead), to
        simulate unlike nodes on one machine: a worker slowed k times (`dnet worker --slowdown k`)
        is slower at memory-bound work, such as a decode step, as much as at arithmetic.
        """
        if n < 1:
            raise DnetError(f"a local topology needs at least one node, got n={n}")
        if device is None:
            from dnet.topology.probe import probe_device

            device = share_of(probe_device(quick=True), n)
        scales = scales or [1.0] * n
        if len(scales) != n or not all(x > 0 for x in scales):
            raise DnetError(f"scales must be {n} positive numbers, one per node, got {scales}")
        topo = Topology()
        for i in range(n):
            d = replace(device, compute={k: v * scales[i] for k, v in device.compute.items()},
                        op_rates={k: v * scales[i] for k, v in device.op_rates.items()}, cache=dict(device.cache),
                        memory_bandwidth=device.memory_bandwidth * scales[i], op_overhead=device.op_overhead / scales[i])
            topo.nodes.append(Node(f"local{i}", [d], address=None))
        for a in topo.names:
            for b in topo.names:
                if a != b:
                    topo.add_link(a, b, bandwidth, latency, symmetric=False)
        return topo

    @staticmethod
    def from_ray(address: str | None = None, **options: Any) -> "Topology":
        """One dnet worker per node of the Ray cluster at `address` (None: the running one, or a new local
        one), each in a Ray actor that probes its node; links measured between them. Needs the `ray` extra;
        options and details: `dnet.cluster.ray_cluster.topology_from_ray`, docs/cluster.md."""
        from dnet.topology import sources

        return sources.build("ray", address, **options)

    # -- serialisation ----------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "node": [{"name": n.name, **({"address": n.address} if n.address else {}),
                      **({"interconnect": n.interconnect} if n.interconnect else {}),
                      **({"backend": n.backend} if n.backend else {}),
                      "device": [asdict(d) for d in n.devices]} for n in self.nodes],
            "link": [{"from": l.src, "to": l.dst, "bandwidth": l.bandwidth, "latency": l.latency}
                     for l in self.links.values()],
        }

    @staticmethod
    def from_dict(data: dict, source: str | None = None) -> "Topology":
        from dnet.topology.toml_format import topology_from_dict

        return topology_from_dict(data, source)

    @staticmethod
    def load(path: str) -> "Topology":
        from dnet.topology.toml_format import load_topology

        return load_topology(path)

    @staticmethod
    def loads(text: str, source: str = "<string>") -> "Topology":
        from dnet.topology.toml_format import loads_topology

        return loads_topology(text, source)

    def dumps(self) -> str:
        from dnet.topology.toml_format import dumps_topology

        return dumps_topology(self)


def share_of(device: Device, n: int) -> Device:
    """One n-th of a device: its cores, memory and rates divided among n local nodes."""
    return replace(device, cores=max(1, device.cores // n), compute={k: v / n for k, v in device.compute.items()},
                   memory=device.memory / n, memory_bandwidth=device.memory_bandwidth / n,
                   op_rates={k: v / n for k, v in device.op_rates.items()}, cache=dict(device.cache))
