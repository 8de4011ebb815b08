"""`dnet tune`: time a model's f32 Gemms in their tile variants on this node and keep the winners."""
from __future__ import annotations

import time

import click
import numpy as np

from dnet.cli.main import cli
from dnet.cli.model_loading import check_dims, parse_dims
from dnet.cli.progress_view import note, progress_options
from dnet.errors import DnetError


@cli.command("tune")
@click.argument("model")
@click.option("-i", "--input", "inputs", multiple=True, help="input type, NAME:DTYPE[dims]")
@click.option("--dims", default="", help="sizes of symbolic dims to tune for, e.g. batch=1,seq=128")
@click.option("--threads", type=int, default=None, help="threads (default: all cores); tiles are kept per count")
@click.option("--budget", type=float, default=120.0, show_default=True, help="seconds the search may take")
@click.option("--passes", type=int, default=2, show_default=True, help="sweeps over the knobs at most")
@click.option("--repeats", type=int, default=20, show_default=True,
              help="whole-model runs timed before and after (0: skip the comparison and keep the tiles)")
@click.option("--margin", type=float, default=0.01, show_default=True,
              help="keep the tuned tiles only when the whole model gets at least this much faster")
@progress_options()
def tune_cmd(model: str, inputs, dims: str, threads: int | None, budget: float, passes: int, repeats: int,
             margin: float) -> None:
    """Tune MODEL's f32 matmul kernels on this node: per kernel, a bounded search over cache blocks,
    unroll, packing and thread split, timed here on the model's own buffers within --budget seconds.
    The winners go to this host's tuning cache, which every later C compile of those kernels uses, when
    the whole model runs faster with them (timed before and after, --repeats runs each); otherwise the
    analytic tiles are recorded. MODEL as for `dnet run`."""
    from dnet.backends.c.tune import tune
    from dnet.cli.model_commands import _compile, _random_inputs

    if budget < 0 or passes < 1 or repeats < 0 or not 0 <= margin < 1:
        raise DnetError("--budget must be >= 0, --passes >= 1, --repeats >= 0 and --margin in [0, 1)")
    options = {"threads": threads} if threads else {}
    before = _compile(model, inputs, "c", None, None, 0, tuned=False, **options)
    env = parse_dims(dims)
    check_dims(before.graph, env)
    feeds = _random_inputs(before.graph, env, 0)
    report = tune(before.runner, feeds, budget, passes)
    click.echo(_table(report))
    note(f"searched {report.seconds:.1f} s of a {report.budget:.0f} s budget; cache {report.cache}")
    if repeats and any(k.best != k.start for k in report.kernels):
        after = _compile(model, inputs, "c", None, None, 0, **options)
        old, new = _compare(before.runner, after.runner, feeds, repeats)
        kept = new < old * (1 - margin)
        if not kept:   # each kernel's winner, timed alone, need not speed up the model it runs in
            report.keep_analytic()
        click.echo(f"whole model: {1e3 * old:.3f} ms untuned, {1e3 * new:.3f} ms tuned "
                   f"({old / new:.2f}x; medians of {repeats} runs each, interleaved): "
                   + ("tuned tiles kept" if kept else "analytic tiles kept"))


def _table(report) -> str:
    rows = [["kernel", "shape", "calls", "ms before", "ms after", "gain", "tile chosen", "trials"]]
    for k in report.kernels:
        t = k.best
        tile = f"kc={t.kc} mc={t.mc} nc={t.nc} unroll={t.unroll} {'direct' if t.direct_a else 'packed'} a " \
               f"spread={t.spread}" + ("" if k.best != k.start else " (analytic)")
        rows.append([k.kernel, k.shape, str(k.launches), f"{1e3 * k.default_seconds:.3f}", f"{1e3 * k.seconds:.3f}",
                     f"{k.default_seconds / k.seconds:.2f}x" if k.seconds else "-", tile,
                     f"{k.trials}{'' if k.complete else ' (budget)'}"])
    if len(rows) == 1:
        return "no f32 matmul kernels to tune"
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _compare(before, after, feeds, repeats: int) -> tuple[float, float]:
    """Median seconds of a run of each, the two interleaved so load on the machine hits both alike."""
    for runner in (before, after):
        runner.run(feeds)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for runner, out in zip((before, after), times):
            start = time.perf_counter()
            runner.run(feeds)
            out.append(time.perf_counter() - start)
    return float(np.median(times[0])), float(np.median(times[1]))
