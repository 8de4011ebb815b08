"""The links of a tensor-parallel group on a worker: one channel to each other member, summed over.

A member's stage runs its graph with this mesh as the `Collective` (`dnet.program.collective`):
at each ALL_REDUCE the compute thread sends its partial sum to every other member (from itself
when the socket takes it at once, as on a decode step; else from the link's thread) and reads
theirs straight off the channels, then adds all partials in rank order, so every member
holds the same total, bit for bit. No thread hand-off is on the receiving side: the channels
belong to the mesh, not to the worker's reader threads (a JOIN hands an accepted connection
over to it).

A link may be shaped (`LinkShape`: a local cluster emulating a network, the shape from GROUP): a
partial then goes out from the link's thread, `latency` plus its bytes over `bandwidth` after it was
put, as on every other shaped link (`Outbox`), so an all-reduce costs at least the slowest link's latency.

Each pair of members shares one connection, dialled by the lower rank. Partials are numbered:
one that arrives out of turn (a member that failed a step the others ran) breaks the mesh,
and every later step fails at once until the group is formed again.
"""
from __future__ import annotations

import threading

import numpy as np

from dnet.cluster.channel import Channel
from dnet.cluster.link import LinkShape, Outbox
from dnet.cluster.messages import Partial, decode_as, encode
from dnet.errors import DnetError

JOIN_TIMEOUT_S = 10.0


class GroupError(DnetError):
    """The group cannot sum: a member is missing, gone, or out of step."""


class Mesh:
    def __init__(self, rank: int, size: int, timeout_s: float = 120.0):
        if not 0 <= rank < size:
            raise GroupError(f"rank {rank} is outside a group of {size}")
        self.rank, self.size, self.timeout_s = rank, size, timeout_s
        self.channels: dict[int, Channel] = {}
        self._outboxes: dict[int, Outbox] = {}
        self._shapes: dict[int, LinkShape | None] = {}   # how each peer's link is shaped (None: not at all)
        self._count = 0                       # partials sent so far: the next one's number
        self.broken: str | None = None
        self._joined = threading.Condition()

    # -- forming ----------------------------------------------------------------------------
    def add(self, peer: int, chan: Channel) -> None:
        """The connection to member `peer` (dialled by the lower of the two ranks)."""
        if peer == self.rank or not 0 <= peer < self.size:
            raise GroupError(f"member {self.rank} of {self.size} cannot be joined by rank {peer}")
        chan.sock.settimeout(self.timeout_s)   # a member that stops answering fails the step, not the worker
        with self._joined:
            old = self.channels.pop(peer, None)
            old_outbox = self._outboxes.pop(peer, None)
            self.channels[peer] = chan
            self._outboxes[peer] = Outbox(chan, self._shapes.get(peer))
            self._joined.notify_all()
        if old_outbox is not None:
            old_outbox.close(timeout=0.1)
        if old is not None:
            old.close()

    def shape(self, shapes: dict[int, LinkShape | None]) -> None:
        """Shape the link to each peer named (None: unshaped), those joined already and those to come.
        Called while the group forms (GROUP), before any partial is sent: a peer of lower rank may have
        dialled this member before the coordinator's GROUP told it the shapes."""
        with self._joined:
            self._shapes.update(shapes)
            stale = []
            for peer, outbox in list(self._outboxes.items()):
                if outbox.shape != self._shapes.get(peer):
                    stale.append(outbox)
                    self._outboxes[peer] = Outbox(self.channels[peer], self._shapes.get(peer))
        for outbox in stale:    # idle: nothing was sent on it yet
            outbox.close(timeout=0.1)

    def wait_complete(self, timeout_s: float = JOIN_TIMEOUT_S) -> None:
        with self._joined:
            if not self._joined.wait_for(lambda: len(self.channels) == self.size - 1, timeout_s):
                missing = sorted(set(range(self.size)) - set(self.channels) - {self.rank})
                raise GroupError(f"member {self.rank}: rank(s) {missing} of the group did not join "
                                 f"within {timeout_s:.0f} s")

    # -- summing ----------------------------------------------------------------------------
    def all_reduce(self, group: str, x: np.ndarray) -> None:
        """Replace this member's partial `x` with the group's sum (members in rank order)."""
        if self.broken:
            raise GroupError(f"group '{group}' is broken: {self.broken}")
        n, self._count = self._count, self._count + 1
        try:
            mine = encode(Partial(n), {"x": np.ascontiguousarray(x).copy()})   # the sum overwrites x
            for peer in sorted(self._outboxes):
                self._outboxes[peer].put(mine)
            parts = {self.rank: x}
            for peer in sorted(self.channels):
                parts[peer] = self._receive(peer, n, x)
        except (OSError, DnetError) as err:
            self.broken = f"member {self.rank}, partial {n}: {err}"
            raise GroupError(f"group '{group}': {self.broken}") from None
        total = parts[0].copy()        # received partials lie in the channels' reusable buffers
        for r in range(1, self.size):
            total += parts[r]
        x[...] = total

    def _receive(self, peer: int, n: int, like: np.ndarray) -> np.ndarray:
        msg = self.channels[peer].recv()
        part = decode_as(Partial, msg)
        got = msg.tensors["x"]
        if part.n != n or got.shape != like.shape or got.dtype != like.dtype:
            raise GroupError(f"rank {peer} sent partial {part.n} {got.dtype}{list(got.shape)} where "
                             f"{n} {like.dtype}{list(like.shape)} was due")
        return got

    def close(self) -> None:
        with self._joined:
            outboxes, channels = list(self._outboxes.values()), list(self.channels.values())
            self._outboxes, self.channels = {}, {}
        for outbox in outboxes:
            outbox.close(timeout=0.1)
        for chan in channels:
            chan.close()
