"""The C backend's progress: every unit of work it counts is one it really does, and every task ends."""
import numpy as np
import pytest

import dnet
from dnet.backends.c import CBackend
from dnet.core.dtypes import DType
from dnet.core.progress import ADVANCE, DONE, START, Recorder, reporting
from dnet.core.shapes import Sym
from dnet.core.types import TensorType
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op
from dnet.program.instructions import Launch


def _block(rng):
    """linear -> GELU -> linear + residual -> layer norm -> softmax: matmuls, epilogues, reductions."""
    b = GraphBuilder()
    x = b.input("x", TensorType((2, Sym("seq"), 32), DType.F32))
    w1 = b.const("w1", rng.standard_normal((64, 32)).astype(np.float32) / 6)
    w2 = b.const("w2", rng.standard_normal((32, 64)).astype(np.float32) / 8)
    g = b.const("g", rng.standard_normal(32).astype(np.float32))
    h = C.gelu(b, C.linear(b, x, w1, None))
    y = b.elementwise(Op.ADD, C.linear(b, h, w2, None), x)
    b.output("y", C.softmax(b, C.layer_norm(b, y, g, None), -1))
    return b.finish()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """A real compile into an empty cache (so the compiler runs), with every event recorded."""
    recorder = Recorder()
    with reporting(recorder):
        runner = CBackend().prepare(_block(np.random.default_rng(3)), cache_dir=tmp_path_factory.mktemp("cache"))
    return runner, recorder


def _tasks(recorder, prefix):
    """{task id: its events} for the tasks whose name starts with `prefix`, in the order they started."""
    out = {}
    for e in recorder.events:
        if e.name.startswith(prefix):
            out.setdefault(e.task, []).append(e)
    return list(out.values())


def _assert_counts_up_to_its_total(events):
    assert events[0].kind == START and events[0].completed == 0
    assert events[-1].kind == DONE and events[-1].completed == events[-1].total
    assert [e.completed for e in events if e.kind == ADVANCE] == list(range(1, events[-1].total + 1))


def test_the_last_lowering_pass_counts_one_kernel_per_launch_in_the_program(compiled):
    runner, recorder = compiled
    passes = _tasks(recorder, "lower kernels")
    launches = [i for i in runner.program.instrs if isinstance(i, Launch)]
    for events in passes:
        _assert_counts_up_to_its_total(events)
    assert passes[-1][-1].total == len(launches) == len(runner.compiled.schedule.steps)


def test_laying_out_counts_every_launch(compiled):
    runner, recorder = compiled
    (events,) = _tasks(recorder, "lay out buffers and weights")
    _assert_counts_up_to_its_total(events)
    assert events[-1].total == sum(isinstance(i, Launch) for i in runner.program.instrs)


def test_rendering_counts_each_distinct_kernel_once(compiled):
    runner, recorder = compiled
    (events,) = _tasks(recorder, "render C kernels")
    _assert_counts_up_to_its_total(events)
    assert events[-1].total == len(runner.compiled.kernels) == len({i.kernel for i in runner.program.instrs
                                                                    if isinstance(i, Launch)})
    assert all(f"void {name}(" in runner.source for name in runner.compiled.kernels)


def test_the_compiler_call_is_one_uncounted_step_that_ends(compiled):
    _, recorder = compiled
    (events,) = _tasks(recorder, "compile C library")
    assert [e.kind for e in events] == [START, DONE] and events[0].total is None


def test_a_cache_hit_reports_no_compiler_step(tmp_path):
    graph = _block(np.random.default_rng(4))
    CBackend().prepare(graph, cache_dir=tmp_path)
    recorder = Recorder()
    with reporting(recorder):
        CBackend().prepare(graph, cache_dir=tmp_path)
    assert not _tasks(recorder, "compile C library") and _tasks(recorder, "render C kernels")


def test_dnet_compile_reports_to_the_reporter_it_is_given_and_to_no_one_otherwise(tmp_path):
    graph = _block(np.random.default_rng(5))
    recorder, bystander = Recorder(), Recorder()
    with reporting(bystander):
        with reporting(None):
            dnet.compile(graph, target="c", cache_dir=tmp_path)
        dnet.compile(graph, target="c", cache_dir=tmp_path, progress=recorder)
    assert bystander.events == []
    assert {e.name for e in recorder.events} >= {"lower kernels", "render C kernels"}
    assert all(events[-1].kind == DONE for events in _tasks(recorder, ""))


def test_loading_an_artefact_counts_each_mib_it_verifies(tmp_path):
    from dnet.api import load_artifact, save_artifact

    rng = np.random.default_rng(6)
    b = GraphBuilder()       # a 4 MiB weight packed for the micro-kernel: several MiB in c_weights.bin
    x = b.input("x", TensorType((2, 1024), DType.F32))
    b.output("y", C.linear(b, x, b.const("w", rng.standard_normal((1024, 1024)).astype(np.float32)), None))
    save_artifact(dnet.compile(b.finish(), target="c", cache_dir=tmp_path / "cache"), tmp_path / "art")
    recorder = Recorder()
    with reporting(recorder):
        load_artifact(tmp_path / "art")
    mib = sum(-(-(tmp_path / "art" / name).stat().st_size // 2**20) for name in ("c_lib.so", "c_weights.bin"))
    events = recorder.of("verify art")
    assert mib >= 4 and [e.completed for e in events] == [0, *range(1, mib + 1), mib] and events[-1].kind == DONE
