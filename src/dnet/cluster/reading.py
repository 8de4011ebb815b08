"""One connection read by whichever thread needs what comes on it: a caller waiting for its answer, else a
thread of its own (leader/follower).

A coordinator's requests are answered on its connection to the last stage's worker. Were that connection
read only by a thread of its own, every answer would be read there and handed to the thread waiting for it
(a `Future`): a wake-up and a switch of threads per answer, on the decode path the largest cost after the
interpreter's. Instead, a caller that waits for an answer reads the connection itself while no other thread
does (it *leads*), and handles whatever arrives as the reading thread would: other requests' answers,
heartbeats' pongs, control replies. One request in the air (decoding one stream) is then answered on the
thread that asked, with no hand-off.

The connection's own thread reads whenever no caller does: once no caller has waited on it for `grace`
seconds (between two decode steps it stays out of the way, or the next step's caller could not lead), and at
once while some thread waits for something only it would read (`wanted`: a control call's reply). A caller
that finds another thread reading *follows*: it waits until its answer is in (the reader handed it over)
or the role is free. Either way every message is read, in order, by one thread at a time.

A leading caller waits for data with `poll` at frame boundaries, not in `recv`, so that it can stop when its
answer came some other way (a re-plan sent its request to another worker) or its timeout ends. A channel
over TLS cannot be polled so (the engine may hold decrypted bytes the socket does not show): there callers
follow and the connection's thread reads, as before.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Callable, Iterator

from dnet.cluster.channel import Channel
from dnet.cluster.protocol import ConnectionClosed, Message, ProtocolError

GRACE_S = 0.02      # the thread waits this long after a caller last waited before it reads again itself

# what ends a connection for its reader, whoever reads: closed, malformed, the socket gone (ValueError: poll
# of a socket closed meanwhile)
_ENDED = (ConnectionClosed, ProtocolError, OSError, ValueError)


class SharedReader:
    """Reads `chan` for whichever thread needs what comes on it: `handle(msg)` for every message (raising
    ProtocolError for one that breaks the protocol), `lost(err)` once when the connection ends."""

    def __init__(self, chan: Channel, handle: Callable[[Message], None], lost: Callable[[Exception], None],
                 name: str = "reader", grace: float = GRACE_S):
        self.chan = chan
        self.grace = grace
        self.callers_lead = chan.pollable    # otherwise callers follow and the thread reads, as before
        self._handle, self._lost = handle, lost
        self._lock = threading.Lock()
        self._followers = threading.Condition(self._lock)   # callers waiting for their answer or the role
        self._parked = threading.Condition(self._lock)      # the thread, while callers read
        self._reader: int | None = None      # the thread reading now (its ident)
        self._callers = 0                    # callers waiting for an answer on this connection
        self._following = 0                  # of which, waiting on another thread's reading
        self._wanting = 0                    # threads waiting for a reply only the thread would read
        self._waited_at = float("-inf")      # when a caller last stopped waiting
        self.ended = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "SharedReader":
        self._thread.start()
        return self

    # -- callers -------------------------------------------------------------------------------
    def lead(self, answer: Future, deadline: float) -> bool:
        """Read on this thread until `answer` is done or `deadline` (time.monotonic()) passes, while no other
        thread reads; follow while one does. False where this thread cannot lead here (the connection
        ended, is not pollable, or this thread reads it already): wait for `answer` the ordinary way."""
        me = threading.get_ident()
        with self._lock:
            if not self.callers_lead or self.ended or self._reader == me:
                return False
            self._callers += 1
            leading = self._reader is None
            if leading:
                self._reader = me
        try:
            while True:
                if leading:     # the usual case: one lock taken before, one after
                    while not answer.done():
                        left = deadline - time.monotonic()
                        if left <= 0:
                            return True
                        if not self._read_one(left):
                            return False
                    return True
                leading = self._follow(answer, deadline, me)
                if not leading:
                    return not self.ended
        finally:
            with self._lock:
                if self._reader == me:
                    self._reader = None
                    if self._following:
                        self._followers.notify_all()
                self._callers -= 1
                self._waited_at = time.monotonic()

    def _follow(self, answer: Future, deadline: float, me: int) -> bool:
        """Wait while another thread reads, until `answer` is in (False), the deadline passes or the
        connection ends (False), or the role is free: then take it (True)."""
        answer.add_done_callback(self._poke)   # outside the lock: the callback of an answer in runs at once
        with self._lock:
            while not self.ended:
                if self._reader is None:
                    self._reader = me
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or answer.done():      # (done: its callback came before this wait)
                    return False
                self._following += 1
                self._followers.wait(left)
                self._following -= 1
            return False

    @contextmanager
    def wanted(self) -> Iterator[None]:
        """While in this block, the thread reads at once whenever no caller does (a reply is awaited that
        only it may be there to read)."""
        with self._lock:
            self._wanting += 1
            self._parked.notify()
        try:
            yield
        finally:
            with self._lock:
                self._wanting -= 1

    # -- the connection's thread ---------------------------------------------------------------
    def _run(self) -> None:
        me = threading.get_ident()
        while True:
            with self._lock:
                while not self.ended and not self._may_read():
                    self._parked.wait(self._park_s())
                if self.ended:
                    return
                self._reader = me
            try:
                alive = self._read_one(None)
            finally:
                self._release()
            if not alive:
                return

    def _may_read(self) -> bool:
        """(The lock held.) Whether the thread reads now: no one else does, and no caller will soon."""
        if self._reader is not None:
            return False
        if not self.callers_lead or self._wanting:
            return True
        return self._callers == 0 and time.monotonic() - self._waited_at >= self.grace

    def _park_s(self) -> float:
        """(The lock held.) How long the thread waits before it looks again: callers do not wake it."""
        if self._callers or self._reader is not None:
            return self.grace
        return max(self._waited_at + self.grace - time.monotonic(), 1e-3)

    # -- reading ---------------------------------------------------------------------------------
    def _read_one(self, timeout: float | None) -> bool:
        """Read and handle one message (`timeout`: wait at most that long for one to start); False once the
        connection has ended."""
        try:
            if timeout is not None and not self.chan.readable(timeout):
                return True
            self._handle(self.chan.recv())
            return True
        except _ENDED as err:
            self._end(err)
            return False

    def _release(self) -> None:
        with self._lock:
            self._reader = None
            if self._following:
                self._followers.notify_all()

    def _poke(self, _: Future) -> None:
        with self._lock:
            if self._following:
                self._followers.notify_all()

    def _end(self, err: Exception) -> None:
        with self._lock:
            if self.ended:
                return
            self.ended = True
            self._followers.notify_all()
            self._parked.notify_all()
        self._lost(err)
