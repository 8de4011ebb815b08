"""Kernel autotuning on the C backend: every tile the search may choose computes what the numpy
reference does; `tune` records winners that later compiles use, within its budget."""
import numpy as np
import pytest
from dataclasses import replace

from dnet.backends.c.tune import tune
from dnet.core.dtypes import DType
from dnet.core.shapes import Sym
from dnet.core.tuning import TuneCache
from dnet.core.types import TensorType
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder
from dnet.graph.ops import Op
from dnet.hardware import detect
from dnet.kernel.ir import Gemm
from dnet.kernel.tune import KNOBS, SPACE, gemm_of, tile_record, tuning_key

from backend_support import assert_matches_reference

M = Sym("m")


def linear_graph(rng):
    """A packed weight with bias and GELU, a residual add, and a batched product of two activations."""
    g = GraphBuilder()
    x = g.input("x", TensorType((M, 96), DType.F32))
    w1 = g.const("w1", rng.standard_normal((200, 96)).astype(np.float32) / 10)
    bias = g.const("b1", rng.standard_normal(200).astype(np.float32))
    w2 = g.const("w2", rng.standard_normal((96, 200)).astype(np.float32) / 10)
    h = C.gelu(g, g.elementwise(Op.ADD, g.matmul(x, g.transpose(w1)), bias))
    y = g.elementwise(Op.ADD, g.matmul(h, g.transpose(w2)), x)
    heads = g.reshape(y, (M, 4, 24))
    scores = g.matmul(g.permute(heads, (1, 0, 2)), g.permute(heads, (1, 2, 0)))
    g.output("y", y)
    g.output("scores", scores)
    return g.finish()


def every_tile(start):
    """The start tile with each knob at each value the search may give it."""
    return [replace(start, **{knob: v}) for knob in KNOBS for v in SPACE[knob](start) if v != getattr(start, knob)]


def test_every_tile_the_search_may_choose_computes_what_the_reference_does(compile_c, c_cache, rng):
    graph = linear_graph(rng)
    base = compile_c(graph, threads=2, tuned=False)
    kernels = {n: k for n, k in base.compiled.kernels.items() if gemm_of(k) is not None}
    assert len(kernels) == 3
    start = next(iter(kernels.values())).body[0].tile
    feeds = {"x": rng.standard_normal((77, 96)).astype(np.float32)}   # 77 rows: ragged slivers and blocks
    cache = TuneCache(detect().fingerprint(), c_cache)
    tiles = every_tile(start)
    # several knobs at once too: the extremes of each, together
    tiles.append(replace(start, kc=min(SPACE["kc"](start)), mc=min(SPACE["mc"](start)), nc=min(SPACE["nc"](start)),
                         unroll=1, direct_a=False, spread=8))
    try:
        for tile in tiles:
            cache.update({tuning_key(k, 2, "c"): {"tile": tile_record(tile)} for k in kernels.values()})
            runner = compile_c(graph, threads=2)
            used = {s.tile for k in runner.compiled.kernels.values() for s in k.body if isinstance(s, Gemm)}
            assert used == {tile}
            assert_matches_reference(runner, graph, feeds, rtol=2e-4, atol=2e-4)
    finally:
        cache.path.unlink()


def test_tune_records_winners_that_later_compiles_use(compile_c, c_cache, rng):
    graph = linear_graph(rng)
    runner = compile_c(graph, threads=2, tuned=False)
    feeds = {"x": rng.standard_normal((64, 96)).astype(np.float32)}
    try:
        report = tune(runner, feeds, budget=1.0, cache_dir=c_cache)
        records = TuneCache(detect().fingerprint(), c_cache).load()
        assert len(report.kernels) == 3 and len(records) == 3
        assert all(r["dims"] == {"m": 64} and r["threads"] == 2 for r in records.values())
        tuned = compile_c(graph, threads=2)
        for name, kernel in tuned.compiled.kernels.items():
            if gemm_of(kernel) is not None:
                chosen = next(k.best for k in report.kernels if k.shape in str(kernel))
                assert gemm_of(kernel).tile == chosen
        assert_matches_reference(tuned, graph, feeds, rtol=2e-4, atol=2e-4)
    finally:
        TuneCache(detect().fingerprint(), c_cache).path.unlink(missing_ok=True)


def test_a_spent_budget_stops_the_search_after_its_baseline(compile_c, c_cache, rng):
    graph = linear_graph(rng)
    runner = compile_c(graph, threads=1, tuned=False)
    feeds = {"x": rng.standard_normal((16, 96)).astype(np.float32)}
    try:
        report = tune(runner, feeds, budget=0.0, cache_dir=c_cache)
        # one step (a knob's values) and its confirmation: at most 4 + 2 timings per kernel
        assert all(not k.complete and k.trials <= 6 for k in report.kernels)
    finally:
        TuneCache(detect().fingerprint(), c_cache).path.unlink(missing_ok=True)


def test_a_loaded_artefact_cannot_be_tuned(rng):
    class Loaded:
        compiled = None
    with pytest.raises(Exception, match="compiled here"):
        tune(Loaded(), {}, budget=1.0)


def test_keeping_the_analytic_tiles_rewrites_every_record(compile_c, c_cache, rng):
    graph = linear_graph(rng)
    runner = compile_c(graph, threads=1, tuned=False)
    feeds = {"x": rng.standard_normal((32, 96)).astype(np.float32)}
    cache = TuneCache(detect().fingerprint(), c_cache)
    try:
        report = tune(runner, feeds, budget=0.0, cache_dir=c_cache)
        # whatever won, pretend a kernel chose another tile, then take the analytic ones back
        k = report.kernels[0]
        cache.update({k.key: {**report.records[k.key], "tile": tile_record(replace(k.start, unroll=1))}})
        report.keep_analytic()
        records = cache.load()
        assert {key: r["tile"] for key, r in records.items()} == {k.key: tile_record(k.start) for k in report.kernels}
        assert all(r["kept_analytic"] for r in records.values())
        analytic = compile_c(graph, threads=1, tuned=False)
        assert {n: gemm_of(k) for n, k in compile_c(graph, threads=1).compiled.kernels.items()} == \
            {n: gemm_of(k) for n, k in analytic.compiled.kernels.items()}
    finally:
        cache.path.unlink(missing_ok=True)
