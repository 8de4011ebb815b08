"""NVRTC's side of the CUDA backend, on any machine with the `cuda` extra: the image cache and the architecture."""
import pytest

from dnet.backends.cuda.platform import CudaDevice

SOURCE = 'extern "C" __global__ void twice(float* a) { a[threadIdx.x] *= 2.0f; }\n'


def test_an_image_is_compiled_once_then_read_from_the_cache(nvrtc_here, tmp_path):
    from dnet.backends.cuda.nvrtc import ImageCache

    first = ImageCache(tmp_path)
    image = first.get_or_compile(SOURCE, "sm_80")
    assert image[:4] == b"\x7fELF" and (first.hits, first.misses) == (0, 1)
    second = ImageCache(tmp_path)
    assert second.get_or_compile(SOURCE, "sm_80") == image and (second.hits, second.misses) == (1, 0)
    assert ImageCache(tmp_path).get_or_compile(SOURCE, "compute_80").startswith(b"//")     # PTX: another entry


def test_a_damaged_entry_is_compiled_again_never_loaded(nvrtc_here, tmp_path):
    from dnet.backends.cuda.nvrtc import ImageCache

    cache = ImageCache(tmp_path)
    image = cache.get_or_compile(SOURCE, "sm_80")
    path = cache.path(cache.key(SOURCE, "sm_80"))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    again = ImageCache(tmp_path)
    assert again.get_or_compile(SOURCE, "sm_80") == image and again.misses == 1


def _device(capability):
    return CudaDevice(None, None, None, None, "test GPU", capability, 1024, 48 * 1024, 132, 32)


def test_a_gpu_nvrtc_knows_gets_a_cubin_of_its_architecture(nvrtc_here):
    from dnet.backends.cuda.nvrtc import supported_architectures

    assert 90 in supported_architectures()
    assert _device((9, 0)).arch == "sm_90"


def test_a_gpu_newer_than_nvrtc_gets_ptx_of_the_newest_architecture_it_knows(nvrtc_here):
    from dnet.backends.cuda.nvrtc import supported_architectures

    newest = supported_architectures()[-1]
    assert _device((99, 9)).arch == f"compute_{newest}"


def test_a_gpu_older_than_nvrtc_supports_is_one_line(nvrtc_here):
    from dnet.errors import BackendError

    with pytest.raises(BackendError, match="cannot compile for test GPU"):
        _device((3, 0)).arch
