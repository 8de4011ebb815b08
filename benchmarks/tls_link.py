"""TLS on a network link: 64 MiB tensors through a raw socket, dnet's plain frames and dnet over mutual TLS,
across a veth pair into a network namespace, shaped by tbf to the rates given (a link, not loopback).

Needs root and `ip netns` (iproute2); creates namespace nb<pid> and veth nbh/nbi (10.214.0.0/30), removes
them at the end. Nothing leaves the machine.

    sudo .venv/bin/python benchmarks/tls_link.py 1gbit 4gbit 8gbit 16gbit

Both ends use the default TLS engine; DNET_TLS_ENGINE=ssl (or openssl) in the environment picks one for both.
"""
from __future__ import annotations

import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from cluster import RAW_SERVER, _raw_send
from dnet.cluster.auth import SECRET_ENV, connect, new_secret
from dnet.cluster.certs import create_ca, issue_node
from dnet.cluster.protocol import DEFAULT_LIMITS, Message, MsgType
from dnet.cluster.tls import ClusterTls

HOST, PEER = "10.214.0.1", "10.214.0.2"
SIZE = 64 << 20


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def _link(ns: str, rate: str) -> None:
    _ip("netns", "add", ns)
    _ip("-n", ns, "link", "set", "lo", "up")
    _ip("link", "add", "nbh", "type", "veth", "peer", "name", "nbi")
    _ip("link", "set", "nbi", "netns", ns)
    _ip("addr", "add", f"{HOST}/30", "dev", "nbh")
    _ip("link", "set", "nbh", "up")
    _ip("-n", ns, "addr", "add", f"{PEER}/30", "dev", "nbi")
    _ip("-n", ns, "link", "set", "nbi", "up")
    for dev, inside in (("nbh", []), ("nbi", ["ip", "netns", "exec", ns])):
        subprocess.run([*inside, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "1mb",
                        "latency", "50ms"], check=True)


def measure(rate: str, repeats: int = 5) -> dict[str, float]:
    """GB/s (median of `repeats`, after one warm-up) of raw, plain dnet and TLS dnet over a link of `rate`."""
    ns, procs = f"nb{os.getpid()}", []
    try:
        _link(ns, rate)
        root = pathlib.Path(tempfile.mkdtemp())
        create_ca(root)
        worker_dir, client = issue_node(root, "worker"), ClusterTls(issue_node(root, "client"))
        secret = new_secret()
        env = {**os.environ, SECRET_ENV: secret, "OMP_NUM_THREADS": "1"}
        inside = ["ip", "netns", "exec", ns, sys.executable]
        raw_proc = subprocess.Popen([*inside, "-c", RAW_SERVER.replace("127.0.0.1", PEER), str(SIZE)],
                                    stdout=subprocess.PIPE, text=True)
        procs.append(raw_proc)
        raw = socket.create_connection((PEER, int(raw_proc.stdout.readline())))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        chans = {}
        for name, port, options, tls in (("plain", 7801, ["--no-tls"], None),
                                          ("tls", 7802, ["--tls", str(worker_dir)], client)):
            proc = subprocess.Popen([*inside, "-m", "dnet.cluster", "--listen", f"{PEER}:{port}", *options],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
            procs.append(proc)
            proc.stdout.readline()   # ready
            chans[name] = connect(PEER, port, secret, DEFAULT_LIMITS, tls=tls)
        payload = np.random.default_rng(0).integers(0, 255, SIZE, dtype=np.uint8)
        big = Message(MsgType.PING, {}, {"data": payload})
        times: dict[str, list[float]] = {"raw": [], "plain": [], "tls": []}
        for _ in range(repeats + 1):   # interleaved; the first is warm-up
            start = time.perf_counter()
            _raw_send(raw, memoryview(payload))
            times["raw"].append(time.perf_counter() - start)
            for name, chan in chans.items():
                start = time.perf_counter()
                chan.request(big)
                times[name].append(time.perf_counter() - start)
        return {name: SIZE / 1e9 / statistics.median(t[1:]) for name, t in times.items()}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        _ip("netns", "del", ns, check=False)
        _ip("link", "del", "nbh", check=False)


def main() -> None:
    for rate in sys.argv[1:] or ["1gbit", "8gbit"]:
        g = measure(rate)
        print(f"link {rate}: raw {g['raw']:.3f} GB/s, dnet plain {g['plain']:.3f} ({g['plain'] / g['raw']:.0%}), "
              f"dnet TLS {g['tls']:.3f} ({g['tls'] / g['raw']:.0%})")


if __name__ == "__main__":
    main()
