"""A request that crashes whichever worker runs it fails alone, at its second worker loss; the cluster
goes on serving everything else (issue 13: it was replayed onto every spare in turn, killing each)."""
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dnet.cluster import LocalCluster, PoisonRequest, WorkerSpec
from residual_nets import oracle, request, residual_graph

CRASHING_WORKER = str(Path(__file__).with_name("crashing_worker.py"))


class CrashingWorker(WorkerSpec):
    """A real dnet worker process, started through the test-only wrapper that dies on a NaN-led `x`."""

    def command(self) -> list[str]:
        cmd = super().command()
        start = cmd.index("dnet.cluster") + 1          # after `python -m dnet.cluster`
        return [sys.executable, CRASHING_WORKER, *cmd[start:]]


def _poison(rng):
    req = request(rng, batch=4, seq=8)
    req["x"][0, 0, 0] = np.nan
    return req


@pytest.mark.parametrize("backend", ["c"])
def test_a_request_that_crashes_workers_fails_alone_and_the_cluster_keeps_serving(rng, tmp_path, backend):
    net, graph = residual_graph(rng)
    specs = [CrashingWorker(backend=backend, name=f"w{i}") for i in range(3)]
    with LocalCluster(specs, cache_dir=str(tmp_path)) as local:
        coord = local.coordinator(max_in_flight=16, heartbeat_s=0.2, dead_after_s=5.0, call_timeout_s=60)
        try:
            coord.load([graph], placement=[0])            # one stage on w0; w1 and w2 are spares
            good = [request(rng, batch=4, seq=8) for _ in range(12)]
            futures = [coord.submit(r) for r in good[:6]]
            poisoned = coord.submit(_poison(rng))
            futures += [coord.submit(r) for r in good[6:]]
            error = poisoned.exception(timeout=60)
            results = [f.result(timeout=60) for f in futures]
            later = [request(rng, batch=4, seq=8) for _ in range(4)]
            later_results = coord.run_many(later, timeout=60)
            placement = list(coord.placement)
            alive = [local.alive(i) for i in range(3)]
        finally:
            coord.close()
    assert isinstance(error, PoisonRequest)
    assert "request 6 " in str(error) and "w0" in str(error) and "w1" in str(error)
    for req, out in zip(good + later, results + later_results):   # every other request answered, right
        np.testing.assert_allclose(out["output"], oracle(net, req["x"], req["mask"]), rtol=1e-5, atol=1e-5)
    assert alive == [False, False, True]                # it killed two workers, not the third
    assert placement == [2]
    assert len(coord.latencies) == len(good) + len(later)   # one answer each; the poisoned one none


def test_a_second_loss_makes_a_request_poison_only_at_a_stage_it_crashed_before():
    from concurrent.futures import Future

    from dnet.cluster.coordinator import _Request

    req = _Request(0, {}, Future(), 0.0)
    req.lost_with.append(("w0", frozenset({0})))
    assert not req.poisonous()                          # one loss: a suspect, sent again alone
    req.lost_with.append(("w2", frozenset({2})))
    assert not req.poisonous()                          # another stage's worker: two crashes at once
    req.lost_with.append(("w3", frozenset({0, 1})))
    assert req.poisonous()                              # stage 0 again
