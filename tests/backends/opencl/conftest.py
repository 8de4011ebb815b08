import pytest


@pytest.fixture(scope="session")
def compile_opencl():
    """graph -> runner of the OpenCL backend; every test here skips, with the reason, where no device is."""
    from dnet.backends.opencl import OpenCLBackend, unavailable

    reason = unavailable()
    if reason is not None:
        pytest.skip(f"no OpenCL device: {reason}")

    def build(graph):
        return OpenCLBackend().prepare(graph)
    return build
