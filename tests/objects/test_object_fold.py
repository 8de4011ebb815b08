"""Constant propagation and folding: what becomes a literal, and what must not."""
import pytest

from dnet.core.dtypes import DType
from dnet.core.shapes import Sym
from dnet.core.types import TensorType
from dnet.errors import ShapeError
from dnet.objects import (
    Apply, Argument, Function, GetItem, Let, Lit, Object, ObjectModule, Ref, SymbolKind, TupleExpr,
)
from dnet.objects.lower import lower
from dnet.objects.passes import fold_constants
from dnet.objects.printer import print_module
from seed_attention_objects import HEADS, HIDDEN, attention_module


def one_function(*lets: Let, result, args=(Argument("x"),), **constants) -> ObjectModule:
    root = Object("M")
    for name, value in constants.items():
        root.add_constant(name, value)
    root.add_function(Function("forward", list(args), list(lets), result))
    return ObjectModule(root)


def folded_result(module: ObjectModule):
    return fold_constants(module).root.functions["forward"].result


def test_seed_head_dim_becomes_a_number_once_instantiated(rng):
    forward = fold_constants(attention_module(rng)).root.functions["forward"]
    q = forward.result.args[0]  # mul(idiv(hidden_size, num_attention_heads), q)
    assert q.op == "mul" and q.args[0] == Lit(HIDDEN // HEADS) == Lit(32)


def test_folding_leaves_its_input_unchanged(rng):
    module = attention_module(rng)
    before = print_module(module)
    assert print_module(fold_constants(module)) != before
    assert print_module(module) == before


@pytest.mark.parametrize("op, args, value", [
    ("idiv", (384, 12), 32), ("sub", (2, 5), -3), ("max", (2, 5), 5), ("lt", (2, 5), True),
    ("not", (False,), True), ("sqrt", (16,), 4.0), ("div", (1, 4), 0.25), ("mul", (Sym("b"), 2), Sym("b") * 2),
])
def test_scalar_ops_on_literals_fold_to_their_value(op, args, value):
    module = one_function(result=Apply(op, tuple(Lit(a) for a in args)))
    assert folded_result(module) == Lit(value)


def test_lets_bound_to_literals_or_names_are_propagated_into_their_uses():
    module = one_function(
        Let("n", Apply("add", (Ref("c"), Lit(1)))), Let("y", Ref("x")),
        result=Apply("mul", (Ref("y"), Ref("n"))), c=4)
    assert folded_result(module) == Apply("mul", (Ref("x"), Lit(5)))


def test_items_of_tuples_fold():
    pair = TupleExpr((Ref("x"), Apply("add", (Lit(1), Lit(2)))))
    module = one_function(Let("p", pair), result=Apply("mul", (GetItem(Ref("p"), 0), GetItem(Ref("p"), 1))))
    assert folded_result(module) == Apply("mul", (Ref("x"), Lit(3)))


def test_a_tuple_of_literals_becomes_one_literal():
    module = one_function(result=Apply("reshape", (Ref("x"),), (("shape", TupleExpr((Ref("n"), Lit(2)))),)), n=3)
    assert folded_result(module).attrs == (("shape", Lit((3, 2))),)


def test_an_argument_shadows_a_constant_of_the_same_name():
    module = one_function(result=Apply("mul", (Ref("k"), Lit(2))), args=(Argument("k", SymbolKind.SCALAR),), k=7)
    assert folded_result(module) == Apply("mul", (Ref("k"), Lit(2)))


def test_a_let_shadows_a_constant_of_the_same_name():
    module = one_function(Let("k", Lit(3)), result=Apply("mul", (Ref("k"), Lit(2))), k=7)
    assert folded_result(module) == Lit(6)


def test_a_let_defined_in_terms_of_itself_is_left_for_lowering_to_report():
    module = one_function(Let("a", Apply("add", (Ref("a"), Lit(1)))), result=Ref("a"))
    assert folded_result(module) == Ref("a")


def test_a_division_by_zero_is_not_folded_and_lowering_reports_it():
    module = one_function(result=Apply("mul", (Ref("x"), Apply("idiv", (Ref("c"), Lit(0))))), c=4)
    assert folded_result(module) == Apply("mul", (Ref("x"), Apply("idiv", (Lit(4), Lit(0)))))
    with pytest.raises(ShapeError, match="idiv"):
        lower(fold_constants(module), inputs={"x": TensorType((2,), DType.F32)})
