"""Empty dims on every compiled backend and on the reference (issue 13: MiniLM at batch 0 died with SIGFPE
on C and LLVM, the Gemm dividing by the batch count when sharing tasks among threads; the numpy reference
raised numpy's own ValueError for a softmax over a zero-length axis)."""
import numpy as np
import pytest

import dnet
from dnet import functional as F
from dnet.backends import registry


class BatchedAttentionScores(dnet.Module):
    def forward(self, q, k):
        return F.softmax(F.matmul(q, k), -1)


TYPES = [dnet.TensorType(("b", 2, "m", 16), dnet.f32), dnet.TensorType(("b", 2, 16, "n"), dnet.f32)]


def _compile(target: str, tmp_path, **options):
    reason = registry.device(target).available()
    if reason is not None:
        pytest.skip(f"backend '{target}' is not available here: {reason}")
    return dnet.compile(BatchedAttentionScores(), TYPES, target=target, cache_dir=str(tmp_path), **options)


@pytest.mark.parametrize("target", ["c", "llvm"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("batch,m", [(0, 0), (0, 5), (0, 40), (3, 0)])
def test_an_empty_batch_of_matmuls_runs_on_any_thread_count(tmp_path, target, threads, batch, m):
    exe = _compile(target, tmp_path, threads=threads)
    q, k = np.ones((batch, 2, m, 16), np.float32), np.ones((batch, 2, 16, 24), np.float32)
    out = exe(q, k)
    # every score is 16, so each row's softmax is 1/24 per column (derived by hand)
    np.testing.assert_allclose(out, np.full((batch, 2, m, 24), 1 / 24, np.float32), rtol=1e-6)


@pytest.mark.parametrize("target", ["numpy", "c", "llvm"])
def test_a_softmax_over_an_empty_axis_is_empty_on_every_backend(tmp_path, target):
    exe = _compile(target, tmp_path) if target != "numpy" else dnet.compile(BatchedAttentionScores(), TYPES)
    out = exe(np.ones((2, 2, 3, 16), np.float32), np.ones((2, 2, 16, 0), np.float32))
    assert out.shape == (2, 2, 3, 0)


class RowExtremes(dnet.Module):
    def forward(self, x):
        return F.amax(x, -1), F.amin(x, -1)


@pytest.mark.parametrize("target", ["numpy", "c", "llvm"])
@pytest.mark.parametrize("dtype, low, high", [(dnet.f32, -np.inf, np.inf),
                                              (dnet.i64, np.iinfo(np.int64).min, np.iinfo(np.int64).max)])
def test_a_max_over_an_empty_axis_is_the_identity_on_every_backend(tmp_path, target, dtype, low, high):
    """A compiled max starts its accumulator at the lowest value (-INFINITY, INT64_MIN): over nothing that
    is the result, and the reference agrees instead of raising."""
    if target != "numpy" and registry.device(target).available() is not None:
        pytest.skip(f"backend '{target}' is not available here")
    options = {} if target == "numpy" else {"cache_dir": str(tmp_path)}
    exe = dnet.compile(RowExtremes(), [dnet.TensorType((3, "n"), dtype)], target=target, **options)
    biggest, smallest = exe(np.zeros((3, 0), dtype.np))
    np.testing.assert_array_equal(biggest, np.full(3, low, dtype.np))
    np.testing.assert_array_equal(smallest, np.full(3, high, dtype.np))
