"""--quiet, --json and the terminal display: what each prints, and that off a terminal nothing extra is."""
import io
import json
import re
import textwrap

import pytest
from rich.console import Console
from tiny_models import write_tiny_gguf

from dnet.cli.main import main
from dnet.cli.progress_view import JsonLinesReporter, Output, RichReporter
from dnet.core import progress
from dnet.core.progress import reporting

MODEL = textwrap.dedent("""
    import numpy as np
    import dnet
    from dnet import functional as F

    class Tiny(dnet.Module):
        def __init__(self):
            super().__init__()
            self.w = dnet.Parameter(np.random.default_rng(7).standard_normal((8, 4)).astype(np.float32))

        def forward(self, x):
            return F.softmax(F.relu(F.matmul(x, self.w)), -1)

    model = Tiny()
""")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny"), "qwen2", "q4_0")


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(MODEL)
    return path


def _run(capsys, *argv: str):
    main(list(argv))
    return capsys.readouterr()


def _events(err: str) -> list[dict]:
    """Every line of stderr as JSON: a line that is not fails the test."""
    return [json.loads(line) for line in err.splitlines()]


def _assert_every_task_ends(events: list[dict]) -> None:
    started = {e["task"] for e in events if e["event"] == "start"}
    ended = {e["task"] for e in events if e["event"] == "done"}
    assert started and started == ended


def test_generate_json_gives_progress_and_remarks_as_json_lines_and_the_same_text(tiny, capsys):
    argv = ["generate", str(tiny), "-p", "the dog", "-n", "6", "--temperature", "0", "--threads", "2"]
    plain = _run(capsys, *argv)
    as_json = _run(capsys, *argv, "--json")
    assert as_json.out == plain.out
    events = _events(as_json.err)
    _assert_every_task_ends(events)
    names = {e["name"] for e in events if e["event"] == "start"}
    assert {f"read {tiny.name} metadata", f"read {tiny.name} tensors", "lower kernels"} <= names
    notes = [e for e in events if e["event"] == "note"]
    assert notes[0]["model"] == str(tiny) and notes[-1]["generated_tokens"] == 6


def test_generate_quiet_prints_only_the_text(tiny, capsys):
    argv = ["generate", str(tiny), "-p", "the dog", "-n", "6", "--temperature", "0", "--threads", "2"]
    plain = _run(capsys, *argv)
    quiet = _run(capsys, *argv, "--quiet")
    assert quiet.out == plain.out and quiet.err == ""
    assert plain.err.count("\n") == 2 and "tok/s" in plain.err   # off a terminal: the two remarks, no progress


def test_compile_off_a_terminal_prints_no_progress_and_json_events_count_real_work(model_file, tmp_path, capsys,
                                                                                  monkeypatch):
    monkeypatch.setenv("DNET_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["compile", f"{model_file}:model", "-t", "c", "-i", "x:f32[3,8]"]
    plain = _run(capsys, *argv)
    assert plain.err == ""
    as_json = _run(capsys, *argv, "--json")
    assert as_json.out == plain.out
    events = _events(as_json.err)
    _assert_every_task_ends(events)
    for done in (e for e in events if e["event"] == "done" and e["total"] is not None):
        steps = [e["completed"] for e in events if e["task"] == done["task"] and e["event"] == "advance"]
        assert steps == list(range(1, done["total"] + 1))
    assert _run(capsys, *argv, "-q").err == ""


def test_probe_json_counts_the_measurements_it_prints(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DNET_CACHE_DIR", str(tmp_path))
    out = _run(capsys, "probe", "--quick", "--refresh", "--json")
    # the last probe's: on a busy machine an implausible probe is taken once more (dnet.topology.plausible)
    done = [e for e in _events(out.err) if e["event"] == "done" and e["name"] == "probe this node"][-1]
    measured = [line for line in out.out.splitlines() if re.search(r"spread \S+ over \d+ runs$", line)]
    assert done["completed"] == done["total"] == len(measured)


def test_plan_keeps_json_for_the_plan_file_and_takes_progress_json(tmp_path, capsys):
    topo = tmp_path / "t.toml"
    _run(capsys, "probe", "--quick", "-o", str(topo), "--name", "a")
    out = _run(capsys, "plan", "cnn", "-T", str(topo), "--json", str(tmp_path / "p.json"), "--progress-json")
    assert json.loads((tmp_path / "p.json").read_text())["stages"]
    _events(out.err)


def test_off_a_terminal_the_default_output_has_no_reporter_and_on_one_it_is_rich():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert Output(stream=io.StringIO()).reporter() is None
    assert isinstance(Output(stream=Terminal()).reporter(), RichReporter)
    assert Output(quiet=True, stream=Terminal()).reporter() is None
    assert isinstance(Output(json=True, stream=io.StringIO()).reporter(), JsonLinesReporter)


def test_the_rich_display_shows_open_tasks_and_is_gone_when_the_last_ends():
    screen = io.StringIO()
    reporter = RichReporter(Console(file=screen, force_terminal=True, width=100))
    with reporting(reporter):
        with progress.task("compile kernels", total=4, unit="kernels") as t:
            with progress.task("inner step"):
                t.advance(2)
                assert reporter._display is not None and len(reporter._rows) == 2
            t.advance(2)
    assert reporter._display is None and reporter._rows == {}
    assert "compile kernels" in screen.getvalue() and "inner step" in screen.getvalue()


def test_with_json_an_error_is_the_last_json_line_and_status_2(tmp_path, capsys):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00")
    with pytest.raises(SystemExit) as exit_:
        main(["generate", str(bad), "-p", "x", "--json"])
    assert exit_.value.code == 2
    last = _events(capsys.readouterr().err)[-1]
    assert last["event"] == "error" and "broken.gguf" in last["message"]
