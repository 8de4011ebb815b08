"""Outgoing links: messages sent in order, from the producing thread or the link's own, optionally shaped.

An `Outbox` lets a stage hand its outputs off and go straight back to computing,
so compute and communication overlap. A small message put while the link is idle
(unshaped, nothing queued or being sent) goes out at once from the putting thread,
if the socket takes it without waiting: on the decode path, where every message is
small, no thread hand-off or wake-up is paid. Anything else is queued for the
link's own thread, which sends in order; a full queue makes the producer wait
(backpressure).

A `LinkShape` makes a loopback connection behave like a slower network: each
message occupies the link for bytes/bandwidth seconds (messages queue behind each
other, as on a wire) and arrives `latency` seconds after it has been put on the
link. Latency is pipelined: many messages can be in the air at once, as on a real
long link. A shaped link always sends from its thread.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from dnet.cluster.channel import Channel
from dnet.cluster.protocol import COALESCE_BYTES, Message

log = logging.getLogger("dnet.cluster")


@dataclass(frozen=True)
class LinkShape:
    """Bandwidth in bytes per second (None: unlimited) and one-way latency in seconds."""

    bandwidth: float | None = None
    latency: float = 0.0

    def transfer_time(self, nbytes: int) -> float:
        return self.latency + (nbytes / self.bandwidth if self.bandwidth else 0.0)

    def to_json(self) -> dict[str, Any]:
        return {"bandwidth": self.bandwidth, "latency": self.latency}

    @staticmethod
    def from_json(obj: dict[str, Any] | None) -> "LinkShape | None":
        if not obj:
            return None
        return LinkShape(obj.get("bandwidth"), float(obj.get("latency", 0.0)))


_STOP = object()   # in place of a message's queued time: the thread ends here
_REST = object()   # the rest of a frame that a direct send started: the thread finishes it first

DIRECT_BYTES = COALESCE_BYTES  # payloads up to this go out from the producer when the link is idle


class Outbox:
    """Sends messages on a channel in order, from the producer when it can, else from its own thread."""

    def __init__(self, channel: Channel, shape: LinkShape | None = None, depth: int = 32,
                 on_error: Callable[[Exception], None] | None = None):
        self.channel = channel
        self.shape = shape
        self.depth = depth
        self.on_error = on_error
        self.error: Exception | None = None
        self._items: deque = deque()      # (queued at, message), in sending order
        self._busy = False                # a message is going out (from the thread or a producer)
        self._lock = threading.Lock()
        self._has_items = threading.Condition(self._lock)
        self._has_room = threading.Condition(self._lock)
        self._link_free_at = 0.0
        self._thread = threading.Thread(target=self._drain, name=f"outbox->{channel.peer}", daemon=True)
        self._thread.start()

    def put(self, msg: Message) -> None:
        direct = self.shape is None and msg.payload_bytes <= DIRECT_BYTES
        with self._lock:
            if self.error is not None:
                raise ConnectionError(f"link to {self.channel.peer} failed: {self.error}")
            if not (direct and not self._busy and not self._items):
                self._enqueue((time.monotonic(), msg))
                return
            self._busy = True
        self._send_now(msg)

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (within `timeout`), then stop."""
        with self._lock:
            if self.error is None:
                self._enqueue((_STOP, None), timeout)
        self._thread.join(timeout)

    def abort(self) -> None:
        """Drop the link now: a send blocked on a peer that stopped reading fails, queued messages go,
        and the sending thread ends."""
        self.channel.close()
        with self._lock:
            self._stop_now()

    def _enqueue(self, item: tuple, timeout: float | None = None) -> None:
        """Queue `item` (the lock held), waiting while the queue is full; lost if the link fails meanwhile."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self._items) >= self.depth and self.error is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            self._has_room.wait(left)
        if self.error is None:
            self._items.append(item)
            self._has_items.notify()

    def _stop_now(self) -> None:
        """Drop what is queued and end the thread (the lock held)."""
        if any(queued_at is _REST for queued_at, _ in self._items):
            self.channel.drop_rest()   # a frame cut short: the channel is failing, other senders must not hang
        self._items.clear()
        self._items.append((_STOP, None))
        self._has_items.notify()
        self._has_room.notify_all()

    def _send_now(self, msg: Message) -> None:
        """A direct send; what the socket does not take at once is left to the thread, first in line."""
        try:
            rest = self.channel.try_send(msg)
        except OSError as err:
            self._fail(err)
            return
        with self._lock:
            if rest is None:
                self._items.appendleft((time.monotonic(), msg))
            elif rest:
                self._items.appendleft((_REST, rest))
            self._busy = False
            if self._items:
                self._has_items.notify()

    def _drain(self) -> None:
        while True:
            with self._lock:
                while self._busy or not self._items:
                    self._has_items.wait()
                queued_at, item = self._items.popleft()
                self._busy = True
                self._has_room.notify()
            if queued_at is _STOP:
                return
            try:
                if queued_at is _REST:
                    self.channel.send_rest(item)
                else:
                    self._pace(queued_at, item.payload_bytes)
                    self.channel.send(item)
            except OSError as err:
                self._fail(err)
                return
            with self._lock:
                self._busy = False

    def _pace(self, queued_at: float, nbytes: int) -> None:
        if self.shape is None:
            return
        start = max(queued_at, self._link_free_at)
        self._link_free_at = start + (nbytes / self.shape.bandwidth if self.shape.bandwidth else 0.0)
        delay = self._link_free_at + self.shape.latency - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _fail(self, err: Exception) -> None:
        """The link is lost: what is queued goes, waiting producers return, the thread ends."""
        with self._lock:
            if self.error is not None:
                return
            self.error = err
            self._busy = False
            self._stop_now()
        log.warning("link to %s failed: %s", self.channel.peer, err)
        if self.on_error is not None:
            self.on_error(err)
