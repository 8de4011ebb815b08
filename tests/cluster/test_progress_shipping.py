"""A distributed compile reports its workers starting and its stages shipped, one unit each, to the end."""
import dnet
from dnet.core.progress import ADVANCE, DONE, START, Recorder
from dnet.topology import Device, Topology
from residual_nets import ResidualNet


def test_workers_started_and_stages_shipped_are_counted_as_they_happen(rng):
    device = Device(kind="numpy", cores=1, compute={"f32": 1e6}, memory=1e9, memory_bandwidth=1e9)
    topology = Topology.local(2, device=device, bandwidth=1e8, latency=1e-4)
    t = dnet.TensorType(("batch", "seq", 8), dnet.f32)
    recorder = Recorder()
    with dnet.compile(ResidualNet(rng), {"x": t, "mask": t}, topology=topology, env={"batch": 2, "seq": 3},
                      progress=recorder) as exe:
        stages = len(exe.pipeline.stages)
    started, shipped = recorder.of("start local workers"), recorder.of("ship stages to workers")
    assert [e.kind for e in started] == [START, ADVANCE, ADVANCE, DONE] and started[-1].total == 2
    assert [e.kind for e in shipped] == [START] + [ADVANCE] * stages + [DONE]
    assert [e.completed for e in shipped] == [0, *range(1, stages + 1), stages] and shipped[-1].total == stages
