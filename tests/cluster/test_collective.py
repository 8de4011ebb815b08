"""A tensor-parallel group's mesh (dnet.cluster.collective): members as threads of this process, each pair
joined by a socket pair, as the workers join them with JOIN.

Oracles: the partials summed by numpy in rank order (every member must hold exactly that); for shaped
links, the hand-derived least time of one all-reduce, `latency + bytes / bandwidth` of one partial.
"""
from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from dnet.cluster.channel import Channel
from dnet.cluster.collective import Mesh
from dnet.cluster.link import LinkShape

HIDDEN = 576          # SmolLM2's hidden size: a decode step's partial


def _group(size: int) -> list[Mesh]:
    meshes = [Mesh(rank, size, timeout_s=10.0) for rank in range(size)]
    for low in range(size):
        for high in range(low + 1, size):
            a, b = socket.socketpair()
            meshes[low].add(high, Channel(a, f"{low}->{high}"))
            meshes[high].add(low, Channel(b, f"{high}->{low}"))
    return meshes


def _all_reduce(meshes: list[Mesh], partials: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """Every member's total after one all-reduce, and the slowest member's seconds for it."""
    totals = [p.copy() for p in partials]
    seconds = [0.0] * len(meshes)

    def member(rank: int) -> None:
        start = time.perf_counter()
        meshes[rank].all_reduce("g", totals[rank])
        seconds[rank] = time.perf_counter() - start

    threads = [threading.Thread(target=member, args=(r,)) for r in range(len(meshes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return totals, max(seconds)


def _close(meshes: list[Mesh]) -> None:
    for mesh in meshes:
        mesh.close()


def _partials(size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(HIDDEN).astype(np.float32) for _ in range(size)]


def test_every_member_holds_the_rank_ordered_sum():
    meshes = _group(3)
    try:
        for step in range(3):
            partials = _partials(3, seed=step)
            want = partials[0] + partials[1] + partials[2]        # numpy, in rank order
            totals, _ = _all_reduce(meshes, partials)
            for total in totals:
                np.testing.assert_array_equal(total, want)
    finally:
        _close(meshes)


@pytest.mark.parametrize("shaped_after_join", [False, True])
def test_a_shaped_link_delays_each_partial_by_its_latency_and_bytes(shaped_after_join):
    """20 ms and 1 MB/s: a 576-float partial (2304 bytes) is 2.3 ms on the wire, so no member can hold the
    sum sooner than 22.3 ms after it sent its own. The shape may come before a peer joins or after (a lower
    rank dials a member before the coordinator's GROUP reaches it)."""
    shape = LinkShape(bandwidth=1e6, latency=20e-3)
    least = shape.latency + HIDDEN * 4 / shape.bandwidth
    if shaped_after_join:
        meshes = _group(2)
        for rank, mesh in enumerate(meshes):
            mesh.shape({1 - rank: shape})
    else:
        meshes = [Mesh(rank, 2, timeout_s=10.0) for rank in range(2)]
        for rank, mesh in enumerate(meshes):
            mesh.shape({1 - rank: shape})
        a, b = socket.socketpair()
        meshes[0].add(1, Channel(a))
        meshes[1].add(0, Channel(b))
    try:
        partials = _partials(2)
        for _ in range(2):
            totals, seconds = _all_reduce(meshes, partials)
            assert seconds >= least
            for total in totals:
                np.testing.assert_array_equal(total, partials[0] + partials[1])
    finally:
        _close(meshes)


def test_an_unshaped_group_is_not_delayed():
    """The same exchange unshaped: far under the 20 ms above (the fastest of five rounds, so a round that
    another process's work delayed on this shared machine does not count)."""
    meshes = _group(2)
    try:
        partials = _partials(2)
        fastest = min(_all_reduce(meshes, partials)[1] for _ in range(5))
        assert fastest < 10e-3
    finally:
        _close(meshes)

