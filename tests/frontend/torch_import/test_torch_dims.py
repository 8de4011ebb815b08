"""Dynamic dims: torch.export's symbols become dnet's, sizes arithmetic included; one compile, many sizes."""
from __future__ import annotations

import re

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.export import Dim  # noqa: E402
from torch_compare import assert_matches, dnet_outputs, torch_outputs  # noqa: E402

import dnet  # noqa: E402


class SizeArithmetic(nn.Module):
    """Reads sizes and computes with them: view, cat, arange, floor division of a size."""

    def forward(self, x):
        b, s, h = x.shape
        rows = x.reshape(b * s, h).sum(-1).view(b, s) + torch.arange(s)
        grown = torch.cat([x, x[:, :1]], 1)
        return rows, grown, torch.arange(s // 2 + 1)


def test_size_arithmetic_becomes_symbolic_dims_and_runs_at_every_size():
    model = SizeArithmetic()
    module = dnet.from_torch(model, (torch.randn(2, 4, 3),), ({0: Dim("batch"), 1: Dim("seq")},))
    exe = dnet.compile(module)
    types = [str(t) for t in exe.graph.output_types().values()]
    assert types == ["f32(batch, seq)", "f32(batch, seq + 1, 3)", "i64((seq)//2 + 1)"]
    for shape in [(1, 2, 3), (2, 5, 3), (4, 3, 3)]:
        x = torch.randn(*shape)
        assert_matches(torch_outputs(model, x), dnet_outputs(exe, x), tolerance=1e-6)


def test_dims_made_dynamic_without_a_name_keep_torchs_symbol_names():
    model = SizeArithmetic()
    module = dnet.from_torch(model, (torch.randn(2, 4, 3),), ({0: Dim.DYNAMIC, 1: Dim.AUTO},))
    (arg,) = module.root.functions["forward"].args
    assert [bool(re.fullmatch(r"s\d+", str(d))) for d in arg.type.shape] == [True, True, False]
    exe = dnet.compile(module)
    x = torch.randn(3, 6, 3)
    assert_matches(torch_outputs(model, x), dnet_outputs(exe, x), tolerance=1e-6)


class TwoInputs(nn.Module):
    def forward(self, tokens, memory):
        return tokens.float().unsqueeze(-1) + memory.mean(1, keepdim=True)


def test_one_dim_shared_by_two_inputs_is_one_symbol():
    batch = Dim("batch")
    module = dnet.from_torch(TwoInputs(), (), {"tokens": {0: batch}, "memory": {0: batch, 1: Dim("length")}},
                             example_kwargs={"memory": torch.randn(2, 5, 4), "tokens": torch.randint(0, 9, (2, 3))})
    types = {a.name: str(a.type) for a in module.root.functions["forward"].args}
    assert types == {"memory": "f32(batch, length, 4)", "tokens": "i64(batch, 3)"}


class Flagged(nn.Module):
    def forward(self, double, x):
        return x * 2 if double else x


def test_a_python_constant_input_is_baked_in_and_later_inputs_keep_their_dim_names():
    model = Flagged()
    module = dnet.from_torch(model, (True, torch.randn(2, 3)), (None, {1: Dim("width")}))
    assert [(a.name, str(a.type)) for a in module.root.functions["forward"].args] == [("x", "f32(2, width)")]
    x = torch.randn(2, 7)
    assert_matches(torch_outputs(model, True, x), dnet_outputs(dnet.compile(module), x), tolerance=0.0)
