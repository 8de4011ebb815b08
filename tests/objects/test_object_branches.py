"""Branch removal: specialisation on which optional arguments are present, constant conditions."""
import pytest

from dnet.errors import SymbolError
from dnet.objects import (
    ABSENT, Apply, Argument, Call, Function, If, Let, Lit, Object, ObjectModule, Present, Ref, SymbolFlag,
)
from dnet.objects.ir import walk
from dnet.objects.passes import remove_branches, remove_branches_for
from dnet.objects.printer import print_module
from seed_attention_objects import attention_module

OPTIONAL = SymbolFlag.EXTERNAL | SymbolFlag.OPTIONAL


def names_used(fn: Function) -> set[str]:
    """Every argument, name and present() of `fn`."""
    found = {a.name for a in fn.args}
    for root in [let.value for let in fn.body] + [fn.result]:
        found |= {n.name for n in walk(root) if isinstance(n, (Ref, Present))}
    return found


def call_targets(fn: Function) -> set[str]:
    return {n.target for root in [fn.result, *(let.value for let in fn.body)] for n in walk(root)
            if isinstance(n, Call)}


def test_seed_attention_loses_its_cache_and_mask_paths_when_the_caller_omits_them(rng):
    module = remove_branches(attention_module(rng))
    projections = [f"project_and_format[proj={child},cache=absent]" for child in ("q_proj", "k_proj", "v_proj")]
    sdpa = "scaled_dot_product_attention[cache=absent,mask=absent]"
    assert call_targets(module.root.functions["forward"]) == {*projections, sdpa}
    helpers = [module.symbols.symbols[name].value for name in [*projections, sdpa]]
    positions = [child.functions["position[cache=absent]"] for child in module.root.children.values()]
    for fn in [module.root.functions["forward"], *helpers, *positions]:
        assert not names_used(fn) & {"cache", "mask"}, fn.name
        assert not any(isinstance(n, If) for root in [fn.result, *(let.value for let in fn.body)] for n in walk(root))


def test_a_present_optional_argument_becomes_required_and_present_folds_to_true(rng):
    module = remove_branches_for(present={"mask"})(attention_module(rng))
    forward = module.root.functions["forward"]
    assert [(a.name, a.flags) for a in forward.args] == [("x", SymbolFlag.EXTERNAL), ("mask", SymbolFlag.EXTERNAL)]
    sdpa = module.symbols.symbols["scaled_dot_product_attention[cache=absent,mask=present]"].value
    assert sdpa.locals()["masked"].value == Apply("add", (Ref("scores"), Ref("mask")))


def test_a_call_through_an_object_argument_reaches_the_object_it_holds(rng):
    module = remove_branches_for(present={"cache"})(attention_module(rng))
    helper = module.symbols.symbols["project_and_format[proj=k_proj,cache=present]"].value
    assert helper.result == Call("proj.position[cache=present]", (Ref("split"), Ref("cache")))
    position = module.root.children["k_proj"].functions["position[cache=present]"]
    assert position.result == Apply("add", (Ref("h"), Ref("cache")))


def test_an_unknown_optional_argument_is_named_with_a_suggestion(rng):
    with pytest.raises(SymbolError, match="'mas' is not an optional argument of 'forward'.*did you mean 'mask'"):
        remove_branches_for(present={"mas"})(attention_module(rng))


def test_a_missing_entry_is_named_with_a_suggestion(rng):
    with pytest.raises(SymbolError, match="no function 'froward'.*did you mean 'forward'"):
        remove_branches_for(entry="froward")(attention_module(rng))


def test_branch_removal_leaves_its_input_unchanged(rng):
    module = attention_module(rng)
    before = print_module(module)
    remove_branches(module)
    assert print_module(module) == before


def caller_and_child(*lets: Let, result) -> ObjectModule:
    """A root whose forward(x, m?) is `lets`/`result`; a child whose forward(x, mask?) adds mask if present."""
    child = Object("Child", "child")
    child.add_function(Function("forward", [Argument("x"), Argument("mask", flags=OPTIONAL)], [],
                                If(Present("mask"), Apply("add", (Ref("x"), Ref("mask"))), Ref("x"))))
    root = Object("Root")
    root.add_child("child", child)
    root.add_function(Function("forward", [Argument("x"), Argument("m", flags=OPTIONAL)], list(lets), result))
    return ObjectModule(root)


def child_functions(module: ObjectModule) -> dict[str, Function]:
    return module.root.children["child"].functions


def test_one_specialisation_serves_every_call_site_that_knows_the_same():
    twice = Apply("add", (Call("child", (Ref("x"),)), Call("child.forward", (Ref("x"), Ref("m")))))
    module = remove_branches(caller_and_child(result=twice))
    assert module.root.functions["forward"].result == Apply("add", (
        Call("child.forward[mask=absent]", (Ref("x"),)), Call("child.forward[mask=absent]", (Ref("x"),))))
    assert list(child_functions(module)) == ["forward", "forward[mask=absent]"]


@pytest.mark.parametrize("passed", [(Lit(ABSENT),), (), (Ref("m"),), (Ref("alias"),)],
                         ids=["absent literal", "left off", "absent argument", "let holding an absent argument"])
def test_a_call_that_passes_nothing_calls_the_specialisation_without_the_argument(passed):
    module = remove_branches(caller_and_child(Let("alias", Ref("m")), result=Call("child", (Ref("x"), *passed))))
    assert module.root.functions["forward"].result == Call("child.forward[mask=absent]", (Ref("x"),))
    spec = child_functions(module)["forward[mask=absent]"]
    assert [a.name for a in spec.args] == ["x"] and spec.result == Ref("x")


def test_a_call_that_passes_a_tensor_calls_the_specialisation_where_it_is_present():
    module = remove_branches(caller_and_child(result=Call("child.forward", (Ref("x"), Apply("neg", (Ref("x"),))))))
    assert module.root.functions["forward"].result.target == "child.forward[mask=present]"
    assert child_functions(module)["forward[mask=present]"].result == Apply("add", (Ref("x"), Ref("mask")))


def test_a_call_whose_argument_may_or_may_not_be_absent_is_left_alone():
    maybe = If(Ref("flag_from_caller"), Ref("m"), Ref("x"))
    module = remove_branches(caller_and_child(result=Call("child", (Ref("x"), maybe))))
    assert module.root.functions["forward"].result.target == "child"
    assert list(child_functions(module)) == ["forward"]


@pytest.mark.parametrize("cond, taken", [(Lit(True), "a"), (Lit(0), "b"), (Apply("not", (Present("m"),)), "a")])
def test_an_if_on_a_constant_condition_keeps_only_the_branch_taken(cond, taken):
    module = caller_and_child(result=If(cond, Ref("a"), Ref("b")))
    assert remove_branches(module).root.functions["forward"].result == Ref(taken)


def test_an_if_on_an_absent_value_is_left_for_lowering_to_report():
    module = caller_and_child(result=If(Lit(ABSENT), Ref("a"), Ref("b")))
    assert remove_branches(module).root.functions["forward"].result == If(Lit(ABSENT), Ref("a"), Ref("b"))


def test_the_branch_not_taken_specialises_nothing():
    result = If(Present("m"), Call("child", (Ref("x"), Ref("m"))), Ref("x"))
    module = remove_branches(caller_and_child(result=result))
    assert list(child_functions(module)) == ["forward"]


def test_what_a_call_returns_is_known_from_the_callee():
    module = caller_and_child(result=Call("child", (Ref("x"), Call("child", (Ref("x"),)))))
    assert remove_branches(module).root.functions["forward"].result.target == "child.forward[mask=present]"


def test_a_function_returning_its_absent_argument_passes_on_absence():
    module = caller_and_child(result=Call("child", (Ref("x"), Call("pass_on", (Ref("x"),)))))
    module.root.add_function(Function("pass_on", [Argument("x"), Argument("mask", flags=OPTIONAL)], [],
                                      Ref("mask")))
    assert remove_branches(module).root.functions["forward"].result == Call(
        "child.forward[mask=absent]", (Ref("x"),))
