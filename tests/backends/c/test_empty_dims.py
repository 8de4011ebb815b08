"""Dims of length 0 (an empty batch or sequence) run as empty loops on C, as on the reference."""
import numpy as np
import pytest

import dnet
from dnet import functional as F


class SoftmaxOfMatmul(dnet.Module):
    def forward(self, a, b):
        return F.softmax(F.matmul(a, b), -1)


@pytest.mark.parametrize("m,k,n", [(0, 16, 24), (4, 0, 24), (4, 16, 0), (0, 0, 0)])
def test_an_empty_dim_gives_an_empty_or_zero_sum_result_not_a_crash(c_cache, m, k, n):
    types = [dnet.TensorType(("m", "k"), dnet.f32), dnet.TensorType(("k", "n"), dnet.f32)]
    exe = dnet.compile(SoftmaxOfMatmul(), types, target="c", cache_dir=c_cache)
    a, b = np.ones((m, k), np.float32), np.ones((k, n), np.float32)
    out = exe(a, b)
    z = a @ b
    e = np.exp(z - z.max(-1, keepdims=True)) if n else z
    expected = e / e.sum(-1, keepdims=True)
    assert out.shape == (m, n)
    np.testing.assert_allclose(out, expected)
