"""`dnet profile` from the command line: the table, a trace and JSON that parse, one-line errors."""
import json

import pytest

from dnet.cli.main import main


def test_profiles_a_model_and_writes_its_trace_and_json(tmp_path, capsys):
    trace, out = tmp_path / "trace.json", tmp_path / "profile.json"
    main(["profile", "minilm", "--dims", "batch=1,seq=8", "--threads", "1", "--repeats", "2", "--top", "3",
          "--trace", str(trace), "--output-json", str(out), "-q"])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["kernel", "calls", "ms"] and table[-2].startswith("total")
    assert len(table) == 2 + 3 + 2                       # head, rule, the 3 slowest, total, peaks
    events = json.loads(trace.read_text())["traceEvents"]
    data = json.loads(out.read_text())
    assert len(events) == sum(k["calls"] for k in data["kernels"])
    assert data["seconds"] == pytest.approx(sum(k["seconds"] for k in data["kernels"]))


def test_profiles_an_llm_decode_step(capsys):
    main(["profile", "smollm2", "--past", "8", "--threads", "1", "--repeats", "2", "--top", "2", "-q"])
    rows = capsys.readouterr().out.splitlines()
    assert "matmul" in rows[2] and rows[-2].startswith("total")


@pytest.mark.parametrize("args, words", [
    (["minilm", "--repeats", "0"], "--repeats"),
    (["smollm2", "--tokens", "0"], "--tokens"),
    (["minilm", "--dims", "batch=1,sequence=8"], "sequence"),
])
def test_bad_options_are_one_line_errors(args, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["profile", *args])
    assert exit_.value.code == 2 and words in capsys.readouterr().err
