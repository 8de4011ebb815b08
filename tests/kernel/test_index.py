"""Index simplification: every rewrite agrees with brute-force evaluation over the loop ranges."""
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from dnet.core.shapes import Sym, substitute
from dnet.kernel import index as ix


def _values(expr, ranges):
    names = sorted(ranges)
    for point in itertools.product(*(range(ranges[n]) for n in names)):
        env = dict(zip(names, point))
        yield env, int(substitute(expr, env))


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), new=st.data())
def test_reshape_round_trip_is_exact_and_folds_to_affine(shape, new):
    """delinearize(linearize(i)) == i over the whole range, for any split of the same elements."""
    names = [f"i{k}" for k in range(len(shape))]
    bounds = {n: d for n, d in zip(names, shape) if d != 1}
    index = tuple(Sym(n) if d != 1 else 0 for n, d in zip(names, shape))   # as lowering indexes size-1 axes
    linear = ix.linearize(index, ix.contiguous_strides(tuple(shape)))
    back = ix.delinearize(linear, tuple(shape), bounds)
    assert back == tuple(Sym(n) if d != 1 else 0 for n, d in zip(names, shape))
    total = 1
    for d in shape:
        total *= d
    split = new.draw(st.sampled_from([d for d in range(1, total + 1) if total % d == 0]))
    parts = ix.delinearize(linear, (total // split, split), bounds)
    for env, value in _values(linear, bounds):
        got = [int(substitute(p, env)) for p in parts]
        assert got == [value // split, value % split]


@settings(max_examples=60, deadline=None)
@given(a=st.integers(1, 6), b=st.integers(1, 6), k=st.integers(1, 12), c=st.integers(0, 3))
def test_floordiv_and_mod_agree_with_python(a, b, k, c):
    bounds = {"x": a, "y": b}
    expr = Sym("x") * c * k + Sym("y") + Sym("x")
    q, r = ix.floordiv(expr, k, bounds), ix.mod(expr, k, bounds)
    for env, value in _values(expr, bounds):
        assert int(substitute(q, env)) == value // k
        assert int(substitute(r, env)) == value % k


def test_symbolic_strides_fold_with_ranges():
    s = Sym("seq")
    bounds = {"b": 4, "t": s, "j": 384}
    linear = (Sym("b") * s + Sym("t")) * 384 + Sym("j")
    assert ix.delinearize(linear, (4, s, 384), bounds) == (Sym("b"), Sym("t"), Sym("j"))
    assert ix.nonnegative(s * 384 - 1) and not ix.nonnegative(s - 2)
