"""dnet.core.progress: tasks tell the reporter installed where they are opened, and nobody otherwise."""
import threading

import pytest

from dnet.core import progress
from dnet.core.progress import ADVANCE, DONE, FAILED, START, Recorder, reporting


def test_a_task_reports_start_each_advance_and_done_in_order():
    recorder = Recorder()
    with reporting(recorder):
        with progress.task("count", total=3, unit="things") as t:
            for _ in range(3):
                t.advance()
    kinds = [e.kind for e in recorder.events]
    assert kinds == [START, ADVANCE, ADVANCE, ADVANCE, DONE]
    assert [e.completed for e in recorder.events] == [0, 1, 2, 3, 3]
    assert {(e.name, e.total, e.unit) for e in recorder.events} == {("count", 3, "things")}


def test_without_a_reporter_nothing_is_reported_and_the_task_still_counts():
    recorder = Recorder()
    with reporting(recorder):
        pass
    with progress.task("quiet", total=2) as t:
        t.advance(2)
    assert recorder.events == [] and t.completed == 2 and progress.current() is None


def test_the_reporter_is_only_installed_inside_its_block():
    outer, inner = Recorder(), Recorder()
    with reporting(outer):
        with reporting(inner):
            with progress.task("in"):
                pass
        with progress.task("out"):
            pass
    assert [e.name for e in inner.events] == ["in", "in"]
    assert [e.name for e in outer.events] == ["out", "out"]


def test_a_task_opened_inside_another_names_it_as_parent():
    recorder = Recorder()
    with reporting(recorder):
        with progress.task("outer") as outer:
            with progress.task("inner"):
                pass
        with progress.task("after"):
            pass
    parents = {e.name: e.parent for e in recorder.events}
    assert parents == {"outer": None, "inner": outer.id, "after": None}


def test_an_exception_leaving_the_block_marks_the_task_failed():
    recorder = Recorder()
    with reporting(recorder), pytest.raises(ValueError):
        with progress.task("doomed", total=2) as t:
            t.advance()
            raise ValueError("boom")
    assert [e.kind for e in recorder.events] == [START, ADVANCE, FAILED]


def test_advances_from_many_threads_are_all_counted_and_never_go_backwards():
    recorder = Recorder()
    with reporting(recorder):
        with progress.task("parallel", total=400) as t:
            threads = [threading.Thread(target=lambda: [t.advance() for _ in range(100)]) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    counts = [e.completed for e in recorder.of("parallel") if e.kind == ADVANCE]
    assert counts == list(range(1, 401))
    assert recorder.events[-1].kind == DONE and recorder.events[-1].completed == 400


def test_an_event_as_json_carries_every_field():
    recorder = Recorder()
    with reporting(recorder):
        with progress.task("one", total=1, unit="step") as t:
            t.advance()
    record = recorder.events[-1].to_json()
    assert record["event"] == "done" and record["name"] == "one" and record["completed"] == 1
    assert set(record) == {"event", "task", "name", "completed", "total", "unit", "parent", "elapsed_s"}
