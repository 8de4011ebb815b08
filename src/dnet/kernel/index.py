"""Index arithmetic with loop-variable ranges: the simplifications that keep views cheap.

Movement ops map an output index to an input index. A reshape goes through a linear
index and back (`(lin // stride) % size`); knowing each loop variable's range lets
`((b*S + s) * 384 + j) // 384 % S` fold back to `s`, so a fused kernel reads its
inputs with affine indices and the C compiler can vectorise the inner loop.

All index values are non-negative, so floor division and truncating division agree.
"""
from __future__ import annotations

from typing import Mapping

from dnet.core.shapes import Dim, Sym, exact_div, substitute

Index = "int | Dim"
Bounds = Mapping[str, "int | Dim"]   # loop variable -> exclusive upper bound


def _terms(x) -> list[tuple[tuple, int]]:
    if isinstance(x, int):
        return [((), x)] if x else []
    return list(x.terms)


def _from_terms(terms: list[tuple[tuple, int]]):
    out: dict = {}
    for m, c in terms:
        out[m] = out.get(m, 0) + c
    return Dim._make(out)


def _monomial(m: tuple, c: int):
    return _from_terms([(m, c)])


def _atom_max(atom, bounds: Bounds):
    """Largest value of one atom, or None where unknown. Symbols not in `bounds` are dims."""
    if isinstance(atom, str):
        if atom in bounds:
            return bounds[atom] - 1
        return Sym(atom)
    op, inner, k = atom
    if op == "%":
        return k - 1
    hi = upper(inner, bounds)
    if hi is None:
        return None
    if isinstance(hi, int) and isinstance(k, int):
        return hi // k
    return exact_div(hi, k)


def upper(x, bounds: Bounds):
    """An upper bound of a non-negative index expression (None if one cannot be shown)."""
    total = 0
    for m, c in _terms(x):
        if c < 0:
            return None
        prod = c
        for atom in m:
            hi = _atom_max(atom, bounds)
            if hi is None:
                return None
            prod = prod * hi
        total = total + prod
    return total


def nonnegative(x) -> bool:
    """True when x >= 0 for every value >= 1 of its symbols (all coefficients of x(s+1) >= 0)."""
    if isinstance(x, int):
        return x >= 0
    shifted = substitute(x, {s: Sym(s) + 1 for s in x.free_symbols()})
    return all(c >= 0 for _, c in _terms(shifted))


def _divides(m: tuple, c: int, k) -> "int | Dim | None":
    return exact_div(_monomial(m, c), k)


def floordiv(x, k, bounds: Bounds):
    """x // k for a non-negative x, simplified where ranges allow."""
    if k == 1:
        return x
    quotient, rest = [], []
    for m, c in _terms(x):
        q = _divides(m, c, k)
        (quotient if q is not None else rest).append(q if q is not None else _monomial(m, c))
    q_sum = sum(quotient, 0)
    r_sum = sum(rest, 0)
    if r_sum == 0:
        return q_sum
    hi = upper(r_sum, bounds)
    if hi is not None and nonnegative(k - 1 - hi):
        return q_sum
    return q_sum + _atom("//", r_sum, k)


def mod(x, k, bounds: Bounds):
    """x % k for a non-negative x, simplified where ranges allow."""
    if k == 1:
        return 0
    rest = sum((_monomial(m, c) for m, c in _terms(x) if _divides(m, c, k) is None), 0)
    if rest == 0:
        return 0
    hi = upper(rest, bounds)
    if hi is not None and nonnegative(k - 1 - hi):
        return rest
    return _atom("%", rest, k)


def _atom(op: str, inner, k):
    if isinstance(inner, int) and isinstance(k, int):
        return inner // k if op == "//" else inner % k
    return Dim({((op, inner, k),): 1})


def linearize(index: tuple, strides: tuple):
    return recombine(sum((i * s for i, s in zip(index, strides)), 0))


def recombine(x):
    """Fold `c*k*(a // k) + c*(a % k)` back into `c*a` (what delinearizing a merged axis leaves)."""
    if isinstance(x, int):
        return x
    terms = dict(x.terms)
    for m, c in x.terms:
        if len(m) != 1 or isinstance(m[0], str) or m[0][0] != "%":
            continue
        _, inner, k = m[0]
        expected = c * k * Dim({(("//", inner, k),): 1})
        if not isinstance(expected, Dim) or len(expected.terms) != 1:
            continue
        (mq, cq), = expected.terms
        if terms.get(mq) != cq:
            continue
        del terms[m], terms[mq]
        return recombine(Dim._make(terms) + c * inner)
    return x


def contiguous_strides(shape: tuple) -> tuple:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc = acc * d
    return tuple(reversed(strides))


def delinearize(linear, shape: tuple, bounds: Bounds) -> tuple:
    """The row-major multi-index of `linear` in `shape`."""
    return tuple(mod(floordiv(linear, s, bounds), d, bounds) if d != 1 else 0
                 for s, d in zip(contiguous_strides(shape), shape))
