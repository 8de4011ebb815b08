"""Every op x every registered backend x every dtype the backend claims, against the numpy reference.

Generated from the op enum (`graph.ops.Op`) and the registry (`backends.registry`): a new op without
a case here fails `test_every_op_has_a_case`; a new backend without a Device (the dtypes it claims,
the ops it declares unsupported) fails `test_every_backend_registers_a_device`; an op a backend
cannot run at a dtype it claims fails its case, unless the backend's Device declares it unsupported
with a reason, which the skip prints (`pytest -rs`). A case the graph IR itself refuses (exp of an
integer, a pooling of booleans) is not a backend's gap and is not generated.

To keep compiles few on a busy machine, each (backend, dtype) compiles one graph holding every
op's case as separate outputs; only where that graph does not compile are the cases compiled one
by one, so the failure names the op.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest

from dnet.backends import registry
from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.quant import BLOCK_DTYPES, random_blocks
from dnet.core.shapes import Sym
from dnet.core.types import TensorType
from dnet.errors import DnetError, MissingOpError
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op

N, M = Sym("n"), Sym("m")
SIZES = {"n": 3, "m": 5}
PLAIN = [d for d in DType if not d.is_block]


class Inputs:
    """The graph inputs a case asks for, made on first use (so a case's graph has only its own)."""

    def __init__(self, b: GraphBuilder, dtype: DType, prefix: str):
        self.b, self.dtype, self.prefix, self.made = b, dtype, prefix, {}

    def __call__(self, kind: str) -> object:
        if kind not in self.made:
            shape, dtype = INPUT_KINDS[kind](self.dtype)
            name = f"{self.prefix}{kind}"
            make = self.b.state if kind == "state" else self.b.input
            self.made[kind] = make(name, TensorType(shape, dtype))
        return self.made[kind]


INPUT_KINDS: dict[str, Callable[[DType], tuple[tuple, DType]]] = {
    "x": lambda d: ((N, M), d), "y": lambda d: ((N, M), d), "pos": lambda d: ((N, M), d),
    "img": lambda d: ((1, 2, 6, 6), d), "filt": lambda d: ((3, 2, 3, 3), d), "mat": lambda d: ((M, 4), d),
    "idx": lambda d: ((4,), DType.I64), "rows": lambda d: ((2, 1), DType.I64), "vals": lambda d: ((2, 1), d),
    "state": lambda d: ((2, 6), d), "act": lambda d: ((N, 256), DType.F32),
}


def _feed(kind: str, shape: tuple, dtype: DType, rng: np.random.Generator) -> np.ndarray:
    if kind == "idx":
        return rng.integers(-SIZES["n"], SIZES["n"], shape)
    if kind == "rows":
        return rng.permutation(6)[:2].reshape(shape)
    if dtype is DType.BOOL:
        return np.ones(shape, bool) if kind == "pos" else rng.random(shape) < 0.5
    if dtype.is_int:
        return rng.integers(1, 4, shape) if kind == "pos" else rng.integers(-6, 7, shape)
    if kind == "pos":
        return rng.uniform(0.5, 3.0, shape)
    if kind in ("mat", "filt"):
        return rng.standard_normal(shape) * 0.5
    return rng.standard_normal(shape) * 2


def _feeds(graph, rng) -> dict[str, np.ndarray]:
    feeds = {}
    for i in graph.inputs:
        node = graph.nodes[i]
        kind = node.attrs["name"].split(".", 1)[1]
        shape = tuple(SIZES[str(d)] if not isinstance(d, int) else d for d in node.shape)
        feeds[node.attrs["name"]] = np.ascontiguousarray(_feed(kind, shape, node.dtype, rng), dtype=node.dtype.np)
    for name in feeds:               # ties between x and y, for eq/ne/le and for max/min
        if name.endswith(".y") and name[:-1] + "x" in feeds:
            feeds[name][:, ::3] = feeds[name[:-1] + "x"][:, ::3]
    return feeds


# -- one case per op: the outputs it adds to a graph, at one dtype -------------------------------------
def _unary(op):
    def case(b, get, d):
        return {"": b.unary(op, get("pos" if op in (Op.LOG, Op.SQRT, Op.RECIP) else "x"))}
    return case


def _binary(op):
    def case(b, get, d):
        right = get("pos") if op in (Op.DIV, Op.MOD, Op.POW) else get("y")
        return {"": b.node(op, [get("x"), right])}
    return case


def _reduce(op):
    def case(b, get, d):
        if op is Op.ARGMAX:
            return {"1": b.node(op, [get("x")], axis=1, keepdim=False)}
        return {"0": b.reduce(op, get("x"), 0, keepdim=False), "1": b.reduce(op, get("x"), 1, keepdim=True)}
    return case


def _pool(op):
    def case(b, get, d):
        attrs = dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1))
        if op is Op.AVGPOOL2D:
            attrs["count_include_pad"] = False
        return {"": b.node(op, [get("img")], **attrs)}
    return case


CASES: dict[Op, Callable] = {
    Op.INPUT: lambda b, get, d: {"": b.permute(get("x"), (1, 0))},
    Op.STATE: lambda b, get, d: {"": b.slice(get("state"), 1, 1, 5)},
    Op.CONST: lambda b, get, d: {"": b.node(Op.MAX, [get("y"), b.expand(
        b.const(f"w{d}", (np.arange(5) % 3 - 1).astype(d.np).reshape(1, 5)), (N, M))])},
    Op.FULL: lambda b, get, d: {"": b.node(Op.MAX, [get("x"), b.full((N, M), 1, d)])},
    Op.ARANGE: lambda b, get, d: {"": b.arange(7, 1, 2, dtype=d)},
    **{op: _unary(op) for op in Op if op.cls.value == "unary"},
    **{op: _binary(op) for op in Op if op.cls.value == "binary"},
    Op.WHERE: lambda b, get, d: {"": b.node(Op.WHERE, [b.node(Op.LT, [get("x"), get("y")]), get("x"), get("y")])},
    Op.CAST: lambda b, get, d: {str(t): b.cast(get("x"), t) for t in PLAIN if t is not d}
    | {"from_f32": b.cast(b.input(f"cast{d}.x_f32", TensorType((N, M), DType.F32)), d)},
    **{op: _reduce(op) for op in (Op.SUM, Op.REDUCE_MAX, Op.REDUCE_MIN, Op.ARGMAX)},
    Op.MATMUL: lambda b, get, d: {"": b.matmul(get("x"), get("mat")),
                                   "const": b.matmul(get("x"), b.const(f"m{d}", (np.arange(20).reshape(5, 4) % 3 - 1)
                                                                       .astype(d.np)))},
    Op.CONV2D: lambda b, get, d: {"": b.node(Op.CONV2D, [get("img"), get("filt")], stride=(1, 1),
                                             padding=(1, 0, 1, 0), dilation=(1, 1), groups=1)},
    Op.MAXPOOL2D: _pool(Op.MAXPOOL2D),
    Op.AVGPOOL2D: _pool(Op.AVGPOOL2D),
    Op.RESHAPE: lambda b, get, d: {"": b.node(Op.NEG if d is not DType.BOOL else Op.NOT, [b.reshape(get("x"), (M, N))])},
    Op.PERMUTE: lambda b, get, d: {"": b.permute(get("img"), (0, 2, 3, 1))},
    Op.EXPAND: lambda b, get, d: {"": b.expand(b.slice(get("x"), 0, 0, 1), (N, M))},
    Op.SLICE: lambda b, get, d: {"": b.slice(get("x"), 1, 1, M, 2)},
    Op.CONCAT: lambda b, get, d: {"": b.node(Op.CONCAT, [get("x"), get("y")], axis=1)},
    Op.GATHER: lambda b, get, d: {"": b.node(Op.GATHER, [get("x"), get("idx")], axis=0)},
    Op.PAD: lambda b, get, d: {"": b.node(Op.PAD, [get("x")], pads=((1, 0), (2, 1)), value=1)},
    Op.SCATTER: lambda b, get, d: {"": b.reduce(Op.REDUCE_MAX, b.scatter(get("state"), get("rows"), get("vals"), 1),
                                                1)},
    Op.ALL_REDUCE: lambda b, get, d: {"": b.node(Op.ALL_REDUCE, [get("x")], group="solo", size=1)},
}


def _block_case(op: Op, b: GraphBuilder, get, d: DType) -> dict:
    """Block formats are weights only: dequantized (cast), multiplied (matmul), read by rows (gather)."""
    storage = random_blocks(d, (8, 256), np.random.default_rng(7))
    w = b.cast(b.block_const(f"q{d}", storage, d, (8, 256)), DType.F32)
    if op is Op.CAST:
        return {"": w}
    if op is Op.MATMUL:
        return {"": C.linear(b, get("act"), w)}
    if op is Op.GATHER:
        return {"": b.node(Op.GATHER, [w, get("idx")], axis=0)}
    raise DnetError(f"{op} has no case on a block dtype")


def add_case(b: GraphBuilder, op: Op, dtype: DType) -> list[str]:
    """Add `op`'s case at `dtype` to `b`; returns its output names (DnetError: the graph IR refuses it)."""
    get = Inputs(b, dtype, f"{op}{dtype}.")
    outs = _block_case(op, b, get, dtype) if dtype.is_block else CASES[op](b, get, dtype)
    names = []
    for suffix, value in outs.items():
        names.append(f"{op}.{dtype}.{suffix}")
        b.output(names[-1], value)
    return names


def _applicable(op: Op, dtype: DType) -> bool:
    """The graph IR builds the case and the reference runs it (else no backend can be held to it)."""
    b = GraphBuilder()
    try:
        add_case(b, op, dtype)
        graph = b.finish()
        with np.errstate(all="ignore"):
            run_graph(graph, _feeds(graph, np.random.default_rng(0)))
    except (DnetError, TypeError, ValueError, ArithmeticError):
        return False
    return True


def _backends() -> list[str]:
    return [name for name in registry.names() if name != registry.REFERENCE]


def _claimed(name: str) -> list[DType]:
    """The dtypes backend `name` claims; none where it has no Device or its module does not import
    (then `test_every_backend_registers_a_device` says why, and the other backends are still held)."""
    try:
        return sorted(registry.device(name).dtypes, key=lambda d: d.value)
    except Exception:    # noqa: BLE001 - reported by test_every_backend_registers_a_device
        return []


APPLICABLE = {(op, d) for op in Op for d in DType if op in CASES and _applicable(op, d)}
PARAMS = [pytest.param(name, op, d, id=f"{name}-{op}-{d}")
          for name in _backends() for d in _claimed(name) for op in Op if (op, d) in APPLICABLE]


# -- compiling and checking ------------------------------------------------------------------------------
@dataclass
class Compiled:
    runner: object = None
    error: Exception | None = None


_compiled: dict[tuple, Compiled] = {}


def _graph(ops: list[Op], dtype: DType):
    b = GraphBuilder()
    names = {op: add_case(b, op, dtype) for op in ops}
    return b.finish(), names


def _compile(name: str, key: tuple, graph) -> Compiled:
    if key not in _compiled:
        try:
            _compiled[key] = Compiled(registry.prepare(name, graph))
        except Exception as err:     # noqa: BLE001 - any failure to compile is a finding, named below
            _compiled[key] = Compiled(error=err)
    return _compiled[key]


def coverage_failure(name: str, op: Op, dtype: DType) -> str | None:
    """Why `op` at `dtype` does not match the reference on backend `name`, or None when it does."""
    ops = sorted((o for o in Op if (o, dtype) in APPLICABLE), key=lambda o: o.name)
    together, names = _graph(ops, dtype)
    shared = _compile(name, (name, dtype, "all"), together)
    graph, runner = together, shared.runner
    if shared.error is not None:        # compile the case alone: its own failure, or none
        graph, own = _graph([op], dtype)
        alone = _compile(name, (name, dtype, op), graph)
        if alone.error is not None:
            if isinstance(alone.error, MissingOpError):
                return f"{alone.error} (and the backend's Device does not declare it unsupported)"
            return f"{op} on {dtype} does not compile on '{name}': {type(alone.error).__name__}: {alone.error}"
        runner, names = alone.runner, own
    feeds = _feeds(graph, np.random.default_rng(0))
    got = runner.run(feeds)
    with np.errstate(all="ignore"):
        want = run_graph(graph, feeds)
    for out in names[op]:
        failure = _compare(got[out], want[out], dtype, out)
        if failure:
            return failure
    return None


def _compare(got: np.ndarray, want: np.ndarray, dtype: DType, name: str) -> str | None:
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"{name}: {got.dtype}{got.shape} where the reference gives {want.dtype}{want.shape}"
    if want.dtype.kind in "biu":
        ok = np.array_equal(got, want)
    else:
        rtol, atol = {DType.F16: (4e-3, 1e-3), DType.BF16: (3e-2, 1e-2)}.get(dtype, (1e-5, 1e-5))
        if dtype.is_block:
            rtol, atol = 1e-3, 1e-3 * float(np.abs(want).max() or 1)
        ok = np.allclose(got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True)
    return None if ok else f"{name}: differs from the numpy reference\n got  {got}\n want {want}"


# -- the tests ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """Compiled code of these tests in a temporary cache, not the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DNET_CACHE_DIR", str(tmp_path_factory.mktemp("dnet-cache")))
    yield
    mp.undo()


def test_every_op_has_a_case():
    assert [op for op in Op if op not in CASES] == []


def test_every_backend_registers_a_device():
    missing = []
    for name in _backends():
        try:
            registry.device(name)
        except Exception as err:    # noqa: BLE001 - a Device that does not even import is missing too
            missing.append(f"{name}: {type(err).__name__}: {err}")
    assert missing == []


@pytest.mark.parametrize("name, op, dtype", PARAMS)
def test_op_matches_the_reference(name, op, dtype):
    device = registry.device(name)
    reason = device.available()
    if reason is not None:
        pytest.skip(f"backend '{name}' is not available here: {reason}")
    declared = device.reason_unsupported(op, dtype)
    if declared is not None:
        pytest.skip(f"backend '{name}' does not run {op} on {dtype}: {declared}")
    failure = coverage_failure(name, op, dtype)
    assert failure is None, failure


def test_a_missing_op_fails_the_coverage_naming_op_and_backend(monkeypatch):
    """The check above is not vacuous: a C renderer without exp in its table makes exp's case fail."""
    from dnet.backends.c.renderer import CRenderer

    table = {op: code for op, code in CRenderer.unary_float.items() if op is not Op.EXP}
    monkeypatch.setattr(CRenderer, "unary_float", table)
    _compiled.clear()
    try:
        failure = coverage_failure("c", Op.EXP, DType.F32)
    finally:
        _compiled.clear()
    assert failure is not None and "backend 'c' has no code for op exp on f32" in failure
