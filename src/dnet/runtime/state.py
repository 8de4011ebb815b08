"""State a program keeps across runs: one row (slot) per sequence, bound in place.

A graph's STATE inputs (a KV cache, say) lead with a symbolic dim: the sequences a run
works on. `SlotState` allocates each of them once with that dim set to the number of slots
and binds the rows [first, first + count) of every one as a view, so a run writes the
state of its sequences where it lies. Arrays are allocated zeroed: the operating system
commits memory only for the parts sequences actually write.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from dnet.core.shapes import Dim
from dnet.core.types import TensorType
from dnet.errors import DnetError
from dnet.graph.ir import Graph
from dnet.graph.ops import Op


def state_types(graph: Graph) -> dict[str, TensorType]:
    """The graph's STATE inputs by name."""
    return {n.attrs["name"]: n.type for n in graph.nodes if n.op is Op.STATE}


def slot_bytes(types: Mapping[str, TensorType]) -> int:
    """Bytes one slot of these states takes (their leading dim is the slots)."""
    return sum(int(np.prod([int(d) for d in t.shape[1:]])) * t.dtype.np.itemsize for t in types.values())


class SlotState:
    def __init__(self, types: Mapping[str, TensorType], slots: int):
        if slots < 1:
            raise DnetError(f"state needs at least one slot, got {slots}")
        self.slots = slots
        self.arrays: dict[str, np.ndarray] = {}
        for name, t in types.items():
            lead, *rest = t.shape
            if not isinstance(lead, Dim) or any(isinstance(d, Dim) for d in rest):
                raise DnetError(f"state '{name}' of shape {t.shape} must lead with a symbolic dim "
                                "(its sequences) and have fixed sizes after it")
            self.arrays[name] = np.zeros((slots, *map(int, rest)), t.dtype.np)

    @classmethod
    def of(cls, graph: Graph, slots: int) -> "SlotState | None":
        """The state of `graph`'s STATE inputs, or None for a graph without state."""
        types = state_types(graph)
        return cls(types, slots) if types else None

    @property
    def nbytes(self) -> int:
        """Bytes reserved (committed only as they are written)."""
        return sum(a.nbytes for a in self.arrays.values())

    def bind(self, first: int, count: int) -> dict[str, np.ndarray]:
        """Views of the slots [first, first + count) of every state array, by name."""
        if not (0 <= first and count >= 1 and first + count <= self.slots):
            raise DnetError(f"slots [{first}, {first + count}) are outside the {self.slots} slots of this state")
        return {name: a[first:first + count] for name, a in self.arrays.items()}
