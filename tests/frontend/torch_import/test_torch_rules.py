"""Single ATen rules against PyTorch: each case is a small function exported and run both ways.

The cases reach the rules the whole-model tests do not, and the corners of those they
do: torch's dtype promotion, negative and advanced indices, uneven windows.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.nn import functional as TF  # noqa: E402
from torch_compare import assert_matches, dnet_outputs, torch_outputs  # noqa: E402

import dnet  # noqa: E402


class Fn(nn.Module):
    """A function as a module, for torch.export."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def _floats(*shape):
    return torch.randn(*shape)


def _ints(high, *shape):
    return torch.randint(0, high, shape)


CASES = {
    # dtype promotion: torch's rules, not dnet's
    "int_true_division": (lambda a, b: a / b, lambda: (_ints(9, 3, 4), _ints(9, 3, 4) + 1)),
    "int_floor_division": (lambda a, b: torch.div(a - 4, b, rounding_mode="floor"),
                           lambda: (_ints(9, 3, 4), _ints(3, 3, 4) + 1)),
    "float_floor_division": (lambda a: torch.div(a, 0.3, rounding_mode="floor"), lambda: (_floats(3, 4),)),
    "int_plus_float_scalar": (lambda a: a + 0.5, lambda: (_ints(9, 5),)),
    "bool_sum_is_int64": (lambda a: (a > 0).sum(-1), lambda: (_floats(3, 4),)),
    "int_mean_of_cast": (lambda a: a.float().mean(0, keepdim=True), lambda: (_ints(9, 3, 4),)),
    "rsub_and_pow": (lambda a: 1 - a ** 3, lambda: (_floats(6),)),
    # element-wise
    "where_clamp_leaky_relu": (lambda a: torch.where(a > 0, a.clamp(max=0.5), TF.leaky_relu(a, 0.1)),
                               lambda: (_floats(4, 5),)),
    "activations": (lambda a: TF.gelu(a, approximate="tanh") + TF.silu(a) + torch.sigmoid(a) + torch.erf(a),
                    lambda: (_floats(4, 5),)),
    "any_all_logical": (lambda a: (a.gt(0).any(-1), a.lt(2).all(), ~(a > 0) & (a < 1)), lambda: (_floats(3, 4),)),
    # reductions
    "var_amax_argmax_max_dim": (lambda a: (a.var(-1), a.amax((0, 2)), a.argmax(), a.max(1).values,
                                           a.max(1).indices, a.min(0).indices), lambda: (_floats(2, 3, 4),)),
    "log_softmax": (lambda a: TF.log_softmax(a, 1), lambda: (_floats(3, 5),)),
    "cumsum_float_and_bool": (lambda a: (a.cumsum(0), (a > 0).cumsum(-1)), lambda: (_floats(4, 6),)),
    # movement
    "gather_smaller_index": (lambda a, i: torch.gather(a, 1, i), lambda: (_floats(3, 5), _ints(5, 2, 4))),
    "index_negative": (lambda a, i: a[i - 3], lambda: (_floats(3, 5), _ints(3, 2, 2))),
    "index_middle_axis": (lambda a, i: a[:, i], lambda: (_floats(3, 5, 2), _ints(5, 2, 4))),
    "index_apart_axes": (lambda a, i, j: a[i, :, j], lambda: (_floats(3, 5, 4), _ints(3, 6), _ints(4, 6))),
    "index_select_embedding": (lambda a, i: (a.index_select(1, i), TF.embedding(i, a)),
                               lambda: (_floats(5, 5), _ints(5, 7))),
    "select_and_strided_slice": (lambda a: (a[:, -1], a[-2:, 1::2], a[1:-1]), lambda: (_floats(4, 6),)),
    "split_unbind_cat": (lambda a: torch.cat([*a.split(2, dim=1)[::-1], a.unbind(1)[0][:, None]], 1),
                         lambda: (_floats(1, 5),)),
    "chunk_and_stack": (lambda a: torch.stack(a.chunk(3, dim=-1), 0), lambda: (_floats(2, 6),)),
    "repeat_and_expand": (lambda a: (a.repeat(2, 1, 3), a[:, None].expand(-1, 4, -1)), lambda: (_floats(2, 3),)),
    "transpose_squeeze_flatten": (lambda a: a.transpose(0, 2).squeeze(1).flatten(), lambda: (_floats(2, 1, 3),)),
    "pad_constant": (lambda a: TF.pad(a, (1, 2, 0, 1), value=-1.5), lambda: (_floats(2, 3, 4),)),
    # sources
    "arange_float_step_and_full": (lambda a: a + torch.arange(0, 1, 0.25) + torch.full((4,), 2.0),
                                   lambda: (_floats(3, 4),)),
    # layers
    "conv1d_grouped": (lambda a, w: TF.conv1d(a, w, padding=2, stride=2, groups=2), lambda: (_floats(2, 4, 9),
                                                                                              _floats(6, 2, 3))),
    "conv2d_dilated": (lambda a, w: TF.conv2d(a, w, dilation=2, padding=1), lambda: (_floats(1, 2, 7, 7),
                                                                                     _floats(3, 2, 3, 3))),
    "avg_pool_excluding_pad": (lambda a: TF.avg_pool2d(a, 3, 2, 1, count_include_pad=False),
                               lambda: (_floats(1, 2, 7, 7),)),
    "layer_norm_two_axes": (lambda a, w: TF.layer_norm(a, (3, 4), w), lambda: (_floats(2, 3, 4), _floats(3, 4))),
    "attention_with_bool_mask": (lambda q, k, m: TF.scaled_dot_product_attention(q, k, k, attn_mask=m),
                                 lambda: (_floats(1, 2, 3, 4), _floats(1, 2, 5, 4), _ints(2, 3, 5) > 0)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_matches_pytorch(name):
    fn, make_inputs = CASES[name]
    torch.manual_seed(0)
    inputs = make_inputs()
    module = Fn(fn).eval()
    exe = dnet.compile(dnet.from_torch(module, inputs))
    assert_matches(torch_outputs(module, *inputs), dnet_outputs(exe, *inputs), tolerance=1e-5)
