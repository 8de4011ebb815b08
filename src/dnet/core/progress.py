"""Progress of the steps that take time, told by the code doing them to whoever asked to hear.

The code that does the work (the C backend compiling kernels, a GGUF reader, the coordinator
shipping stages, the prober) opens a task and advances it in the units it really works in:

    with progress.task("compile kernels", total=len(kernels), unit="kernels") as t:
        for kernel in kernels:
            ...
            t.advance()

It never knows how, or whether, this is shown. A caller asks for reports by installing a
`Reporter` (anything with `handle(event)`) for the calls made inside a block:

    with progress.reporting(my_reporter):
        dnet.compile(model, target="c")

With no reporter installed, `task()` costs a few attribute reads and nothing is printed: a
library user gets no output unless they ask for it. The reporter is kept in a context variable,
so it follows the caller (threads started inside the block see none: open the task in the
calling thread, as `Coordinator` does, and advance it from there). The terminal and JSON-lines
renderers live in `dnet.cli.progress_view`, above every layer that reports.

A task whose length is not known in advance (one call into the C compiler, one parse of a
file's metadata) has `total=None`: it starts and ends, and says nothing in between, rather
than showing a bar that does not measure anything.
"""
from __future__ import annotations

import itertools
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Iterator, Protocol

START, ADVANCE, DONE, FAILED = "start", "advance", "done", "failed"


@dataclass(frozen=True)
class Event:
    """One change of one task, as a reporter receives it."""
    kind: str                 # START, ADVANCE, DONE or FAILED
    task: int                 # unique in this process
    name: str                 # what the task does, e.g. "compile kernels"
    completed: int            # units done so far
    total: int | None         # units in all; None where the step cannot be counted
    unit: str                 # what a unit is ("kernels", "tensors", "stages"); "" for a bare step
    parent: int | None        # the task that was open around this one when it started
    elapsed: float            # seconds since this task started

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, "task": self.task, "name": self.name, "completed": self.completed,
                "total": self.total, "unit": self.unit, "parent": self.parent, "elapsed_s": round(self.elapsed, 4)}


class Reporter(Protocol):
    """What a caller installs to hear about progress. Called from the thread doing the work."""

    def handle(self, event: Event) -> None: ...


class Recorder:
    """A reporter that keeps every event: for tests, and for a program that shows progress its own way."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def handle(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, name: str) -> list[Event]:
        """The events of the tasks called `name`, in order."""
        return [e for e in self.events if e.name == name]


_reporter: ContextVar[Reporter | None] = ContextVar("dnet_progress_reporter", default=None)
_open_task: ContextVar[int | None] = ContextVar("dnet_progress_open_task", default=None)
_ids = itertools.count(1)


@contextmanager
def reporting(reporter: Reporter | None) -> Iterator[Reporter | None]:
    """Send the progress of everything called inside this block to `reporter` (None: to nobody)."""
    token = _reporter.set(reporter)
    try:
        yield reporter
    finally:
        _reporter.reset(token)


def current() -> Reporter | None:
    """The reporter installed here, if any."""
    return _reporter.get()


class Task:
    """One step in progress. Use it as a context manager: leaving the block finishes it (DONE), or
    marks it FAILED when an exception leaves. `advance` may be called from any thread."""

    def __init__(self, reporter: Reporter | None, name: str, total: int | None, unit: str):
        self.reporter, self.name, self.total, self.unit = reporter, name, total, unit
        self.completed = 0
        self.id = next(_ids)
        self.parent: int | None = None
        self._start = 0.0
        self._lock = threading.Lock()
        self._token = None

    def __enter__(self) -> "Task":
        self.parent = _open_task.get()
        self._token = _open_task.set(self.id)
        self._start = time.perf_counter()
        self._emit(START)
        return self

    def advance(self, units: int = 1) -> None:
        """`units` more done."""
        if self.reporter is None:
            self.completed += units
            return
        with self._lock:
            self.completed += units
            self._emit(ADVANCE)

    def __exit__(self, kind: type | None, *_: object) -> None:
        _open_task.reset(self._token)
        self._emit(DONE if kind is None else FAILED)

    def _emit(self, kind: str) -> None:
        if self.reporter is not None:
            self.reporter.handle(Event(kind, self.id, self.name, self.completed, self.total, self.unit,
                                       self.parent, time.perf_counter() - self._start))


def task(name: str, total: int | None = None, unit: str = "") -> Task:
    """A task reported to the reporter installed where it is opened (if any); open it with `with`."""
    return Task(_reporter.get(), name, total, unit)
