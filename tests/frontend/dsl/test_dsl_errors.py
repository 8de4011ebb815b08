"""Malformed programs: each error is a dnet error at the offending text (file, line, column),
names that text, and suggests the closest known name where there is one."""
from dataclasses import dataclass

import numpy as np
import pytest

from dnet.errors import DnetError, DTypeError, ParseError, ShapeError, SymbolError
from dnet.frontend.dsl import instantiate, parse_program
from dnet.frontend.dsl.check import stand_in_parameters
from dnet.objects.lower import lower

LIN = """object(Lin, {
  constant(n, SYM_EXTERNAL, 4);
  parameter(weight, SYM_EXTERNAL, Tensor(shape(n, n), D_F32, 0));
});
forward(Lin, {
  fn_argument(forward, x, S_TENSOR, SYM_EXTERNAL, Tensor(shape(WILDCARD, n), D_F32, 0));
  capture(forward, matmul(x, weight));
});
"""
A = "object(A, { constant(hidden_size, 4); });\n"


def body(*stmts: str) -> str:
    """Object A with a forward taking tensor x, then `stmts` in its body."""
    return A + "forward(A, {\n  fn_argument(forward, x, S_TENSOR, SYM_EXTERNAL);\n  " + "\n  ".join(stmts) + "\n});\n"


@dataclass
class Case:
    id: str
    text: str
    error: type
    at: str | None        # the text the error points at (its first occurrence, or the `nth`); None: the end
    message: str          # a part of the message
    hint: str | None = None
    nth: int = 0
    stage: str = "parse"  # parse | instantiate | lower


CASES = [
    # syntax
    Case("missing semicolon", "object(A, {\n  constant(n, 1)\n  constant(m, 2);\n});", ParseError, "constant(m",
         "unexpected 'constant'", "missing ';'"),
    Case("infix arithmetic", "object(A, { constant(n, 1 + 2); });", ParseError, "+", "unexpected character '+'",
         "add(a, b)"),
    Case("square brackets", "object(A, { constant(n, [1, 2]); });", ParseError, "[", "'['", "tuple(a, b, ...)"),
    Case("single quotes", "import('x.dnet');", ParseError, "'", "unexpected character", "double quotes"),
    Case("stray comma", "object(A, { constant(n, 1,, 2); });", ParseError, ", 2)", "unexpected ','"),
    Case("unclosed block", "object(A, {\n  constant(n, 1);", ParseError, None, "unexpected end of file", "'}'"),
    # top level, members, bodies
    Case("misspelt top-level form", "objekt(A, { });", ParseError, "objekt", "'objekt(...)'", "'object'"),
    Case("let at top level", "let(x, 1);", ParseError, "let", "cannot stand at the top level", "function body"),
    Case("misspelt member form", "object(A, { constnt(n, 1); });", ParseError, "constnt", "'constnt(...)'",
         "'constant'"),
    Case("misspelt body form", body("fn_argumnt(forward, y, S_TENSOR, SYM_EXTERNAL);", "capture(forward, x);"),
         ParseError, "fn_argumnt", "'fn_argumnt(...)'", "'fn_argument'"),
    Case("method of unknown class", "object(Attention, {});\nforward(Atention, { capture(forward, 1); });",
         SymbolError, "Atention", "unknown object class 'Atention'", "'Attention'"),
    # duplicates
    Case("duplicate class", "object(A, {});\nobject(A, {});", SymbolError, "A", "duplicate definition of 'A'",
         "first defined at test.dnet:1:8", nth=1),
    Case("duplicate member", "object(A, { constant(n, 1); parameter(n, SYM_EXTERNAL, Tensor(shape(1), D_F32, 0)); });",
         SymbolError, "n, SYM_EXTERNAL", "duplicate definition of 'n' in object A", "first defined at test.dnet:1:22"),
    Case("duplicate argument", body("fn_argument(forward, x, S_TENSOR, SYM_EXTERNAL);", "capture(forward, x);"),
         SymbolError, "x", "duplicate definition of 'x' in function 'forward'", "first defined", nth=1),
    Case("duplicate let", body("let(y, x);", "let(y, x);", "capture(forward, y);"), SymbolError, "y", "duplicate "
         "definition of 'y'", nth=1),
    Case("second model", LIN + "model(Lin);\nmodel(Lin);", SymbolError, "model(", "a second model(...)",
         "the first is at test.dnet:9:7", nth=1),
    # kinds, flags and types
    Case("unknown kind", body("fn_argument(forward, y, S_TENSR, SYM_EXTERNAL);", "capture(forward, x);"),
         SymbolError, "S_TENSR", "unknown symbol kind 'S_TENSR'", "'S_TENSOR'"),
    Case("unknown flag", body("fn_argument(forward, y, S_TENSOR, SYM_EXTERNL);", "capture(forward, x);"),
         SymbolError, "SYM_EXTERNL", "unknown flag 'SYM_EXTERNL'", "'SYM_EXTERNAL'"),
    Case("flag that means nothing", "object(A, { constant(n, SYM_EXTERNAL | SYM_OPTIONAL, 1); });", SymbolError,
         "SYM_OPTIONAL", "SYM_OPTIONAL means nothing on constant 'n'", "allowed: SYM_EXTERNAL"),
    Case("constant without value", "object(A, { constant(n, SYM_NONE); });", SymbolError, "n, SYM_NONE",
         "constant 'n' without SYM_EXTERNAL needs a value"),
    Case("type on a scalar", body("fn_argument(forward, k, S_SCALAR, SYM_EXTERNAL, Tensor(shape(1), D_F32, 0));",
                                  "capture(forward, x);"), SymbolError, "Tensor(shape(1)",
         "a tensor type means nothing on S_SCALAR argument 'k'"),
    Case("unknown dtype", "object(A, { parameter(w, SYM_EXTERNAL, Tensor(shape(2), D_F23, 0)); });", SymbolError,
         "D_F23", "unknown dtype 'D_F23'", "'D_F32'"),
    Case("misspelt Tensor", "object(A, { parameter(w, SYM_EXTERNAL, Tensr(shape(2), D_F32, 0)); });", ParseError,
         "Tensr", "got 'Tensr(...)'", "'Tensor'"),
    Case("misspelt shape", "object(A, { parameter(w, SYM_EXTERNAL, Tensor(shap(2), D_F32, 0)); });", ParseError,
         "shap(", "got 'shap(...)'", "'shape'"),
    Case("init that is not a number", "object(A, { parameter(w, SYM_EXTERNAL, Tensor(shape(2), D_F32, zero)); });",
         ParseError, "zero", "init value, a number; got 'zero'"),
    # captures
    Case("capture names another function", body("capture(forwrd, x);"), SymbolError, "forwrd",
         "capture(forwrd, ...) inside function 'forward'", "write capture(forward, ...)"),
    Case("no capture", A + "forward(A, { fn_argument(forward, x, S_TENSOR, SYM_EXTERNAL); });", SymbolError,
         "forward(A", "function 'forward' captures no result", "add capture(forward"),
    Case("two captures", body("capture(forward, x);", "capture(forward, x);"), SymbolError, "capture", "captures its "
         "result twice", nth=1),
    # names, operations, calls
    Case("unknown symbol", body("capture(forward, mul(x, hiden_size));"), SymbolError, "hiden_size",
         "unknown symbol 'hiden_size' in function 'forward'", "'hidden_size'"),
    Case("unknown operation", body("capture(forward, sofmax(x));"), SymbolError, "sofmax",
         "unknown operation 'sofmax'", "'softmax'"),
    Case("operation arity", body("capture(forward, exp(x, x));"), ParseError, "exp", "exp(...) takes 1 argument(s), "
         "got 2"),
    Case("unknown attribute", body("capture(forward, softmax(x, axs = 1));"), ParseError, "axs",
         "softmax(...) has no attribute 'axs'", "'axis'"),
    Case("too many call arguments", "function(f, { fn_argument(f, x, S_TENSOR, SYM_EXTERNAL); capture(f, x); });\n"
         + body("capture(forward, call(f, x, x));"), SymbolError, "f, x, x", "'f' takes 1 argument(s), got 2",
         "arguments are x"),
    Case("missing call argument", "function(f, { fn_argument(f, a, S_TENSOR, SYM_EXTERNAL);"
         " fn_argument(f, b, S_TENSOR, SYM_EXTERNAL); capture(f, a); });\n" + body("capture(forward, call(f, x));"),
         SymbolError, "f, x)", "'f' is missing required argument(s) b"),
    Case("misspelt function", "function(project, { fn_argument(project, x, S_TENSOR, SYM_EXTERNAL); "
         "capture(project, x); });\n" + body("capture(forward, call(projet, x));"), SymbolError, "projet",
         "cannot call 'projet'", "'project'"),
    Case("calling a tensor", body("capture(forward, call(x, x));"), SymbolError, "x, x)",
         "'x' is a tensor argument; only S_OBJECT arguments can be called"),
    Case("calling a class", LIN + body("capture(forward, call(Lin, x));"), SymbolError, "Lin, x", "cannot call 'Lin'",
         "declare child(name, Lin, ...)"),
    Case("child without a class", "object(A, { child(c, k = 1); });", ParseError, "child(",
         "child(...) takes 2 positional argument(s) (name, Class, k = v, ...), got 1"),
    Case("child of unknown class", "object(A, { child(c, Linr); });", SymbolError, "Linr",
         "child 'c' of object A has unknown class 'Linr'"),
    Case("misspelt method of a child", LIN + "object(B, { child(lin, Lin); });\nforward(B, { fn_argument(forward, x, "
         "S_TENSOR, SYM_EXTERNAL); capture(forward, call(lin.forwrd, x)); });", SymbolError, "lin.forwrd",
         "'lin.forwrd' names nothing in object Lin", "'forward'"),
    Case("present of a required argument", body("capture(forward, if(present(x), x, x));"), SymbolError, "x), x",
         "present(x): 'x' is a required argument of 'forward'", "SYM_OPTIONAL"),
    Case("if without else", body("capture(forward, if(true, x));"), ParseError, "if(",
         "if(...) takes 3 argument(s) (condition, then, else), got 2"),
    Case("item index not a number", body("capture(forward, item(x, a));"), ParseError, "a));",
         "item(...) needs an integer index, got 'a'"),
    Case("keyword argument to call", body("capture(forward, call(forward, x = x));"), ParseError, "x = x",
         "call(...) takes no keyword arguments, got 'x'"),
    Case("flags in an expression", body("capture(forward, add(x | x, 1));"), ParseError, "x | x",
         "'x | x': flags combine with '|' only in declarations"),
    Case("dotted value", body("capture(forward, add(x.y, 1));"), ParseError, "x.y",
         "'x.y': a dotted name can only be the target of call(...)"),
    Case("dimension used as a value", "dims(seq);\n" + body("capture(forward, mul(x, seq));"), SymbolError,
         "seq))", "unknown symbol 'seq'", "dim(x, axis)"),
    Case("missing import", 'import("nothere.dnet");', ParseError, '"nothere', "cannot find import 'nothere.dnet'",
         "standard library"),
    # instantiation
    Case("missing configuration", LIN.replace("SYM_EXTERNAL, 4", "SYM_EXTERNAL") + "model(Lin);", SymbolError,
         "Lin);", "object Lin '<root>' needs constant 'n'", "declared at test.dnet:2:12", stage="instantiate"),
    Case("unknown configuration", LIN + "model(Lin, nn = 3);", SymbolError, "Lin, nn",
         "object Lin has no configuration constant 'nn'", "'n'", stage="instantiate"),
    Case("negative children count", LIN + "object(B, { children(l, Lin, -1); });\nmodel(B);", SymbolError, "l, Lin",
         "children 'l': count must be a non-negative integer, got -1", stage="instantiate"),
    Case("parameter of any shape", "object(B, { parameter(w, SYM_EXTERNAL, Tensor(shape(WILDCARD), D_F32, 0)); });"
         "\nmodel(B);", ShapeError, "Tensor(shape(WILDCARD)", "parameter 'w' needs a concrete shape", stage="instantiate"),
    Case("unknown constant in a configuration", LIN + "object(B, { child(a, Lin, n = size); });\nmodel(B);",
         SymbolError, "size", "unknown constant 'size'", stage="instantiate"),
    # shapes and dtypes, found when lowering (dnet check)
    Case("shape mismatch between objects", LIN + "object(B, { child(a, Lin, n = 4); child(b, Lin, n = 3); });\n"
         "forward(B, { fn_argument(forward, x, S_TENSOR, SYM_EXTERNAL, Tensor(shape(2, 4), D_F32, 0));\n"
         "  capture(forward, call(b, call(a, x))); });\nmodel(B);", ShapeError, "b, call(a, x))",
         "argument 'x' of 'forward' has shape (2, 4), declared (WILDCARD, 3)", stage="lower"),
    Case("dtype mismatch", LIN + "object(B, { child(a, Lin); });\nforward(B, { fn_argument(forward, x, S_TENSOR, "
         "SYM_EXTERNAL, Tensor(shape(2, 4), D_F16, 0)); capture(forward, call(a, x)); });\nmodel(B);", DTypeError,
         "a, x)", "argument 'x' of 'forward' has dtype f16, declared f32",
         stage="lower"),
    Case("operands that do not broadcast", "object(B, {});\nforward(B, {\n  fn_argument(forward, x, S_TENSOR, "
         "SYM_EXTERNAL, Tensor(shape(2, 4), D_F32, 0));\n  fn_argument(forward, y, S_TENSOR, SYM_EXTERNAL, "
         "Tensor(shape(3, 5), D_F32, 0));\n  capture(forward, add(x, y));\n});\nmodel(B);", ShapeError, "add(x, y)",
         "shapes (2, 4) and (3, 5) do not broadcast", stage="lower"),
]


def position(text: str, needle: str | None, nth: int) -> tuple[int, int]:
    if needle is None:
        lines = text.split("\n")
        return len(lines), len(lines[-1]) + 1
    start = -1
    for _ in range(nth + 1):
        start = text.index(needle, start + 1)
    line = text.count("\n", 0, start) + 1
    return line, start - (text.rfind("\n", 0, start) + 1) + 1


def run_stage(case: Case) -> None:
    program = parse_program(case.text, "test.dnet")
    if case.stage == "parse":
        return
    module = instantiate(program)
    stand_in_parameters(module)
    if case.stage == "lower":
        lower(module)


def test_there_are_at_least_30_malformed_programs():
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_program(case: Case):
    with pytest.raises(DnetError) as info:
        run_stage(case)
    err = info.value
    assert type(err) is case.error, f"{type(err).__name__}: {err}"
    assert case.message in err.message, err.message
    where = err.where
    assert where.file == "test.dnet" and (where.line, where.column) == position(case.text, case.at, case.nth), str(err)
    if case.hint:
        assert err.hint and case.hint in err.hint, err.hint
    assert str(where) in str(err)  # the rendered message leads with file:line:column


def test_weights_that_do_not_fit_name_the_weight():
    from dnet.errors import WeightError
    from dnet.frontend.dsl import load_weights

    module = instantiate(parse_program(LIN + "model(Lin);", "test.dnet"))
    with pytest.raises(WeightError, match=r"weight 'weight' has shape \(3, 3\), the model declares \(4, 4\)"):
        load_weights(module, {"weight": np.zeros((3, 3), np.float32)})
    with pytest.raises(WeightError, match="missing weight"):
        load_weights(module, {})
    with pytest.raises(WeightError, match="unexpected weight.*bias"):
        load_weights(module, {"weight": np.zeros((4, 4), np.float32), "bias": np.zeros(4, np.float32)})


@pytest.mark.parametrize("content", [None, b"not a safetensors file"], ids=["missing", "damaged"])
def test_a_weights_file_that_cannot_be_read_is_named(tmp_path, content):
    from dnet.errors import WeightError
    from dnet.frontend.dsl import load_weights

    path = tmp_path / "w.safetensors"
    if content is not None:
        path.write_bytes(content)
    module = instantiate(parse_program(LIN + "model(Lin);", "test.dnet"))
    with pytest.raises(WeightError, match=f"cannot read weights from {path}"):
        load_weights(module, path)
