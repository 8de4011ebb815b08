"""Soak: a three-stage pipeline on local worker processes serves a steady stream of requests while workers
are killed (SIGKILL) and restarted at random; every request is answered exactly once and correctly, and
no worker's memory grows. The short run is part of `make test`; the long one (marked `soak`) runs with
`make soak`.

Kills are spaced apart: after a loss the requests that were in the air are sent again one at a time
(a poison-request check, tests/cluster/test_poison.py), and a request in the air at two separate losses
is indistinguishable from one that causes them, so it would fail by design.
"""
from __future__ import annotations

import random
import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest

from dnet.cluster import LocalCluster
from dnet.runtime import contiguous_assignment, split_pipeline
from residual_nets import oracle, request, residual_graph

RSS_GROWTH_LIMIT = 64 << 20   # allocator slack on a loaded machine; a leak of one request's tensors per
                               # request would be far more over thousands of requests


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    raise AssertionError(f"no VmRSS for {pid}")


def _soak(rng, tmp_path, seconds: float, kills: int, gap_s: float, pause_s: float = 0.0) -> None:
    """`pause_s` between submissions keeps a long run under the 100,000 answers the coordinator remembers."""
    net, graph = residual_graph(rng, d=16, depth=6)
    stages = split_pipeline(graph, contiguous_assignment(graph, [1, 1, 1]))
    chaos = random.Random(13)
    with LocalCluster(4, cache_dir=str(tmp_path)) as local:   # three stages and a spare
        coord = local.coordinator(max_in_flight=16, heartbeat_s=0.2, dead_after_s=3.0, call_timeout_s=30)
        sent: list[tuple[dict, Future]] = []
        stop = threading.Event()

        def stream() -> None:
            while not stop.is_set():
                req = request(np.random.default_rng(len(sent)), d=16, batch=4, seq=8)
                sent.append((req, coord.submit(req, timeout=30)))
                time.sleep(pause_s)

        try:
            coord.load(stages, placement=[0, 1, 2])
            feeder = threading.Thread(target=stream, daemon=True)
            feeder.start()
            time.sleep(1.0)                                     # warm: arenas and pools reach their size
            baseline = {local.procs[i].pid: _rss(local.procs[i].pid) for i in range(4)}
            deadline = time.monotonic() + seconds
            done_kills = 0
            while time.monotonic() < deadline or done_kills < kills:
                time.sleep(gap_s)
                if done_kills < kills:
                    victim = coord.workers[chaos.choice(list(coord.placement))]   # one running a stage
                    i = int(victim.caps.name[1:])            # LocalCluster's worker "w<i>"
                    local.kill(i)
                    coord.add_worker(local.restart(i))          # back, as a spare
                    baseline[local.procs[i].pid] = None         # a fresh process: measured from its first sample
                    done_kills += 1
                for i in range(4):   # a restarted worker's baseline, once it has served a while
                    if baseline.get(local.procs[i].pid, 0) is None and local.procs[i].poll() is None:
                        baseline[local.procs[i].pid] = _rss(local.procs[i].pid)
            stop.set()
            feeder.join(timeout=30)
            results = [f.result(timeout=60) for _, f in sent]
            end = {p.pid: _rss(p.pid) for p in local.procs if p.poll() is None}
            answered, dropped = len(coord.latencies), coord.dropped_results
        finally:
            stop.set()
            coord.close()
    assert done_kills == kills
    assert answered == len(sent) > 50 * seconds / 10    # each request answered once (late copies dropped)
    for (req, _), out in zip(sent, results):
        np.testing.assert_allclose(out["output"], oracle(net, req["x"], req["mask"]), rtol=1e-5, atol=1e-5)
    growth = {pid: end[pid] - rss for pid, rss in baseline.items() if rss is not None and pid in end}
    assert growth and max(growth.values()) < RSS_GROWTH_LIMIT, f"worker RSS grew: {growth}"
    print(f"{len(sent)} requests, {kills} kills, {dropped} late copies dropped, RSS growth (MiB): "
          + ", ".join(f"{g / 2**20:.1f}" for g in growth.values()))


def test_short_soak_every_request_answered_once_through_two_kills(rng, tmp_path):
    _soak(rng, tmp_path, seconds=8.0, kills=2, gap_s=3.0)


@pytest.mark.soak
def test_soak_every_request_answered_once_through_ten_kills(rng, tmp_path):
    _soak(rng, tmp_path, seconds=120.0, kills=10, gap_s=10.0, pause_s=0.003)
