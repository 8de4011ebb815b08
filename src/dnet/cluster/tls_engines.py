"""The TLS engines a cluster link can run on: the same mutual TLS 1.3, from two OpenSSL builds.

A link's cost on a fast network is its cipher: AES-GCM over every byte, once to send and once to
receive. Python's `ssl` module uses the system's OpenSSL, which may be old (3.0 on Debian 12 has no
AVX-512 AES-GCM: 5.5 GB/s a core here); pyOpenSSL uses the OpenSSL that the `cryptography` wheel
bundles (4.x here: VAES/AVX-512 AES-GCM, 10-16 GB/s a core). Both engines do the same protocol with the
same files, so either end may use either:

- TLS 1.3 only, AEAD suites only (TLS 1.3 has no others); the openssl engine offers AES-128-GCM first
  (as strong as needed, fewer rounds than AES-256), then AES-256-GCM and ChaCha20-Poly1305 (for a
  peer without AES instructions); the ssl engine offers OpenSSL's default order (Python cannot set
  TLS 1.3 suites);
- a certificate required both ways, verified against the cluster's CA; host names not checked
  (see tls.py);
- no session tickets (no resumption: nothing to process after the handshake).

An engine's connection keeps the TLS state in memory (two memory BIOs): the caller moves ciphertext
(`feed`, `take`) and decides which thread does what (tls.TlsSocket). Each method returns or raises
plain values: `WANT_READ` when more ciphertext is needed, `TlsFailure` with a reason a person can read.
"""
from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Protocol

ENGINE_ENV = "DNET_TLS_ENGINE"   # "openssl" or "ssl": force an engine (tests, measurements)
RECORD = 16384                   # the largest plaintext a TLS record carries: one read returns at most this
WANT_READ = None                 # read_into's answer when no whole record is buffered
OTHER = -1


class TlsFailure(Exception):
    """A handshake or record the engine refused; `str()` is the reason (engine-neutral wording)."""


class Connection(Protocol):
    step_bytes: int                                  # plaintext per encrypt step, ciphertext per socket read
    def handshake(self) -> bool: ...                 # True once done; False: feed more ciphertext first
    def write(self, data: memoryview) -> None: ...   # encrypt into the outgoing buffer
    def take(self) -> bytes | memoryview: ...        # the ciphertext waiting to go (empty if none)
    def feed(self, data: memoryview) -> None: ...    # ciphertext that came in
    def feed_eof(self) -> None: ...
    def read_into(self, view: memoryview, size: int) -> int | None: ...
    def cipher(self) -> tuple[str, str]: ...         # (suite, protocol version)


class Engine(Protocol):
    name: str
    def context(self, server: bool, ca: Path, cert: Path, key: Path) -> object: ...
    def connect(self, context: object, server: bool) -> Connection: ...


def _cert_reason(reason: str) -> str:
    """The same hint whichever engine saw the failure."""
    if "certificate verify failed" in reason:
        return f"{reason} (not signed by this cluster's CA?)"
    if "unknown ca" in reason or "bad certificate" in reason:
        return f"{reason} (the peer does not accept this node's certificate: another cluster's CA?)"
    return reason


# -- Python's ssl module (the system's OpenSSL) ---------------------------------------------

class SslEngine:
    """The portable engine: always present (the standard library)."""

    name = "ssl"

    def context(self, server: bool, ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False           # membership is the CA's signature (see tls.py)
        ctx.verify_mode = ssl.CERT_REQUIRED  # both ways: a server asks for the client's certificate too
        if server:
            ctx.num_tickets = 0
        ctx.load_verify_locations(cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
        return ctx

    def connect(self, context: ssl.SSLContext, server: bool) -> "_SslConnection":
        return _SslConnection(context, server)


class _SslConnection:
    # Each take is a new bytes object: past 256 KiB, malloc maps fresh pages for it, faulted in on every
    # step (measured: ~30 % more sender time at 1 MiB steps than at 256 KiB)
    step_bytes = 256 << 10

    def __init__(self, context: ssl.SSLContext, server: bool):
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_side=server)
        self._eof = False

    def handshake(self) -> bool:
        try:
            self._tls.do_handshake()
            return True
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as err:
            raise TlsFailure(self._reason(err)) from None

    def write(self, data: memoryview) -> None:
        self._tls.write(data)

    def take(self) -> bytes:
        return self._out.read()

    def feed(self, data: memoryview) -> None:
        self._in.write(data)

    def feed_eof(self) -> None:
        self._in.write_eof()

    def read_into(self, view: memoryview, size: int) -> int | None:
        """Decrypt every whole record buffered, up to `size` bytes, into `view`: one call, not one per record."""
        read, got = self._tls.read, 0
        try:
            while got < size:
                got += read(size - got, view[got:])
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            self._eof = True   # closed: what came before it, then 0
        except ssl.SSLError as err:   # a record that fails its authentication: altered in flight
            raise TlsFailure(self._reason(err)) from None
        if got or self._eof:
            return got
        return WANT_READ

    def cipher(self) -> tuple[str, str]:
        suite = self._tls.cipher()
        return (suite[0], suite[1]) if suite else ("", "")

    @staticmethod
    def _reason(err: ssl.SSLError) -> str:
        if isinstance(err, ssl.SSLCertVerificationError):
            return _cert_reason(f"certificate verify failed: {err.verify_message}")
        return _cert_reason((err.reason or str(err)).lower().replace("_", " "))


# -- pyOpenSSL (the OpenSSL that cryptography bundles) ---------------------------------------

_SSL_MODE_ENABLE_PARTIAL_WRITE = 0x1   # OpenSSL's constant (ssl.h); pyOpenSSL sets the mode but names no constant
_SUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


class OpenSslEngine:
    """The fast engine, where pyOpenSSL is installed (the `cluster` extra)."""

    name = "openssl"

    def __init__(self):
        from OpenSSL import SSL   # ImportError: not installed; the caller falls back

        self.SSL = SSL

    def context(self, server: bool, ca: Path, cert: Path, key: Path) -> object:
        SSL = self.SSL
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD if server else SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        ctx.set_tls13_ciphersuites(_SUITES)
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, None)
        ctx.set_options(SSL.OP_NO_TICKET)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        ctx.clear_mode(_SSL_MODE_ENABLE_PARTIAL_WRITE)   # into a memory BIO a write completes: one call a step
        try:
            ctx.load_verify_locations(str(ca))
            ctx.use_certificate_chain_file(str(cert))
            ctx.use_privatekey_file(str(key))
            ctx.check_privatekey()
        except SSL.Error as err:
            raise ValueError(_openssl_reason(err)) from None
        return ctx

    def connect(self, context: object, server: bool) -> "_OpenSslConnection":
        return _OpenSslConnection(self.SSL, context, server)


def _openssl_reason(err: Exception) -> str:
    """pyOpenSSL's errors are lists of (library, function, reason); the reasons are what a person needs."""
    parts = err.args[0] if err.args and isinstance(err.args[0], list) else []
    reasons = [str(p[-1]) for p in parts if isinstance(p, tuple) and p]
    return "; ".join(reasons) if reasons else (str(err) or type(err).__name__)


class _OpenSslConnection:
    step_bytes = 1 << 20   # the fast path reuses one buffer: larger steps only save calls
    _TAKE = 4 << 20   # bytes asked of the outgoing buffer per read (it allocates this much, unzeroed)

    def __init__(self, SSL, context, server: bool):
        self.SSL = SSL
        self._tls = SSL.Connection(context, None)   # None: memory BIOs
        if server:
            self._tls.set_accept_state()
        else:
            self._tls.set_connect_state()
        self._eof = False
        self._raw = _raw_calls(self._tls)

    def handshake(self) -> bool:
        try:
            self._tls.do_handshake()
            return True
        except self.SSL.WantReadError:
            return False
        except self.SSL.Error as err:
            raise TlsFailure(self._reason(err)) from None

    def write(self, data: memoryview) -> None:
        done = self._raw.write(data) if self._raw is not None else 0
        if done < len(data):
            self._tls.sendall(data[done:])   # (the public call: it raises what went wrong)

    def take(self) -> bytes | memoryview:
        if self._raw is not None:
            return self._raw.take()
        chunks = []
        while True:
            try:
                chunks.append(self._tls.bio_read(self._TAKE))
            except self.SSL.WantReadError:
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def feed(self, data: memoryview) -> None:
        done = self._raw.feed(data) if self._raw is not None else 0
        if done < len(data):
            self._tls.bio_write(data[done:])

    def feed_eof(self) -> None:
        self._eof = True
        self._tls.bio_shutdown()

    def read_into(self, view: memoryview, size: int) -> int | None:
        if self._raw is not None:
            got = self._raw.read_into(view, size)
            if got is not OTHER:
                return got    # else an end or an error: the public calls below say which
        SSL, recv_into, got = self.SSL, self._tls.recv_into, 0
        try:
            while got < size:   # a record at a most per call; asking for more only grows its scratch buffer
                got += recv_into(view[got:], min(size - got, RECORD))
        except SSL.WantReadError:
            pass
        except (SSL.ZeroReturnError, SSL.SysCallError):
            self._eof = True   # closed (cleanly, or the stream just ended): what came before, then 0
        except SSL.Error as err:
            if not self._eof:   # after the end of the stream, a cut-off record is the end too
                raise TlsFailure(self._reason(err)) from None
        if got or self._eof:
            return got
        return WANT_READ

    def cipher(self) -> tuple[str, str]:
        return (self._tls.get_cipher_name() or "", self._tls.get_protocol_version_name() or "")

    def _reason(self, err: Exception) -> str:
        return _cert_reason(_openssl_reason(err))


class _RawCalls:
    """The per-message calls made straight on OpenSSL through pyOpenSSL's cffi handles: SSL_read into the
    caller's buffer (pyOpenSSL's recv_into reads into a scratch buffer, then copies) and BIO_read into one
    reused buffer (bio_read allocates its size, then copies into bytes); SSL_write and BIO_write without
    pyOpenSSL's Python wrappers. Those copies, allocations and a Python frame per 16 KiB record cost 20-30 %
    of a side's time on large tensors here. The handles are pyOpenSSL internals, so this is an optional
    path: `_raw_calls` gives None when they are missing, and the public calls do the same work
    ($DNET_TLS_FAST=0 forces that, for tests). Memory: a 2 MiB ciphertext buffer per connection."""

    def __init__(self, ffi, lib, ssl_ptr, in_bio, out_bio):
        self.ffi, self.lib, self.ssl, self.in_bio, self.out_bio = ffi, lib, ssl_ptr, in_bio, out_bio
        self._out = bytearray(2 << 20)   # a 1 MiB encrypt step's ciphertext, whole
        self._out_ptr = ffi.from_buffer(self._out)

    def read_into(self, view: memoryview, size: int) -> int | None:
        """Every whole record buffered, up to `size` bytes, or WANT_READ; OTHER when SSL_read stopped for
        another reason (an end, an error: the public calls find which, with their messages)."""
        ffi, lib, ssl_ptr, got = self.ffi, self.lib, self.ssl, 0
        with ffi.from_buffer(view, require_writable=True) as base:
            while got < size:
                n = lib.SSL_read(ssl_ptr, base + got, min(size - got, 1 << 30))
                if n <= 0:
                    if got:
                        return got   # the next call meets the same condition and reports it
                    return WANT_READ if lib.SSL_get_error(ssl_ptr, n) == lib.SSL_ERROR_WANT_READ else OTHER
                got += n
        return got

    def write(self, data: memoryview) -> int:
        """Encrypt `data`; how much was taken (all, unless OpenSSL refused: the caller hands the rest to the
        public call, which says why). pyOpenSSL sets SSL_MODE_ENABLE_PARTIAL_WRITE, so each SSL_write
        may take only a record's worth; the contexts here clear that mode, the loop stays for any other."""
        write, ssl_ptr, done, size = self.lib.SSL_write, self.ssl, 0, len(data)
        with self.ffi.from_buffer(data) as ptr:
            while done < size:
                n = write(ssl_ptr, ptr + done, size - done)
                if n <= 0:
                    break
                done += n
        return done

    def feed(self, data: memoryview) -> int:
        """Ciphertext into the TLS state; how much was taken (a memory BIO takes all, or nothing on failure)."""
        with self.ffi.from_buffer(data) as ptr:
            return max(self.lib.BIO_write(self.in_bio, ptr, len(data)), 0)

    def take(self) -> memoryview:
        """The waiting ciphertext, as a view of the reused buffer: good until the next `take` (TlsSocket
        takes and sends under one lock, so it is sent before anything overwrites it)."""
        read, got = self.lib.BIO_read, 0
        while (n := read(self.out_bio, self._out_ptr + got, len(self._out) - got)) > 0:
            got += n
            if got == len(self._out):   # more waiting than the buffer holds: a larger one, kept
                self._grow(got)
        return memoryview(self._out)[:got]

    def _grow(self, keep: int) -> None:
        bigger = bytearray(2 * len(self._out))
        bigger[:keep] = self._out[:keep]
        self._out, self._out_ptr = bigger, self.ffi.from_buffer(bigger)


FAST_PATH_ENV = "DNET_TLS_FAST"


def _raw_calls(conn) -> _RawCalls | None:
    if os.environ.get(FAST_PATH_ENV) == "0":
        return None
    try:
        from OpenSSL._util import ffi, lib

        return _RawCalls(ffi, lib, conn._ssl, conn._into_ssl, conn._from_ssl)
    except (ImportError, AttributeError):
        return None


# -- choosing ---------------------------------------------------------------------------------

def engine(name: str | None = None) -> Engine:
    """The engine named (or by $DNET_TLS_ENGINE), else the fastest installed: openssl, then ssl."""
    name = name or os.environ.get(ENGINE_ENV) or ""
    if name not in ("", "openssl", "ssl"):
        raise ValueError(f"unknown TLS engine {name!r} (known: openssl, ssl)")
    if name in ("", "openssl"):
        try:
            return OpenSslEngine()
        except ImportError:
            if name == "openssl":
                raise ValueError("TLS engine 'openssl' needs pyOpenSSL (pip install pyopenssl)") from None
    return SslEngine()
