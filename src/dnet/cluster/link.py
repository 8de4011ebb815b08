"""Outgoing links: messages sent from a thread of their own, optionally shaped.

An `Outbox` lets a stage hand its outputs off and go straight back to computing,
so compute and communication overlap. A `LinkShape` makes a loopback connection
behave like a slower network: each message occupies the link for bytes/bandwidth
seconds (messages queue behind each other, as on a wire) and arrives `latency`
seconds after it has been put on the link. Latency is pipelined: many messages can
be in the air at once, as on a real long link.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from dnet.cluster.channel import Channel
from dnet.cluster.protocol import Message

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


_STOP = object()


class Outbox:
    """Sends messages on a channel in order from its own thread, pacing them to a shape."""

    def __init__(self, channel: Channel, shape: LinkShape | None = None, depth: int = 32,
                 on_error: Callable[[Exception], None] | None = None):
        self.channel = channel
        self.shape = shape
        self.on_error = on_error
        self.error: Exception | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=depth)  # full queue: the producer waits (backpressure)
        self._link_free_at = 0.0
        self._thread = threading.Thread(target=self._drain, name=f"outbox->{channel.peer}", daemon=True)
        self._thread.start()

    def put(self, msg: Message) -> None:
        if self.error is not None:
            raise ConnectionError(f"link to {self.channel.peer} failed: {self.error}")
        self._queue.put((time.monotonic(), msg))

    def close(self, timeout: float = 2.0) -> None:
        """Send what is queued (within `timeout`), then stop."""
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)

    def abort(self) -> None:
        """Drop the link now: a send blocked on a peer that stopped reading fails, queued messages go,
        and the sending thread ends."""
        self.channel.close()
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:
            pass   # the thread is sending: the closed channel fails it, and it ends

    def _drain(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            queued_at, msg = item
            try:
                self._pace(queued_at, msg.payload_bytes)
                self.channel.send(msg)
            except OSError as err:
                self._fail(err)
                return

    def _pace(self, queued_at: float, nbytes: int) -> None:
        if self.shape is None:
            return
        start = max(queued_at, self._link_free_at)
        self._link_free_at = start + (nbytes / self.shape.bandwidth if self.shape.bandwidth else 0.0)
        delay = self._link_free_at + self.shape.latency - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _fail(self, err: Exception) -> None:
        self.error = err
        log.warning("link to %s failed: %s", self.channel.peer, err)
        if self.on_error is not None:
            self.on_error(err)
        while True:  # unblock producers waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return
