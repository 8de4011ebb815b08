"""Dead-code elimination: what the entry needs stays, the rest goes."""
import numpy as np
import pytest

from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.errors import ShapeError, SymbolError
from dnet.objects import Apply, Argument, Call, Function, Let, Lit, Object, ObjectModule, Ref
from dnet.backends.numpy import run_graph
from dnet.objects.lower import lower
from dnet.objects.passes import default_pipeline, eliminate_dead_code, eliminate_dead_code_for
from dnet.objects.printer import print_module
from seed_attention_objects import HIDDEN, attention_module

F32 = DType.F32


def leaf(path: str) -> Object:
    obj = Object("Leaf", path)
    obj.add_constant("unused", 1)
    obj.add_parameter("w", TensorType((2,), F32), np.ones(2, np.float32))
    obj.add_parameter("spare", TensorType((2,), F32), np.ones(2, np.float32))
    obj.add_function(Function("forward", [Argument("x")], [], Apply("mul", (Ref("x"), Ref("w")))))
    obj.add_function(Function("other", [Argument("x")], [], Ref("spare")))
    return obj


def model() -> ObjectModule:
    root = Object("Root")
    root.add_constant("scale", 3)
    root.add_constant("unused", 4)
    root.add_child("used", leaf("used"))
    root.add_child("idle", leaf("idle"))
    root.add_function(Function(
        "forward", [Argument("x")],
        [Let("dead", Call("idle", (Ref("x"),))), Let("y", Call("used", (Ref("x"),))),
         Let("z", Apply("mul", (Ref("y"), Ref("scale"))))],
        Call("twice", (Ref("z"),))))
    root.add_function(Function("unreached", [Argument("x")], [], Call("idle.other", (Ref("x"),))))
    module = ObjectModule(root)
    module.add_function(Function("twice", [Argument("x")], [], Apply("mul", (Ref("x"), Lit(2)))))
    module.add_function(Function("never", [Argument("x")], [], Ref("x")))
    return module


def test_only_what_the_entry_needs_is_kept():
    module = eliminate_dead_code(model())
    root = module.root
    assert list(module.symbols.symbols) == ["twice"]
    assert list(root.symbols.symbols) == ["scale", "used", "forward"]
    assert [let.name for let in root.functions["forward"].body] == ["y", "z"]
    assert list(root.children["used"].symbols.symbols) == ["w", "forward"]


def test_another_entry_keeps_what_it_needs():
    module = eliminate_dead_code_for("unreached")(model())
    assert list(module.root.symbols.symbols) == ["idle", "unreached"]
    assert list(module.root.children["idle"].symbols.symbols) == ["spare", "other"]


def test_what_is_kept_still_computes_the_entry():
    graph = lower(eliminate_dead_code(model()), inputs={"x": TensorType((2,), F32)})
    x = np.array([1.0, -2.0], np.float32)
    np.testing.assert_array_equal(run_graph(graph, {"x": x})["output"], x * 1.0 * 3 * 2)  # x * w * scale, twice


def test_an_object_passed_to_a_known_callee_keeps_only_what_that_callee_calls(rng):
    module = default_pipeline()(attention_module(rng))  # q_proj, k_proj, v_proj go to project_and_format
    for child in ("q_proj", "k_proj", "v_proj"):
        assert list(module.root.children[child].functions) == ["forward", "position[cache=absent]"]


def test_an_object_used_as_a_plain_value_keeps_all_its_functions():
    module = model()
    forward = module.root.functions["forward"]
    forward.body.append(Let("alias", Ref("idle")))  # only lowering can tell what a call through it reaches
    forward.result = Apply("add", (Call("twice", (Ref("z"),)), Call("alias", (Ref("x"),))))
    pruned = eliminate_dead_code(module)
    assert list(pruned.root.children["idle"].functions) == ["forward", "other"]


def test_a_constant_named_by_an_argument_type_is_kept_and_still_checked(rng):
    module = default_pipeline()(attention_module(rng))
    assert module.root.constants == {"hidden_size": HIDDEN}
    with pytest.raises(ShapeError, match="argument 'x' of 'forward' has shape"):
        lower(module, inputs={"x": TensorType((1, 2, HIDDEN + 1), F32)})


def test_dead_code_elimination_leaves_its_input_unchanged():
    module = model()
    before = print_module(module)
    eliminate_dead_code(module)
    assert print_module(module) == before


def test_a_missing_entry_is_named_with_a_suggestion():
    with pytest.raises(SymbolError, match="no function 'forwrd'.*did you mean 'forward'"):
        eliminate_dead_code_for("forwrd")(model())
