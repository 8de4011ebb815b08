"""Stages with state on worker processes: state bound per request by slots, and freed with its session.

Oracle: the numpy reference running the unsplit graph over state arrays the test holds.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from dnet.backends.numpy import run_graph
from dnet.cluster import LocalCluster, RemoteError, WorkerSpec
from dnet.core.dtypes import DType
from dnet.core.shapes import Sym
from dnet.core.types import TensorType
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op
from dnet.runtime.pipeline import contiguous_assignment, split_pipeline

B = Sym("batch")
ROWS, WIDTH, SLOTS = 256, 1024, 4       # 1 MiB of state per slot and layer


def stateful_graph():
    """Two layers, each keeping a (rows, width) state per sequence: written whole, then read."""
    b = GraphBuilder()
    x = b.input("x", TensorType((B, ROWS, WIDTH), DType.F32))
    where = b.input("where", TensorType((B, ROWS), DType.I64))
    h = x
    for i in range(2):
        with b.scope(f"layers.{i}"):
            kept = b.scatter(b.state(f"s.{i}", TensorType((B, ROWS, WIDTH), DType.F32)), where, h, axis=1)
            h = b.elementwise(Op.ADD, b.elementwise(Op.MUL, kept, 0.5), 1.0)
    b.output("y", b.reduce(Op.SUM, h, (1, 2)))
    return b.finish()


def _feed(rng, batch):
    return {"x": rng.standard_normal((batch, ROWS, WIDTH)).astype(np.float32),
            "where": np.tile(np.arange(ROWS), (batch, 1))}


def _status(pid: int) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {"rss_mib": int(fields["VmRSS"].split()[0]) // 1024, "threads": int(fields["Threads"])}


def _session(local, stages, rng):
    coord = local.coordinator()
    try:
        coord.load(stages, [0, 1], slots=SLOTS)
        state = {f"s.{i}": np.zeros((SLOTS, ROWS, WIDTH), np.float32) for i in range(2)}
        for first, count in ((0, 2), (2, 2), (1, 3)):
            feed = _feed(rng, count)
            got = coord.submit(feed, slots=(first, count)).result(30)["y"]
            views = {k: v[first:first + count] for k, v in state.items()}
            want = run_graph(stateful_graph(), {**feed, **views})["y"]
            np.testing.assert_allclose(got, want, rtol=1e-5)
    finally:
        coord.close()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads worker memory from /proc")
def test_closed_sessions_give_back_their_state_memory_and_threads(rng, tmp_path):
    graph = stateful_graph()
    stages = split_pipeline(graph, contiguous_assignment(graph, [1, 1]))
    with LocalCluster(2, cache_dir=str(tmp_path)) as local:
        _session(local, stages, rng)                       # warm: code compiled, weights cached, pools grown
        time.sleep(0.5)
        base = [_status(p.pid) for p in local.procs]
        for _ in range(20):                                # each touches 4 MiB of state per worker
            _session(local, stages, rng)
        deadline = time.monotonic() + 10                   # the last session's RESET and threads may lag
        while True:
            after = [_status(p.pid) for p in local.procs]
            settled = all(a["threads"] <= b["threads"] + 4 and a["rss_mib"] - b["rss_mib"] < 40
                          for a, b in zip(base, after))
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    for b, a in zip(base, after):
        # 20 sessions kept would be +80 MiB and +20 threads or more; allocator slack on a loaded machine is not
        assert a["rss_mib"] - b["rss_mib"] < 40, (base, after)
        # a leak would be a thread a session (+20); a few may still be winding down on a loaded machine
        assert a["threads"] <= b["threads"] + 4, (base, after)


def test_an_idle_session_is_freed_and_says_so_when_used_again(rng, tmp_path):
    graph = stateful_graph()
    stages = split_pipeline(graph, contiguous_assignment(graph, [1, 1]))
    specs = [WorkerSpec(name=f"w{i}", idle_timeout=1.0) for i in range(2)]
    with LocalCluster(specs, cache_dir=str(tmp_path)) as local:
        coord = local.coordinator(call_timeout_s=10)
        try:
            coord.load(stages, [0, 1], slots=SLOTS)
            coord.submit(_feed(rng, 1), slots=(0, 1)).result(30)
            deadline = time.monotonic() + 10
            while any(coord.worker_stats().values()) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not any(coord.worker_stats().values())  # no stage left on either worker
            with pytest.raises(RemoteError, match="idle"):
                coord.submit(_feed(rng, 1), slots=(0, 1)).result(10)
        finally:
            coord.close()
