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
