"""`dnet tune` from the command line: a table of the model's Gemms, the records kept, one-line errors."""
import pytest

from dnet.cli.main import main
from dnet.core.tuning import TuneCache
from dnet.hardware import detect


def test_tunes_a_model_and_keeps_its_choices(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DNET_CACHE_DIR", str(tmp_path))
    main(["tune", "minilm", "--dims", "batch=1,seq=8", "--threads", "1", "--budget", "5", "--repeats", "2", "-q"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["kernel", "shape", "calls"]
    rows = [line for line in out[2:] if line.startswith("k")]
    assert rows and all("m=" in row for row in rows)
    assert out[-1].startswith("whole model:") and "untuned" in out[-1]
    records = TuneCache(detect().fingerprint(), tmp_path).load()
    assert len(records) == len(rows)
    assert all(r["dims"] == {"batch": 1, "seq": 8} and r["threads"] == 1 for r in records.values())


@pytest.mark.parametrize("args, words", [
    (["minilm", "--budget", "-1"], "--budget"),
    (["minilm", "--passes", "0"], "--passes"),
    (["minilm", "--dims", "batch=1,sequence=8"], "sequence"),
])
def test_bad_options_are_one_line_errors(args, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["tune", *args])
    assert exit_.value.code == 2 and words in capsys.readouterr().err
