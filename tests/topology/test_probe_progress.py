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
