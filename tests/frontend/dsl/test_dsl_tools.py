"""dnet check, dnet fmt and the object IR with the passes (dnet inspect) on DSL files."""
import pytest

from dnet.cli.main import main
from dnet.core.dtypes import DType
from dnet.core.shapes import Dim
from dnet.errors import ShapeError
from dnet.frontend.dsl import check_dsl, inspect_dsl


def sections(text: str) -> list[tuple[str, str]]:
    """[(title, module dump)] of an inspect_dsl text."""
    return [tuple(part.split(" ==\n", 1)) for part in text.split("== ")[1:]]


def cli(argv: list[str]) -> int:
    """Run the dnet command line; its exit status."""
    try:
        main(argv)
    except SystemExit as done:
        return done.code or 0
    return 0


def root_forward(dump: str) -> str:
    """The root object's forward, from a module dump."""
    start = dump.index("'<root>' {")
    start = dump.index("function forward", start)
    return dump[start:dump.index("\n  }", start)]


def test_check_gives_each_root_function_its_output_types(examples):
    report = check_dsl(examples / "attention.dnet")
    out, cache = report.outputs["forward"]
    assert out.dtype is DType.F16 and cache.dtype is DType.F16
    batch, seq = out.shape[:2]
    assert isinstance(batch, Dim) and out.shape[2] == 64            # (batch, seq, hidden_size)
    assert cache.shape == (2, batch, 2, seq, 16)                     # (2, batch, kv heads, seq, head_dim)


def test_check_without_a_model_checks_names_only(tmp_path):
    path = tmp_path / "lib.dnet"
    path.write_text('import("std/nn.dnet");\n')
    report = check_dsl(path)
    assert report.root is None and report.classes >= 6 and "names checked" in str(report)


def test_check_finds_a_shape_error_without_weights(tmp_path):
    path = tmp_path / "bad.dnet"
    path.write_text('import("std/nn.dnet");\nobject(M, { child(a, Linear, in_features = 4, out_features = 5);\n'
                    '  child(b, Linear, in_features = 4, out_features = 2); });\n'
                    'forward(M, { fn_argument(forward, x, S_TENSOR, SYM_EXTERNAL, Tensor(shape(3, 4), D_F32, 0));\n'
                    '  capture(forward, call(b, call(a, x))); });\nmodel(M);\n')
    with pytest.raises(ShapeError) as info:
        check_dsl(path)
    assert info.value.where.file.endswith("nn.dnet")  # in Linear's forward, where the matmul is written
    assert "(3, 5)" in str(info.value) and "(4, 2)" in str(info.value)


def test_passes_fold_the_seed_constants_and_remove_the_absent_paths(examples):
    trace = sections(inspect_dsl(examples / "attention.dnet"))
    assert [title for title, _ in trace] == ["object IR, as written", "after fold_constants", "after remove_branches",
                                             "after fold_constants", "after eliminate_dead_code"]
    views = dict(trace[:2] + trace[-1:])
    written, final = root_forward(views["object IR, as written"]), root_forward(views["after eliminate_dead_code"])
    assert "mul(idiv(hidden_size, num_attention_heads)" in written
    assert "mul(16, " in root_forward(views["after fold_constants"])        # 64 // 4, once instantiated
    assert "argument mask" in written and "argument cache" in written
    assert "argument mask" not in final and "argument cache" not in final  # absent: branches removed
    assert "present(" not in views["after eliminate_dead_code"].split("object Attention")[0]
    assert "child o_proj" in views["object IR, as written"] and "child o_proj" not in views["after eliminate_dead_code"]


def test_passes_keep_the_mask_path_when_the_caller_gives_it(examples):
    final = sections(inspect_dsl(examples / "attention.dnet", present=["mask"]))[-1][1]
    assert "argument mask" in root_forward(final) and "argument cache" not in root_forward(final)


def test_cli_check_and_fmt(examples, tmp_path, capsys):
    assert cli(["check", str(examples / "attention.dnet")]) == 0
    assert "Attention.forward -> f16(" in capsys.readouterr().out

    messy = tmp_path / "messy.dnet"
    messy.write_text("object(A,{constant(n,1);});")
    assert cli(["fmt", "--check", str(examples / "attention.dnet")]) == 0
    assert cli(["fmt", "--check", str(messy)]) == 1
    assert cli(["fmt", "-w", str(messy)]) == 0
    assert messy.read_text() == "object(A, {\n  constant(n, 1);\n});\n"


def test_cli_reports_a_dsl_error_as_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.dnet"
    bad.write_text("object(A, {\n  constnt(n, 1);\n});\n")
    assert cli(["check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2:3:" in err and "did you mean 'constant'?" in err


def test_cli_check_sets_constants(tmp_path, capsys):
    path = tmp_path / "lin.dnet"
    path.write_text('import("std/nn.dnet");\nobject(M, { constant(n, SYM_EXTERNAL); child(l, Linear, in_features = n, '
                    'out_features = 2); });\nforward(M, { fn_argument(forward, x, S_TENSOR, SYM_EXTERNAL, '
                    'Tensor(shape(WILDCARD, n), D_F32, 0)); capture(forward, call(l, x)); });\n')
    assert cli(["check", str(path), "--object", "M", "--set", "n=7"]) == 0
    out = capsys.readouterr().out
    assert "M.forward -> f32(x_0, 2)" in out
