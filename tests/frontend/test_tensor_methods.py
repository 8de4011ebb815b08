"""Tensor operators and methods: each traced, compiled, run, and compared with numpy on the same data."""
import numpy as np
import pytest
from scipy import special

import dnet
from dnet.errors import ShapeError


class Lambda(dnet.Module):
    """A model whose forward is one expression on its inputs."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, y=None):
        return self.fn(x) if y is None else self.fn(x, y)


def run(fn, *arrays, shapes=None):
    """Compile fn for the arrays' types (or the given symbolic shapes) and run it on them."""
    shapes = shapes or [a.shape for a in arrays]
    types = [dnet.TensorType(s, dnet.DType.from_numpy(a.dtype)) for s, a in zip(shapes, arrays)]
    return dnet.compile(Lambda(fn), types)(*arrays)


@pytest.fixture
def x(rng):
    return rng.standard_normal((2, 3, 4)).astype(np.float32)


@pytest.fixture
def y(rng):
    return rng.standard_normal((2, 3, 4)).astype(np.float32) + 3.0


# One expression serves as its own oracle: numpy gives these operators the same meaning.
BINARY = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "truediv": lambda a, b: a / b, "pow": lambda a, b: a ** 2 + b ** 0.5, "floordiv": lambda a, b: a // b,
    "mod": lambda a, b: a % b, "radd": lambda a, b: 2.5 + a, "rsub": lambda a, b: 1 - a,
    "rmul": lambda a, b: 3 * a, "rtruediv": lambda a, b: 1 / b, "rpow": lambda a, b: 2 ** a,
    "neg": lambda a, b: -a + b, "abs": lambda a, b: abs(a), "broadcast": lambda a, b: a[:, :1] * b[0],
    "lt": lambda a, b: a < b - 3, "le": lambda a, b: a <= 0.0, "gt": lambda a, b: a > 0.5,
    "ge": lambda a, b: a >= b - 3, "eq": lambda a, b: a == a, "ne": lambda a, b: a != b,
    "and_or_not": lambda a, b: ((a > 0) & (b > 3)) | ~(a < 1),
}


@pytest.mark.parametrize("name", BINARY)
def test_operator_matches_numpy(name, x, y):
    fn = BINARY[name]
    out = run(fn, x, y)
    np.testing.assert_allclose(out, fn(x, y), rtol=1e-6, atol=1e-6)
    assert out.dtype == fn(x, y).dtype


def test_matmul_operator_matches_numpy(rng):
    a, b = rng.standard_normal((2, 3, 4)).astype(np.float32), rng.standard_normal((4, 5)).astype(np.float32)
    np.testing.assert_allclose(run(lambda p, q: p @ q, a, b), a @ b, rtol=1e-5, atol=1e-6)


def test_true_division_of_integers_gives_floats_as_in_pytorch():
    a = np.array([[7, -7, 3]], np.int64)
    out = run(lambda t: t / 2, a)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[3.5, -3.5, 1.5]])
    np.testing.assert_array_equal(run(lambda t: t // 2, a), a // 2)


INDEXES = {
    "int": lambda t: t[1], "negative int": lambda t: t[-1], "slice": lambda t: t[:, 1:3],
    "negative slice": lambda t: t[:, -2:], "step": lambda t: t[..., ::2], "start stop step": lambda t: t[:, 0:3:2, 1:],
    "ellipsis int": lambda t: t[..., -1], "none": lambda t: t[None, :, -3:-1], "none after int": lambda t: t[:, None, 0],
    "ellipsis none": lambda t: t[1:, ..., None], "clamped stop": lambda t: t[:, :100], "empty": lambda t: t[:, 2:1],
    "ints everywhere": lambda t: t[1, 2, 3], "ellipsis only": lambda t: t[...],
}


@pytest.mark.parametrize("name", INDEXES)
def test_indexing_matches_numpy(name, x):
    fn = INDEXES[name]
    np.testing.assert_array_equal(run(fn, x), fn(x))


@pytest.mark.parametrize("name", ["negative int", "negative slice", "ellipsis int", "none after int", "step"])
def test_indexing_symbolic_dims_compiles_once_for_every_size(name, rng):
    fn = INDEXES[name]
    exe = dnet.compile(Lambda(fn), [dnet.TensorType(("batch", "seq", 4), dnet.f32)])
    for shape in [(1, 3, 4), (3, 5, 4), (2, 8, 4)]:
        a = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_array_equal(exe(a), fn(a))


def test_integer_tensor_index_takes_rows(rng):
    table = rng.standard_normal((10, 4)).astype(np.float32)
    idx = np.array([[3, 0], [9, 9]], np.int64)
    np.testing.assert_array_equal(run(lambda t, i: t[i], table, idx), table[idx])


def test_negative_slice_step_is_a_clear_error(x):
    with pytest.raises(ShapeError, match="slice step must be a positive int, got -1"):
        run(lambda t: t[::-1], x)


def test_too_many_indices_is_a_clear_error(x):
    with pytest.raises(ShapeError, match=r"too many indices \(4\) for a tensor of rank 3"):
        run(lambda t: t[0, 0, 0, 0], x)


def test_static_index_out_of_range_is_a_clear_error(x):
    with pytest.raises(ShapeError, match="index 3 is out of range for an axis of size 3"):
        run(lambda t: t[:, 3], x)


# (dnet method expression, numpy oracle)
METHODS = {
    "reshape": (lambda t: t.reshape(-1, 6), lambda a: a.reshape(-1, 6)),
    "view tuple": (lambda t: t.view((4, 6)), lambda a: a.reshape(4, 6)),
    "permute": (lambda t: t.permute(2, 0, 1), lambda a: a.transpose(2, 0, 1)),
    "transpose": (lambda t: t.transpose(0, 2), lambda a: a.swapaxes(0, 2)),
    "T and mT": (lambda t: t[0].T + t[1].mT, lambda a: a[0].T + a[1].T),
    "unsqueeze": (lambda t: t.unsqueeze(1), lambda a: a[:, None]),
    "unsqueeze negative": (lambda t: t.unsqueeze(-1), lambda a: a[..., None]),
    "squeeze": (lambda t: t[:, :1].squeeze(1), lambda a: a[:, 0]),
    "squeeze all": (lambda t: t[:1, :, :1].squeeze(), lambda a: a[0, :, 0]),
    "flatten": (lambda t: t.flatten(1), lambda a: a.reshape(2, 12)),
    "flatten range": (lambda t: t.flatten(0, 1), lambda a: a.reshape(6, 4)),
    "expand": (lambda t: t[:, :1].expand(-1, 5, 4), lambda a: np.broadcast_to(a[:, :1], (2, 5, 4))),
    "contiguous": (lambda t: t.contiguous(), lambda a: a),
    "sum": (lambda t: t.sum(), lambda a: a.sum()),
    "sum dims": (lambda t: t.sum((0, 2), keepdim=True), lambda a: a.sum((0, 2), keepdims=True)),
    "mean": (lambda t: t.mean(-1), lambda a: a.mean(-1)),
    "max": (lambda t: t.max(), lambda a: a.max()),
    "max dim values": (lambda t: t.max(1).values, lambda a: a.max(1)),
    "max dim indices": (lambda t: t.max(dim=2, keepdim=True).indices, lambda a: a.argmax(2)[..., None]),
    "max other": (lambda t: t.max(t * -1), lambda a: np.maximum(a, -a)),
    "min dim": (lambda t: t.min(1)[0], lambda a: a.min(1)),
    "amax": (lambda t: t.amax((1, 2)), lambda a: a.max((1, 2))),
    "argmax": (lambda t: t.argmax(), lambda a: a.argmax()),
    "argmax dim": (lambda t: t.argmax(1, keepdim=True), lambda a: a.argmax(1, keepdims=True)),
    "var": (lambda t: t.var(-1), lambda a: a.var(-1, ddof=1)),
    "std": (lambda t: t.std(1, keepdim=True), lambda a: a.std(1, ddof=1, keepdims=True)),
    "softmax": (lambda t: t.softmax(-1), lambda a: special.softmax(a, -1)),
    "log_softmax": (lambda t: t.log_softmax(1), lambda a: special.log_softmax(a, 1)),
    "exp log": (lambda t: t.exp().log(), lambda a: a),
    "sqrt rsqrt": (lambda t: t.abs().sqrt() * (t.abs() + 1).rsqrt(), lambda a: np.sqrt(np.abs(a)) / np.sqrt(np.abs(a) + 1)),
    "tanh sigmoid relu": (lambda t: t.tanh() + t.sigmoid() + t.relu(), lambda a: np.tanh(a) + special.expit(a) + np.maximum(a, 0)),
    "clamp": (lambda t: t.clamp(min=-0.5, max=0.5), lambda a: np.clip(a, -0.5, 0.5)),
    "masked_fill": (lambda t: t.masked_fill(t < 0, -1.0), lambda a: np.where(a < 0, -1.0, a).astype(np.float32)),
    "to i32": (lambda t: (t * 10).to(dnet.i32), lambda a: (a * 10).astype(np.int32)),
    "to numpy dtype": (lambda t: (t > 0).to(np.float32), lambda a: (a > 0).astype(np.float32)),
    "float long": (lambda t: (t * 10).long().float(), lambda a: np.trunc(a * 10).astype(np.float32)),
    "shape arithmetic": (lambda t: t.reshape(t.shape[0] * t.shape[1], -1), lambda a: a.reshape(6, 4)),
}


@pytest.mark.parametrize("name", METHODS)
def test_method_matches_numpy(name, x):
    fn, oracle = METHODS[name]
    out = run(fn, x)
    want = oracle(x)
    assert out.shape == np.shape(want)
    assert out.dtype == np.asarray(want).dtype
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_methods_on_symbolic_dims_compile_once(rng):
    fn = lambda t: t.reshape(t.shape[0], -1).softmax(-1).unsqueeze(1).expand(-1, 2, -1).sum(1)  # noqa: E731
    exe = dnet.compile(Lambda(fn), [dnet.TensorType(("batch", "seq", 4), dnet.f32)])
    for shape in [(1, 1, 4), (3, 5, 4)]:
        a = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(exe(a), 2 * special.softmax(a.reshape(shape[0], -1), -1), rtol=1e-5, atol=1e-7)


def test_len_and_iteration_over_a_static_leading_axis(x):
    np.testing.assert_array_equal(run(lambda t: sum(list(t)[1:], t[0]) * len(t), x), x.sum(0) * 2)


def test_len_of_a_symbolic_axis_is_a_clear_error(x):
    with pytest.raises(dnet.DnetError, match="len\\(\\) of a tensor with leading size batch"):
        run(lambda t: t * len(t), x, shapes=[("batch", 3, 4)])


def test_functional_stack_and_normalize_match_numpy(x):
    F = dnet.functional
    np.testing.assert_array_equal(run(lambda t: F.stack([t, t * 2], -1), x), np.stack([x, x * 2], -1))
    want = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    np.testing.assert_allclose(run(lambda t: F.normalize(t, dim=1), x), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fn, message", [
    (lambda t: t.sum(3), "sum: axis 3 out of range for rank 3"),
    (lambda t: t.mean(-4), "mean: axis -4 out of range for rank 3"),
    (lambda t: t.softmax(5), "axis 5 out of range for rank 3"),
    (lambda t: t.transpose(0, 3), "transpose: axis 3 out of range for rank 3"),
    (lambda t: t.permute(0, 1, 3), "permute: axis 3 out of range for rank 3"),
    (lambda t: t.unsqueeze(4), "unsqueeze: axis 4 out of range for rank 4"),
    (lambda t: t.flatten(1, 3), "flatten: axis 3 out of range for rank 3"),
    (lambda t: dnet.functional.narrow(t, 3, 0, 1), "slice: axis 3 out of range for rank 3"),
], ids=["sum", "mean", "softmax", "transpose", "permute", "unsqueeze", "flatten", "narrow"])
def test_an_axis_out_of_range_is_a_shape_error_not_a_wrapped_axis(fn, message, x):
    """PyTorch raises for these; wrapping the axis around would compute something else."""
    with pytest.raises(ShapeError, match=message) as err:
        run(fn, x)
    assert err.value.where.file == __file__


@pytest.mark.parametrize("fn", [lambda t: t * t.sum().item(), lambda t: t * float(t.sum()), lambda t: t.numpy()],
                         ids=["item", "float", "numpy"])
def test_reading_a_traced_tensor_s_data_is_a_located_error(fn, x):
    with pytest.raises(dnet.DnetError, match="a traced tensor has no data while the model compiles") as err:
        run(fn, x)
    assert err.value.where.file == __file__


def test_pad_needs_lo_hi_pairs(x):
    with pytest.raises(ShapeError, match=r"pad: \(1,\) is not \(lo, hi\) pairs for at most 3 axes"):
        run(lambda t: dnet.functional.pad(t, (1,)), x)
