"""What the LLVM backend makes of a matmul: the vector micro-kernel on its thread pool. (Its kernels'
results against the numpy reference: tests/backends/test_kernels.py, over every compiled backend.)"""
from backend_support import matmul_graph


def test_the_matmul_is_the_vector_micro_kernel_on_the_thread_pool(compile_llvm):
    from dnet.hardware import detect

    runner = compile_llvm(matmul_graph())
    lanes = detect().f32_lanes
    assert f"@llvm.fmuladd.v{lanes}f32" in runner.source      # FMAs on the host's widest vectors
    assert "call void @dn_parallel" in runner.source
