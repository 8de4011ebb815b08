"""Topology files are written with tomlkit: strings escaped as TOML says, and `dnet probe -o` on an existing
file changes only its own node's tables, keeping the rest as written, comments included (issue 13: the
hand-written writer escaped only \\ and " and rewrote the whole file, dropping comments)."""
from dnet.cli.main import main
from dnet.topology import Topology
from dnet.topology.model import Device, Node
from dnet.topology import probe as probe_module

FILE = """# our lab: two boxes on the bench switch
[[node]]
name = "desk"        # the big one
address = "10.0.0.1:7700"
[[node.device]]
kind = "numpy"
cores = 8
memory = "32GiB"
compute = "200GFLOP/s"

[[node]]
name = "laptop"
[[node.device]]
kind = "numpy"
cores = 2
memory = "8GiB"
compute = "1GFLOP/s"   # a guess, to be probed
"""


def test_any_string_round_trips():
    topo = Topology()
    odd = 'desk\\t"quoted"\\\\ and\\nnewline, ü'
    topo.nodes.append(Node(odd, [Device(kind="numpy", memory=1 << 30, compute={"f32": 1e9})], "host:1"))
    assert Topology.loads(topo.dumps()).names == [odd]


def test_probe_into_an_existing_file_keeps_its_comments_and_other_nodes(tmp_path, monkeypatch, capsys):
    path = tmp_path / "lab.toml"
    path.write_text(FILE)
    device = Device(kind="numpy", cores=2, memory=8 << 30, compute={"f32": 150e9})
    report = probe_module.ProbeReport(device, {"matmul.f32": probe_module.Measurement(150e9, 0.1, 5)}, "f", True)
    monkeypatch.setattr(probe_module, "probe", lambda *a, **k: report)
    main(["probe", "-o", str(path), "--name", "laptop"])
    text = path.read_text()
    assert text.startswith("# our lab: two boxes on the bench switch\n")
    assert 'name = "desk"        # the big one' in text            # another node's table, as written
    assert "a guess, to be probed" not in text                    # the probed node's table is new
    loaded = Topology.load(str(path))
    assert loaded.names == ["desk", "laptop"]                     # in the file's order
    assert loaded.nodes[1].devices[0].compute["f32"] == 150e9
    assert loaded.nodes[0].devices[0].compute["f32"] == 200e9
