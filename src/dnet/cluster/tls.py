"""Mutual TLS on cluster links: each side proves a certificate from the cluster's CA, and the bytes after
the handshake are encrypted and authenticated (confidentiality and integrity, which the HMAC handshake
alone does not give; it still runs, inside TLS).

A dnet connection is read by one thread while others write to it, and an OpenSSL connection may not be
used by two threads at once (not even one reading and one writing). So `TlsSocket` keeps the TLS state in
memory (an `ssl.SSLObject` over two `MemoryBIO`s) behind a lock, and moves the ciphertext over the TCP
socket itself, outside that lock: a reader waiting for bytes never holds up a writer. It offers the few
socket calls `Channel` and the handshake make.

A node's TLS files are a directory: `ca.pem` (the cluster CA it trusts), `node.pem` and `node.key` (its
own certificate and key), as `dnet cluster init` writes them (dnet.cluster.certs). Any certificate the
CA signed is a member of the cluster: names and addresses are not checked (workers move and sit behind
NAT); the CA is the boundary, as the secret is.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import threading
from pathlib import Path

from dnet.cluster.protocol import ConnectionClosed
from dnet.errors import DnetError

TLS_DIR_ENV = "DNET_TLS_DIR"
CA_FILE, CERT_FILE, KEY_FILE = "ca.pem", "node.pem", "node.key"
_READ_BYTES = 256 << 10    # ciphertext taken from the socket per recv
_WRITE_BYTES = 256 << 10   # plaintext encrypted per step, so a large send does not hold the TLS lock long


class TlsError(DnetError):
    """The TLS files cannot be used, or the peer's certificate is not from the cluster's CA."""


class ClusterTls:
    """One node's side of mutual TLS: its certificate and key, and the cluster CA it trusts."""

    def __init__(self, node_dir: str | os.PathLike):
        self.node_dir = Path(node_dir)
        files = [self.node_dir / name for name in (CA_FILE, CERT_FILE, KEY_FILE)]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise TlsError(f"TLS files missing: {', '.join(missing)}",
                           hint="a node's TLS directory holds ca.pem, node.pem and node.key "
                                "(`dnet cluster init --nodes NAME` writes one)")
        self.server = self._context(ssl.PROTOCOL_TLS_SERVER, *files)
        self.client = self._context(ssl.PROTOCOL_TLS_CLIENT, *files)

    @staticmethod
    def _context(protocol: int, ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
        ctx = ssl.SSLContext(protocol)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False           # membership is the CA's signature (see the module's docstring)
        ctx.verify_mode = ssl.CERT_REQUIRED  # both ways: a server asks for the client's certificate too
        if protocol == ssl.PROTOCOL_TLS_SERVER:
            ctx.num_tickets = 0              # no session resumption: nothing to read after the handshake
        try:
            ctx.load_verify_locations(cafile=str(ca))
            ctx.load_cert_chain(str(cert), str(key))
        except (ssl.SSLError, OSError, ValueError) as err:
            raise TlsError(f"cannot load the TLS files in {ca.parent}: {err}") from None
        return ctx

    def wrap_client(self, sock: socket.socket) -> "TlsSocket":
        return TlsSocket(sock, self.client, server=False).handshake()

    def wrap_server(self, sock: socket.socket) -> "TlsSocket":
        return TlsSocket(sock, self.server, server=True).handshake()


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


def _reason(err: ssl.SSLError) -> str:
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {err.verify_message} (not signed by this cluster's CA?)"
    reason = (err.reason or str(err)).lower().replace("_", " ")
    if "unknown ca" in reason or "bad certificate" in reason:
        reason += " (the peer does not accept this node's certificate: another cluster's CA?)"
    return reason


class TlsSocket:
    """TLS over a blocking TCP socket: one thread may read while others write (see the module docstring)."""

    def __init__(self, raw: socket.socket, ctx: ssl.SSLContext, server: bool):
        self.raw = raw
        self.family = raw.family
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(self._incoming, self._outgoing, server_side=server)
        self._state = threading.Lock()   # the SSLObject and its BIOs
        self._wire = threading.Lock()    # ciphertext onto the socket: records whole and in order
        self._buffer = bytearray(_READ_BYTES)

    def handshake(self) -> "TlsSocket":
        """Run the TLS handshake (the raw socket's timeout applies to each read); TlsError if it fails."""
        try:
            while True:
                try:
                    with self._state:
                        self._tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self._flush()
                    if not self._pull():
                        raise ConnectionClosed("peer closed the connection during the TLS handshake")
            self._flush()
        except ssl.SSLError as err:
            try:
                self._flush()   # the alert tells the peer why
            except OSError:
                pass
            raise TlsError(f"TLS handshake failed: {_reason(err)}") from None
        return self

    # -- reading (one thread) ---------------------------------------------------------
    def recv_into(self, view: memoryview | bytearray, nbytes: int = 0) -> int:
        size = nbytes or len(view)
        while True:
            with self._state:
                try:
                    return self._tls.read(size, view)
                except ssl.SSLWantReadError:
                    pass
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    return 0
                except ssl.SSLError as err:   # a record that fails its authentication: altered in flight
                    raise ConnectionError(f"TLS: {_reason(err)}") from None
            if not self._pull():
                return 0

    def _pull(self) -> int:
        """Ciphertext from the socket into the TLS state; 0 at end of stream."""
        n = self.raw.recv_into(self._buffer)
        if n:
            with self._state:
                self._incoming.write(memoryview(self._buffer)[:n])
        else:
            with self._state:
                self._incoming.write_eof()
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
        """Encrypt in steps, sending the ciphertext as it grows: a small frame is one record, one send."""
        with self._wire:
            for view in views:
                for start in range(0, len(view), _WRITE_BYTES):
                    with self._state:
                        self._tls.write(view[start:start + _WRITE_BYTES])
                        ready = self._outgoing.read() if self._outgoing.pending >= _WRITE_BYTES else b""
                    if ready:
                        self.raw.sendall(ready)
            self._flush_locked()

    def _flush(self) -> None:
        with self._wire:
            self._flush_locked()

    def _flush_locked(self) -> None:
        with self._state:
            data = self._outgoing.read()
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
