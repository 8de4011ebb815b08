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
    records = TuneCache(detect().fingerprint(), tmp_path).load()
    assert len(records) == len(rows)
    assert all(r["dims"] == {"batch": 1, "seq": 8} and r["threads"] == 1 for r in records.values())
    if any("(analytic)" not in row for row in rows):   # something won alone: the whole model decides
        assert out[-1].startswith("whole model:")
        kept_analytic = out[-1].endswith("analytic tiles kept")
        assert all(r.get("kept_analytic", False) is kept_analytic for r in records.values())


def test_tiles_that_do_not_speed_up_the_whole_model_are_not_kept(tmp_path, monkeypatch, capsys):
    import dnet.cli.tune_commands as T

    monkeypatch.setenv("DNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(T, "_compare", lambda before, after, feeds, repeats: (1.0, 1.0))   # no faster
    main(["tune", "minilm", "--dims", "batch=1,seq=8", "--threads", "1", "--budget", "5", "--repeats", "2", "-q"])
    out = capsys.readouterr().out.splitlines()
    records = TuneCache(detect().fingerprint(), tmp_path).load()
    if out[-1].startswith("whole model:"):
        assert out[-1].endswith("analytic tiles kept")
        assert all(r["kept_analytic"] for r in records.values())
    for r in records.values():   # every record holds the analytic tile: the same as a compile without tuning
        assert r["seconds"] == r["default_seconds"] or r.get("kept_analytic")


@pytest.mark.parametrize("args, words", [
    (["minilm", "--budget", "-1"], "--budget"),
    (["minilm", "--passes", "0"], "--passes"),
    (["minilm", "--margin", "1"], "--margin"),
    (["minilm", "--dims", "batch=1,sequence=8"], "sequence"),
])
def test_bad_options_are_one_line_errors(args, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["tune", *args])
    assert exit_.value.code == 2 and words in capsys.readouterr().err
