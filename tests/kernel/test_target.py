"""Per-target scheduling hooks (kernel/target.py): a CPU's tiles from its Host, a GPU's grid from its limits."""
import pytest

from dnet.hardware import Host
from dnet.kernel.gemm import choose_tile
from dnet.kernel.target import CpuTarget, GpuTarget, as_target


def _host(isa):
    return Host("x86_64", "test cpu", 4, frozenset(isa), l1d=48 * 1024, l2=2 * 1024 * 1024)


@pytest.mark.parametrize("isa, nr", [({"avx512f"}, 32), ({"avx2"}, 16), ({"sse2"}, 8), (set(), 4)])
def test_a_cpu_target_tiles_the_gemm_for_its_vector_width(isa, nr):
    target = as_target(_host(isa))
    assert isinstance(target, CpuTarget) and target.kind == "cpu"
    assert target.gemm_tile() == choose_tile(_host(isa)) and target.gemm_tile().nr == nr
    assert target.thread_count() == 4 and CpuTarget(_host(isa), threads=2).thread_count() == 2


@pytest.mark.parametrize("items, groups, local", [(1, 1, 32), (100, 1, 128), (256, 1, 256), (1000, 4, 256)])
def test_a_gpu_grid_covers_the_items_in_whole_warps(items, groups, local):
    gpu = GpuTarget("test gpu", max_work_group=1024, simd_width=32)
    assert gpu.grid(items) == (groups, local)
    assert groups * local >= items and local % 32 == 0


def test_a_small_device_limits_the_work_group_and_the_matmul_tile():
    small = GpuTarget("tiny", max_work_group=64, local_memory=4096, simd_width=8)
    assert small.work_group(10_000) == 64
    assert small.matmul_tile() == 8          # 8x8 = 64 items; two 8x8 f32 tiles = 512 B <= 2048 B
    assert GpuTarget("big", max_work_group=1024, local_memory=48 * 1024).matmul_tile() == 32
    assert GpuTarget("lowmem", max_work_group=1024, local_memory=2048).matmul_tile() == 8   # 2*8*8*4 = 512 <= 1024
