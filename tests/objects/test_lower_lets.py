"""Lowering of let-chains and argument checks, against hand-derived values."""
import numpy as np
import pytest

from dnet.backends.numpy import run_graph
from dnet.core import TensorType, f32
from dnet.errors import Location, ShapeError
from dnet.objects import Apply, Argument, Call, Function, Let, Lit, Object, ObjectModule, Ref
from dnet.objects.lower import lower


def _chain_module(length: int) -> ObjectModule:
    body = [Let("v0", Apply("add", (Ref("x"), Lit(1.0))))]
    body += [Let(f"v{i}", Apply("add", (Ref(f"v{i - 1}"), Lit(1.0)))) for i in range(1, length)]
    root = Object("Chain")
    root.add_function(Function("forward", [Argument("x", type=TensorType((3,), f32))], body, Ref(f"v{length - 1}")))
    return ObjectModule(root)


def test_a_chain_of_thousands_of_lets_lowers_without_recursion_limits():
    g = lower(_chain_module(3000), inputs={"x": TensorType((3,), f32)})
    out = run_graph(g, {"x": np.zeros(3, np.float32)})["output"]
    np.testing.assert_array_equal(out, np.full(3, 3000.0, np.float32))


def test_an_argument_shape_error_points_at_the_call_site():
    inner = Object("Inner")
    inner.add_function(Function("forward", [Argument("x", type=TensorType((4,), f32))], [], Ref("x")))
    root = Object("Outer")
    root.add_child("inner", inner)
    call_site = Location("model.dnet", 7, 3)
    root.add_function(Function("forward", [Argument("x", type=TensorType((3,), f32))], [],
                               Call("inner", (Ref("x"),), loc=call_site)))
    with pytest.raises(ShapeError) as err:
        lower(ObjectModule(root), inputs={"x": TensorType((3,), f32)})
    assert err.value.where == call_site
    assert "argument 'x' of 'forward' has shape (3), declared (4)" in str(err.value)
