"""One connection read by whichever thread needs it (dnet.cluster.reading.SharedReader), over a socket pair.

The far end plays the worker: it sends numbered answers. Oracles: the number each waiter asked for, the
thread each message was handled on, and the messages sent (every one handled once, in order).
"""
from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import Future

import pytest

from dnet.cluster.channel import Channel
from dnet.cluster.protocol import Message, MsgType
from dnet.cluster.reading import SharedReader


class Near:
    """The reading end: answers complete the futures waiting for them; every message is logged with the
    thread that handled it."""

    def __init__(self, grace: float = 5.0):
        """`grace`: long by default, so a test's thread paused by a busy machine does not see the reader's
        thread step in between two of its waits."""
        a, b = socket.socketpair()
        self.far = Channel(b, "far")
        self.chan = Channel(a, "near")
        self.answers: dict[int, Future] = {}
        self.handled: list[tuple[int, str]] = []
        self.lost: list[Exception] = []
        self.reader = SharedReader(self.chan, self._handle, self.lost.append, grace=grace).start()

    def _handle(self, msg: Message) -> None:
        n = msg.meta["n"]
        self.handled.append((n, threading.current_thread().name))
        future = self.answers.pop(n, None)
        if future is not None:
            future.set_result(n)

    def ask(self, n: int) -> Future:
        self.answers[n] = Future()
        return self.answers[n]

    def answer(self, n: int) -> None:
        self.far.send(Message(MsgType.PONG, {"n": n}))

    def wait(self, future: Future, timeout: float = 5.0) -> object:
        self.reader.lead(future, time.monotonic() + timeout)
        return future.result(timeout)

    def close(self) -> None:
        self.far.close()
        self.chan.close()


@pytest.fixture
def near():
    end = Near()
    yield end
    end.close()


def _until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.001)
    return condition()


def test_a_caller_reads_its_own_answer_on_its_own_thread(near):
    """Each answer is sent while its caller waits (as a worker's comes a round trip after the request)."""
    time.sleep(0.05)                     # the reader's thread is in its recv by now: the first answer is its
    for n in range(5):
        future = near.ask(n)
        threading.Timer(0.01, near.answer, args=(n,)).start()
        assert near.wait(future) == n
    assert [n for n, _ in near.handled] == [0, 1, 2, 3, 4]
    names = [name for _, name in near.handled]
    assert names[0] == "reader"          # read by the thread, handed over
    assert set(names[1:]) == {threading.current_thread().name}    # then read where they were awaited


def test_answers_for_other_callers_are_handed_to_them(near):
    """Four threads wait at once: the others' answers, sent in reverse order, reach them while the first
    still waits for its own, whichever thread reads."""
    first = near.ask(9)                  # a caller has waited: the reader's thread keeps out for 5 s
    threading.Timer(0.01, near.answer, args=(9,)).start()
    near.wait(first)
    futures = [near.ask(n) for n in range(4)]
    got: dict[int, object] = {}

    def waiter(n: int) -> None:
        got[n] = near.wait(futures[n])

    threads = [threading.Thread(target=waiter, args=(n,), name=f"waiter-{n}") for n in range(4)]
    threads[0].start()
    time.sleep(0.05)                     # it reads now, and keeps reading until its own answer is in
    for t in threads[1:]:
        t.start()
    time.sleep(0.05)
    for n in (3, 2, 1):
        near.answer(n)
    for t in threads[1:]:
        t.join(2.5)                      # woken as each answer is in, not at their 5 s deadlines
    assert got == {1: 1, 2: 2, 3: 3}
    near.answer(0)
    threads[0].join(5)
    assert got[0] == 0
    assert [n for n, _ in near.handled] == [9, 3, 2, 1, 0]   # each message read once, in order


def test_with_no_caller_waiting_the_thread_reads_after_the_grace():
    end = Near(grace=0.05)
    try:
        future = end.ask(0)
        end.answer(0)
        assert end.wait(future) == 0     # a caller waited: the thread keeps out of the way for a while
        end.answer(1)                    # a message no caller waits for (a heartbeat's pong)
        assert _until(lambda: len(end.handled) == 2)
        assert end.handled[1] == (1, "reader")
    finally:
        end.close()


def test_a_thread_that_wants_a_reply_gets_it_read_at_once():
    end = Near(grace=10.0)               # without `wanted`, the thread would wait ten seconds
    try:
        future = end.ask(0)
        end.answer(0)
        end.wait(future)
        with end.reader.wanted():
            end.answer(1)
            assert _until(lambda: len(end.handled) == 2, timeout=2.0)
    finally:
        end.close()


def test_a_caller_whose_answer_comes_another_way_stops_reading(near):
    """Its request was sent elsewhere (a re-plan) and answered there: the caller returns at its deadline with
    nothing read, and the next caller still reads."""
    future = near.ask(0)
    start = time.monotonic()
    threading.Timer(0.05, future.set_result, args=(0,)).start()
    assert near.reader.lead(future, time.monotonic() + 0.3)
    assert future.done() and time.monotonic() - start < 1.0
    nxt = near.ask(1)
    near.answer(1)
    assert near.wait(nxt) == 1


def test_a_connection_that_ends_under_a_caller_is_lost_once(near):
    future = near.ask(0)
    threading.Timer(0.05, near.far.close).start()
    assert not near.reader.lead(future, time.monotonic() + 5.0)
    assert near.reader.ended and len(near.lost) == 1
    assert not near.reader.lead(near.ask(1), time.monotonic() + 5.0)    # no one reads an ended connection
    assert len(near.lost) == 1


def test_a_connection_that_cannot_be_polled_is_read_by_its_thread_alone(near):
    """Over TLS the engine may hold bytes the socket does not show: callers wait, the thread reads."""
    near.reader.callers_lead = False
    future = near.ask(0)
    assert not near.reader.lead(future, time.monotonic() + 5.0)
    near.answer(0)
    assert future.result(5.0) == 0 and near.handled == [(0, "reader")]
