"""Fuzzing: on any input the DSL raises a dnet error or succeeds, never a raw Python exception."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnet.errors import DnetError
from dnet.frontend.dsl import format_source, instantiate, parse_program
from dnet.frontend.dsl.check import stand_in_parameters
from dnet.frontend.dsl.loader import library_root
from dnet.objects.lower import lower

TOKENS = ["object", "function", "forward", "fn_argument", "capture", "let", "call", "if", "present", "tuple", "item",
          "constant", "parameter", "child", "children", "model", "import", "dims", "Tensor", "shape", "WILDCARD",
          "S_TENSOR", "S_SCALAR", "S_OBJECT", "SYM_EXTERNAL", "SYM_OPTIONAL", "D_F32", "D_F16", "add", "mul", "idiv",
          "softmax", "reshape", "x", "A", "n", "0", "-1", "2.5", '"s"', "(", ")", "{", "}", ",", ";", "|", "=", ".",
          "// c\n", " ", "\n"]
# The library file holding the seed's Attention, made a model so that what still parses is also lowered.
SEED_MODEL = ((library_root() / "std" / "llama.dnet").read_text()
              + "model(DecoderBlock, hidden_size = 16, intermediate_size = 24, num_attention_heads = 2, "
                "num_key_value_heads = 1);\n")


def run_everything(text: str) -> None:
    """Parse, format, instantiate and lower (shape-check) `text`; only dnet errors may escape."""
    try:
        format_source(text, "fuzz.dnet")
        program = parse_program(text, "fuzz.dnet")
        if program.model is not None:
            module = instantiate(program)
            stand_in_parameters(module)
            lower(module)
    except DnetError:
        pass


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_text(text):
    run_everything(text)


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map("".join))
def test_token_soup(text):
    run_everything(text)


@st.composite
def mutated(draw, source: str) -> str:
    """`source` with a few slices deleted, duplicated or replaced by a token."""
    text = source
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 12)))
        action = draw(st.sampled_from(["delete", "duplicate", "replace"]))
        if action == "delete":
            text = text[:i] + text[j:]
        elif action == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        else:
            text = text[:i] + draw(st.sampled_from(TOKENS)) + text[j:]
    return text


def test_the_unmutated_seed_model_lowers():
    """The text the mutations start from is valid all the way down."""
    module = instantiate(parse_program(SEED_MODEL))
    stand_in_parameters(module)
    assert len(lower(module).outputs) == 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(SEED_MODEL))
def test_mutations_of_the_seed_model(text):
    run_everything(text)


def nested(depth: int) -> str:
    """A model whose forward is neg(neg(...neg(x)...)), the capture `depth` forms deep in all."""
    inner = "neg(" * (depth - 3) + "x" + ")" * (depth - 3)
    return ("object(A, {});\nforward(A, { fn_argument(forward, x, S_TENSOR, SYM_EXTERNAL, Tensor(shape(2), D_F32, 0));"
            f"\n  capture(forward, {inner}); }});\nmodel(A);\n")


def test_deep_nesting_up_to_the_limit_formats_and_lowers():
    import numpy as np

    from dnet.backends.numpy import run_graph
    from dnet.frontend.dsl.syntax import MAX_DEPTH

    text = nested(MAX_DEPTH)
    assert parse_program(format_source(text))  # linear layout: the wide nest breaks line by line
    graph = lower(instantiate(parse_program(text)))
    out = run_graph(graph, {"x": np.ones(2, np.float32)})["output"]
    np.testing.assert_array_equal(out, np.full(2, (-1.0) ** (MAX_DEPTH - 3), np.float32))


def test_nesting_beyond_the_limit_is_an_error_at_the_deepest_form():
    from dnet.errors import ParseError
    from dnet.frontend.dsl.syntax import MAX_DEPTH

    for depth in (MAX_DEPTH + 1, 5000):
        text = nested(depth)
        try:
            parse_program(text, "deep.dnet")
        except ParseError as err:
            assert f"nested more than {MAX_DEPTH} deep" in err.message
            assert (err.where.line, err.where.column) == (3, len("  capture(forward, ") + 4 * (MAX_DEPTH - 3) + 1)
        else:
            raise AssertionError("no error")
