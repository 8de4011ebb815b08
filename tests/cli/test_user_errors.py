"""The mistakes a user makes on the command line: each is one line naming the problem, exit status 2
(issue 13: each was a traceback, was silently ignored, or waited forever)."""
from pathlib import Path

import numpy as np
import pytest

from dnet.cli.main import main

ATTENTION = str(Path(__file__).parents[2] / "examples" / "attention.dnet")
SECRET = "0" * 64


def _one_line_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def files(tmp_path):
    (tmp_path / "latin1.toml").write_bytes("[[node]]\nname = \"caf\xe9\"\n".encode("latin-1"))
    (tmp_path / "port.toml").write_text('[[node]]\nname = "a"\naddress = "10.0.0.1:99999"\n'
                                        '[[node.device]]\nkind = "numpy"\n')
    (tmp_path / "junk.npz").write_text("not a zip file")
    np.save(tmp_path / "one.npy", np.ones(3))
    return tmp_path


CASES = {
    "port past 65535": (["worker", "--listen", "127.0.0.1:99999"], "port 99999 is past 65535"),
    "address not on this host": (["worker", "--listen", "192.0.2.77:7000", "--no-tls"],
                                 "cannot listen on 192.0.2.77:7000"),
    "off loopback without TLS": (["worker", "--listen", "0.0.0.0:0"], "no TLS files are given"),
    "secret file missing": (["worker", "--secret-file", "{tmp}/nope"], "cannot read the secret file"),
    "secret file a directory": (["worker", "--secret-file", "{tmp}"], "Is a directory"),
    "unknown backend": (["worker", "--backend", "nosuch"], "unknown target 'nosuch' (targets: c, "),
    "threads not numbers": (["cluster", "up", "2", "--threads", "a,b"], "bad --threads 'a,b'"),
    "no workers": (["cluster", "up", "0"], "at least one worker"),
    "local topology not a number": (["plan", ATTENTION, "-T", "local:x"], "cannot read the local topology"),
    "topology not UTF-8": (["plan", ATTENTION, "-T", "{tmp}/latin1.toml"], "is UTF-8 text"),
    "topology port past 65535": (["plan", ATTENTION, "-T", "{tmp}/port.toml"], "port at most 65535"),
    "artefact into an unwritable place": (["compile", ATTENTION, "--init", "seeded", "-o", "/proc/nope/out"],
                                          "cannot write /proc/nope/out"),
    "not an npz": (["run", ATTENTION, "--init", "seeded", "--data", "{tmp}/junk.npz"], "as .npz"),
    "an npy for an npz": (["run", ATTENTION, "--init", "seeded", "--data", "{tmp}/one.npy"], "one unnamed array"),
    "a dim no input has": (["run", ATTENTION, "--init", "seeded", "--dims", "foo=3"],
                           "--dims names foo, which no input's shape uses"),
    "weights for a built-in": (["run", "minilm", "--init", "seeded"], "--weights and --init are for DSL models"),
    "a DSL model without weights": (["run", ATTENTION], "--weights FILE or --init seeded"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_user_error_is_one_line_and_status_2(case, files, capsys, monkeypatch):
    monkeypatch.setenv("DNET_CLUSTER_SECRET", SECRET)
    monkeypatch.delenv("DNET_TLS_DIR", raising=False)
    argv, expected = CASES[case]
    err = _one_line_error(capsys, [a.replace("{tmp}", str(files)) for a in argv])
    assert expected in err


def test_a_dsl_model_runs_with_seeded_weights_or_the_same_weights_from_a_file(tmp_path, capsys):
    import dnet
    from dnet.frontend.dsl import seeded_weights

    x = np.random.default_rng(3).standard_normal((2, 8, 64)).astype(np.float16)
    np.savez(tmp_path / "x.npz", x=x)
    main(["run", ATTENTION, "--init", "seeded", "--seed", "5", "--data", str(tmp_path / "x.npz"),
          "-o", str(tmp_path / "seeded.npz")])
    np.savez(tmp_path / "w.npz", **seeded_weights(dnet.load_dsl(ATTENTION), seed=5))
    main(["run", ATTENTION, "--weights", str(tmp_path / "w.npz"), "--data", str(tmp_path / "x.npz"),
          "-o", str(tmp_path / "from_file.npz")])
    capsys.readouterr()
    seeded, from_file = np.load(tmp_path / "seeded.npz"), np.load(tmp_path / "from_file.npz")
    assert seeded.files and seeded.files == from_file.files
    for name in seeded.files:
        np.testing.assert_array_equal(seeded[name], from_file[name])
    assert np.isfinite(seeded["output0"].astype(np.float32)).all() and seeded["output0"].std() > 0.1


def test_inspect_prints_every_level_of_a_dsl_model_without_dims(capsys):
    main(["inspect", ATTENTION, "--init", "seeded"])
    out = capsys.readouterr().out
    assert "== object IR" in out and "== graph IR" in out
    assert "give --dims x_0=N,x_1=N" in out


@pytest.mark.parametrize("command, description", [("compile", "Compile MODEL"), ("plan", "Partition MODEL")])
def test_help_describes_the_command(command, description, capsys):
    try:
        main([command, "--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    assert description in capsys.readouterr().out


def test_probe_prints_op_overhead_as_a_time(monkeypatch, capsys):
    from dnet.topology import probe as probe_module
    from dnet.topology.model import Device

    report = probe_module.ProbeReport(Device(kind="numpy", cores=1), fingerprint="f", cached=True, measurements={
        "op_overhead": probe_module.Measurement(3e-6, 0.01, 5),
        "memory_bandwidth": probe_module.Measurement(1e10, 0.01, 5)})
    monkeypatch.setattr(probe_module, "probe", lambda *a, **k: report)
    main(["probe"])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert "3us" in lines["op_overhead"].replace(" ", "") and "FLOP" not in lines["op_overhead"]


def test_cluster_up_refuses_a_secret_file_others_can_read_and_leaves_it_untouched(tmp_path, capsys):
    shared = tmp_path / "shared.secret"
    shared.write_text("old contents")
    shared.chmod(0o644)
    err = _one_line_error(capsys, ["cluster", "up", "1", "--secret-file", str(shared)])
    assert "can be read by others" in err and shared.read_text() == "old contents"


def test_cluster_up_writes_its_secret_under_dnet_cache_dir(tmp_path, monkeypatch):
    from dnet.cli.cluster_commands import _cache_dir, _write_secret

    monkeypatch.setenv("DNET_CACHE_DIR", str(tmp_path / "cache"))
    assert _cache_dir() == tmp_path / "cache"   # `cluster up` without --secret-file writes there
    _write_secret(_cache_dir() / "cluster.secret", "s" * 64)
    path = tmp_path / "cache" / "cluster.secret"
    assert path.read_text() == "s" * 64 and oct(path.stat().st_mode & 0o777) == "0o600"
    _write_secret(path, "t" * 64)   # its own 0600 file: written again, whole
    assert path.read_text() == "t" * 64


@pytest.mark.parametrize("argv", [["plan", "cnn", "-T", "local:2", "--dims", "batch=2"],
                                  ["inspect", "minilm", "--level", "summary", "--dims", "bath=1,seq=8"]])
def test_a_dims_name_no_input_has_is_refused_by_plan_and_inspect_too(argv, capsys):
    err = _one_line_error(capsys, argv)
    assert "which no input's shape uses" in err
