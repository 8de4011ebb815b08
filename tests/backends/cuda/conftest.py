import shutil

import pytest


@pytest.fixture(scope="session")
def compile_cuda(tmp_path_factory):
    """graph -> runner of the CUDA backend; every test using it skips, with the reason, where no GPU is."""
    from dnet.backends.cuda import CUDABackend, unavailable

    reason = unavailable()
    if reason is not None:
        pytest.skip(f"no CUDA device: {reason}")
    with pytest.MonkeyPatch.context() as mp:     # NVRTC's images in a temporary cache, not the user's
        mp.setenv("DNET_CACHE_DIR", str(tmp_path_factory.mktemp("dnet-cuda-cache")))
        yield CUDABackend().prepare


@pytest.fixture(scope="session")
def compile_emulated(tmp_path_factory):
    """graph -> the CUDA backend's kernels run on the CPU (cuda_emulation.py); needs a C++ compiler, no GPU."""
    if shutil.which("g++") is None and shutil.which("clang++") is None:
        pytest.skip("no C++ compiler (g++ or clang++) to emulate CUDA kernels with")
    from cuda_emulation import emulate

    directory = tmp_path_factory.mktemp("dnet-cuda-emulated")
    return lambda graph: emulate(graph, directory)


@pytest.fixture(scope="module", params=["gpu", "emulated"])
def run_cuda(request):
    """The CUDA backend's kernels on a GPU (skipped without one) and through the CPU emulation."""
    return request.getfixturevalue("compile_cuda" if request.param == "gpu" else "compile_emulated")


@pytest.fixture(scope="session")
def nvrtc_here():
    """NVRTC loaded (the `cuda` extra installed); no GPU needed. Skips, saying why, without it."""
    from dnet.backends.cuda.nvrtc import nvrtc
    from dnet.errors import BackendError

    try:
        nvrtc()
    except BackendError as err:
        pytest.skip(f"NVRTC is not available: {err}")
