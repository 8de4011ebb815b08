"""The seed's Attention example (../shared/seed, section 2.1), built directly in object IR.

The module holds the two helpers the example calls as free functions; the root is an
Attention instantiated with hidden_size=384 and 12 heads, with q/k/v Linear children.
"""
from __future__ import annotations

import numpy as np

from dnet.core.dtypes import DType
from dnet.core.shapes import WILDCARD
from dnet.core.types import TensorType
from dnet.objects import (
    Apply, Argument, Call, Function, If, Let, Lit, Object, ObjectModule, Present, Ref, SymbolFlag,
    SymbolKind, TupleExpr,
)

HIDDEN, HEADS = 384, 12
EXTERNAL, OPTIONAL = SymbolFlag.EXTERNAL, SymbolFlag.EXTERNAL | SymbolFlag.OPTIONAL


def tensor(name: str, flags: SymbolFlag = EXTERNAL, type: TensorType | None = None) -> Argument:
    return Argument(name, SymbolKind.TENSOR, flags, type)


def project_and_format() -> Function:
    """proj(x) split into heads, (batch, heads, seq, head_dim), then proj's own `position` step."""
    y, x, heads = Ref("y"), Ref("x"), Ref("heads")
    shape = TupleExpr((Apply("dim", (x, Lit(0))), Apply("dim", (x, Lit(1))), heads,
                       Apply("idiv", (Apply("dim", (y, Lit(2))), heads))))
    split = Apply("permute", (Apply("reshape", (y,), (("shape", shape),)),), (("perm", Lit((0, 2, 1, 3))),))
    return Function(
        "project_and_format",
        [Argument("proj", SymbolKind.OBJECT_ARG), tensor("x"), Argument("heads", SymbolKind.SCALAR),
         tensor("cache", OPTIONAL)],
        [Let("y", Call("proj", (x,))), Let("split", split)],
        Call("proj.position", (Ref("split"), Ref("cache"))),
    )


def scaled_dot_product_attention() -> Function:
    q, k, v = Ref("q"), Ref("k"), Ref("v")
    scores = Apply("matmul", (q, Apply("permute", (k,), (("perm", Lit((0, 1, 3, 2))),))))
    return Function(
        "scaled_dot_product_attention",
        [tensor("q"), tensor("k"), tensor("v"), tensor("cache", OPTIONAL), tensor("mask", OPTIONAL)],
        [Let("scores", If(Present("cache"), Apply("mul", (scores, Lit(0.5))), scores)),
         Let("masked", If(Present("mask"), Apply("add", (Ref("scores"), Ref("mask"))), Ref("scores")))],
        Apply("matmul", (Apply("softmax", (Ref("masked"), Lit(-1))), v)),
    )


def linear(rng: np.random.Generator, path: str, n: int) -> Object:
    obj = Object("Linear", path)
    obj.add_parameter("weight", TensorType((n, n), DType.F32), (rng.standard_normal((n, n)) / n).astype(np.float32))
    obj.add_parameter("bias", TensorType((n,), DType.F32), rng.standard_normal(n).astype(np.float32))
    obj.add_function(Function("forward", [tensor("x")], [],
                              Apply("linear", (Ref("x"), Ref("weight"), Ref("bias")))))
    # Where a rotary embedding would go; here: add the cache where one is given.
    obj.add_function(Function("position", [tensor("h"), tensor("cache", OPTIONAL)], [],
                              If(Present("cache"), Apply("add", (Ref("h"), Ref("cache"))), Ref("h"))))
    return obj


def attention_forward() -> Function:
    """The seed's forward, argument for argument (f32: the reference backend checks it)."""
    x, cache = Ref("x"), Ref("cache")

    def project(child: str, heads: str) -> Call:
        return Call("project_and_format", (Ref(child), x, Ref(heads), cache))

    return Function(
        "forward",
        [tensor("x", EXTERNAL, TensorType((WILDCARD, WILDCARD, "hidden_size"), DType.F32)),
         tensor("mask", OPTIONAL, TensorType((WILDCARD,), DType.F32)),
         tensor("cache", OPTIONAL, TensorType((WILDCARD,), DType.F32))],
        [],
        Call("scaled_dot_product_attention", (
            Apply("mul", (Apply("idiv", (Ref("hidden_size"), Ref("num_attention_heads"))),
                          project("q_proj", "num_attention_heads"))),
            project("k_proj", "num_key_value_heads"),
            project("v_proj", "num_key_value_heads"),
            cache, Ref("mask"))),
    )


def attention_module(rng: np.random.Generator) -> ObjectModule:
    root = Object("Attention")
    root.add_constant("hidden_size", HIDDEN)
    root.add_constant("num_attention_heads", HEADS)
    root.add_constant("num_key_value_heads", HEADS)
    for child in ("q_proj", "k_proj", "v_proj"):
        root.add_child(child, linear(rng, child, HIDDEN))
    root.add_function(attention_forward())
    module = ObjectModule(root)
    module.add_function(project_and_format())
    module.add_function(scaled_dot_product_attention())
    return module

