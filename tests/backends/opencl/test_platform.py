"""Finding the OpenCL device: what is missing is one line naming what to install, never a traceback."""
import sys

import numpy as np
import pytest

from dnet.backends.opencl import platform
from dnet.errors import BackendError


@pytest.fixture
def fresh_device():
    """open_device() looked up anew in the test, and the real device restored after it."""
    platform.open_device.cache_clear()
    yield
    platform.open_device.cache_clear()


def test_without_pyopencl_the_target_names_what_to_install(fresh_device, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyopencl", None)       # import pyopencl raises ImportError
    with pytest.raises(BackendError, match="needs pyopencl.*pocl-opencl-icd") as err:
        platform.open_device()
    assert "\n" not in str(err.value)
    assert platform.unavailable() == str(err.value)


def test_a_device_choice_that_matches_nothing_lists_the_devices_found(fresh_device, monkeypatch, compile_opencl):
    monkeypatch.setenv("DNET_OPENCL_DEVICE", "no-such-device")
    with pytest.raises(BackendError, match="no OpenCL device matches .*found: "):
        platform.open_device()


def test_compile_for_opencl_without_a_device_is_a_one_line_error(fresh_device, monkeypatch):
    import dnet
    from dnet.core.types import TensorType

    monkeypatch.setitem(sys.modules, "pyopencl", None)

    class Net(dnet.Module):
        def forward(self, x):
            return x * 2.0

    with pytest.raises(BackendError, match="target 'opencl' needs pyopencl"):
        dnet.compile(Net(), [TensorType((2,), dnet.f32)], target="opencl")


def test_the_device_chosen_runs_a_kernel(compile_opencl):
    from dnet.core.dtypes import DType
    from dnet.core.types import TensorType
    from dnet.graph.builder import GraphBuilder
    from dnet.graph.ops import Op

    b = GraphBuilder()
    b.output("y", b.unary(Op.NEG, b.input("x", TensorType((3,), DType.F32))))
    out = compile_opencl(b.finish()).run({"x": np.array([1.0, -2.0, 0.5], np.float32)})["y"]
    np.testing.assert_array_equal(out, np.array([-1.0, 2.0, -0.5], np.float32))


def test_no_opencl_driver_is_a_one_line_reason_not_a_crash(fresh_device, monkeypatch):
    """The ICD loader without a driver raises CL_PLATFORM_NOT_FOUND_KHR: a reason to skip, naming it."""
    cl = pytest.importorskip("pyopencl")

    def no_platform():
        raise cl.LogicError("clGetPlatformIDs failed: PLATFORM_NOT_FOUND_KHR")

    monkeypatch.setattr(cl, "get_platforms", no_platform)
    reason = platform.unavailable()
    assert reason is not None and reason.startswith("no OpenCL platform on this machine (clGetPlatformIDs failed")
    assert "\n" not in reason
