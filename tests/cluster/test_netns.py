"""Two workers in their own network namespaces, joined by veth pairs, the worker-to-worker link shaped by tc.

Runs where the tests run as root and `ip netns` works; skipped, with the reason, elsewhere.
Only addresses this test assigns inside its own namespaces are used (10.213.x.x on veths it
creates); nothing leaves the machine.
"""
import os
import shutil
import subprocess
import time

import numpy as np
import pytest

from dnet.cluster import LocalCluster, WorkerSpec
from dnet.runtime import contiguous_assignment, split_pipeline
from residual_nets import oracle, request, residual_graph

PORT = 7700
RATE_BYTES_PER_S = 1e6  # 8 Mbit/s on the worker-to-worker link


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root for ip netns"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) not installed"
    probe = f"dnprobe{os.getpid() % 100000}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns does not work here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _shape(ns: str, dev: str) -> str:
    """netem (delay + rate) where the kernel has it, else tbf (rate only); returns which."""
    netem = ["tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", "20ms", "rate", "8mbit"]
    tbf = ["tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", "8mbit", "burst", "32kbit", "latency", "400ms"]
    for kind, cmd in (("netem", netem), ("tbf", tbf)):
        if subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, timeout=10).returncode == 0:
            return kind
    pytest.skip("neither the netem nor the tbf qdisc is available in this kernel")


@pytest.fixture
def namespaces():
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    tag = f"{os.getpid() % 100000}"
    a, b = f"dn{tag}a", f"dn{tag}b"
    try:
        for ns in (a, b):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        # coordinator (this namespace) <-> each worker, and worker a <-> worker b directly
        for i, ns in enumerate((a, b), start=1):
            host, inner = f"dh{tag}{i}", f"di{tag}{i}"
            _ip("link", "add", host, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("addr", "add", f"10.213.{i}.1/30", "dev", host)
            _ip("link", "set", host, "up")
            _ip("-n", ns, "addr", "add", f"10.213.{i}.2/30", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
        _ip("-n", a, "link", "add", "ab", "type", "veth", "peer", "name", "ba")
        _ip("-n", a, "link", "set", "ba", "netns", b)
        _ip("-n", a, "addr", "add", "10.213.3.1/30", "dev", "ab")
        _ip("-n", b, "addr", "add", "10.213.3.2/30", "dev", "ba")
        _ip("-n", a, "link", "set", "ab", "up")
        _ip("-n", b, "link", "set", "ba", "up")
        yield a, b, _shape(a, "ab")
    finally:
        for ns in (a, b):
            _ip("netns", "del", ns, check=False)  # takes its veth ends, and so their peers, with it
        for i in (1, 2):
            _ip("link", "del", f"dh{tag}{i}", check=False)


def test_a_pipeline_across_namespaces_over_a_shaped_veth_gives_the_same_outputs(rng, namespaces, tmp_path):
    a, b, qdisc = namespaces
    net, graph = residual_graph(rng)
    stages = split_pipeline(graph, contiguous_assignment(graph, [1, 1]))
    specs = [WorkerSpec(name="a", listen=f"0.0.0.0:{PORT}", advertise=f"10.213.3.1:{PORT}",
                        prefix=["ip", "netns", "exec", a]),
             WorkerSpec(name="b", listen=f"0.0.0.0:{PORT}", advertise=f"10.213.3.2:{PORT}",
                        prefix=["ip", "netns", "exec", b])]
    with LocalCluster(specs, cache_dir=str(tmp_path), tls=True) as local:   # off loopback: mutual TLS
        from dnet.cluster import Coordinator

        coord = Coordinator([f"10.213.1.2:{PORT}", f"10.213.2.2:{PORT}"], local.secret, call_timeout_s=20,
                            tls=local.tls)
        try:
            coord.load(stages)
            small = request(rng)
            np.testing.assert_allclose(coord.run(small)["output"], oracle(net, small["x"], small["mask"]),
                                       rtol=1e-5, atol=1e-5)
            big = request(rng, batch=64, seq=64)  # x and mask: 256 kB cross the shaped veth
            start = time.monotonic()
            out = coord.run(big, timeout=20)["output"]
            elapsed = time.monotonic() - start
        finally:
            coord.close()
    np.testing.assert_allclose(out, oracle(net, big["x"], big["mask"]), rtol=1e-5, atol=1e-5)
    crossing = big["x"].nbytes + big["mask"].nbytes
    assert elapsed >= 0.8 * crossing / RATE_BYTES_PER_S, f"{qdisc} limit not felt: {elapsed:.3f} s"
