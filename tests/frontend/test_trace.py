import numpy as np
import pytest

import dnet
from dnet import functional as F
from dnet.backends.numpy import run_graph
from dnet.errors import ShapeError, WeightError


class Linear(dnet.Module):
    def __init__(self, rng, i, o):
        super().__init__()
        self.weight = dnet.Parameter(rng.standard_normal((o, i)).astype(np.float32))
        self.bias = dnet.Parameter(rng.standard_normal(o).astype(np.float32))

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Two(dnet.Module):
    def __init__(self, rng):
        super().__init__()
        self.heads = 2
        self.a = Linear(rng, 8, 8)
        self.b = Linear(rng, 8, 4)

    def forward(self, x):
        b, t, _ = x.shape
        h = F.reshape(self.a(x), (b, t, self.heads, -1))
        return F.softmax(self.b(F.reshape(h, (b, t, 8))), -1)


def _oracle(m: Two, x: np.ndarray) -> np.ndarray:
    h = x @ m.a.weight.data.T + m.a.bias.data
    z = h @ m.b.weight.data.T + m.b.bias.data
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_trace_records_one_function_per_child_instance(rng):
    m = Two(rng)
    om = m.trace(dnet.TensorType(("batch", "seq", 8), dnet.f32))
    assert set(om.root.children) == {"a", "b"}
    assert "forward" in om.root.children["a"].functions
    assert om.root.constants == {"heads": 2}


def test_lowered_graph_matches_numpy_oracle_for_any_batch_and_seq(rng):
    m = Two(rng)
    exe = dnet.compile(m, [dnet.TensorType(("batch", "seq", 8), dnet.f32)])
    for shape in [(1, 1, 8), (2, 5, 8)]:
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(exe(x), _oracle(m, x), rtol=1e-5, atol=1e-6)


def test_lowering_reproduces_the_traced_shadow_graph(rng):
    m = Two(rng)
    om = m.trace(dnet.TensorType(("batch", "seq", 8), dnet.f32))
    g = dnet.to_graph(m, [dnet.TensorType(("batch", "seq", 8), dnet.f32)], optimize=False)
    x = rng.standard_normal((3, 4, 8)).astype(np.float32)
    np.testing.assert_allclose(run_graph(g, {"x": x})["output"], _oracle(m, x), rtol=1e-5, atol=1e-6)
    assert len(g) == len(om.shadow)


class Twice(dnet.Module):
    """Calls one child on two inputs: equal shapes record one function, a new shape a second."""

    def __init__(self, rng):
        super().__init__()
        self.lin = Linear(rng, 8, 8)

    def forward(self, x, y):
        return self.lin(x), self.lin(y)


def test_a_child_called_again_with_the_same_types_reuses_its_function(rng):
    m = Twice(rng)
    t = dnet.TensorType((2, 8), dnet.f32)
    om = m.trace(t, t)
    assert list(om.root.children["lin"].functions) == ["forward"]


def test_a_child_called_with_new_types_gets_a_second_function(rng):
    m = Twice(rng)
    om = m.trace(dnet.TensorType((2, 8), dnet.f32), dnet.TensorType((3, 8), dnet.f32))
    assert list(om.root.children["lin"].functions) == ["forward", "forward_1"]


class Shifted(dnet.Module):
    def __init__(self, rng):
        super().__init__()
        self.lin = Linear(rng, 8, 4)

    def forward(self, x, shift=None):
        y = self.lin(x)
        return y if shift is None else y + shift


def test_a_module_called_on_arrays_compiles_and_runs(rng):
    m = Shifted(rng)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    want = x @ m.lin.weight.data.T + m.lin.bias.data
    np.testing.assert_allclose(m(x), want, rtol=1e-5, atol=1e-5)


def test_a_module_called_on_arrays_takes_keyword_arguments(rng):
    m = Shifted(rng)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    shift = rng.standard_normal((3, 4)).astype(np.float32)
    want = x @ m.lin.weight.data.T + m.lin.bias.data + shift
    np.testing.assert_allclose(m(x, shift=shift), want, rtol=1e-5, atol=1e-5)


class SplitBySize(dnet.Module):
    def forward(self, x, y):
        b, t = x.shape
        _, d = y.shape
        return F.reshape(x, (b, t // d, d))


def test_symbolic_division_with_no_exact_result_is_a_located_shape_error():
    types = [dnet.TensorType(("b", "t"), dnet.f32), dnet.TensorType(("c", "d"), dnet.f32)]
    with pytest.raises(ShapeError, match=r"idiv\(t, d\): cannot divide t by symbolic d") as err:
        dnet.compile(SplitBySize(), types)
    assert err.value.where.file == __file__


def test_a_module_without_forward_is_a_dnet_error():
    class NoForward(dnet.Module):
        pass

    with pytest.raises(dnet.DnetError, match="NoForward defines no forward"):
        dnet.compile(NoForward(), [dnet.TensorType((2,), dnet.f32)])


def test_setting_an_attribute_before_super_init_is_a_located_error():
    class Early(dnet.Module):
        def __init__(self):
            self.k = 1

    with pytest.raises(dnet.DnetError, match=r"Early.__init__ must call super\(\).__init__\(\) before setting 'k'") \
            as err:
        Early()
    assert err.value.where.file == __file__


def test_a_child_returning_a_dict_is_a_located_error(rng):
    class Dict(dnet.Module):
        def forward(self, x):
            return {"y": x}

    class Parent(dnet.Module):
        def __init__(self):
            super().__init__()
            self.child = Dict()

        def forward(self, x):
            return self.child(x)["y"]

    with pytest.raises(dnet.DnetError, match="forward returned dict") as err:
        dnet.compile(Parent(), [dnet.TensorType((2,), dnet.f32)])
    assert err.value.where.file == __file__


def test_a_parameter_of_symbolic_shape_names_the_parameter():
    class Symbolic(dnet.Module):
        def __init__(self):
            super().__init__()
            self.w = dnet.Parameter(shape=("n",))

        def forward(self, x):
            return x + self.w

    with pytest.raises(WeightError, match="'w'.*parameter shapes must be static"):
        dnet.compile(Symbolic(), [dnet.TensorType((2,), dnet.f32)])


def test_compiling_for_arrays_instead_of_types_says_which_type_to_give(rng):
    with pytest.raises(dnet.DnetError, match=r"input 'x' is an array.*dnet.TensorType\(\(2, 8\), dnet.f32\)") as err:
        dnet.compile(Linear(rng, 8, 4), [np.zeros((2, 8), np.float32)])
    assert err.value.where.file == __file__


def test_compiling_for_the_wrong_number_of_inputs_points_at_the_call(rng):
    with pytest.raises(dnet.DnetError, match="cannot call Linear.forward with these inputs") as err:
        dnet.compile(Linear(rng, 8, 4), [dnet.TensorType((2, 8), dnet.f32)] * 2)
    assert err.value.where.file == __file__


def test_a_module_list_index_out_of_range_is_an_index_error(rng):
    layers = dnet.ModuleList([Linear(rng, 2, 2), Linear(rng, 2, 2)])
    assert layers[-1] is layers[1]
    with pytest.raises(IndexError, match="index 2 is out of range for a ModuleList of 2 modules"):
        layers[2]


def test_a_module_called_on_too_many_arrays_points_at_the_call(rng):
    m = Shifted(rng)
    x = np.zeros((3, 8), np.float32)
    with pytest.raises(dnet.DnetError, match="cannot call Shifted.forward with these inputs") as err:
        m(x, x, x)
    assert err.value.where.file == __file__
