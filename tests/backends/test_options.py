"""A backend takes the options it names; any other is an error naming them, never silently ignored
(issue 13: `dnet.compile(model, target="c", precison="bf16")` compiled, ignoring the misspelt option)."""
import numpy as np
import pytest

import dnet
from dnet.errors import BackendError


class Double(dnet.Module):
    def forward(self, x):
        return x * 2.0


TYPES = {"x": dnet.TensorType((3,), dnet.f32)}


@pytest.mark.parametrize("target, option, message", [
    ("c", {"precison": "bf16"}, "target 'c' has no option 'precison'.*its options: threads, cache_dir"),
    ("c", {"thread": 2}, "did you mean 'threads'"),
    ("numpy", {"threads": 2}, "target 'numpy' has no option 'threads'.*takes no options"),
])
def test_an_unknown_compile_option_is_refused_naming_the_known_ones(target, option, message):
    with pytest.raises(BackendError, match=message):
        dnet.compile(Double(), TYPES, target=target, **option)


def test_a_known_option_is_taken(tmp_path):
    exe = dnet.compile(Double(), TYPES, target="c", threads=1, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(exe.run({"x": np.ones(3, np.float32)})["output"], np.full(3, 2.0, np.float32))


def test_an_unknown_option_with_a_topology_is_refused_before_any_worker_starts():
    from dnet.errors import DnetError
    from dnet.topology import Topology
    from dnet.topology.model import Device

    local = Topology.local(1, device=Device(kind="numpy", memory=1 << 30, compute={"f32": 1e9}))
    with pytest.raises(DnetError, match="has no option 'max_in_fligth'.*did you mean 'max_in_flight'"):
        dnet.compile(Double(), TYPES, topology=local, max_in_fligth=4)


def test_an_unknown_target_names_the_targets_this_machine_runs_and_those_it_lacks(monkeypatch):
    from dnet.backends import registry
    from dnet.program.device import Device

    monkeypatch.setitem(registry._BACKENDS, "fakegpu", registry.NumpyBackend)
    monkeypatch.setitem(registry._DEVICES, "fakegpu", lambda: Device(
        "fakegpu", allocator=lambda: None, renderers={}, loader=None, dtypes=frozenset(),
        available=lambda: "no FakeGPU driver"))
    with pytest.raises(BackendError) as err:
        dnet.compile(Double(), TYPES, target="nosuch")
    message = str(err.value)
    here = message.split("targets: ")[1].split(" (not on this machine: ")[0].rstrip(")").split(", ")
    assert message.startswith("unknown target 'nosuch'") and "numpy" in here and "fakegpu" not in here
    assert "(not on this machine: " in message and "fakegpu" in message.split("not on this machine: ")[1]
    assert here == registry.available_names()
    with pytest.raises(BackendError, match="did you mean 'numpy'"):    # a near miss names the one meant
        dnet.compile(Double(), TYPES, target="numpi")
