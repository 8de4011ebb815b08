"""What a program's ALL_REDUCE asks of whoever runs it: the links of its tensor-parallel group.

A graph built for one member of a group (`dnet.llm.tensor_parallel`) has ALL_REDUCE nodes; a
backend runs everything else itself and, at each of them, hands the member's partial sum to a
`Collective`, which replaces it in place with the group's total. The cluster's workers give
one that exchanges partials with the other members (`dnet.cluster.collective.Mesh`); a group of
one needs none.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from dnet.errors import BackendError

Collective = Callable[[str, np.ndarray], None]   # (group, partial sum) -> the array holds the group's sum


def missing_collective(group: str, size: int) -> BackendError:
    return BackendError(f"the program sums partial results over the {size} members of group '{group}' "
                        "(ALL_REDUCE), and was run without the group's links",
                        hint="run each member's part on a worker of the group (dnet.llm.load(..., topology=...))")
