"""The language: the seed parses verbatim, and each form builds the object IR it should."""
import numpy as np
import pytest

from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.shapes import WILDCARD, Sym
from dnet.core.types import TensorType
from dnet.frontend.dsl import instantiate, parse_source
from dnet.frontend.dsl.loader import library_root
from dnet.objects.ir import ABSENT, Apply, Call, GetItem, If, Lit, Present, Ref, TupleExpr
from dnet.objects.lower import lower
from dnet.objects.symbols import SymbolFlag, SymbolKind

# The example of the original vision (seed section 2.1), byte for byte, trailing spaces included.
SEED = """forward(Attention, {
  fn_argument(forward, x, S_TENSOR, SYM_EXTERNAL, Tensor(shape(WILDCARD, WILDCARD, hidden_size), D_F16, 0));
  fn_argument(forward, mask,  S_TENSOR, SYM_EXTERNAL | SYM_OPTIONAL, Tensor(shape(WILDCARD), D_F16, 0));
  fn_argument(forward, cache, S_TENSOR, SYM_EXTERNAL | SYM_OPTIONAL, Tensor(shape(WILDCARD), D_F16, 0)); 

  capture( forward, 
    call(scaled_dot_product_attention,
         mul(idiv(hidden_size, num_attention_heads), 
             call(project_and_format, q_proj, x, num_attention_heads, cache)),
         call(project_and_format, k_proj, x, num_key_value_heads, cache),
         call(project_and_format, v_proj, x, num_key_value_heads, cache),
         cache, mask));
}); """
ATTENTION = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2)


def test_the_standard_library_holds_the_seed_verbatim():
    assert SEED in (library_root() / "std" / "llama.dnet").read_text()


def test_the_seed_parses_verbatim_into_a_method_of_attention():
    (stmt,) = parse_source(SEED, "seed.dnet").stmts
    assert stmt.head == "forward" and stmt.positional[0].text == "Attention"
    assert [s.head for s in stmt.positional[1].stmts] == ["fn_argument"] * 3 + ["capture"]


def test_the_seed_builds_the_object_ir_it_says(program):
    module = instantiate(program('import("std/llama.dnet");'), "Attention", ATTENTION)
    fn = module.root.functions["forward"]
    assert [(a.name, a.kind, a.flags) for a in fn.args] == [
        ("x", SymbolKind.TENSOR, SymbolFlag.EXTERNAL),
        ("mask", SymbolKind.TENSOR, SymbolFlag.EXTERNAL | SymbolFlag.OPTIONAL),
        ("cache", SymbolKind.TENSOR, SymbolFlag.EXTERNAL | SymbolFlag.OPTIONAL)]
    assert fn.args[0].type == TensorType((WILDCARD, WILDCARD, 64), DType.F16)  # hidden_size, instantiated
    assert fn.args[1].type == TensorType((WILDCARD,), DType.F16)
    project = Call("project_and_format", (Ref("q_proj"), Ref("x"), Ref("num_attention_heads"), Ref("cache")))
    q = Apply("mul", (Apply("idiv", (Ref("hidden_size"), Ref("num_attention_heads"))), project))
    assert fn.result.target == "scaled_dot_product_attention"
    assert fn.result.args[0] == q and fn.result.args[3:] == (Ref("cache"), Ref("mask"))
    assert fn.result.loc.file.endswith("llama.dnet") and fn.result.loc.line > 1


def test_every_instantiation_is_its_own_object(program):
    module = instantiate(program('import("std/llama.dnet");'), "Attention", ATTENTION)
    q, k = module.root.children["q_proj"], module.root.children["k_proj"]
    assert q is not k and q.functions["forward"] is not k.functions["forward"]
    assert (q.name, k.name) == ("q_proj", "k_proj")
    assert q.parameters["weight"].type.shape == (64, 64) and k.parameters["weight"].type.shape == (32, 64)


def test_constants_configuration_and_defaults(program):
    p = program("object(A, { constant(n, SYM_EXTERNAL); constant(k, SYM_EXTERNAL, 3); constant(nk, mul(n, k)); });")
    assert instantiate(p, "A", {"n": 2}).root.constants == {"n": 2, "k": 3, "nk": 6}
    assert instantiate(p, "A", {"n": 2, "k": 5}).root.constants == {"n": 2, "k": 5, "nk": 10}


def test_the_tensor_init_field_fills_a_parameter_without_weights(program):
    p = program("object(A, { parameter(ones, SYM_NONE, Tensor(shape(2, 3), D_F32, 1));"
                " parameter(b, SYM_EXTERNAL | SYM_OPTIONAL, Tensor(shape(3), D_F16, 0.5));"
                " parameter(w, SYM_EXTERNAL, Tensor(shape(3), D_F32, 7)); });")
    params = instantiate(p, "A").root.parameters
    np.testing.assert_array_equal(params["ones"].value, np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(params["b"].value, np.full(3, 0.5, np.float16))
    assert params["w"].value is None  # a required external parameter waits for its weight


def test_children_are_numbered_and_chained(program):
    p = program("""
        object(Scale, { constant(k, SYM_EXTERNAL); });
        forward(Scale, { fn_argument(forward, x, S_TENSOR, SYM_EXTERNAL); capture(forward, mul(x, k)); });
        object(Stack, { children(layer, Scale, 3, k = 2.0); });
        forward(Stack, { fn_argument(forward, x, S_TENSOR, SYM_EXTERNAL, Tensor(shape(WILDCARD), D_F32, 0));
                         capture(forward, call(layer, x)); });
        model(Stack);""")
    module = instantiate(p)
    assert list(module.root.children["layer"].children) == ["0", "1", "2"]
    assert module.root.children["layer"].children["2"].name == "layer.2"
    graph = lower(module, "forward", {"x": TensorType((Sym("n"),), DType.F32)})
    x = np.arange(4, dtype=np.float32)
    np.testing.assert_allclose(run_graph(graph, {"x": x})["output"], x * 8)


def test_special_forms_build_their_ir_nodes(program):
    p = program("""object(A, {});
        forward(A, {
          fn_argument(forward, x, S_TENSOR, SYM_EXTERNAL);
          fn_argument(forward, opt, S_TENSOR, SYM_EXTERNAL | SYM_OPTIONAL);
          fn_argument(forward, n, S_SCALAR, SYM_EXTERNAL);
          let(pair, tuple(x, 1, true, none, D_BF16, "s"));
          capture(forward, if(present(opt), item(pair, 0), softmax(x, axis = -1)));
        });""")
    fn = p.classes["A"].methods["forward"]
    assert fn.args[2].kind is SymbolKind.SCALAR
    assert fn.lets[0].value == TupleExpr((Ref("x"), Lit(1), Lit(True), Lit(ABSENT), Lit(DType.BF16), Lit("s")))
    assert fn.result == If(Present("opt"), GetItem(Ref("pair"), 0), Apply("softmax", (Ref("x"),), (("axis", Lit(-1)),)))


def test_arithmetic_and_tensor_ops_lower_to_the_numpy_oracle(program):
    p = program("""object(A, { constant(h, 6); constant(heads, 2); parameter(w, SYM_NONE, Tensor(shape(3), D_F32, 2)); });
        forward(A, {
          fn_argument(forward, x, S_TENSOR, SYM_EXTERNAL, Tensor(shape(WILDCARD, 3), D_F32, 0));
          let(scale, idiv(h, heads));
          capture(forward, add(mul(scale, x), sum(mul(x, w), axes = tuple(1), keepdim = true)));
        });
        model(A);""")
    graph = lower(instantiate(p), "forward", {"x": TensorType((Sym("b"), 3), DType.F32)})
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    want = 3 * x + (x * 2).sum(1, keepdims=True)
    np.testing.assert_allclose(run_graph(graph, {"x": x})["output"], want, rtol=1e-6)


def test_a_conditional_on_a_constant_keeps_one_branch(program):
    p = program("""object(A, { constant(relu_first, SYM_EXTERNAL, true); });
        forward(A, { fn_argument(forward, x, S_TENSOR, SYM_EXTERNAL, Tensor(shape(WILDCARD), D_F32, 0));
                     capture(forward, if(relu_first, relu(neg(x)), neg(relu(x)))); });""")
    x = np.array([-1.0, 2.0], np.float32)
    for flag, want in [(True, np.maximum(-x, 0)), (False, -np.maximum(x, 0))]:
        graph = lower(instantiate(p, "A", {"relu_first": flag}), "forward", {"x": TensorType((2,), DType.F32)})
        np.testing.assert_allclose(run_graph(graph, {"x": x})["output"], want)


def test_objects_passed_as_arguments(program):
    p = program("""
        object(Double, {}); forward(Double, { fn_argument(forward, x, S_TENSOR, SYM_EXTERNAL); capture(forward, add(x, x)); });
        object(Negate, {}); forward(Negate, { fn_argument(forward, x, S_TENSOR, SYM_EXTERNAL); capture(forward, neg(x)); });
        function(twice, { fn_argument(twice, f, S_OBJECT, SYM_EXTERNAL); fn_argument(twice, x, S_TENSOR, SYM_EXTERNAL);
                          capture(twice, call(f, call(f, x))); });
        object(M, { child(d, Double); child(n, Negate); });
        forward(M, { fn_argument(forward, x, S_TENSOR, SYM_EXTERNAL, Tensor(shape(2), D_F32, 0));
                     capture(forward, tuple(call(twice, d, x), call(twice, n, x))); });
        model(M);""")
    out = run_graph(lower(instantiate(p)), {"x": np.array([1.0, -3.0], np.float32)})
    np.testing.assert_allclose(out["output0"], [4.0, -12.0])
    np.testing.assert_allclose(out["output1"], [1.0, -3.0])


def test_imports_resolve_beside_the_file_then_in_the_library(tmp_path):
    from dnet.frontend.dsl import load_program

    (tmp_path / "layers.dnet").write_text('import("std/nn.dnet");\nobject(Mine, {});\n')
    (tmp_path / "main.dnet").write_text('import("layers.dnet");\nimport("std/nn.dnet");\n')
    program = load_program(tmp_path / "main.dnet")
    assert {"Mine", "Linear", "RMSNorm"} <= set(program.classes)
    assert len(program.files) == 3  # std/nn.dnet is read once


def test_load_dsl_records_the_entry_function_and_rejects_an_unknown_one(tmp_path):
    import dnet
    from dnet.errors import SymbolError

    (tmp_path / "m.dnet").write_text("object(A, {});\nforward(A, { fn_argument(forward, x, S_TENSOR, SYM_EXTERNAL, "
                                     "Tensor(shape(2), D_F32, 0)); capture(forward, neg(x)); });\nmodel(A);\n")
    assert dnet.load_dsl(tmp_path / "m.dnet").entry == "forward"
    with pytest.raises(SymbolError, match="object A has no function 'froward'.*did you mean 'forward'"):
        dnet.load_dsl(tmp_path / "m.dnet", entry="froward")


@pytest.mark.parametrize("name", ["Linear", "LinearNoBias", "LayerNorm", "RMSNorm", "MLP", "GatedMLP"])
def test_library_layers_match_numpy(program, name):
    p = program('import("std/nn.dnet");')
    config = {"Linear": dict(in_features=4, out_features=3), "LinearNoBias": dict(in_features=4, out_features=3),
              "LayerNorm": dict(size=4), "RMSNorm": dict(size=4),
              "MLP": dict(hidden_size=4, intermediate_size=5), "GatedMLP": dict(hidden_size=4, intermediate_size=5)}
    module = instantiate(p, name, config[name])
    rng = np.random.default_rng(0)
    w = {}
    for path, sym in module.root.named_parameters():
        sym.value = w[path] = rng.standard_normal(sym.type.shape).astype(np.float32)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    got = run_graph(lower(module, "forward", {"x": TensorType((2, 4), DType.F32)}), {"x": x})["output"]
    np.testing.assert_allclose(got, _numpy_layer(name, w, x), rtol=1e-4, atol=1e-5)


def _numpy_layer(name, w, x):
    from scipy.special import erf

    if name == "Linear":
        return x @ w["weight"].T + w["bias"]
    if name == "LinearNoBias":
        return x @ w["weight"].T
    if name == "LayerNorm":
        return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w["weight"] + w["bias"]
    if name == "RMSNorm":
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * w["weight"]
    if name == "MLP":
        h = x @ w["fc1.weight"].T + w["fc1.bias"]
        return (0.5 * h * (1 + erf(h / np.sqrt(2)))) @ w["fc2.weight"].T + w["fc2.bias"]
    g, u = x @ w["gate_proj.weight"].T, x @ w["up_proj.weight"].T
    return (g / (1 + np.exp(-g)) * u) @ w["down_proj.weight"].T
