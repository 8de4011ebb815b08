"""Winograd F(m x m, 3 x 3)'s matrices, filter transform and rule (`kernel/winograd.py`), against direct sums."""
import numpy as np
import pytest

from dnet.errors import DnetError
from dnet.kernel.winograd import choose, eligible, filter_transform, matrices


def correlate(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """y[i, j] = sum over (y, z) of d[i + y, j + z] g[y, z]: what a convolution layer computes, by loops."""
    n = d.shape[0] - 2
    return np.array([[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(n)] for i in range(n)])


@pytest.mark.parametrize("m", [2, 4])
def test_the_transforms_compute_a_3x3_correlation_of_a_tile(m):
    bt, gm, at = matrices(m)
    rng = np.random.default_rng(m)
    for _ in range(5):
        d, g = rng.standard_normal((m + 2, m + 2)), rng.standard_normal((3, 3))
        y = at @ ((gm @ g @ gm.T) * (bt @ d @ bt.T)) @ at.T
        np.testing.assert_allclose(y, correlate(d, g), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m", [2, 4])
def test_filter_transform_is_g_g_gt_of_every_filter(m):
    _, gm, _ = matrices(m)
    w = np.random.default_rng(1).standard_normal((5, 3, 3, 3)).astype(np.float32)
    u = filter_transform(w, m)
    assert u.shape == (m + 2, m + 2, 5, 3) and u.dtype == np.float32
    for o in range(5):
        for c in range(3):
            np.testing.assert_allclose(u[:, :, o, c], gm @ w[o, c].astype(np.float64) @ gm.T, rtol=1e-6, atol=1e-7)


def test_only_3x3_stride_1_undilated_ungrouped_convolutions_are_eligible():
    assert eligible((3, 3), (1, 1), (1, 1), 1)
    assert not eligible((3, 3), (2, 2), (1, 1), 1)
    assert not eligible((3, 3), (1, 1), (2, 2), 1)
    assert not eligible((3, 3), (1, 1), (1, 1), 4)
    assert not eligible((1, 1), (1, 1), (1, 1), 1)


def test_the_modes_force_each_path_and_auto_follows_the_rule():
    assert choose("off", 64, 64) == 0
    assert choose("4", 3, 5) == 4 and choose("2", 64, 64) == 2
    assert choose("auto", 64, 64) == 4 and choose("auto", 32, 512) == 4
    assert choose("auto", 8, 64) == 0 and choose("auto", 64, 16) == 0   # the transforms would dominate
    assert choose("auto", 256, 256, 56, 56) == 4 and choose("auto", 256, 256, 28, 28) == 4
    assert choose("auto", 256, 256, 14, 14) == 2    # 16 tiles of 4 x 4, 49 of 2 x 2: a panel (32) at batch 1
    assert choose("auto", 512, 512, 7, 7) == 4      # 4 and 16: neither fills one; batches of 8 do as F(4, 3)


def test_an_unknown_mode_is_one_line_error():
    with pytest.raises(DnetError, match="unknown Winograd mode 'fast'"):
        choose("fast", 64, 64)
    with pytest.raises(DnetError, match="not implemented"):
        matrices(6)
