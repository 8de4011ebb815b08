"""Topology files: units, the TOML format, and errors that name the file, the key and the value."""
import pytest

from dnet.errors import DnetError, ParseError
from dnet.topology import Topology, format_quantity, parse_quantity

GOOD = """
[[node]]
name = "laptop"
interconnect = "16GB/s"
  [[node.device]]
  cores = 8
  memory = "16GiB"
  memory_bandwidth = "40GB/s"
  compute = { f32 = "200GFLOP/s", f16 = "100GFLOP/s" }
  cache = { l2 = "1MiB" }

[[node]]
name = "board"
backend = "llvm"
  [[node.device]]
  memory = "2GiB"
  compute = "10GFLOP/s"

[[link]]
between = ["laptop", "board"]
bandwidth = "100MB/s"
latency = "2ms"

[[link]]
from = "board"
to = "laptop"
bandwidth = "8Mbit/s"
"""


@pytest.mark.parametrize("text, kind, value", [
    ("100MB/s", "bandwidth", 100e6), ("1Gbps", "bandwidth", 125e6), ("2ms", "time", 2e-3),
    ("250us", "time", 250e-6), ("16GiB", "bytes", 16 * 2**30), ("1.5TFLOP/s", "rate", 1.5e12), (42, "bytes", 42.0),
])
def test_units_parse_to_base_units(text, kind, value):
    assert parse_quantity(text, kind) == pytest.approx(value)


def test_a_quantity_that_does_not_parse_is_a_parse_error():
    with pytest.raises(ParseError, match="unknown unit 'Gib'"):
        parse_quantity("16Gib", "bytes")


def test_units_format_back_to_what_they_parse():
    for value, kind in ((16 * 2**30, "bytes"), (1.25e8, "bandwidth"), (3e-3, "time"), (2.5e12, "rate")):
        assert parse_quantity(format_quantity(value, kind), kind) == pytest.approx(value)


def test_a_file_loads_with_units_and_asymmetric_links():
    t = Topology.loads(GOOD, "cluster.toml")
    assert t.names == ["laptop", "board"]
    laptop = t.node("laptop")
    assert laptop.devices[0].memory == 16 * 2**30 and laptop.devices[0].compute["f16"] == 100e9
    assert laptop.interconnect == 16e9 and laptop.devices[0].cache == {"l2": 2**20}
    assert t.node("board").devices[0].compute == {"f32": 10e9}  # a bare rate means f32
    assert t.link("laptop", "board").bandwidth == 100e6 and t.link("laptop", "board").latency == 2e-3
    assert t.link("board", "laptop").bandwidth == 1e6          # the later, one-way entry wins


def test_a_node_names_the_backend_its_worker_runs():
    t = Topology.loads(GOOD)
    assert t.node("board").backend == "llvm" and t.node("laptop").backend is None
    assert 'backend = "llvm"' in t.dumps() and t.to_dict()["node"][1]["backend"] == "llvm"


def test_dumps_loads_round_trip():
    t = Topology.loads(GOOD)
    again = Topology.loads(t.dumps())
    assert _close(again.to_dict(), t.to_dict())


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return a == pytest.approx(b, rel=1e-11)
    return a == b


def _broken(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new, 1)


@pytest.mark.parametrize("text, key, words", [
    (_broken('memory = "16GiB"', 'memory = "16GB/"'), "node.laptop.device[0].memory", ["16GB/"]),
    (_broken('memory = "16GiB"', 'memory = "16Gib"'), "node.laptop.device[0].memory", ["unknown unit", "Gib"]),
    (_broken('latency = "2ms"', 'latency = "2 fortnights"'), "link[0].latency", ["2 fortnights"]),
    (_broken('latency = "2ms"', 'latency = -0.002'), "link[0].latency", ["latency cannot be negative", "-0.002"]),
    (_broken('bandwidth = "100MB/s"', 'bandwidth = "-5MB/s"'), "link[0].bandwidth", ["-5MB/s"]),
    (_broken('bandwidth = "100MB/s"', 'bandwidth = 0'), "link[0].bandwidth", ["positive", "0"]),
    (_broken('compute = "10GFLOP/s"', 'compute = "0GFLOP/s"'), "node.board.device[0].compute.f32", ["positive"]),
    (_broken('between = ["laptop", "board"]', 'between = ["laptop", "bord"]'), "link[0].between",
     ["unknown node 'bord'", "did you mean 'board'"]),
    (_broken('to = "laptop"', 'to = "lapton"'), "link[1].to", ["lapton", "laptop"]),
    (_broken("cores = 8", "cores = -2"), "node.laptop.device[0].cores", ["-2"]),
    (_broken("cores = 8", "coers = 8"), "node.laptop.device[0].coers", ["unknown key", "did you mean 'cores'"]),
    (_broken('f16 = "100GFLOP/s"', 'f61 = "100GFLOP/s"'), "node.laptop.device[0].compute.f61", ["f61"]),
    (_broken('name = "board"', 'name = "laptop"'), "node[1].name", ["duplicate", "laptop"]),
    (_broken('backend = "llvm"', 'backend = 3'), "node.board.backend", ["a backend's name", "3"]),
])
def test_bad_files_name_file_key_and_value(text, key, words):
    with pytest.raises(ParseError) as err:
        Topology.loads(text, "cluster.toml")
    message = str(err.value)
    assert message.startswith("cluster.toml"), message
    assert f"'{key}'" in message, message
    for w in words:
        assert w in message, message


def test_toml_syntax_errors_give_the_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[[node]]\nname = "a\n')
    with pytest.raises(ParseError) as err:
        Topology.load(str(path))
    assert err.value.where.file == str(path) and err.value.where.line == 2


def test_a_missing_file_is_a_parse_error_naming_it(tmp_path):
    with pytest.raises(ParseError, match="nothere.toml"):
        Topology.load(str(tmp_path / "nothere.toml"))


def test_local_topology_has_n_linked_nodes_with_scaled_rates():
    from dnet.topology.model import Device

    d = Device(cores=2, compute={"f32": 1e9}, memory=2**30, memory_bandwidth=1e9)
    t = Topology.local(3, device=d, scales=[1.0, 2.0, 4.0])
    assert t.names == ["local0", "local1", "local2"]
    assert [n.devices[0].compute["f32"] for n in t.nodes] == [1e9, 2e9, 4e9]
    assert [n.devices[0].memory_bandwidth for n in t.nodes] == [1e9, 2e9, 4e9]   # slower at everything
    assert all(t.link(a, b) for a in t.names for b in t.names if a != b)


def test_a_link_to_an_unknown_node_or_to_itself_is_an_error():
    topo = Topology.loads(GOOD, "cluster.toml")
    with pytest.raises(DnetError, match="cannot link unknown node 'bord'.*did you mean 'board'"):
        topo.add_link("laptop", "bord", 1e9)
    with pytest.raises(DnetError, match="a link joins two different nodes"):
        topo.add_link("laptop", "laptop", 1e9)
