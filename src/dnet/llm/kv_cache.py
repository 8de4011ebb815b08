"""The KV cache: per layer, one key and one value array with a row (slot) per sequence.

A slot holds one sequence's keys and values for up to `context` positions, written in
place by the model's SCATTERs. The arrays are allocated zeroed, so the operating system
commits memory only for the positions sequences actually reach. A batched step binds the
slots [first, first + n) as one view per layer, so the sequences decoded together hold
consecutive slots: `move` packs them when one finishes.
"""
from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

from dnet.errors import GenerationError
from dnet.graph.ir import Graph
from dnet.runtime.state import SlotState, slot_bytes, state_types


class SlotPool:
    """Sequence slots and the tokens each holds: what a cache's owner hands out, wherever the cache's
    arrays live (here, or on the workers of a cluster).

    A slot keeps its tokens' keys and values after its sequence ends, so a later prompt that starts the
    same way (a shared system prompt, the earlier turns of a chat) is given that slot and skips those
    positions: `acquire(prompt)` returns how many of them it can reuse (prefix caching)."""

    def __init__(self, context: int, slots: int, bytes_per_position: float = 0.0):
        self.context, self.slots = context, slots
        self.bytes_per_position = bytes_per_position   # of one sequence, over every layer (0: unknown)
        self.tokens: list[list[int]] = [[] for _ in range(slots)]   # per slot: the tokens its positions hold
        self.free = list(range(slots))
        self._lock = threading.Lock()       # sequences may be opened and closed from several threads

    def acquire(self, prompt: Sequence[int] = ()) -> tuple[int, int]:
        """A free slot and how many of `prompt`'s first tokens it holds already (never all of them: the
        last is fed again for its logits). The slot sharing the longest start with `prompt` wins; with
        none, the lowest free slot."""
        with self._lock:
            if not self.free:
                raise GenerationError(f"all {self.slots} sequence slots of the KV cache are in use",
                                      hint="finish or close a running generation, or load with more slots=")
            reuse = {slot: _common_prefix(self.tokens[slot], prompt, len(prompt) - 1) for slot in self.free}
            slot = max(self.free, key=lambda s: (reuse[s], -s))
            self.free.remove(slot)
            del self.tokens[slot][reuse[slot]:]
            return slot, reuse[slot]

    def release(self, slot: int) -> None:
        with self._lock:
            self.free.append(slot)

    def forget(self) -> None:
        """Free slots hold nothing reusable any more (their arrays were lost or rebuilt elsewhere)."""
        with self._lock:
            for slot in self.free:
                self.tokens[slot] = []

    def lowest_free(self) -> int | None:
        with self._lock:
            return min(self.free, default=None)

    @property
    def bytes_in_use(self) -> float:
        """Bytes of the cache that running sequences have written (where they live: here or on workers)."""
        with self._lock:
            free = set(self.free)
            return sum(len(t) for s, t in enumerate(self.tokens) if s not in free) * self.bytes_per_position


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = 0
    for x, y in zip(a, b):
        if n >= limit or x != y:
            break
        n += 1
    return n


class KVCache(SlotPool):
    """The model graph's STATE inputs (k.{i}, v.{i}) held here, a slot per sequence (`SlotState`)."""

    def __init__(self, graph: Graph, context: int, slots: int):
        types = state_types(graph)
        super().__init__(context, slots, slot_bytes(types) / context)
        self.state = SlotState(types, slots)

    @property
    def nbytes(self) -> int:
        """Bytes reserved (committed only as positions are written)."""
        return self.state.nbytes

    def bind(self, first: int, count: int) -> dict[str, np.ndarray]:
        """The state arrays of slots [first, first + count), by the model's state names."""
        return self.state.bind(first, count)

    def move(self, source: int, target: int) -> None:
        """Move a sequence from slot `source` to the free slot `target` (packing the slots in use):
        its written positions are copied, and `source` is free after (still holding them for reuse)."""
        n = len(self.tokens[source])
        with self._lock:
            self.free.remove(target)
        for a in self.state.arrays.values():
            a[target, :n] = a[source, :n]
        self.tokens[target] = list(self.tokens[source])
        self.release(source)
