"""Inputs are cast only safely (numpy's same_kind), the same on every backend."""
import numpy as np
import pytest

import dnet
from dnet import functional as F
from dnet.errors import DTypeError


class Scale(dnet.Module):
    def forward(self, x, ids):
        return F.mul(x, F.cast(ids, dnet.f32))


def _compiled(target, tmp_path):
    types = [dnet.TensorType((3,), dnet.f32), dnet.TensorType((3,), dnet.i64)]
    return dnet.compile(Scale(), types, target=target,
                        **({"cache_dir": str(tmp_path)} if target == "c" else {}))   # numpy takes no options


@pytest.mark.parametrize("target", ["numpy", "c"])
@pytest.mark.parametrize("name,x,ids", [
    ("x", np.ones(3, np.complex64), np.ones(3, np.int64)),
    ("ids", np.ones(3, np.float32), np.ones(3, np.float64)),
    ("ids", np.ones(3, np.float32), np.array(["1", "2", "3"])),
    ("x", np.array([None, None, None]), np.ones(3, np.int64)),
])
def test_an_unsafe_cast_is_a_dnet_error_naming_the_input(target, tmp_path, name, x, ids):
    exe = _compiled(target, tmp_path)
    with pytest.raises(DTypeError, match=f"input '{name}'"):
        exe(x, ids)


@pytest.mark.parametrize("target", ["numpy", "c"])
def test_safe_casts_within_a_kind_are_accepted(target, tmp_path):
    exe = _compiled(target, tmp_path)
    exe(np.ones(3, np.float64), np.ones(3, np.int32))
    exe([1.0, 2.0, 3.0], [1, 2, 3])


class Embed(dnet.Module):
    def __init__(self):
        super().__init__()
        self.table = dnet.Parameter(np.arange(10 * 4, dtype=np.float32).reshape(10, 4))

    def forward(self, ids):
        return F.embedding(ids, self.table)


@pytest.mark.parametrize("target", ["numpy", "c"])
@pytest.mark.parametrize("ids", [[0, 10], [-11, 2], [3, 99]])
def test_an_out_of_range_gather_is_the_same_error_on_every_backend(target, tmp_path, ids):
    exe = dnet.compile(Embed(), [dnet.TensorType((2,), dnet.i64)], target=target,
                       **({"cache_dir": str(tmp_path)} if target == "c" else {}))
    np.testing.assert_array_equal(exe(np.array([0, 9])), [[0, 1, 2, 3], [36, 37, 38, 39]])
    with pytest.raises(dnet.DnetError, match="gather: index out of range for axis of size 10"):
        exe(np.array(ids))


class Positions(dnet.Module):
    """Position embeddings as BERT takes them: a table of 10 rows indexed by arange(seq)."""

    def __init__(self):
        super().__init__()
        self.table = dnet.Parameter(np.arange(10 * 4, dtype=np.float32).reshape(10, 4))

    def forward(self, x):
        return F.add(x, F.embedding(F.arange(x.shape[0]), self.table))


@pytest.mark.parametrize("target", ["numpy", "c", "llvm", "opencl"])
def test_a_sequence_past_the_position_table_is_the_same_error_on_every_backend(target, tmp_path):
    """The positions are no input, so only the bound dims say they run past the table (C clamped them)."""
    from dnet.backends import registry

    reason = registry.device(target).available() if target != "numpy" else None
    if reason is not None:
        pytest.skip(f"backend '{target}' is not available here: {reason}")
    exe = dnet.compile(Positions(), [dnet.TensorType(("seq", 4), dnet.f32)], target=target,
                       **({"cache_dir": str(tmp_path)} if target in ("c", "llvm") else {}))
    np.testing.assert_array_equal(exe(np.zeros((10, 4), np.float32)), np.arange(40).reshape(10, 4))
    assert exe(np.zeros((0, 4), np.float32)).shape == (0, 4)
    with pytest.raises(dnet.DnetError, match=r"gather: index out of range for axis of size 10 \(found 0..10\)"):
        exe(np.zeros((11, 4), np.float32))
