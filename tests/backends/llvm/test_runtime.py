"""The LLVM backend's runtime: its thread pool across thread counts and a fork, calls from several Python
threads at once, and an artefact saved and loaded again, each against the numpy reference."""
import os
import threading

import numpy as np
import pytest

from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder


def _graph():
    rng = np.random.default_rng(5)
    b = GraphBuilder()
    x = b.input("x", TensorType(("n", 48), DType.F32))
    w = b.const("w", (rng.standard_normal((48, 200)) / 7).astype(np.float32))
    b.output("y", C.layer_norm(b, C.gelu(b, b.matmul(x, w))))
    return b.finish()


@pytest.fixture(scope="module")
def case(compile_llvm):
    graph = _graph()
    x = np.random.default_rng(6).standard_normal((300, 48)).astype(np.float32)
    return graph, compile_llvm(graph), {"x": x}, run_graph(graph, {"x": x})["y"]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_results_do_not_depend_on_the_thread_count(case, threads):
    graph, runner, feeds, want = case
    runner.module.set_threads(threads)
    try:
        assert runner.module.threads == threads
        np.testing.assert_allclose(runner.run(feeds)["y"], want, rtol=1e-4, atol=1e-5)
    finally:
        runner.module.set_threads(os.cpu_count() or 1)


def test_each_module_runs_with_its_own_thread_count(case, compile_llvm):
    """The pool is the process's: a module compiled later with other threads does not change this one's."""
    from dnet.backends.llvm.pool import pool

    graph, runner, feeds, want = case
    runner.module.set_threads(2)
    other = compile_llvm(graph, threads=1)
    other.run(feeds)
    assert pool().threads == 1
    np.testing.assert_allclose(runner.run(feeds)["y"], want, rtol=1e-4, atol=1e-5)
    assert runner.module.threads == 2 and pool().threads == 2


def test_calls_from_several_python_threads_at_once_are_each_right(case):
    graph, runner, feeds, want = case
    errors = []

    def call():
        try:
            for _ in range(5):
                np.testing.assert_allclose(runner.run(feeds)["y"], want, rtol=1e-4, atol=1e-5)
        except AssertionError as err:   # pragma: no cover - reported below
            errors.append(err)
    workers = [threading.Thread(target=call) for _ in range(3)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this OS")
def test_a_forked_child_runs_the_compiled_program(case):
    """fork copies only the calling thread: the child's pool starts afresh and still computes."""
    graph, runner, feeds, want = case
    runner.module.set_threads(2)
    runner.run(feeds)                       # the pool's workers exist in the parent
    pid = os.fork()
    if pid == 0:                            # the child: exit status 0 only if its results are right
        ok = np.allclose(runner.run(feeds)["y"], want, rtol=1e-4, atol=1e-5)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_an_artefact_saved_from_llvm_loads_and_runs_again(case, tmp_path, monkeypatch):
    import dnet
    from dnet.api import load_artifact, save_artifact

    graph, _, feeds, want = case
    monkeypatch.setenv("DNET_CACHE_DIR", str(tmp_path / "cache"))     # loading compiles into the default cache
    exe = dnet.compile(graph, target="llvm")
    save_artifact(exe, tmp_path / "artefact")
    again = load_artifact(tmp_path / "artefact")
    assert again.target == "llvm"
    np.testing.assert_allclose(again.run(feeds)["y"], want, rtol=1e-4, atol=1e-5)
