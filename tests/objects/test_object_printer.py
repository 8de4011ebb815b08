"""The object IR text dump, compared with text written by hand."""
import numpy as np
import pytest

from dnet.core.dtypes import DType
from dnet.core.shapes import WILDCARD, Sym
from dnet.core.types import TensorType
from dnet.objects import (
    ABSENT, Apply, Argument, Call, Function, GetItem, If, Let, Lit, Object, ObjectModule, Present, Ref, SymbolFlag,
    SymbolKind, TupleExpr,
)
from dnet.objects.printer import format_expr, print_module, print_object

OPTIONAL = SymbolFlag.EXTERNAL | SymbolFlag.OPTIONAL


def small_module() -> ObjectModule:
    leaf = Object("Linear", "proj")
    leaf.add_parameter("weight", TensorType((4, 4), DType.F32), np.zeros((4, 4), np.float32))
    leaf.add_parameter("bias", TensorType((4,), DType.F32), flags=OPTIONAL)
    leaf.add_function(Function("forward", [Argument("x")], [], Apply("linear", (Ref("x"), Ref("weight")))))
    root = Object("Block")
    root.add_function(Function(
        "forward",
        [Argument("x", type=TensorType((WILDCARD, "hidden"), DType.F16)),
         Argument("mask", flags=OPTIONAL),
         Argument("heads", SymbolKind.SCALAR)],
        [Let("h", Call("proj", (Ref("x"),))),
         Let("pair", TupleExpr((Ref("h"), Lit(0.5))))],
        If(Present("mask"), Apply("add", (GetItem(Ref("pair"), 0), Ref("mask"))),
           Apply("mul", (Ref("h"), Apply("idiv", (Ref("hidden"), Ref("heads"))))))))
    root.add_constant("hidden", 8)  # declared after the function: printed first all the same
    root.add_child("proj", leaf)
    module = ObjectModule(root)
    module.add_function(Function("double", [Argument("x")], [], Apply("mul", (Ref("x"), Lit(2)))))
    return module


EXPECTED = """\
function double {
  argument x: S_TENSOR, SYM_EXTERNAL
  capture(mul(x, 2))
}

object Block '<root>' {
  constant hidden = 8
  child proj: Linear 'proj'
  function forward {
    argument x: S_TENSOR, SYM_EXTERNAL, f16(WILDCARD, hidden)
    argument mask: S_TENSOR, SYM_EXTERNAL | SYM_OPTIONAL
    argument heads: S_SCALAR, SYM_EXTERNAL
    let h = call(proj, x)
    let pair = tuple(h, 0.5)
    capture(if(present(mask), add(item(pair, 0), mask), mul(h, idiv(hidden, heads))))
  }
}

object Linear 'proj' {
  parameter weight: f32(4, 4), SYM_EXTERNAL, loaded
  parameter bias: f32(4), SYM_EXTERNAL | SYM_OPTIONAL, not loaded
  function forward {
    argument x: S_TENSOR, SYM_EXTERNAL
    capture(linear(x, weight))
  }
}
"""


def test_module_dump_lists_functions_then_every_object_with_members_by_kind():
    assert print_module(small_module()) == EXPECTED


def test_object_dump_is_the_objects_block_of_the_module_dump():
    module = small_module()
    assert print_object(module.root.children["proj"]) + "\n" == EXPECTED.split("\n\n")[-1]


@pytest.mark.parametrize("value, text", [
    (ABSENT, "none"), (True, "true"), (False, "false"), (3, "3"), (-0.25, "-0.25"),
    (1e-06, "1e-06"), ("tanh", '"tanh"'), (DType.BF16, "D_BF16"), (Sym("batch") * 2, "2*batch"),
    ((1, (2, True)), "tuple(1, tuple(2, true))"), (WILDCARD, "WILDCARD"), (np.float64(0.5), "0.5"),
    (np.int32(7), "7"),
])
def test_literals_print_in_the_dsl_spelling(value, text):
    assert format_expr(Lit(value)) == text


def test_attributes_print_as_keywords_after_the_arguments():
    expr = Apply("reshape", (Ref("x"),), (("shape", TupleExpr((Lit(2), Ref("n")))),))
    assert format_expr(expr) == "reshape(x, shape=tuple(2, n))"
