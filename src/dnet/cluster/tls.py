"""Mutual TLS on cluster links: each side proves a certificate from the cluster's CA, and the bytes after
the handshake are encrypted and authenticated (confidentiality and integrity, which the HMAC handshake
alone does not give; it still runs, inside TLS).

A dnet connection is read by one thread while others write to it, and an OpenSSL connection may not be
used by two threads at once (not even one reading and one writing). So `TlsSocket` keeps the TLS state in
memory (an engine's connection over two memory BIOs, dnet.cluster.tls_engines) behind a lock, and moves
the ciphertext over the TCP socket itself, outside that lock: a reader waiting for bytes never holds up a
writer. It offers the few socket calls `Channel` and the handshake make.

A node's TLS files are a directory: `ca.pem` (the cluster CA it trusts), `node.pem` and `node.key` (its
own certificate and key), as `dnet cluster init` writes them (dnet.cluster.certs). Any certificate the
CA signed is a member of the cluster: names and addresses are not checked (workers move and sit behind
NAT); the CA is the boundary, as the secret is.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import threading
from pathlib import Path

from dnet.cluster.protocol import ConnectionClosed
from dnet.cluster.tls_engines import ENGINE_ENV, WANT_READ, TlsFailure, engine as pick_engine
from dnet.errors import DnetError

TLS_DIR_ENV = "DNET_TLS_DIR"
CA_FILE, CERT_FILE, KEY_FILE = "ca.pem", "node.pem", "node.key"
class TlsError(DnetError):
    """The TLS files cannot be used, or the peer's certificate is not from the cluster's CA."""


class ClusterTls:
    """One node's side of mutual TLS: its certificate and key, and the cluster CA it trusts.

    `engine` picks the TLS implementation (tls_engines: "openssl", the fast one where pyOpenSSL is
    installed, or "ssl"); by default $DNET_TLS_ENGINE, else the fastest installed."""

    def __init__(self, node_dir: str | os.PathLike, engine: str | None = None):
        self.node_dir = Path(node_dir)
        files = [self.node_dir / name for name in (CA_FILE, CERT_FILE, KEY_FILE)]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise TlsError(f"TLS files missing: {', '.join(missing)}",
                           hint="a node's TLS directory holds ca.pem, node.pem and node.key "
                                "(`dnet cluster init --nodes NAME` writes one)")
        try:
            self.engine = pick_engine(engine)
        except ValueError as err:
            raise TlsError(str(err), hint=f"{ENGINE_ENV} or engine= picks one; unset, the fastest installed") from None
        try:
            self.server = self.engine.context(True, *files)
            self.client = self.engine.context(False, *files)
        except (OSError, ValueError) as err:   # (ssl.SSLError is an OSError)
            raise TlsError(f"cannot load the TLS files in {self.node_dir}: {err}") from None

    def wrap_client(self, sock: socket.socket) -> "TlsSocket":
        return TlsSocket(sock, self.engine.connect(self.client, server=False)).handshake()

    def wrap_server(self, sock: socket.socket) -> "TlsSocket":
        return TlsSocket(sock, self.engine.connect(self.server, server=True)).handshake()


def tls_from_env() -> ClusterTls | None:
    """The node's TLS directory named by $DNET_TLS_DIR, if set."""
    path = os.environ.get(TLS_DIR_ENV)
    return ClusterTls(path) if path else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False   # a host name: it may resolve anywhere


def require_tls(host: str, tls: ClusterTls | None, allow_plain: bool, what: str) -> None:
    """Links leaving this machine are encrypted unless the caller chose otherwise (a tunnel, a trusted LAN)."""
    if tls is None and not allow_plain and not is_loopback(host):
        raise TlsError(f"{what} {host} is not a loopback address and no TLS files are given",
                       hint=f"run `dnet cluster init --nodes NAMES`, then give each node its directory "
                            f"(--tls DIR or {TLS_DIR_ENV}); --no-tls allows plain TCP (a trusted network "
                            "or an encrypted tunnel)")


class TlsSocket:
    """TLS over a blocking TCP socket: one thread may read while others write (see the module docstring).

    Costs per byte are the point here (docs/security.md, "What TLS costs"): a read decrypts every record
    already buffered in one call under the lock, and refills from the socket a step at a time; a send
    encrypts a step (256 KiB to 1 MiB, the engine says) and hands the socket that step's ciphertext at once."""

    def __init__(self, raw: socket.socket, tls):
        self.raw = raw
        self.family = raw.family
        self._tls = tls                    # a tls_engines.Connection
        self._state = threading.Lock()     # the TLS state and its buffers
        self._wire = threading.Lock()      # ciphertext onto the socket: records whole and in order
        self._step = tls.step_bytes        # plaintext per encrypt step, ciphertext per socket read: large,
        self._buffer = bytearray(self._step)   # so a 64 MiB tensor costs a few hundred socket calls, not one
                                               # per 16 KiB record (a system call costs about a record's copy)
        self._view = memoryview(self._buffer)

    def handshake(self) -> "TlsSocket":
        """Run the TLS handshake (the raw socket's timeout applies to each read); TlsError if it fails."""
        try:
            while True:
                with self._state:
                    done = self._tls.handshake()
                if done:
                    break
                self._flush()
                if not self._pull():
                    raise ConnectionClosed("peer closed the connection during the TLS handshake")
            self._flush()
        except TlsFailure as err:
            try:
                self._flush()   # the alert tells the peer why
            except OSError:
                pass
            raise TlsError(f"TLS handshake failed: {err}") from None
        return self

    def cipher(self) -> tuple[str, str]:
        """The negotiated (suite, protocol version)."""
        return self._tls.cipher()

    # -- reading (one thread) ---------------------------------------------------------
    def recv_into(self, view: memoryview | bytearray, nbytes: int = 0) -> int:
        """Up to `nbytes` (or len(view)) bytes: every record already here, else waits for one."""
        size = min(nbytes or len(view), len(view))
        if not size:
            return 0
        view = view if isinstance(view, memoryview) else memoryview(view)
        ended = False
        while True:
            with self._state:
                try:
                    got = self._tls.read_into(view, size)
                except TlsFailure as err:   # a record that fails its authentication: altered in flight
                    raise ConnectionError(f"TLS: {err}") from None
            if got is not WANT_READ:
                return got
            if ended:   # the stream ended and the engine holds nothing more
                return 0
            ended = not self._pull()

    def _pull(self) -> int:
        """Ciphertext from the socket into the TLS state; 0 at end of stream."""
        n = self.raw.recv_into(self._buffer)
        with self._state:
            if n:
                self._tls.feed(self._view[:n])
            else:
                self._tls.feed_eof()
        return n

    # -- writing (any thread) ---------------------------------------------------------
    def sendall(self, data: bytes | memoryview) -> None:
        self._send([memoryview(data).cast("B")])

    def sendmsg(self, buffers: list, ancdata: list = (), flags: int = 0) -> int:  # type: ignore[assignment]
        if flags:
            raise BlockingIOError("TLS sends always complete (see send)")
        views = [memoryview(b).cast("B") for b in buffers]
        self._send(views)
        return sum(len(v) for v in views)

    def send(self, data: bytes | memoryview, flags: int = 0) -> int:
        """A non-blocking send is refused (BlockingIOError): ciphertext cut short could only be finished by
        this thread, so the caller (an Outbox) hands the message to its sending thread instead."""
        if flags:
            raise BlockingIOError("TLS sends always complete")
        self.sendall(data)
        return len(data)

    def _send(self, views: list[memoryview]) -> None:
        """Encrypt in steps of about `step_bytes` (small views together: a small frame is one record, one
        send), sending each step's ciphertext while the next is encrypted by no one else."""
        with self._wire:
            pending = 0
            for view in views:
                for start in range(0, len(view), self._step):
                    piece = view[start:start + self._step]
                    with self._state:
                        self._tls.write(piece)
                        pending += len(piece)
                        ready = self._tls.take() if pending >= self._step else b""
                    if ready:
                        pending = 0
                        self.raw.sendall(ready)
            self._flush_locked()

    def _flush(self) -> None:
        with self._wire:
            self._flush_locked()

    def _flush_locked(self) -> None:
        with self._state:
            data = self._tls.take()
        if data:
            self.raw.sendall(data)

    # -- the socket calls Channel and the handshake make ------------------------------
    def setsockopt(self, *args) -> None:
        self.raw.setsockopt(*args)

    def settimeout(self, value: float | None) -> None:
        self.raw.settimeout(value)

    def getpeername(self):
        return self.raw.getpeername()

    def fileno(self) -> int:
        return self.raw.fileno()

    def shutdown(self, how: int) -> None:
        self.raw.shutdown(how)

    def close(self) -> None:
        self.raw.close()
