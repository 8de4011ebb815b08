"""A framed connection over one TCP socket: whole messages in, whole messages out.

Sends go out with `sendmsg` over a list of buffers (the header, then memoryviews of
the tensors), so a large tensor reaches the kernel without being copied into a frame
first. Receives read the payload straight into one aligned buffer that the received
arrays then view.
"""
from __future__ import annotations

import socket
import sys
import threading

import numpy as np

from dnet.cluster.protocol import (
    ALIGN, DEFAULT_LIMITS, HEADER, ConnectionClosed, Limits, Message, ProtocolError, frame_buffers,
    parse_header, parse_meta, tensor_layout, tensors_from_payload,
)

_IOV_BATCH = 512  # well under Linux's IOV_MAX (1024)


def send_buffers(sock: socket.socket, buffers: list) -> None:
    """Send every buffer, in order, resuming after partial sends without copying."""
    views = [memoryview(b).cast("B") for b in buffers if len(b)]
    while views:
        sent = sock.sendmsg(views[:_IOV_BATCH])
        while sent:
            if sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0


def recv_into(sock: socket.socket, view: memoryview, what: str, at_boundary: bool = False) -> None:
    """Fill `view` from the socket; a close part-way is a truncated frame."""
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            if at_boundary and got == 0:
                raise ConnectionClosed("peer closed the connection")
            raise ProtocolError(f"truncated frame: connection closed after {got} of {len(view)} {what} bytes")
        got += n


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


def read_frame(sock: socket.socket, limits: Limits = DEFAULT_LIMITS, pool: BufferPool | None = None) -> Message:
    header_bytes = bytearray(HEADER.size)
    recv_into(sock, memoryview(header_bytes), "header", at_boundary=True)
    header = parse_header(bytes(header_bytes), limits)
    meta_bytes = bytearray(header.meta_len)
    recv_into(sock, memoryview(meta_bytes), "meta")
    meta = parse_meta(bytes(meta_bytes))
    slots = tensor_layout(meta, header.payload_len, limits)  # checked before the payload is allocated
    meta.pop("tensors", None)
    if not slots:
        return Message(header.type, meta)
    payload = pool.take(header.payload_len) if pool is not None else np.empty(header.payload_len, np.uint8)
    recv_into(sock, memoryview(payload), "payload")
    return Message(header.type, meta, tensors_from_payload(slots, payload))


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
        self.closed = False

    def send(self, msg: Message) -> None:
        buffers = frame_buffers(msg)
        with self._send_lock:
            send_buffers(self.sock, buffers)

    def recv(self) -> Message:
        return read_frame(self.sock, self.limits, self._pool)

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
