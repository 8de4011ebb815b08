"""Probing reports one unit per figure it measures, so its total is the report's size."""
import pytest

from dnet.core.progress import ADVANCE, DONE, START, Recorder, reporting
from dnet.topology.probe import run_probe


@pytest.mark.parametrize("backend_ops", [False, True])
def test_each_measurement_advances_the_probe_once(backend_ops):
    recorder = Recorder()
    with reporting(recorder):
        report = run_probe("numpy", quick=True, backend_ops=backend_ops)
    events = recorder.of("probe this node")
    n = len(report.measurements)
    assert [e.kind for e in events] == [START] + [ADVANCE] * n + [DONE]
    assert [e.completed for e in events] == [0, *range(1, n + 1), n] and events[-1].total == n


def test_a_link_probe_counts_every_round_trip_it_makes():
    from dnet.topology.linkprobe import probe_link, serve_probe

    server = serve_probe("127.0.0.1", 0, background=True)
    host, port = server.server_address
    recorder = Recorder()
    try:
        with reporting(recorder):
            probe_link(f"{host}:{port}", nbytes=1 << 16, runs=2)
    finally:
        server.shutdown()
        server.server_close()
    events = recorder.of(f"probe the link to {host}:{port}")
    pings, bulks = 2 * 4 + 1, 2 + 1                      # runs of each, plus one warm-up of each
    assert [e.completed for e in events] == [0, *range(1, pings + bulks + 1), pings + bulks]
    assert events[-1].kind == DONE and events[-1].total == pings + bulks
