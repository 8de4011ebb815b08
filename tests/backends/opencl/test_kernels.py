"""What the OpenCL backend makes of a matmul (local-memory tiles, the GPU work-group shape), and its
artefacts. (Its kernels' results against the numpy reference: tests/backends/test_kernels.py, over every
compiled backend.)"""
import numpy as np

from backend_support import assert_matches_reference, matmul_graph, mlp


def test_the_matmul_is_a_tiled_kernel_with_local_memory_and_barriers(compile_opencl):
    runner = compile_opencl(matmul_graph())
    assert "__local float" in runner.source and "barrier(CLK_LOCAL_MEM_FENCE)" in runner.source


def test_the_gpu_work_group_shape_computes_the_same_matmuls(compile_opencl, monkeypatch):
    """A GPU gets 16x16 work-items of 4x4 results (a CPU driver 4x4 of 8x8): run that shape here too."""
    from dnet.backends.opencl import backend
    from dnet.backends.opencl.renderer import GPU_GEMM

    monkeypatch.setattr(backend, "gemm_shape", lambda device: GPU_GEMM)
    rng = np.random.default_rng(2)
    graph = mlp(rng, 70, 45, 33)
    runner = compile_opencl(graph)
    assert "reqd_work_group_size(16, 16, 1)" in runner.source
    assert_matches_reference(runner, graph, {"x": rng.standard_normal((2, 9, 70)).astype(np.float32)},
                             rtol=1e-4, atol=1e-5)


def test_an_artefact_saved_from_opencl_loads_and_runs_the_same(compile_opencl, tmp_path):
    """The artefact holds the graph; loading it builds the kernels again for this device."""
    from dnet.api import Executable, load_artifact, save_artifact

    rng = np.random.default_rng(6)
    graph = mlp(rng, 20, 12, 7)
    exe = Executable(graph, "opencl", runner=compile_opencl(graph))
    save_artifact(exe, tmp_path / "mlp")
    again = load_artifact(tmp_path / "mlp")
    assert again.target == "opencl"
    x = rng.standard_normal((1, 3, 20)).astype(np.float32)
    np.testing.assert_array_equal(again.run({"x": x})["y"], exe.run({"x": x})["y"])
