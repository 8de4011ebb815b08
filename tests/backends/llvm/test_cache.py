"""The LLVM backend's machine-code cache: a second compile of the same program loads the object instead
of compiling it, and computes the same; a damaged entry is rebuilt, never loaded."""
import numpy as np

from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder


def _graph():
    rng = np.random.default_rng(7)
    b = GraphBuilder()
    x = b.input("x", TensorType(("n", 16), DType.F32))
    w = b.const("w", rng.standard_normal((16, 24)).astype(np.float32))
    b.output("y", C.softmax(b, b.matmul(x, w), -1))
    return b.finish()


def test_a_second_compile_loads_the_cached_machine_code(compile_llvm, tmp_path):
    graph = _graph()
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    first = compile_llvm(graph, cache_dir=tmp_path)
    second = compile_llvm(graph, cache_dir=tmp_path)
    assert not first.module.compiled.from_cache and second.module.compiled.from_cache
    want = run_graph(graph, {"x": x})["y"]
    np.testing.assert_allclose(second.run({"x": x})["y"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(second.run({"x": x})["y"], first.run({"x": x})["y"])


def test_a_damaged_entry_is_compiled_again(compile_llvm, tmp_path):
    graph = _graph()
    compile_llvm(graph, cache_dir=tmp_path)
    [entry] = (tmp_path / "llvm").glob("*.o")
    data = bytearray(entry.read_bytes())
    data[200] ^= 0xFF                                  # a flipped byte in the object
    entry.write_bytes(bytes(data))
    again = compile_llvm(graph, cache_dir=tmp_path)
    assert not again.module.compiled.from_cache
    x = np.ones((2, 16), np.float32)
    np.testing.assert_allclose(again.run({"x": x})["y"], run_graph(graph, {"x": x})["y"], rtol=1e-5, atol=1e-6)
    assert compile_llvm(graph, cache_dir=tmp_path).module.compiled.from_cache   # rewritten whole
