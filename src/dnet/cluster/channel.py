"""A framed connection over one TCP socket: whole messages in, whole messages out.

Sends go out with one `sendmsg` per frame: a small frame as one byte string, a large
one as a list of buffers (the header, then memoryviews of the tensors), so a large
tensor reaches the kernel without being copied into a frame first. `try_send` is the
same send for a thread that must not wait (an `Outbox`'s producer).

Receives go through a read buffer: one `recv` usually brings a small frame whole
(header, meta and payload), and what it brings past the frame is kept for the next.
The header is unpacked and the meta decoded where they lie in that buffer (no copy
of either first): a small message's cost is mostly the interpreter's, so every step
saved on this path shows in the decode loop's round trips.
A large payload is read straight into one aligned buffer that the received arrays
then view. Every length is checked against the limits before its body is allocated.
"""
from __future__ import annotations

import select
import socket
import sys
import threading

import numpy as np

from dnet.cluster.protocol import (
    ALIGN, DEFAULT_LIMITS, HEADER, ConnectionClosed, Limits, Message, ProtocolError, frame_buffers,
    meta_from_text, tensor_layout, tensors_from_payload, unpack_header,
)

_IOV_BATCH = 512  # well under Linux's IOV_MAX (1024)
READ_AHEAD = 64 << 10  # bytes one recv may bring in: a small frame whole, or several


def send_buffers(sock: socket.socket, buffers: list) -> None:
    """Send every buffer, in order, resuming after partial sends without copying."""
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    while views:
        views = _unsent(views, sock.sendmsg(views[:_IOV_BATCH]))


def _unsent(views: list[memoryview], sent: int) -> list[memoryview]:
    """What is left of `views` once `sent` bytes of them have gone."""
    while sent:
        if sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        else:
            views[0] = views[0][sent:]
            sent = 0
    return views


def recv_into(sock: socket.socket, view: memoryview, what: str, at_boundary: bool = False) -> None:
    """Fill `view` from the socket; a close part-way is a truncated frame."""
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            _closed(got, len(view), what, at_boundary)
        got += n


def _closed(got: int, size: int, what: str, at_boundary: bool) -> None:
    if at_boundary and got == 0:
        raise ConnectionClosed("peer closed the connection")
    raise ProtocolError(f"truncated frame: connection closed after {got} of {size} {what} bytes")


class BufferPool:
    """Receive buffers that are used again once nothing views them any more.

    A fresh buffer per frame costs a page fault per 4 KiB on first touch, as much as
    the copy itself for large tensors. Received arrays are views whose base is the
    pool's buffer, so a buffer whose reference count is back to the pool's own is
    free: no array the caller kept still points into it.
    """

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._buffers: list[np.ndarray] = []

    def take(self, nbytes: int) -> np.ndarray:
        """An ALIGN-aligned uint8 array of `nbytes`, backed by a pooled buffer where one is free."""
        free = [b for b in self._buffers if b.nbytes >= nbytes + ALIGN and sys.getrefcount(b) <= _POOLED_REFS]
        if free:
            raw = min(free, key=lambda b: b.nbytes)
        else:
            raw = np.empty(nbytes + ALIGN, np.uint8)
            self._buffers = [b for b in self._buffers if sys.getrefcount(b) > _POOLED_REFS or b.nbytes > nbytes]
            if len(self._buffers) < self.keep:
                self._buffers.append(raw)
        start = -raw.ctypes.data % ALIGN
        return raw[start:start + nbytes]


_POOLED_REFS = 3  # the pool's list, the comprehension's loop variable, getrefcount's argument


class FrameReader:
    """Frames from a socket, through a read buffer: as few `recv` calls as the data allows."""

    def __init__(self, sock: socket.socket, size: int = READ_AHEAD, exact: bool = False):
        """`exact`: every recv asks for what the frame still lacks, never a byte past it."""
        self.sock = sock
        self.exact = exact
        self._buffer = bytearray(max(size, HEADER.size))
        self._view = memoryview(self._buffer)
        self._start = self._end = 0  # the buffered bytes not yet handed out

    @property
    def buffered(self) -> bool:
        """Whether bytes of a frame not yet handed out lie in the read buffer."""
        return self._end > self._start

    def read(self, limits: Limits = DEFAULT_LIMITS, pool: BufferPool | None = None) -> Message:
        # header and meta are parsed where they lie in the read buffer: no copy, no object per piece
        if self._end - self._start < HEADER.size:
            self._buffer_at_least(HEADER.size, "header", at_boundary=True)
        msg_type, meta_len, payload_len = unpack_header(self._buffer, self._start, limits)
        start = self._start = self._start + HEADER.size
        if meta_len <= len(self._buffer) - HEADER.size:
            if self._end - start < meta_len:
                self._buffer_at_least(meta_len, "meta")
                start = self._start
            text = self._view[start:start + meta_len]
            self._start = start + meta_len
        else:   # larger than the read buffer: a buffer of its own
            text = self._take(meta_len, "meta")
        try:
            text = str(text, "utf-8")
        except UnicodeDecodeError as err:
            raise ProtocolError(f"meta is not UTF-8 JSON: {err}") from None
        meta = meta_from_text(text)
        if not payload_len and "tensors" not in meta:   # a control message
            return Message(msg_type, meta, {})
        slots = tensor_layout(meta, payload_len, limits)  # checked before the payload is allocated
        meta.pop("tensors", None)
        if not slots:
            return Message(msg_type, meta, {})
        if pool is not None and payload_len > len(self._buffer):
            payload = pool.take(payload_len)
        else:  # small: a fresh buffer costs less than looking for a free one
            payload = _aligned_empty(payload_len)
        self._fill(memoryview(payload), "payload")
        return Message(msg_type, meta, tensors_from_payload(slots, payload))

    def _buffer_at_least(self, size: int, what: str, at_boundary: bool = False) -> None:
        """Receive until `size` bytes (at most the buffer's size) lie buffered from `_start`, in one piece."""
        start, end = self._start, self._end
        if start == end:   # the usual case: nothing buffered, so receive from the buffer's start
            start = end = 0
        elif start + size > len(self._buffer):   # too near the end: move what is buffered to the front
            self._buffer[:end - start] = bytes(self._view[start:end])
            start, end = 0, end - start
        while end - start < size:
            space = self._view[end:] if end else self._view
            n = self.sock.recv_into(space, size - (end - start) if self.exact else 0)
            if n == 0:
                self._start = self._end = end
                _closed(end - start, size, what, at_boundary)
            end += n
        self._start, self._end = start, end

    def _take(self, size: int, what: str) -> bytes:
        """`size` bytes (more than the read buffer holds) as a buffer of their own."""
        data = bytearray(size)
        self._fill(memoryview(data), what)
        return bytes(data)

    def _fill(self, dest: memoryview, what: str, at_boundary: bool = False) -> None:
        """Fill `dest`: first from the buffer, then from the socket (a large rest straight into `dest`)."""
        got = min(len(dest), self._end - self._start)
        dest[:got] = self._view[self._start:self._start + got]
        self._start += got
        while got < len(dest):
            if len(dest) - got >= len(self._buffer):
                n = self.sock.recv_into(dest[got:])
                if n == 0:
                    _closed(got, len(dest), what, at_boundary)
                got += n
                continue
            n = self.sock.recv_into(self._view, len(dest) - got if self.exact else 0)  # the rest, and what follows
            if n == 0:
                _closed(got, len(dest), what, at_boundary)
            used = min(n, len(dest) - got)
            dest[got:got + used] = self._view[:used]
            got += used
            self._start, self._end = used, n


def _aligned_empty(nbytes: int) -> np.ndarray:
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + nbytes]


def read_frame(sock: socket.socket, limits: Limits = DEFAULT_LIMITS, pool: BufferPool | None = None) -> Message:
    """One frame, reading no byte past it (unbuffered: a `Channel` reads through its `FrameReader`)."""
    return FrameReader(sock, size=HEADER.size, exact=True).read(limits, pool)


class Channel:
    """One authenticated connection. `send` is safe from many threads; `recv` from one."""

    def __init__(self, sock: socket.socket, peer: str = "", limits: Limits = DEFAULT_LIMITS):
        if sock.family in (socket.AF_INET, socket.AF_INET6):  # small frames go out at once, not batched
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.peer = peer or _peer_name(sock)
        self.limits = limits
        self._send_lock = threading.Lock()
        self._pool = BufferPool()
        self._reader = FrameReader(sock)
        self.closed = False
        # whether `readable` can tell: a plain socket; a TLS socket's engine may hold bytes poll cannot see
        self.pollable = type(sock) is socket.socket
        self._poll: select.poll | None = None

    def send(self, msg: Message) -> None:
        buffers = frame_buffers(msg)
        with self._send_lock:
            if len(buffers) == 1:
                self.sock.sendall(buffers[0])
            else:
                send_buffers(self.sock, buffers)

    def send_frame(self, frame: bytes) -> None:
        """Send a frame already written (`encode_frame`): a reply made once and sent many times."""
        with self._send_lock:
            self.sock.sendall(frame)

    def try_send(self, msg: Message) -> list[memoryview] | None:
        """Send `msg` without waiting, for a thread that must not block. None: nothing was sent (another
        thread is sending, or the socket's buffer is full). Otherwise what did not fit: [] when the whole
        frame went. When part is left, the send lock stays held (no other frame may start mid-frame)
        until `send_rest` sends it, from any thread."""
        buffers = frame_buffers(msg)
        if not self._send_lock.acquire(blocking=False):
            return None
        try:
            if len(buffers) == 1:  # a small frame: one buffer
                sent = self.sock.send(buffers[0], socket.MSG_DONTWAIT)
            else:
                sent = self.sock.sendmsg(buffers[:_IOV_BATCH], [], socket.MSG_DONTWAIT)
        except BlockingIOError:
            self._send_lock.release()
            return None
        except BaseException:
            self._send_lock.release()
            raise
        rest = _unsent([memoryview(b).cast("B") for b in buffers if len(b)], sent)
        if not rest:
            self._send_lock.release()
        return rest

    def send_rest(self, rest: list[memoryview]) -> None:
        """Finish a frame that `try_send` started, and release the send lock it kept."""
        try:
            send_buffers(self.sock, rest)
        finally:
            self._send_lock.release()

    def drop_rest(self) -> None:
        """Give up a frame that `try_send` started (the link is failing): release the send lock it kept."""
        self._send_lock.release()

    def recv(self) -> Message:
        return self._reader.read(self.limits, self._pool)

    def readable(self, timeout: float) -> bool:
        """Whether a frame has started to arrive (a `recv` would not wait for its first byte), waiting up to
        `timeout` seconds for one; only where `pollable`. A closed connection is readable (its recv says so)."""
        if self._reader.buffered:
            return True
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self.sock, select.POLLIN)
        return bool(self._poll.poll(max(0, int(timeout * 1000 + 0.999))))

    def request(self, msg: Message) -> Message:
        """Send and wait for the reply (only while no reader thread owns `recv`)."""
        self.send(msg)
        return self.recv()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _peer_name(sock: socket.socket) -> str:
    try:
        name = sock.getpeername()
    except OSError:
        return "?"
    return f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name or "local")
