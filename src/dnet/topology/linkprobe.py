"""Link probes: latency (small round trips) and bandwidth (a bulk send) to a peer over TCP.

The peer runs `serve_probe` (`dnet probe --serve HOST:PORT`): it answers each ping
with one byte and each bulk message, once fully received, with one byte.
"""
from __future__ import annotations

import socket
import socketserver
import struct
import threading

from dnet.core import progress
from dnet.errors import DnetError
from dnet.topology.probe import Measurement, time_runs

_PING, _BULK = b"p", b"b"
_CHUNK = 1 << 20

class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            kind = sock.recv(1)
            if not kind:
                return
            if kind == _BULK:
                (size,) = struct.unpack("!Q", _recv_exact(sock, 8))
                while size > 0:
                    got = sock.recv(min(_CHUNK, size))
                    if not got:
                        return
                    size -= len(got)
            elif kind != _PING:
                return  # not a probe client: drop it
            sock.sendall(b"k")

def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        got = sock.recv(n - len(buf))
        if not got:
            raise ConnectionError("peer closed the connection")
        buf += got
    return buf

class ProbeServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

def serve_probe(host: str = "127.0.0.1", port: int = 0, background: bool = False) -> ProbeServer:
    """Start a probe server (port 0: any free port, see `server.server_address`)."""
    server = ProbeServer((host, port), _Handler)
    if background:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return server

def probe_link(address: str, nbytes: int = 8 << 20, runs: int = 5, timeout: float = 10.0
               ) -> tuple[Measurement, Measurement]:
    """(latency in seconds, bandwidth in bytes/s) to the probe server at host:port."""
    host, _, port = address.rpartition(":")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout)
    except (OSError, ValueError) as err:
        raise DnetError(f"cannot reach probe peer {address}: {err}",
                        hint="start one there with `dnet probe --serve HOST:PORT`") from None
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        payload = bytes(nbytes)

        def ping() -> None:
            sock.sendall(_PING)
            _recv_exact(sock, 1)

        def bulk() -> None:
            sock.sendall(_BULK + struct.pack("!Q", nbytes))
            sock.sendall(payload)
            _recv_exact(sock, 1)

        # each round trip is counted (one warm-up apiece): the bulk ones take seconds on a slow link
        with progress.task(f"probe the link to {address}", total=(runs * 4 + 1) + (runs + 1),
                           unit="round trips") as task:
            rtt = time_runs(ping, runs * 4, after_each=task.advance)
            t = time_runs(bulk, runs, after_each=task.advance)
        latency = Measurement(rtt.median / 2, rtt.spread, rtt.runs)
        # the bulk time includes one round trip's latency: take it off before dividing
        bandwidth = Measurement(nbytes / max(t.median - rtt.median, 1e-9), t.spread, t.runs)
    return latency, bandwidth

