"""A framed connection over one TCP socket: whole messages in, whole messages out.

Sends go out with `sendmsg` over a list of buffers (the header, then memoryviews of
the tensors), so a large tensor reaches the kernel without being copied into a frame
first. Receives read the payload straight into one aligned buffer that the received
arrays then view.
"""
from __future__ import annotations

import socket
import threading

import numpy as np

from dnet.cluster.protocol import (
    ALIGN, DEFAULT_LIMITS, HEADER, ConnectionClosed, Limits, Message, ProtocolError, frame_buffers,
    parse_header, parse_meta, tensor_layout, tensors_from_payload,
)

_IOV_BATCH = 512  # well under Linux's IOV_MAX (1024)
_RECV_CHUNK = 1 << 22


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
        n = sock.recv_into(view[got:], min(len(view) - got, _RECV_CHUNK))
        if n == 0:
            if at_boundary and got == 0:
                raise ConnectionClosed("peer closed the connection")
            raise ProtocolError(f"truncated frame: connection closed after {got} of {len(view)} {what} bytes")
        got += n


def read_frame(sock: socket.socket, limits: Limits = DEFAULT_LIMITS) -> Message:
    header_bytes = bytearray(HEADER.size)
    recv_into(sock, memoryview(header_bytes), "header", at_boundary=True)
    header = parse_header(bytes(header_bytes), limits)
    meta_bytes = bytearray(header.meta_len)
    recv_into(sock, memoryview(meta_bytes), "meta")
    meta = parse_meta(bytes(meta_bytes))
    slots = tensor_layout(meta, header.payload_len, limits)  # checked before the payload is allocated
    raw = np.empty(header.payload_len + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    payload = raw[start:start + header.payload_len]
    recv_into(sock, memoryview(payload), "payload")
    meta.pop("tensors", None)
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
        self.closed = False

    def send(self, msg: Message) -> None:
        buffers = frame_buffers(msg)
        with self._send_lock:
            send_buffers(self.sock, buffers)

    def recv(self) -> Message:
        return read_frame(self.sock, self.limits)

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
