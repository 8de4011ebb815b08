"""Continuous batching: many requests generated together, joining and leaving at token boundaries.

One thread owns the engine. Each turn it takes waiting requests into free cache slots, feeds
prompts in chunks (at most `prefill_budget` tokens a turn, so a long prompt delays the running
sequences' next token by one chunk, never by the whole prompt), then advances every sequence
that has a token to decode by one token, in one batched step. A request's steps reach its
`sink` as they come; a cancelled request (a client gone) leaves at the next boundary and frees
its slot. The queue is bounded: with every slot taken and `max_waiting` requests waiting,
`submit` refuses with `QueueFull`.

The batcher sees the engine only through its interface (open, close, prefill, decode, pack),
so it batches a model on one node and one spread over a cluster alike.
"""
from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from dnet.errors import GenerationError
from dnet.llm.engine import Engine, Sequence as CacheSequence
from dnet.llm.generation import Generation, Step
from dnet.llm.sampling import SamplingParams

log = logging.getLogger(__name__)

PREFILL_BUDGET = 256       # prompt tokens fed per turn, over all requests
RATE_WINDOW_S = 10.0       # tokens/s is measured over this many seconds

Sink = Callable[["Step | BaseException | None"], None]   # a step; an error (last); None (done, after the last step)


class QueueFull(GenerationError):
    """Every slot is busy and the waiting queue is full."""


@dataclass(eq=False)
class Request:
    """A submitted generation; `cancel` it to free its slot (its sink hears nothing more)."""
    id: int
    generation: Generation
    sink: Sink
    submitted: float = field(default_factory=time.perf_counter)
    first_token_s: float | None = None      # time to the first token, once it came
    cancelled: bool = False
    seq: CacheSequence | None = None
    fed: int = 0                            # prompt tokens in the cache
    pending: int | None = None              # the sampled token to decode next


@dataclass
class BatcherStats:
    requests: int = 0              # submitted
    finished: int = 0
    failed: int = 0
    cancelled: int = 0
    rejected: int = 0              # refused with QueueFull
    prompt_tokens: int = 0         # fed to the model
    reused_tokens: int = 0         # prompt tokens a slot held already, not fed again
    generated_tokens: int = 0
    decode_steps: int = 0
    decode_seconds: float = 0.0
    prefill_seconds: float = 0.0


class Batcher:
    def __init__(self, engine: Engine, tokenizer, max_waiting: int = 64, prefill_budget: int = PREFILL_BUDGET):
        self.engine, self.tokenizer = engine, tokenizer
        self.max_waiting, self.prefill_budget = max_waiting, prefill_budget
        self.stats = BatcherStats()
        self._waiting: collections.deque[Request] = collections.deque()
        self._running: list[Request] = []
        self._ids = itertools.count(1)
        self._recent: collections.deque[float] = collections.deque()   # when each recent token came
        self._recent_lock = threading.Lock()
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="dnet-batcher", daemon=True)
        self._thread.start()

    # -- what callers use ---------------------------------------------------------------------
    def submit(self, prompt: Sequence[int], params: SamplingParams, sink: Sink) -> Request:
        """Queue a generation after `prompt` (token ids). Its steps go to `sink` on the batcher's thread,
        then None; or an exception, last. Raises GenerationError for a prompt that cannot fit, and
        QueueFull when the queue is full."""
        generation = Generation(prompt, params, self.tokenizer, self.engine.context)
        with self._wake:
            if self._closed:
                raise GenerationError("the batcher is closed")
            # requests that free slots will take at the next turn are not waiting for one
            waiting = len(self._waiting) - len(self.engine.cache.free)
            if waiting >= self.max_waiting:
                self.stats.rejected += 1
                raise QueueFull(f"every slot is busy and {waiting} requests are waiting already (the limit)",
                                hint="retry later")
            request = Request(next(self._ids), generation, sink)
            self.stats.requests += 1
            self._waiting.append(request)
            self._wake.notify()
        return request

    def cancel(self, request: Request) -> None:
        """Stop generating for `request`; its slot is freed at the next token boundary."""
        with self._wake:
            request.cancelled = True
            self._wake.notify()

    def close(self) -> None:
        """Stop the thread; requests still waiting or running get a GenerationError."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._running)

    def tokens_per_second(self) -> float:
        """Generated tokens per second over the last RATE_WINDOW_S seconds."""
        now = time.perf_counter()
        with self._recent_lock:
            recent = [t for t in self._recent if now - t <= RATE_WINDOW_S]
        if not recent:
            return 0.0
        return len(recent) / max(now - recent[0], 1.0)

    def positions_in_use(self) -> int:
        """KV cache positions held by running sequences."""
        return sum(r.seq.length for r in list(self._running) if r.seq is not None)

    # -- the thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._closed or self._waiting or self._running):
                    self._wake.wait()
                if self._closed:
                    break
            try:
                self._turn()
            except Exception as err:     # a bug of the batcher itself: fail what runs, keep serving
                log.exception("batcher turn failed")
                for r in list(self._running):
                    self._fail(r, err)
        self._shut()

    def _turn(self) -> None:
        self._drop_cancelled()
        self._admit()
        self._prefill()
        self._decode()

    def _drop_cancelled(self) -> None:
        with self._wake:
            gone = [r for r in self._waiting if r.cancelled]
            for r in gone:
                self._waiting.remove(r)
        for r in gone + [r for r in self._running if r.cancelled]:
            self.stats.cancelled += 1
            self._leave(r)

    def _admit(self) -> None:
        """Waiting requests into free slots, oldest first; max_tokens=0 finishes at once."""
        while True:
            with self._wake:
                if not self._waiting or self.engine.cache.lowest_free() is None:
                    return
                r = self._waiting.popleft()
            if r.generation.finished:
                self._deliver(r, None)
                self.stats.finished += 1
                continue
            r.seq = self.engine.open(r.generation.prompt)
            r.fed = r.seq.length             # the prompt's start a slot held already (prefix caching)
            self.stats.reused_tokens += r.fed
            self._running.append(r)

    def _prefill(self) -> None:
        budget = self.prefill_budget
        for r in [r for r in self._running if r.fed < len(r.generation.prompt)]:
            if budget <= 0:
                return
            prompt = r.generation.prompt
            piece = prompt[r.fed:r.fed + budget]
            start = time.perf_counter()
            try:
                logits = self.engine.prefill(r.seq, piece)
            except Exception as err:
                self._fail(r, err)
                continue
            self.stats.prefill_seconds += time.perf_counter() - start
            self.stats.prompt_tokens += len(piece)
            r.fed += len(piece)
            budget -= len(piece)
            if r.fed == len(prompt):
                self._push(r, logits[-1])

    def _decode(self) -> None:
        batch = [r for r in self._running if r.pending is not None]
        if not batch:
            return
        self.engine.pack([r.seq for r in self._running])     # one batched step, not one per gap
        start = time.perf_counter()
        try:
            logits = self.engine.decode([r.seq for r in batch], [r.pending for r in batch])
        except Exception as err:
            for r in batch:
                self._fail(r, err)
            return
        now = time.perf_counter()
        self.stats.decode_seconds += now - start
        self.stats.decode_steps += 1
        for r, row in zip(batch, logits):
            self._push(r, row)

    def _push(self, r: Request, logits) -> None:
        """Sample `r`'s next token from `logits` and hand the step to its sink."""
        try:
            step = r.generation.push(logits, room=r.seq.length < self.engine.context)
        except Exception as err:
            self._fail(r, err)
            return
        now = time.perf_counter()
        if r.first_token_s is None:
            r.first_token_s = now - r.submitted
        self.stats.generated_tokens += 1
        with self._recent_lock:
            self._recent.append(now)
            while now - self._recent[0] > RATE_WINDOW_S:
                self._recent.popleft()
        self._deliver(r, step)
        if step.finish_reason:
            self.stats.finished += 1
            self._deliver(r, None)
            self._leave(r)
        else:
            r.pending = step.token

    def _fail(self, r: Request, err: BaseException) -> None:
        self.stats.failed += 1
        self._deliver(r, err if isinstance(err, GenerationError) else GenerationError(f"generation failed: {err}"))
        self._leave(r)

    def _leave(self, r: Request) -> None:
        if r in self._running:
            self._running.remove(r)
        if r.seq is not None:
            self.engine.close(r.seq)
            r.seq = None
        r.pending = None

    def _deliver(self, r: Request, item) -> None:
        if r.cancelled and item is not None:
            return
        try:
            r.sink(item)
        except Exception:        # a sink is the caller's code: its failure must not stop the others
            log.exception("request %d: its sink failed", r.id)
            r.cancelled = True

    def _shut(self) -> None:
        err = GenerationError("the server is shutting down")
        with self._wake:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for r in waiting + list(self._running):
            self._deliver(r, err)
            self._leave(r)
