"""Running the app with uvicorn: in the foreground (`dnet serve`) or on a thread (tests, benchmarks).

Binding anywhere but a loopback address without an API key is refused: the server would hand the
model (and the cluster behind it) to anyone who can reach the port.
"""
from __future__ import annotations

import ipaddress
import socket
import threading
import time
from typing import Any

from dnet.errors import DnetError


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse a non-loopback address without an API key."""
    if api_key is None and not _loopback(host):
        raise DnetError(f"refusing to serve on {host} without an API key: anyone who can reach it could use the model",
                        hint="pass --api-key-file FILE, or bind to 127.0.0.1")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:          # a name: loopback only if every address it resolves to is
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


class Server:
    """The app served by uvicorn on `host:port` (port 0: a free one, read back as `.port`). The socket is
    bound here, so an address in use or not on this host is a DnetError before anything runs."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning",
                 sock: socket.socket | None = None):
        import uvicorn

        self.host = host
        self.socket = sock or bind(host, port)      # `sock`: bound earlier, by `bind`
        self._server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        """Serve in the foreground until interrupted (uvicorn handles SIGINT and SIGTERM)."""
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self.socket.close()

    def start(self, timeout: float = 30.0) -> "Server":
        """Serve on a thread; returns once it accepts connections."""
        self._thread = threading.Thread(target=self.run, name="dnet-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise DnetError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a DnetError saying why not."""
    if not 0 <= port <= 65535:      # getaddrinfo would wrap it around (99999 -> 34463)
        raise DnetError(f"cannot listen on {host}:{port}: not a port number (0-65535)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as err:
        raise DnetError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        raise DnetError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.set_inheritable(True)
    return sock
