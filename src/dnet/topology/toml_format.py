"""Reading and writing topology files (TOML). The format is documented in docs/topology.md.

Every mistake in a file is a ParseError that names the file, the key (a path such
as `node.laptop.device[0].memory`) and the offending value.
"""
from __future__ import annotations

import re
import tomllib
from typing import Any

from dnet.core.dtypes import DType
from dnet.errors import Location, ParseError, did_you_mean
from dnet.graph.ops import Op, OpClass
from dnet.topology.model import Device, Node, Topology
from dnet.topology.units import UnitError, format_quantity, parse_quantity

_TOP_KEYS = {"node", "link"}
_NODE_KEYS = {"name", "address", "device", "interconnect", "backend"}
_LINK_KEYS = {"between", "from", "to", "bandwidth", "latency"}
# device key -> unit kind (None: not a quantity)
_DEVICE_KEYS = {"kind": None, "cores": None, "compute": "rate", "memory": "bytes",
                "memory_bandwidth": "bandwidth", "op_rates": "rate", "cache": "bytes", "vector_width": None,
                "op_overhead": "time"}
_DTYPES = [d.value for d in DType]
_OP_RATE_KEYS = ([c.value for c in OpClass if c is not OpClass.SOURCE]
                 + [op.name.lower() for op in Op if op.cls is not OpClass.SOURCE])


def load_topology(path: str) -> Topology:
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as err:
        raise ParseError(f"cannot read topology file: {err.strerror}", Location(file=str(path))) from None
    except UnicodeDecodeError as err:   # TOML is UTF-8 by definition
        raise ParseError(f"a topology file is UTF-8 text; byte {err.start} is not ({err.reason})",
                         Location(file=str(path))) from None
    return loads_topology(text, str(path))


def loads_topology(text: str, source: str = "<string>") -> Topology:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        line, col = _toml_position(str(err))
        raise ParseError(f"not valid TOML: {err}", Location(file=source, line=line, column=col)) from None
    return topology_from_dict(data, source)


def _toml_position(message: str) -> tuple[int | None, int | None]:
    m = re.search(r"line (\d+), column (\d+)", message)
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


class _Reader:
    """Checks values against what the format expects, raising errors that name file, key and value."""

    def __init__(self, source: str | None):
        self.source = source

    def fail(self, key: str, message: str, hint: str | None = None) -> ParseError:
        return ParseError(message, Location(file=self.source, symbol=key), hint)

    def known_keys(self, table: dict, allowed: set[str] | dict, key: str) -> None:
        for k in table:
            if k not in allowed:
                raise self.fail(f"{key}.{k}" if key else k, f"unknown key '{k}'", did_you_mean(k, allowed))

    def quantity(self, value: Any, kind: str, key: str, zero_ok: bool = False) -> float:
        """A quantity with a unit, positive (or, with `zero_ok`, not negative)."""
        try:
            x = parse_quantity(value, kind)
        except UnitError as err:
            raise self.fail(key, err.message) from None
        if zero_ok and x < 0:
            raise self.fail(key, f"{key.rsplit('.', 1)[-1]} cannot be negative, got {value!r}")
        if not zero_ok and not x > 0:
            raise self.fail(key, f"{kind} must be positive, got {value!r}")
        return x

    def integer(self, value: Any, key: str, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"expected an integer >= {minimum}, got {value!r}")
        return value

    def table(self, value: Any, key: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {value!r}")
        return value

    def array_of_tables(self, value: Any, key: str) -> list[dict]:
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.fail(key, f"expected an array of tables ([[{key}]]), got {value!r}")
        return value


def topology_from_dict(data: dict, source: str | None = None) -> Topology:
    r = _Reader(source)
    r.known_keys(data, _TOP_KEYS, "")
    topo = Topology(source=source)
    for i, raw in enumerate(r.array_of_tables(data.get("node", []), "node")):
        topo.nodes.append(_node(r, raw, i, topo))
    if not topo.nodes:
        raise r.fail("node", "a topology needs at least one [[node]]")
    for i, raw in enumerate(r.array_of_tables(data.get("link", []), "link")):
        _link(r, raw, f"link[{i}]", topo)
    return topo


def _node(r: _Reader, raw: dict, index: int, topo: Topology) -> Node:
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise r.fail(f"node[{index}].name", f"every node needs a name (a string), got {name!r}")
    if name in topo.names:
        raise r.fail(f"node[{index}].name", f"duplicate node name '{name}'")
    key = f"node.{name}"
    r.known_keys(raw, _NODE_KEYS, key)
    address = raw.get("address")
    if address is not None and (not isinstance(address, str) or not re.fullmatch(r"[^\s:]+:\d{1,5}", address)
                                or int(address.rpartition(":")[2]) > 65535):
        raise r.fail(f"{key}.address", f"expected 'host:port' (port at most 65535), got {address!r}")
    devices = [_device(r, d, f"{key}.device[{j}]") for j, d in
               enumerate(r.array_of_tables(raw.get("device", []), f"{key}.device"))]
    if not devices:
        raise r.fail(f"{key}.device", f"node '{name}' has no [[node.device]]")
    node = Node(name, devices, address)
    if "interconnect" in raw:
        node.interconnect = r.quantity(raw["interconnect"], "bandwidth", f"{key}.interconnect")
    if "backend" in raw:     # a backend's name; whether it exists and runs there is the worker's to say
        backend = raw["backend"]
        if not isinstance(backend, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", backend):
            raise r.fail(f"{key}.backend", f"expected a backend's name such as \"c\" or \"opencl\", got {backend!r}")
        node.backend = backend
    return node


def _device(r: _Reader, raw: dict, key: str) -> Device:
    r.known_keys(raw, _DEVICE_KEYS, key)
    d = Device()
    d.kind = str(raw.get("kind", "cpu"))
    d.cores = r.integer(raw.get("cores", 1), f"{key}.cores", minimum=1)
    d.vector_width = r.integer(raw.get("vector_width", 0), f"{key}.vector_width")
    if "memory" not in raw:
        raise r.fail(f"{key}.memory", "every device needs a memory capacity, such as \"16GiB\"")
    d.memory = r.quantity(raw["memory"], "bytes", f"{key}.memory")
    if "memory_bandwidth" in raw:
        d.memory_bandwidth = r.quantity(raw["memory_bandwidth"], "bandwidth", f"{key}.memory_bandwidth")
    if "op_overhead" in raw:
        d.op_overhead = r.quantity(raw["op_overhead"], "time", f"{key}.op_overhead", zero_ok=True)
    d.compute = _rates(r, raw.get("compute"), _DTYPES, f"{key}.compute")
    if not d.compute:
        raise r.fail(f"{key}.compute", "every device needs a compute rate, such as compute = { f32 = \"100GFLOP/s\" }")
    d.op_rates = _rates(r, raw.get("op_rates", {}), _OP_RATE_KEYS, f"{key}.op_rates")
    cache = r.table(raw.get("cache", {}), f"{key}.cache")
    d.cache = {k: r.quantity(v, "bytes", f"{key}.cache.{k}") for k, v in cache.items()}
    return d


def _rates(r: _Reader, raw: Any, allowed: list[str], key: str) -> dict[str, float]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):  # a bare rate means f32
        raw = {"f32": raw}
    r.known_keys(raw, set(allowed), key)
    return {k: r.quantity(v, "rate", f"{key}.{k}") for k, v in raw.items()}


def _link(r: _Reader, raw: dict, key: str, topo: Topology) -> None:
    r.known_keys(raw, _LINK_KEYS, key)
    if "between" in raw:
        ends, symmetric = raw["between"], True
        if not (isinstance(ends, list) and len(ends) == 2 and all(isinstance(e, str) for e in ends)):
            raise r.fail(f"{key}.between", f"expected two node names, got {ends!r}")
    elif "from" in raw and "to" in raw:
        ends, symmetric = [raw["from"], raw["to"]], False
    else:
        raise r.fail(key, "a link needs `between = [a, b]` or `from` and `to`")
    for end, sub in zip(ends, ("between" if symmetric else "from", "between" if symmetric else "to")):
        if end not in topo.names:
            raise r.fail(f"{key}.{sub}", f"unknown node '{end}'",
                         did_you_mean(end, topo.names) or "nodes are " + ", ".join(topo.names))
    if ends[0] == ends[1]:
        raise r.fail(f"{key}.{'between' if symmetric else 'from'}", f"a link joins two different nodes, got {ends!r}")
    if "bandwidth" not in raw:
        raise r.fail(f"{key}.bandwidth", "every link needs a bandwidth, such as \"1GB/s\"")
    bandwidth = r.quantity(raw["bandwidth"], "bandwidth", f"{key}.bandwidth")
    latency = r.quantity(raw.get("latency", 0.0), "time", f"{key}.latency", zero_ok=True)
    topo.add_link(ends[0], ends[1], bandwidth, latency, symmetric)


# -- writing -------------------------------------------------------------------------------------
# tomlkit writes TOML (strings escaped as the spec says) and edits a file in place, keeping what a person
# wrote around the tables it replaces: their comments, order and layout.

def dumps_topology(topo: Topology) -> str:
    """A topology file that loads back to the same topology (links written one direction each)."""
    import tomlkit

    doc = tomlkit.document()
    nodes, links = tomlkit.aot(), tomlkit.aot()
    for node in topo.nodes:
        nodes.append(_node_table(node))
    for link in topo.links.values():
        links.append(_link_table(link))
    if topo.nodes:
        doc["node"] = nodes
    if topo.links:
        doc["link"] = links
    return tomlkit.dumps(doc)


def update_topology_text(text: str, topo: Topology, nodes: list[str], links: list[tuple[str, str]]) -> str:
    """`text` (a topology file) with the named nodes' and links' tables replaced by those of `topo`, or
    appended where the file has none; everything else in it (comments included) is kept as written."""
    import tomlkit

    doc = tomlkit.parse(text)
    for name in nodes:
        node = next(n for n in topo.nodes if n.name == name)
        _replace_or_append(doc, "node", lambda t: t.get("name") == name, _node_table(node))
    for src, dst in links:
        link = topo.links[(src, dst)]
        _replace_or_append(doc, "link", lambda t: (t.get("from"), t.get("to")) == (src, dst), _link_table(link))
    return tomlkit.dumps(doc)


def _replace_or_append(doc, key: str, match, table) -> None:
    import tomlkit

    if key not in doc:
        doc[key] = tomlkit.aot()
    tables = doc[key]
    for i, existing in enumerate(tables):
        if match(existing):
            tables[i] = table
            return
    tables.append(table)


def _node_table(node: Node):
    import tomlkit

    table = tomlkit.table()
    table["name"] = node.name
    if node.address:
        table["address"] = node.address
    if node.backend:
        table["backend"] = node.backend
    if node.interconnect:
        table["interconnect"] = format_quantity(node.interconnect, "bandwidth", 12)
    devices = tomlkit.aot()
    for d in node.devices:
        devices.append(_device_table(d))
    table["device"] = devices
    return table


def _device_table(d: Device):
    import tomlkit

    table = tomlkit.table()
    table["kind"] = d.kind
    table["cores"] = d.cores
    table["memory"] = format_quantity(d.memory, "bytes", 12)
    if d.memory_bandwidth:
        table["memory_bandwidth"] = format_quantity(d.memory_bandwidth, "bandwidth", 12)
    if d.vector_width:
        table["vector_width"] = d.vector_width
    if d.op_overhead:
        table["op_overhead"] = format_quantity(d.op_overhead, "time", 12)
    for name, values, kind in (("compute", d.compute, "rate"), ("op_rates", d.op_rates, "rate"),
                               ("cache", d.cache, "bytes")):
        if values:
            inline = tomlkit.inline_table()
            inline.update({k: format_quantity(v, kind, 12) for k, v in values.items()})
            table[name] = inline
    return table


def _link_table(link):
    import tomlkit

    table = tomlkit.table()
    table["from"], table["to"] = link.src, link.dst
    table["bandwidth"] = format_quantity(link.bandwidth, "bandwidth", 12)
    table["latency"] = format_quantity(link.latency, "time", 12)
    return table
