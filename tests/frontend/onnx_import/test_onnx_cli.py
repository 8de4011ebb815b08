"""`dnet compile model.onnx` and `dnet run model.onnx`, as a user types them, checked against ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx.helper import make_node as node  # noqa: E402
from onnx_compare import declare_output_shapes, model, ort_run  # noqa: E402

from dnet.cli.main import main  # noqa: E402


@pytest.fixture
def onnx_file(tmp_path):
    """relu(x @ w + b) over a dynamic batch."""
    rng = np.random.default_rng(3)
    weights = {"w": rng.standard_normal((8, 4)).astype(np.float32), "b": rng.standard_normal(4).astype(np.float32)}
    nodes = [node("MatMul", ["x", "w"], ["h"]), node("Add", ["h", "b"], ["z"]), node("Relu", ["z"], ["y"])]
    proto = model(nodes, {"x": (np.float32, ["batch", 8])}, ["y"], weights)
    declare_output_shapes(proto, [("batch", 4)])
    path = tmp_path / "tiny.onnx"
    onnx.save(proto, str(path))
    return path


def _dnet(capsys, *argv: str) -> str:
    main(list(argv))
    return capsys.readouterr().out


def test_compile_an_onnx_file_for_c_then_run_the_artefact(onnx_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DNET_CACHE_DIR", str(tmp_path / "cache"))
    out_dir = tmp_path / "artefact"
    text = _dnet(capsys, "compile", str(onnx_file), "-t", "c", "-o", str(out_dir))
    assert f"compiled {onnx_file}" in text and "target c" in text
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    _dnet(capsys, "run", str(out_dir), "--data", str(tmp_path / "in.npz"), "-o", str(tmp_path / "out.npz"))
    (want,) = ort_run(str(onnx_file), {"x": x})
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["y"], want, rtol=1e-5, atol=1e-6)


def test_run_an_onnx_file_on_random_inputs_of_given_dims(onnx_file, capsys):
    text = _dnet(capsys, "run", str(onnx_file), "--dims", "batch=2")
    assert "y: float32[2, 4]" in text


def test_a_missing_onnx_file_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(tmp_path / "nope.onnx")])
    assert exit_info.value.code == 2
    assert "no such ONNX file" in capsys.readouterr().err
