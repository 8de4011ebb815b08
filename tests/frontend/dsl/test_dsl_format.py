"""The formatter: parse -> print -> parse gives the same object IR (property-tested on generated
programs), printing is idempotent, and comments survive."""
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnet.frontend.dsl import format_source, instantiate, parse_program
from dnet.frontend.dsl.loader import library_root
from dnet.objects.printer import print_module

SEED = (Path(__file__).resolve().parents[3] / "examples" / "attention.dnet")


def object_ir(text: str) -> list:
    """Every class of the program instantiated with its defaults, printed; and each function's lets."""
    program = parse_program(text, "gen.dnet")
    dumps = [print_module(instantiate(program, name)) for name in program.classes]
    functions = [*program.functions.values(), *(f for c in program.classes.values() for f in c.methods.values())]
    lets = [[(let.name, let.value) for let in fn.lets] for fn in functions]
    return dumps + lets


# -- generated programs ---------------------------------------------------------------------------
NAME = st.sampled_from(["a", "b", "hidden", "q_proj", "n_heads", "x1", "_t"])
SPACE = st.sampled_from([" ", "", "\n", "  ", "\n    ", " // note\n", "\t", " # hash comment\n"])
NUMBER = st.one_of(st.integers(-10**6, 10**6).map(str),
                   st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
                   st.sampled_from(["1e-12", "0.5", "-2.", ".25", "3E+2"]))
STRING = st.text(st.characters(codec="ascii", exclude_characters='"\\\n\r'), max_size=8).map(lambda s: f'"{s}"')
LITERAL = st.one_of(NUMBER, STRING, st.sampled_from(["true", "false", "none", "WILDCARD", "D_F16", "D_I64"]))


@st.composite
def expression(draw, names: list[str], depth: int = 0) -> str:
    s = draw(SPACE)
    if depth >= 3 or draw(st.integers(0, 3)) == 0:
        return s + draw(st.one_of(LITERAL, st.sampled_from(names)))
    sub = [draw(expression(names, depth + 1)) for _ in range(draw(st.integers(1, 3)))]
    kind = draw(st.sampled_from(["op", "op", "attr", "call", "if", "tuple", "item"]))
    if kind == "op":
        op, arity = draw(st.sampled_from([("add", 2), ("mul", 2), ("idiv", 2), ("neg", 1), ("exp", 1), ("where", 3)]))
        sub = (sub * 3)[:arity]
        return f"{s}{op}({', '.join(sub)})"
    if kind == "attr":
        return f"softmax({sub[0]},{draw(SPACE)}axis{draw(SPACE)}={draw(expression(names, depth + 1))})"
    if kind == "call":
        return f"call({draw(st.sampled_from(['helper', 'c', 'c.forward', 'cs']))}, {sub[0]})"
    if kind == "if":
        return f"if(present(opt), {sub[0]}, {(sub * 2)[1]})"
    if kind == "tuple":
        return f"tuple({', '.join(sub)})"
    return f"item({sub[0]}, {draw(st.integers(-2, 2))})"


@st.composite
def program_text(draw) -> str:
    constants = draw(st.lists(NAME, unique=True, max_size=3))
    lines = ['function(helper, { fn_argument(helper, v, S_TENSOR, SYM_EXTERNAL); capture(helper, v); });',
             'object(Sub, { constant(k, SYM_EXTERNAL, 1); });',
             'forward(Sub, { fn_argument(forward, v, S_TENSOR, SYM_EXTERNAL); capture(forward, mul(v, k)); });']
    members = [f"constant({c}, {draw(st.sampled_from(['SYM_EXTERNAL, ', '']))}{draw(NUMBER)});" for c in constants]
    members.append(f"parameter(w, SYM_EXTERNAL | SYM_OPTIONAL, Tensor(shape({draw(st.integers(1, 4))}), D_F32, "
                   f"{draw(st.sampled_from(['0', '1.5', 'true']))}));")
    members.append(f"child(c, Sub, k = {draw(NUMBER)});")
    members.append(f"children(cs, Sub, {draw(st.integers(0, 2))}, k = {draw(NUMBER)});")
    lines.append(f"object(Gen, {{{draw(SPACE)}{draw(SPACE).join(members)}}});")
    names = ["x", "opt", "w", *constants]
    body = ["fn_argument(forward, x, S_TENSOR, SYM_EXTERNAL, Tensor(shape(WILDCARD, 4), D_F32, 0));",
            "fn_argument(forward, opt, S_TENSOR, SYM_EXTERNAL | SYM_OPTIONAL);"]
    for i in range(draw(st.integers(0, 3))):
        body.append(f"let(l{i}, {draw(expression(names))});")
        names.append(f"l{i}")
    body.append(f"capture(forward, {draw(expression(names))});")
    lines.append("forward(Gen, {" + draw(SPACE).join(body) + "});")
    if draw(st.booleans()):
        lines.append("model(Gen);")
    return draw(SPACE).join(lines)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program_text())
def test_format_round_trip_keeps_the_object_ir(text):
    formatted = format_source(text)
    assert object_ir(formatted) == object_ir(text)
    assert format_source(formatted) == formatted


def declarations(program) -> dict:
    """Everything a program declares, lets compared by name and value (not by source position)."""
    def fn(f):
        return f.name, f.owner, f.args, [(let.name, let.value) for let in f.lets], f.result

    classes = {name: (c.constants, c.parameters, c.children, {m: fn(f) for m, f in c.methods.items()})
               for name, c in program.classes.items()}
    return {"classes": classes, "functions": {n: fn(f) for n, f in program.functions.items()}, "dims": set(program.dims),
            "model": program.model}


# -- the library and the seed ------------------------------------------------------------------------
def test_the_standard_library_round_trips():
    for path in sorted((library_root() / "std").glob("*.dnet")):
        text = path.read_text()
        formatted = format_source(text, str(path))
        assert format_source(formatted) == formatted
        before = parse_program(text, str(path), path.parent)
        after = parse_program(formatted, str(path), path.parent)
        assert declarations(before) == declarations(after), path.name


def test_comments_are_kept_above_their_statements():
    text = "// a header\nobject(A, {\n  // the width\n  constant(n, 4);   // trailing\n  constant(m, 5);\n  # last\n});\n"
    out = format_source(text)
    assert out.index("// a header") < out.index("object(A")
    assert out.index("// the width") < out.index("constant(n") < out.index("// trailing") < out.index("constant(m")
    assert out.index("# last") < out.index("});")
    assert format_source(out) == out


def test_the_canonical_form_of_the_seed_forward():
    text = SEED.read_text()
    assert format_source(text) == text  # the example file is canonical
    seed = format_source((library_root() / "std" / "llama.dnet").read_text())
    assert ("  capture(forward,\n          call(scaled_dot_product_attention,\n"
            "               mul(idiv(hidden_size, num_attention_heads),\n") in seed


def test_lets_keep_their_order():
    program = parse_program(format_source(
        "object(A, {}); forward(A, { fn_argument(forward, x, S_TENSOR, SYM_EXTERNAL); let(b, x); let(a, b); "
        "capture(forward, a); });"))
    assert [let.name for let in program.classes["A"].methods["forward"].lets] == ["b", "a"]
