"""The KV cache: per layer, one key and one value array with a row (slot) per sequence.

A slot holds one sequence's keys and values for up to `context` positions, written in
place by the model's SCATTERs. The arrays are allocated zeroed, so the operating system
commits memory only for the positions sequences actually reach. A batched step binds the
slots [first, first + n) as one view per layer, so the sequences decoded together hold
consecutive slots: `move` packs them when one finishes.
"""
from __future__ import annotations

import threading

import numpy as np

from dnet.errors import GenerationError
from dnet.graph.ir import Graph
from dnet.runtime.state import SlotState, slot_bytes, state_types


class SlotPool:
    """Sequence slots and how many positions each holds: what a cache's owner hands out, wherever
    the cache's arrays live (here, or on the workers of a cluster)."""

    def __init__(self, context: int, slots: int, bytes_per_position: float = 0.0):
        self.context, self.slots = context, slots
        self.bytes_per_position = bytes_per_position   # of one sequence, over every layer (0: unknown)
        self.lengths = [0] * slots          # positions written, per slot
        self.free = list(range(slots))
        self._lock = threading.Lock()       # sequences may be opened and closed from several threads

    def acquire(self) -> int:
        with self._lock:
            if not self.free:
                raise GenerationError(f"all {self.slots} sequence slots of the KV cache are in use",
                                      hint="finish or close a running generation, or load with more slots=")
            slot = min(self.free)
            self.free.remove(slot)
            self.lengths[slot] = 0
            return slot

    @property
    def bytes_in_use(self) -> float:
        """Bytes of the cache that sequences have written (where they live: here or on workers)."""
        return sum(self.lengths) * self.bytes_per_position

    def lowest_free(self) -> int | None:
        with self._lock:
            return min(self.free, default=None)

    def release(self, slot: int) -> None:
        with self._lock:
            self.lengths[slot] = 0
            self.free.append(slot)


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
        its written positions are copied, and `source` is free after."""
        n = self.lengths[source]
        with self._lock:
            self.free.remove(target)
        for a in self.state.arrays.values():
            a[target, :n] = a[source, :n]
        self.lengths[target] = n
        self.release(source)
