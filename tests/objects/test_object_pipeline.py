"""The default pipeline is sound: after every pass, lowering gives a graph with the same outputs
(numpy reference backend), for the seed's Attention, traced Python models and random programs."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import dnet
from dnet import functional as F
from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.objects import If, Lit, ObjectModule, Present
from dnet.objects.ir import walk
from dnet.objects.lower import lower
from dnet.objects.passes import default_pipeline, run_with_trace
from dnet.objects.passes.walk import module_functions
from dnet.objects.printer import print_module
from object_programs import SHAPE, TYPE, programs
from seed_attention_objects import HEADS, HIDDEN, attention_module

F32 = DType.F32


def outputs(module: ObjectModule, types: dict, feeds: dict, entry: str = "forward") -> dict:
    return run_graph(lower(module, entry, types), feeds)


def assert_every_pass_keeps_the_outputs(module: ObjectModule, types: dict, feeds: dict,
                                        entry: str = "forward") -> list[tuple[str, ObjectModule]]:
    expected = outputs(module, types, feeds, entry)
    trace = run_with_trace(module, entry, present=[n for n in types if n not in required(module, entry)])
    for name, after in trace:
        got = outputs(after, types, feeds, entry)
        assert got.keys() == expected.keys(), name
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"after {name}")
    return trace


def required(module: ObjectModule, entry: str) -> set[str]:
    return {a.name for a in module.root.functions[entry].args if not a.optional}


# -- the seed's Attention ------------------------------------------------------------------------
@pytest.mark.parametrize("present", [(), ("mask",), ("cache",), ("mask", "cache")])
def test_seed_attention_computes_the_same_with_and_without_each_optional_argument(rng, present):
    batch, seq, head_dim = 2, 3, HIDDEN // HEADS
    arrays = {"x": rng.standard_normal((batch, seq, HIDDEN)),
              "mask": rng.standard_normal((seq, seq)),
              "cache": rng.standard_normal((batch, HEADS, seq, head_dim))}
    feeds = {k: v.astype(np.float32) for k, v in arrays.items() if k == "x" or k in present}
    types = {k: TensorType(v.shape, F32) for k, v in feeds.items()}
    assert_every_pass_keeps_the_outputs(attention_module(rng), types, feeds)


# What `dnet inspect --passes` shows at the end, for a caller giving neither mask nor cache.
SEED_AFTER_PIPELINE = [
    """\
function project_and_format[proj=q_proj,cache=absent] {
  argument proj: S_OBJECT, SYM_EXTERNAL
  argument x: S_TENSOR, SYM_EXTERNAL
  argument heads: S_SCALAR, SYM_EXTERNAL
  let y = call(proj, x)
  let split = permute(reshape(y, shape=tuple(dim(x, 0), dim(x, 1), heads, idiv(dim(y, 2), heads))), \
perm=tuple(0, 2, 1, 3))
  capture(call(proj.position[cache=absent], split))
}""",
    """\
function scaled_dot_product_attention[cache=absent,mask=absent] {
  argument q: S_TENSOR, SYM_EXTERNAL
  argument k: S_TENSOR, SYM_EXTERNAL
  argument v: S_TENSOR, SYM_EXTERNAL
  let scores = matmul(q, permute(k, perm=tuple(0, 1, 3, 2)))
  capture(matmul(softmax(scores, -1), v))
}""",
    """\
object Attention '<root>' {
  constant hidden_size = 384
  child q_proj: Linear 'q_proj'
  child k_proj: Linear 'k_proj'
  child v_proj: Linear 'v_proj'
  function forward {
    argument x: S_TENSOR, SYM_EXTERNAL, f32(WILDCARD, WILDCARD, hidden_size)
    capture(call(scaled_dot_product_attention[cache=absent,mask=absent], \
mul(32, call(project_and_format[proj=q_proj,cache=absent], q_proj, x, 12)), \
call(project_and_format[proj=k_proj,cache=absent], k_proj, x, 12), \
call(project_and_format[proj=v_proj,cache=absent], v_proj, x, 12)))
  }
}""",
    """\
object Linear 'q_proj' {
  parameter weight: f32(384, 384), SYM_EXTERNAL, loaded
  parameter bias: f32(384), SYM_EXTERNAL, loaded
  function forward {
    argument x: S_TENSOR, SYM_EXTERNAL
    capture(linear(x, weight, bias))
  }
  function position[cache=absent] {
    argument h: S_TENSOR, SYM_EXTERNAL
    capture(h)
  }
}""",
]


def test_seed_attention_after_the_pipeline_reads_as_expected(rng):
    blocks = print_module(default_pipeline()(attention_module(rng))).rstrip("\n").split("\n\n")
    q_helper, sdpa, root, q_proj = SEED_AFTER_PIPELINE
    k_helper, v_helper = (q_helper.replace("proj=q_proj", f"proj={c}") for c in ("k_proj", "v_proj"))
    k_proj, v_proj = (q_proj.replace("'q_proj'", f"'{c}'") for c in ("k_proj", "v_proj"))
    assert blocks == [q_helper, k_helper, v_helper, sdpa, root, q_proj, k_proj, v_proj]


def test_run_with_trace_gives_a_new_module_after_each_pass_of_the_pipeline(rng):
    module = attention_module(rng)
    trace = run_with_trace(module)
    assert [name for name, _ in trace] == ["fold_constants", "remove_branches", "fold_constants",
                                           "eliminate_dead_code"]
    assert len({id(m) for _, m in trace} | {id(module)}) == 5


# -- models traced from the Python frontend --------------------------------------------------------
class Scaled(dnet.Module):
    """A projection, scaled by a constant, plus a mask only when one is given."""

    def __init__(self, rng, n: int):
        super().__init__()
        self.heads = 2
        self.weight = dnet.Parameter(rng.standard_normal((n, n)).astype(np.float32))

    def forward(self, x, mask=None):
        y = F.matmul(x, self.weight) * (self.heads // 2 + 1)
        return y if mask is None else y + mask


class TwoCalls(dnet.Module):
    def __init__(self, rng, n: int = 4):
        super().__init__()
        self.plain, self.masked = Scaled(rng, n), Scaled(rng, n)

    def forward(self, x, mask):
        return F.softmax(self.plain(x) + self.masked(x, mask), -1)


def test_a_traced_model_keeps_its_outputs_and_loses_its_absent_argument(rng):
    x, mask = (rng.standard_normal((2, 4)).astype(np.float32) for _ in range(2))
    module = TwoCalls(rng).trace(TensorType((2, 4), F32), TensorType((2, 4), F32))
    types = {"x": TensorType((2, 4), F32), "mask": TensorType((2, 4), F32)}
    _, final = assert_every_pass_keeps_the_outputs(module, types, {"x": x, "mask": mask})[-1]
    plain = final.root.children["plain"].functions
    assert [a.name for f in plain.values() for a in f.args] == ["x"]


def test_a_traced_multi_head_attention_keeps_its_outputs(rng):
    class Model(dnet.Module):
        def __init__(self):
            super().__init__()
            self.attn = dnet.nn.MultiHeadAttention(8, 2, causal=True)

        def forward(self, x):
            return self.attn(x)

    model = Model()
    for name, p in model.named_parameters():
        p.load(rng.standard_normal(p.type.shape).astype(np.float32) * 0.3, name)
    x = rng.standard_normal((1, 3, 8)).astype(np.float32)
    module = model.trace(TensorType(("batch", "seq", 8), F32))
    assert_every_pass_keeps_the_outputs(module, {"x": TensorType(x.shape, F32)}, {"x": x})


# -- random programs ------------------------------------------------------------------------------
def branches_left(module: ObjectModule) -> list:
    return [node for _, fn in module_functions(module) for root in [fn.result, *(let.value for let in fn.body)]
            for node in walk(root)
            if isinstance(node, Present) or (isinstance(node, If) and isinstance(node.cond, Lit))]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_random_programs_compute_the_same_after_every_pass(module):
    rng = np.random.default_rng(0)
    before = print_module(module)
    for present in [(), ("m",)]:
        feeds = {name: rng.standard_normal(SHAPE).astype(np.float32) for name in ("x", *present)}
        trace = assert_every_pass_keeps_the_outputs(module, {name: TYPE for name in feeds}, feeds)
        assert branches_left(trace[-1][1]) == []
    assert print_module(module) == before
