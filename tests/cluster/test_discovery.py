"""Workers found on the LAN: `dnet worker --announce` (mDNS / DNS-SD) and `dnet cluster discover`.

Four workers on loopback announce themselves, all with TLS: two hold the cluster's secret and a certificate
from its CA, one another secret, one a certificate from another CA. Oracle: the topology written holds
exactly the two, and the model it runs gives one node's answer.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("zeroconf", reason="zeroconf is not installed (the optional extra `dnet[discovery]`)")

import dnet  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from dnet.cli.main import _load_commands, cli  # noqa: E402
from dnet.cluster.auth import SECRET_ENV, new_secret  # noqa: E402
from dnet.cluster.certs import create_ca, issue_node  # noqa: E402
from dnet.cluster.tls import ClusterTls  # noqa: E402
from dnet.cluster.discovery import Announcement, listen  # noqa: E402
from dnet.cluster.local import READY_PREFIX  # noqa: E402
from dnet.topology import Topology  # noqa: E402
from residual_nets import ResidualNet, request  # noqa: E402

_load_commands()


@pytest.fixture(scope="module")
def multicast():
    """mDNS needs multicast to loop back to this machine: a record of our own must be heard, else skip."""
    with Announcement("dnet-selftest", "127.0.0.1", 9, {"backend": "none"}):
        heard = listen(2.0)
    if not any(h.name == "dnet-selftest" for h in heard):
        pytest.skip("multicast DNS does not loop back here (no multicast route): nothing could be discovered")


def _worker(name: str, secret: str, tls_dir: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, SECRET_ENV: secret, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dnet.cluster", "--listen", "127.0.0.1:0", "--name", name,
                             "--announce", "--tls", str(tls_dir)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    assert line.startswith(READY_PREFIX), f"worker {name} did not start"
    return proc, line[len(READY_PREFIX):].strip()


@pytest.fixture(scope="module")
def workers(multicast, tmp_path_factory):
    """(secret, the coordinator's TLS directory, worker name -> address)."""
    root = tmp_path_factory.mktemp("tls")
    create_ca(root / "ours")
    create_ca(root / "theirs", cluster="another cluster")
    secret = new_secret()
    procs = []
    try:
        addresses = {}
        for name, key, ca in (("alpha", secret, "ours"), ("beta", secret, "ours"),
                              ("stranger", new_secret(), "ours"), ("impostor", secret, "theirs")):
            proc, addresses[name] = _worker(name, key, issue_node(root / ca, name))
            procs.append(proc)
        yield secret, issue_node(root / "ours", "coordinator"), addresses
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
            proc.stdout.close()


def test_discover_accepts_the_workers_holding_the_secret_and_writes_a_topology_that_runs(workers, tmp_path):
    secret, tls_dir, addresses = workers
    out = tmp_path / "cluster.toml"
    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["cluster", "discover", "--timeout", "3", "-o", str(out), "--tls", str(tls_dir)],
                                env={SECRET_ENV: secret})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[2].strip(): line for line in result.output.splitlines() if line.count("│") > 4}
    assert "accepted" in rows["alpha"] and "accepted" in rows["beta"]
    assert "refused" in rows["stranger"] and "does not hold the" in rows["stranger"]   # the cluster secret
    assert "refused" in rows["impostor"] and "certificate" in rows["impostor"]          # another CA's
    topology = Topology.load(str(out))
    assert sorted(n.name for n in topology.nodes) == ["alpha", "beta"]
    assert {n.address for n in topology.nodes} == {addresses["alpha"], addresses["beta"]}
    assert len(topology.links) == 2 and all(n.devices[0].compute["f32"] > 0 for n in topology.nodes)
    assert time.perf_counter() - start < 30

    rng = np.random.default_rng(0)
    net = ResidualNet(rng, depth=4)
    t = dnet.TensorType(("batch", "seq", 8), dnet.f32)
    inputs, req = {"x": t, "mask": t}, request(rng)
    want = dnet.compile(net, inputs).run(req)["output"]
    with dnet.compile(net, inputs, topology=topology, env={"batch": 2, "seq": 3}, secret=secret,
                      tls=ClusterTls(tls_dir)) as exe:
        np.testing.assert_allclose(exe.run(req)["output"], want, rtol=1e-6, atol=1e-6)


def test_a_heard_worker_carries_its_probe_summary_and_fingerprint(workers):
    heard = {h.name: h for h in listen(3.0)}
    names = ("alpha", "beta", "stranger", "impostor")
    for name in names:
        summary = heard[name].summary
        assert summary["backend"] == "numpy" and int(summary["cores"]) >= 1 and float(summary["f32"]) > 0
        assert len(summary["fingerprint"]) == 16 and len(summary["cert"]) == 64
    assert len({heard[name].summary["cert"] for name in names}) == len(names)   # a certificate each


def test_discover_with_no_secret_is_a_one_line_error():
    result = CliRunner().invoke(cli, ["cluster", "discover", "--timeout", "0.1"], env={SECRET_ENV: None})
    assert result.exit_code != 0 and "no cluster secret" in str(result.exception)


def test_discover_with_json_counts_each_worker_verified_probed_and_each_link_on_stderr(workers, tmp_path):
    """Progress as JSON lines on stderr (the tables stay on stdout): the four workers heard are verified one
    by one, the two accepted probed, the two links between them measured."""
    import json

    secret, tls_dir, _ = workers
    result = CliRunner().invoke(cli, ["cluster", "discover", "--timeout", "2", "--json", "-o", str(tmp_path / "c.toml"),
                                      "--tls", str(tls_dir)], env={SECRET_ENV: secret})
    assert result.exit_code == 0, result.output
    events: dict[str, list[dict]] = {}
    for line in result.stderr.splitlines():
        record = json.loads(line)
        events.setdefault(record.get("name", record["event"]), []).append(record)
    assert [e["event"] for e in events["listen for announcements"]] == ["start", "done"]
    for name, count in (("verify workers heard", 4), ("probe workers", 2), ("measure links between workers", 2)):
        assert [e["event"] for e in events[name]] == ["start"] + ["advance"] * count + ["done"], name
        assert events[name][-1]["completed"] == events[name][-1]["total"] == count
    assert "accepted" in result.stdout and "{" not in result.stdout
