"""The shared-secret handshake: both sides prove they hold the cluster's secret.

    client -> HELLO     {client_nonce}
    server -> CHALLENGE {server_nonce, proof: HMAC(secret, "dnet-server" | client_nonce | server_nonce)}
    client -> AUTH      {proof: HMAC(secret, "dnet-client" | server_nonce | client_nonce)}
    server -> WELCOME

Fresh 32-byte nonces on both sides make every proof single-use (no replay), the
role labels keep one side's proof from being reflected back as the other's, and the
secret itself never crosses the wire. Until WELCOME the server reads frames with
`HANDSHAKE_LIMITS` (tiny meta, no payload), so an unauthenticated peer cannot make
it allocate. Given a node's TLS files (`ClusterTls`), the connection is first wrapped in
mutual TLS (dnet.cluster.tls), which adds encryption and integrity; the handshake above
then runs inside it, so a peer needs both a certificate from the cluster's CA and the
secret. docs/security.md says what each protects.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import socket
import threading
from typing import TypeVar

from dnet.cluster.channel import Channel
from dnet.cluster.messages import Auth, Challenge, Error, Hello, MessageError, Welcome, decode_as, encode
from dnet.cluster.protocol import HANDSHAKE_LIMITS, ConnectionClosed, Limits, Message, MsgType, ProtocolError
from dnet.cluster.tls import ClusterTls, TlsError
from dnet.errors import DnetError

SECRET_ENV = "DNET_CLUSTER_SECRET"
HANDSHAKE_TIMEOUT_S = 5.0


class AuthError(DnetError):
    """The peer does not hold the cluster's secret (or does not speak the handshake)."""


def new_secret() -> str:
    return secrets.token_hex(32)


MIN_SECRET_BITS = 128
_HEX = set("0123456789abcdefABCDEF")
_BASE64 = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_")


def secret_bits(secret: str) -> float:
    """An upper estimate of a secret's entropy: its length times log2 of the smallest alphabet
    it fits (hex 4 bits a character, base64 6, printable ASCII ~6.6, anything else 8)."""
    chars = set(secret)
    per_char = 4.0 if chars <= _HEX else 6.0 if chars <= _BASE64 else 6.57 if secret.isascii() else 8.0
    return len(secret) * per_char


def check_secret_strength(secret: str) -> None:
    """A worker proves itself first, so a weak secret is guessable offline from one CHALLENGE."""
    if secret_bits(secret) < MIN_SECRET_BITS:
        raise DnetError(f"the cluster secret is too weak: about {secret_bits(secret):.0f} bits, "
                        f"need {MIN_SECRET_BITS}", hint="make one with `dnet cluster init` "
                        "(32 hex characters, 22 base64 characters or 20 printable ones at least)")


def secret_from_env() -> str | None:
    return os.environ.get(SECRET_ENV)


def _proof(secret: str, label: bytes, first: bytes, second: bytes) -> str:
    return hmac.new(secret.encode(), label + first + second, hashlib.sha256).hexdigest()


def _same(claimed: object, expected: str) -> bool:
    """Constant-time comparison that also accepts junk (non-strings, non-ASCII) as a mismatch."""
    return hmac.compare_digest(str(claimed).encode(), expected.encode())


def _nonce(value: str, key: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise AuthError(f"handshake: '{key}' must be 32 bytes of hex")
    return raw


R = TypeVar("R")


def _expect(msg: Message, kind: type[R]) -> R:
    """The handshake message `kind` (a record of dnet.cluster.messages), or why the peer refused."""
    if msg.type is MsgType.ERROR:
        try:
            reason = decode_as(Error, msg).reason
        except MessageError:
            reason = "?"
        raise AuthError(f"handshake refused: {reason}")
    if msg.type is not kind.kind:
        raise AuthError(f"handshake: expected {kind.kind.name}, got {msg.type.name}")
    try:
        return decode_as(kind, msg)
    except MessageError as err:
        raise AuthError(f"handshake: {err}") from None


def client_handshake(sock: socket.socket, secret: str, limits: Limits, peer: str = "",
                     tls: ClusterTls | None = None) -> Channel:
    """Authenticate to a server over a connected socket (inside TLS, given `tls`); returns the ready channel.

    The socket is closed if the handshake fails, so the server is not left waiting.
    """
    try:
        if tls is not None:
            sock.settimeout(HANDSHAKE_TIMEOUT_S)
            sock = tls.wrap_client(sock)
        return _client_handshake(sock, secret, limits, peer)
    except TlsError as err:
        sock.close()
        raise AuthError(str(err)) from None
    except BaseException:
        sock.close()
        raise


def _client_handshake(sock: socket.socket, secret: str, limits: Limits, peer: str) -> Channel:
    sock.settimeout(HANDSHAKE_TIMEOUT_S)
    chan = Channel(sock, peer, HANDSHAKE_LIMITS)
    client_nonce = secrets.token_bytes(32)
    challenge = _expect(chan.request(encode(Hello(client_nonce.hex()))), Challenge)
    server_nonce = _nonce(challenge.server_nonce, "server_nonce")
    expected = _proof(secret, b"dnet-server", client_nonce, server_nonce)
    if not _same(challenge.proof, expected):
        raise AuthError(f"{chan.peer} does not hold the cluster secret")
    chan.send(encode(Auth(_proof(secret, b"dnet-client", server_nonce, client_nonce))))
    _expect(chan.recv(), Welcome)
    sock.settimeout(None)
    chan.limits = limits
    return chan


def server_handshake(sock: socket.socket, secret: str, limits: Limits, tls: ClusterTls | None = None) -> Channel:
    """Authenticate a connecting client (inside TLS, given `tls`); raises AuthError (after telling it why,
    where the stream still allows) if it fails."""
    sock.settimeout(HANDSHAKE_TIMEOUT_S)
    deadline = threading.Timer(HANDSHAKE_TIMEOUT_S, _cut, (sock,))   # for the whole handshake, not per recv
    deadline.daemon = True
    deadline.start()
    try:
        stream = tls.wrap_server(sock) if tls is not None else sock
        return _server_handshake(Channel(stream, limits=HANDSHAKE_LIMITS), stream, secret, limits)
    except TlsError as err:
        raise AuthError(str(err)) from None
    finally:
        deadline.cancel()


def _cut(sock: socket.socket) -> None:
    """A peer too slow to finish the handshake in time: its reads end (as a closed connection)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _server_handshake(chan: Channel, sock: socket.socket, secret: str, limits: Limits) -> Channel:
    try:
        hello = _expect(chan.recv(), Hello)
        client_nonce = _nonce(hello.client_nonce, "client_nonce")
        server_nonce = secrets.token_bytes(32)
        chan.send(encode(Challenge(server_nonce.hex(), _proof(secret, b"dnet-server", client_nonce, server_nonce))))
        auth = _expect(chan.recv(), Auth)
        expected = _proof(secret, b"dnet-client", server_nonce, client_nonce)
        if not _same(auth.proof, expected):
            raise AuthError("wrong proof: the client does not hold the cluster secret")
    except (AuthError, ProtocolError, ConnectionClosed) as err:
        try:
            chan.send(encode(Error(str(err))))
        except OSError:
            pass
        raise AuthError(str(err)) from None
    chan.send(encode(Welcome()))
    sock.settimeout(None)
    chan.limits = limits
    return chan


def connect(host: str, port: int, secret: str, limits: Limits, timeout: float = HANDSHAKE_TIMEOUT_S,
            tls: ClusterTls | None = None) -> Channel:
    sock = socket.create_connection((host, port), timeout=timeout)
    return client_handshake(sock, secret, limits, f"{host}:{port}", tls)
