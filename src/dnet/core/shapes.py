"""Symbolic shapes.

A dimension is a plain `int` or a `Dim`: an integer expression over named symbols
(`batch`, `seq`, ...) kept in one canonical form, a sum of monomials with integer
coefficients, where a monomial is a sorted product of atoms (a symbol name, or a
floor-division / modulo of an expression by a constant). Canonical form makes
structural equality mean algebraic equality for everything reshapes produce
(`batch*seq*384 // 384 == batch*seq`). An expression that folds to a constant is
returned as an `int`, so static shapes are tuples of ints.

`WILDCARD` matches any dimension; it appears only in argument annotations.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Mapping, Union

from dnet.errors import ShapeError

# An atom is a symbol name, or ("//" | "%", Dim, int).
Atom = Union[str, tuple]
Monomial = tuple  # sorted tuple of atoms; () is the constant monomial


class _Wildcard:
    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "WILDCARD"

    def __reduce__(self):
        return (_Wildcard, ())


WILDCARD = _Wildcard()


@lru_cache(maxsize=1 << 16)   # sorting monomials asks for the same atoms' keys (each a rendering) again and again
def _atom_key(atom: Atom) -> tuple:
    if isinstance(atom, str):
        return (0, atom)
    op, inner, k = atom
    return (1, op, str(inner), k)


class Dim:
    """A symbolic integer expression. Build with `Sym('seq')` and arithmetic."""

    __slots__ = ("terms", "_hash")

    def __init__(self, terms: Mapping[Monomial, int]):
        clean = {m: c for m, c in terms.items() if c != 0}
        self.terms: tuple[tuple[Monomial, int], ...] = tuple(
            sorted(clean.items(), key=lambda mc: [_atom_key(a) for a in mc[0]])
        )
        self._hash = hash(self.terms)

    # -- construction -------------------------------------------------------
    @staticmethod
    def _make(terms: Mapping[Monomial, int]) -> "int | Dim":
        clean = {m: c for m, c in terms.items() if c != 0}
        if not clean:
            return 0
        if list(clean) == [()]:
            return clean[()]
        return Dim(clean)

    @staticmethod
    def _terms_of(x: "int | Dim") -> dict:
        if isinstance(x, Dim):
            return dict(x.terms)
        if isinstance(x, bool) or not isinstance(x, int):
            raise TypeError(f"not a dimension: {x!r}")
        return {(): x} if x else {}

    # -- arithmetic -----------------------------------------------------------
    def __add__(self, other):
        if not isinstance(other, (int, Dim)):
            return NotImplemented
        out = self._terms_of(self)
        for m, c in self._terms_of(other).items():
            out[m] = out.get(m, 0) + c
        return Dim._make(out)

    __radd__ = __add__

    def __neg__(self):
        return Dim._make({m: -c for m, c in self.terms})

    def __sub__(self, other):
        if not isinstance(other, (int, Dim)):
            return NotImplemented
        return self + (-other)

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, other):
        if not isinstance(other, (int, Dim)):
            return NotImplemented
        out: dict = {}
        for m1, c1 in self._terms_of(self).items():
            for m2, c2 in self._terms_of(other).items():
                m = tuple(sorted(m1 + m2, key=_atom_key))
                out[m] = out.get(m, 0) + c1 * c2
        return Dim._make(out)

    __rmul__ = __mul__

    def __floordiv__(self, other):
        if not isinstance(other, (int, Dim)):
            return NotImplemented
        exact = exact_div(self, other)
        if exact is not None:
            return exact
        if isinstance(other, Dim):
            raise TypeError(f"cannot divide {self} by symbolic {other} exactly")
        return Dim({(("//", self, other),): 1})

    def __mod__(self, other):
        if not isinstance(other, int):
            return NotImplemented
        if all(c % other == 0 for _, c in self.terms):
            return 0
        return Dim({(("%", self, other),): 1})

    def __rfloordiv__(self, other):
        raise TypeError(f"cannot divide {other} by symbolic {self}")

    # -- comparison -----------------------------------------------------------
    def __eq__(self, other) -> bool:
        return isinstance(other, Dim) and self.terms == other.terms

    def __hash__(self) -> int:
        return self._hash

    def __bool__(self) -> bool:  # a symbolic dim is never known to be zero
        return True

    # -- queries --------------------------------------------------------------
    def free_symbols(self) -> set[str]:
        out: set[str] = set()
        for m, _ in self.terms:
            for a in m:
                if isinstance(a, str):
                    out.add(a)
                else:
                    out |= a[1].free_symbols()
        return out

    def evaluate(self, env: Mapping[str, int]) -> int:
        return int(substitute(self, env))

    def __repr__(self) -> str:
        return render_dim(self)

    __str__ = __repr__

    def to_json(self) -> list:
        return [[[_atom_to_json(a) for a in m], c] for m, c in self.terms]


def _atom_to_json(a: Atom):
    return a if isinstance(a, str) else [a[0], dim_to_json(a[1]), a[2]]


def dim_to_json(d: "int | Dim"):
    return d if isinstance(d, int) else {"dim": d.to_json()}


def dim_from_json(obj) -> "int | Dim":
    if isinstance(obj, int):
        return obj
    out: dict = {}
    for atoms, c in obj["dim"]:
        m = tuple(a if isinstance(a, str) else (a[0], dim_from_json(a[1]), a[2]) for a in atoms)
        out[tuple(sorted(m, key=_atom_key))] = c
    return Dim._make(out)


def Sym(name: str) -> Dim:  # noqa: N802 - reads like a constructor
    """A named symbolic dimension."""
    if not name or not isinstance(name, str):
        raise ShapeError(f"a symbolic dimension needs a name (a non-empty string), got {name!r}")
    return Dim({(name,): 1})


def dim(x: "int | str | Dim") -> "int | Dim":
    """Coerce an int, a symbol name or a Dim to a dimension."""
    if isinstance(x, Dim):
        return x
    if isinstance(x, str):
        return Sym(x)
    if hasattr(x, "__index__") and not isinstance(x, bool):
        return int(x)
    raise ShapeError(f"not a dimension: {x!r}", hint="a dimension is an int, a symbol name or a Dim")


def exact_div(a: "int | Dim", b: "int | Dim") -> "int | Dim | None":
    """a / b when the division is exact in canonical form (b a single monomial), else None."""
    if isinstance(b, int):
        if b == 0:
            raise ZeroDivisionError("dimension divided by zero")
        if isinstance(a, int):
            return a // b if a % b == 0 else None
        if all(c % b == 0 for _, c in a.terms):
            return Dim._make({m: c // b for m, c in a.terms})
        return None
    if len(b.terms) != 1:
        return a if a == b else None
    bm, bc = b.terms[0]
    out: dict = {}
    for m, c in Dim._terms_of(a).items():
        rest = list(m)
        for atom in bm:
            if atom not in rest:
                return None
            rest.remove(atom)
        if c % bc:
            return None
        out[tuple(rest)] = c // bc
    return Dim._make(out)


def substitute(x: "int | Dim", env: Mapping[str, "int | Dim"]) -> "int | Dim":
    """Replace symbols by values (ints or other dims)."""
    if isinstance(x, int):
        return x
    total: int | Dim = 0
    for m, c in x.terms:
        prod: int | Dim = c
        for a in m:
            if isinstance(a, str):
                prod = prod * env[a] if a in env else prod * Sym(a)
            else:
                op, inner, k = a
                v = substitute(inner, env)
                prod = prod * (v // k if op == "//" else v % k)
        total = total + prod
    return total


def render_dim(x: "int | Dim") -> str:
    if isinstance(x, int):
        return str(x)
    if x is WILDCARD:
        return "WILDCARD"
    parts = []
    # constants read best last: `seq + 1`, not `1 + seq`
    for m, c in sorted(x.terms, key=lambda mc: mc[0] == ()):
        atoms = []
        for a in m:
            atoms.append(a if isinstance(a, str) else f"({render_dim(a[1])}){a[0]}{a[2]}")
        body = "*".join(atoms)
        if not body:
            parts.append(str(c))
        elif c == 1:
            parts.append(body)
        elif c == -1:
            parts.append("-" + body)
        else:
            parts.append(f"{c}*{body}")
    text = " + ".join(parts)
    return text.replace("+ -", "- ")


Shape = tuple  # tuple[int | Dim, ...]


def shape_str(shape: Iterable) -> str:
    return "(" + ", ".join(render_dim(d) for d in shape) + ")"


def numel(shape: Iterable) -> "int | Dim":
    n: int | Dim = 1
    for d in shape:
        n = n * d
    return n


def is_static(shape: Iterable) -> bool:
    return all(isinstance(d, int) for d in shape)


def shape_symbols(shape: Iterable) -> set[str]:
    out: set[str] = set()
    for d in shape:
        if isinstance(d, Dim):
            out |= d.free_symbols()
    return out


def evaluate_shape(shape: Iterable, env: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(int(substitute(d, env)) for d in shape)


def bind_shape(pattern: Iterable, actual: Iterable[int], env: dict[str, int]) -> bool:
    """Bind the single-symbol dims of `pattern` to `actual`; False where they conflict."""
    pattern, actual = tuple(pattern), tuple(actual)
    if len(pattern) != len(actual):
        return False
    for p, a in zip(pattern, actual):
        if p is WILDCARD:
            continue
        if isinstance(p, int):
            if p != a:
                return False
            continue
        if len(p.terms) == 1 and p.terms[0][1] == 1 and len(p.terms[0][0]) == 1 and isinstance(p.terms[0][0][0], str):
            name = p.terms[0][0][0]
            if env.setdefault(name, a) != a:
                return False
    for p, a in zip(pattern, actual):  # compound dims are checked once all symbols are bound
        if isinstance(p, Dim) and p.free_symbols() <= env.keys() and p.evaluate(env) != a:
            return False
    return True
