"""The model's graph run across a cluster: each worker holds its layers and their KV caches.

`ClusterEngine` has the `Engine`'s interface (open, close, prefill, decode), so the
generation loop, the batcher and the server do not know where the model runs. The
graph is planned over the topology as any model is (`dnet.partition`); its layers'
STATE inputs (the KV caches) stay on the worker of their stage (`dnet.runtime.state`),
so a step sends only the new tokens' activations from stage to stage, and a request
names the cache slots of its sequences.

A decode step of many sequences goes out as several requests, one per run of
consecutive slots and at least one per stage, so every stage has work at once (a
pipelined ring). When a worker is lost, the coordinator re-plans (onto a spare or over
the survivors) and the new stages' caches start empty: the step is refused with
`StateLost`, and the engine re-runs every open sequence's tokens to rebuild its cache,
then asks again. Greedy text is the same as without the loss.
"""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Callable, Iterator

import numpy as np

from dnet.errors import GenerationError
from dnet.llm.engine import PREFILL_CHUNK, Engine, Sequence, consecutive_runs, step_inputs
from dnet.llm.kv_cache import SlotPool
from dnet.runtime.state import slot_bytes, state_types

REBUILD_ATTEMPTS = 3      # re-plans in a row a step survives (each costs a rebuild of every open sequence)
MIN_CHUNK = 16            # prefill tokens per request at least, however many stages there are


class ClusterEngine(Engine):
    def __init__(self, executable: Any, context: int, slots: int, vocab_size: int):
        per_position = slot_bytes(state_types(executable.graph)) / context
        super().__init__(executable, SlotPool(context, slots, per_position), vocab_size)
        self.rebuilds = 0
        self._epoch = executable.coordinator.epoch   # the plan the caches were built under
        self._step_lock = threading.Lock()           # a rebuild must not interleave with another step
        self.groups: int | None = None               # requests per decode step; None: one per stage
        self.calibration: list[tuple[str, float]] = []   # what `calibrate` measured: (plan, tokens/s)

    @property
    def stages(self) -> int:
        """Stages a step passes through in turn (a tensor-parallel group's members work at once: one)."""
        return 1 if self.exe.pipeline.parallel else len(self.exe.pipeline.stages)

    def shutdown(self) -> None:
        self.exe.close()

    def prefill(self, seq: Sequence, tokens: list[int], all_logits: bool = False,
                chunk: int = PREFILL_CHUNK) -> np.ndarray:
        """Feed `tokens` after the sequence's cached ones, in chunks that go out at once: the first stage
        works on a chunk while the next has the one before (each stage takes them in order, so a chunk
        always finds its predecessors' keys in the cache). Logits (1 or len(tokens), vocab)."""
        self._check_room(seq, len(tokens))
        if not tokens:
            return np.zeros((0, self.vocab_size), np.float32)
        requests = _chunks(seq.slot, seq.length, tokens, self._chunk(len(tokens), chunk), all_logits)
        logits = self._steps(requests)
        self._advance(seq, tokens)
        return np.concatenate(logits) if all_logits else logits[-1]

    def _chunk(self, n: int, chunk: int) -> int:
        """About one chunk per stage, so that every stage has one, but none under MIN_CHUNK tokens."""
        return min(chunk, max(MIN_CHUNK, -(-n // self.stages)))

    def decode(self, seqs: list[Sequence], tokens: list[int]) -> np.ndarray:
        """One new token for each sequence, in any slots: logits (len(seqs), vocab)."""
        for s in seqs:
            self._check_room(s, 1)
        order = sorted(range(len(seqs)), key=lambda i: seqs[i].slot)
        groups = _groups([seqs[i].slot for i in order], self.groups or self.stages)
        requests = []
        for lo, hi in groups:
            picked = order[lo:hi]
            requests.append((seqs[picked[0]].slot, step_inputs([seqs[i].length for i in picked],
                                                               np.array([[tokens[i]] for i in picked], np.int64),
                                                               np.arange(hi - lo))))
        out = np.empty((len(seqs), self.vocab_size), np.float32)
        for (lo, hi), logits in zip(groups, self._steps(requests)):
            out[order[lo:hi]] = logits
        for s, token in zip(seqs, tokens):
            self._advance(s, [token])
        return out

    def decode_rate(self, steps: int = 8) -> float:
        """Tokens per second of every free slot decoding together (`steps` timed after one warm-up step)."""
        with self._free_slots_decoding() as (step, sequences):
            start = time.perf_counter()
            for _ in range(steps):
                step()
            return sequences * steps / (time.perf_counter() - start)

    def retune(self, rounds: int = 3, windows: int = 3, steps: int = 4, threshold: float = 0.05,
               weight: float = 0.5) -> list:
        """The JIT's feedback loop for generation (`DistributedExecutable.retune`): each round times decode
        steps of every free slot, corrects each node's speed in the cost model by its stages' measured
        compute, and moves layers when the corrected model predicts a plan more than `threshold` faster.
        Open sequences keep going: a move rebuilds their caches on the new stages."""
        return self.exe.retune(rounds=rounds, threshold=threshold, weight=weight,
                               measure=lambda: self._measure(windows, steps))

    def _measure(self, windows: int, steps: int):
        """Decode steps per second and each stage's compute seconds per step: medians over `windows` windows
        of `steps` steps (a stage's seconds in a step sum over the requests the step was cut into)."""
        from dnet.partition.feedback import Measurement

        coordinator = self.exe.coordinator
        rates, seconds = [], []
        with self._free_slots_decoding() as (step, _):
            for _ in range(windows):
                coordinator.reset_timings()
                start = time.perf_counter()
                for _ in range(steps):
                    step()
                rates.append(steps / (time.perf_counter() - start))
                seconds.append([coordinator.timings[k].compute_s / steps for k in sorted(coordinator.timings)])
        return Measurement(float(np.median(rates)), np.median(np.array(seconds), axis=0).tolist(), rates)

    @contextlib.contextmanager
    def _free_slots_decoding(self) -> Iterator[tuple[Callable[[], None], int]]:
        """Every free slot opened with one token in its cache and one warm-up step run; yields a function
        that runs one more decode step of them all, and how many they are. The slots are closed after."""
        seqs = []
        try:
            while self.cache.free:
                seqs.append(self.open())
            for s in seqs:
                self.prefill(s, [0])
            tokens = [0] * len(seqs)
            self.decode(seqs, tokens)
            yield (lambda: self.decode(seqs, tokens)), len(seqs)
        finally:
            for s in seqs:
                self.close(s)

    def calibrate(self, alternatives: list[Any], steps: int = 8) -> list[tuple[str, float]]:
        """Measure the deployed plan (its decode steps pipelined as one request per stage, and as a single
        request) and each alternative plan (as one request: a single node, say); keep the fastest.
        The cost model cannot see what a request costs beyond its ops (messages, a step cut into several
        requests reading the weights once each), so the plan that runs is the one measured fastest.
        Returns (what, tokens/s) for each candidate."""
        candidates = [(self.exe.plan, None), (self.exe.plan, 1)] + [(plan, 1) for plan in alternatives]
        results = []
        for plan, groups in candidates:
            if plan is not self.exe.plan:
                self.exe.deploy(plan)
            self.groups = groups
            results.append(((plan, groups), self.decode_rate(steps)))
        (plan, groups), _ = max(results, key=lambda r: r[1])
        if plan is not self.exe.plan:
            self.exe.deploy(plan)
        self.groups = groups
        return [(_describe(p, g or len(p.stages)), rate) for (p, g), rate in results]

    def _steps(self, requests: list[tuple[int, dict[str, np.ndarray]]]) -> list[np.ndarray]:
        """Send every request at once (they pipeline through the stages) and wait for all; when the
        cluster was re-planned since the caches were built, rebuild them first and send again."""
        from dnet.cluster.coordinator import StateLost

        with self._step_lock:
            for _ in range(REBUILD_ATTEMPTS + 1):
                try:
                    if self._epoch != self.exe.coordinator.epoch:
                        self._rebuild()
                    return self._send(requests)
                except StateLost as err:
                    lost = err
            raise GenerationError(f"the cluster was re-planned {REBUILD_ATTEMPTS + 1} times during one step: {lost}")

    def _send(self, requests: list[tuple[int, dict[str, np.ndarray]]], epoch: int | None = None) -> list[np.ndarray]:
        """Submit all, then wait for all; `epoch`: the plan the caches they read were built under."""
        coordinator = self.exe.coordinator
        epoch = self._epoch if epoch is None else epoch
        futures = [coordinator.submit(inputs, slots=(first, len(inputs["tokens"])), epoch=epoch)
                   for first, inputs in requests]
        errors = [f.exception(coordinator.call_timeout_s) for f in futures]   # every one settled
        failed = next((e for e in errors if e is not None), None)
        if failed is not None:
            raise failed
        return [f.result()["logits"] for f in futures]

    def _rebuild(self) -> None:
        """Re-run the tokens of every open sequence (the slot pool keeps them) into the new stages' empty
        caches. The caches count as built only once all are: a re-plan part-way leaves them stale, to be
        rebuilt again. Free slots' kept tokens are gone with the old stages."""
        self.rebuilds += 1
        epoch = self.exe.coordinator.epoch
        pool = self.cache
        pool.forget()
        open_slots = [s for s in range(pool.slots) if s not in pool.free]
        requests = [r for slot in open_slots if pool.tokens[slot]
                    for r in _chunks(slot, 0, pool.tokens[slot], self._chunk(len(pool.tokens[slot]), PREFILL_CHUNK))]
        self._send(requests, epoch)     # every sequence and chunk at once: they pipeline
        self._epoch = epoch


def _chunks(slot: int, cached: int, tokens: list[int], chunk: int,
            all_logits: bool = False) -> list[tuple[int, dict[str, np.ndarray]]]:
    """Prefill requests for `tokens` after `cached` positions of a slot, `chunk` tokens each; logits of
    every token, or of each chunk's last."""
    out = []
    for start in range(0, len(tokens), chunk):
        piece = tokens[start:start + chunk]
        rows = np.arange(len(piece)) if all_logits else np.array([len(piece) - 1])
        out.append((slot, step_inputs([cached + start], np.array([piece], np.int64), rows)))
    return out


def _describe(plan: Any, groups: int) -> str:
    stages = ", ".join(f"{s.node}: {len(s.layers)}" for s in plan.stages)
    return f"{stages} ({groups} request{'s' if groups > 1 else ''} a step)"


def _groups(slots: list[int], stages: int) -> list[tuple[int, int]]:
    """Index ranges of sorted `slots` that are consecutive runs, split further so that there are about
    as many groups as pipeline stages (each stage then has a group to work on)."""
    runs = [(r.start, r.stop) for r in consecutive_runs(slots)]
    while len(runs) < min(stages, len(slots)):
        k = max(range(len(runs)), key=lambda j: runs[j][1] - runs[j][0])
        lo, hi = runs[k]
        runs[k:k + 1] = [(lo, (lo + hi) // 2), ((lo + hi) // 2, hi)]
    return runs
