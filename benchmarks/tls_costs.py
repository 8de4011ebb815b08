"""Where a TLS link's time goes: CPU nanoseconds per byte on each end, beside the raw socket and the cipher.

A sender process (this one) and a receiver process per variant, on loopback: 64 MiB messages through a raw
socket and through dnet's `TlsSocket` on each TLS engine (dnet.cluster.tls_engines), interleaved. For each:
the wall-clock rate (median), and the CPU time each end spent per byte (process time, so a busy machine
inflates it far less than the wall clock). Then the cipher alone, per engine: AES-GCM over 16 KiB records
(a TLS record's size), the least any TLS link must add per byte on each end.

With both ends on one core (`--placement same`, as benchmarks/cluster.py's transport table), the rate is
about 1 / (sender + receiver CPU per byte); the bound it prints is the raw socket's cost over that cost plus
one encryption and one decryption and nothing else (no copy, no call): what no TLS on this cipher can beat.
With the ends on two cores (`split`), the slower end sets the rate.

    .venv/bin/python benchmarks/tls_costs.py [--placement same|split] [--repeats 9] [--mib 64]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from dnet.cluster.certs import create_ca, issue_node
from dnet.cluster.tls import ClusterTls


def _recv_exact(sock, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if not n:
            raise EOFError
        got += n


def _wrap(variant: str, node_dir: str, conn: socket.socket, server: bool):
    if variant == "raw":
        return conn
    tls = ClusterTls(node_dir, engine=variant.removeprefix("tls-"))
    return tls.wrap_server(conn) if server else tls.wrap_client(conn)


def serve(variant: str, node_dir: str, size: int) -> None:
    """The receiver: each message into one buffer, answered with the CPU time it took (ns, 8 bytes)."""
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = _wrap(variant, node_dir, conn, server=True)
    buf, head = memoryview(bytearray(size)), memoryview(bytearray(8))
    while True:
        try:
            _recv_exact(sock, head)
        except (EOFError, OSError):
            return
        start = time.process_time_ns()
        _recv_exact(sock, buf[:int.from_bytes(head, "big")])
        sock.sendall((time.process_time_ns() - start).to_bytes(8, "big"))


def links(variants: list[str], placement: str, repeats: int, size: int) -> dict[str, dict[str, float]]:
    root = tempfile.mkdtemp()
    try:
        create_ca(root)
        server_dir, client_dir = str(issue_node(root, "receiver")), str(issue_node(root, "sender"))
        cores = sorted(os.sched_getaffinity(0))
        mine, peer = {"same": (cores[:1], cores[:1]), "split": (cores[:1], cores[1:2] or cores[:1])}[placement]
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, mine)
        socks, procs = {}, []
        try:
            for v in variants:
                proc = subprocess.Popen([sys.executable, __file__, "--serve", v, server_dir, str(size)],
                                        stdout=subprocess.PIPE, text=True,
                                        preexec_fn=lambda: os.sched_setaffinity(0, peer))
                procs.append(proc)
                conn = socket.create_connection(("127.0.0.1", int(proc.stdout.readline())))
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                socks[v] = _wrap(v, client_dir, conn, server=False)
            payload = memoryview(np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8))
            reply = memoryview(bytearray(8))
            wall, sender, receiver = ({v: [] for v in variants} for _ in range(3))
            for _ in range(repeats + 1):   # interleaved; the first is warm-up
                for v, sock in socks.items():
                    start, cpu = time.perf_counter(), time.process_time()
                    sock.sendall(size.to_bytes(8, "big"))
                    sock.sendall(payload)
                    _recv_exact(sock, reply)
                    wall[v].append(time.perf_counter() - start)
                    sender[v].append(time.process_time() - cpu)
                    receiver[v].append(int.from_bytes(reply, "big") / 1e9)
        finally:
            for sock in socks.values():
                sock.close()
            for proc in procs:
                proc.wait(timeout=30)
            os.sched_setaffinity(0, before)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = statistics.median
    return {v: {"gbps": size / 1e9 / med(wall[v][1:]), "send_ns": 1e9 * med(sender[v][1:]) / size,
                "recv_ns": 1e9 * med(receiver[v][1:]) / size} for v in variants}


def cipher_ns(engine: str) -> tuple[str, float, float] | None:
    """(what, encrypt ns/B, decrypt ns/B) of AES-GCM on 16 KiB records, in the engine's OpenSSL."""
    if engine == "openssl":
        from cryptography.hazmat.backends.openssl.backend import backend
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        aead, nonce, record = AESGCM(os.urandom(16)), os.urandom(12), os.urandom(16384)
        sealed = aead.encrypt(nonce, record, None)
        rates = []
        for op, arg in ((aead.encrypt, record), (aead.decrypt, sealed)):
            start, n = time.process_time(), 20000
            for _ in range(n):
                op(nonce, arg, None)
            rates.append(1e9 * (time.process_time() - start) / (n * 16384))
        return f"AES-128-GCM, {backend.openssl_version_text()} (cryptography)", rates[0], rates[1]
    if shutil.which("openssl") is None:   # the ssl engine's library, through its own command line tool
        return None
    rates = []
    for flag in ([], ["-decrypt"]):
        out = subprocess.run(["openssl", "speed", "-seconds", "2", "-bytes", "16384", *flag,   # CPU time
                              "-evp", "aes-256-gcm"], capture_output=True, text=True).stdout
        found = re.search(r"AES-256-GCM\s+([\d.]+)k", out)
        if not found:
            return None
        rates.append(1e9 / (float(found[1]) * 1e3))
    version = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.split(" (")[0].strip()
    return f"AES-256-GCM, {version} (system, `openssl speed`)", rates[0], rates[1]


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--placement", default="same", choices=["same", "split"])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--engines", default="openssl,ssl")
    args = parser.parse_args()
    engines = args.engines.split(",")
    res = links(["raw", *(f"tls-{e}" for e in engines)], args.placement, args.repeats, args.mib << 20)
    raw = res["raw"]
    print(f"{args.mib} MiB messages on loopback, placement {args.placement}, medians of {args.repeats} "
          f"(interleaved; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(f"{'':14} {'GB/s':>6} {'of raw':>7} {'sender ns/B':>12} {'receiver ns/B':>14}")
    for v, r in res.items():
        print(f"{v:14} {r['gbps']:6.2f} {r['gbps'] / raw['gbps']:7.0%} {r['send_ns']:12.3f} {r['recv_ns']:14.3f}")
    raw_cpu = raw["send_ns"] + raw["recv_ns"]
    for e in engines:
        c = cipher_ns("openssl" if e == "openssl" else "ssl")
        if c is None:
            continue
        what, enc, dec = c
        tls = res[f"tls-{e}"]
        print(f"cipher of {e}: {what}: encrypt {enc:.3f} ns/B, decrypt {dec:.3f} ns/B; "
              f"TLS's extra over raw: sender {tls['send_ns'] - raw['send_ns']:.3f}, "
              f"receiver {tls['recv_ns'] - raw['recv_ns']:.3f} ns/B"
              + (f"; one-core bound raw/(raw+cipher) {raw_cpu / (raw_cpu + enc + dec):.0%}"
                 if args.placement == "same" else ""))


if __name__ == "__main__":
    main()
