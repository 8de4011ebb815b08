import pytest

from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.core.shapes import Sym, bind_shape, dim_from_json, dim_to_json, exact_div, render_dim, substitute
from dnet.errors import DTypeError, ShapeError


def test_canonical_form_makes_algebraic_equality_structural():
    b, s = Sym("batch"), Sym("seq")
    assert b * s * 384 == 384 * s * b
    assert (b * s * 384) // 384 == b * s
    assert (s + 1) - 1 == s
    assert s - s == 0 and isinstance(s - s, int)


def test_exact_division_by_a_monomial():
    b, s = Sym("batch"), Sym("seq")
    assert exact_div(b * s * 384, b * 12) == 32 * s
    assert exact_div(b * s, Sym("other")) is None


def test_substitute_and_render():
    b, s = Sym("batch"), Sym("seq")
    expr = (s + 1) // 2 * b
    assert substitute(expr, {"batch": 3, "seq": 7}) == 12
    assert render_dim(s + 1) == "seq + 1"


def test_json_round_trip():
    b, s = Sym("batch"), Sym("seq")
    for d in (5, b, b * s * 3 + 1, (s + 1) // 2, s % 4 + b):
        assert dim_from_json(dim_to_json(d)) == d


def test_bind_shape_binds_symbols_and_checks_compound_dims():
    b, s = Sym("batch"), Sym("seq")
    env: dict = {}
    assert bind_shape((b, s, s * 2), (2, 5, 10), env) and env == {"batch": 2, "seq": 5}
    assert not bind_shape((b, s, s * 2), (2, 5, 9), {})
    assert not bind_shape((b, b), (2, 3), {})


def test_a_bad_dimension_is_a_shape_error_naming_it():
    with pytest.raises(ShapeError, match=r"not a dimension: 1\.5"):
        TensorType(("batch", 1.5), DType.F32)
    with pytest.raises(ShapeError, match="needs a name"):
        Sym("")


def test_a_tensor_type_reads_a_dtype_name_and_rejects_an_unknown_one():
    assert TensorType((2,), "float16") == TensorType((2,), DType.F16)
    with pytest.raises(DTypeError, match="unknown dtype 'f33'"):
        TensorType((2,), "f33")
    with pytest.raises(DTypeError, match="needs a DType, got 3"):
        TensorType((2,), 3)
