"""Kernel autotuning, the search half: which Gemm tiles to try, in what order, within a budget.

`choose_tile` (kernel/gemm.py) derives a Gemm's blocking from the host's caches; what is fastest
for one shape on one node is found by timing it there. `search` is a bounded coordinate descent
over the knobs of `SPACE` (cache blocks kc/mc/nc, micro-kernel unroll, a read in place or packed,
the tasks per thread the work is split into): per knob in turn, the incumbent and each other value
of that knob are timed side by side (one `measure` call, so all of them see the same machine
load), and the fastest replaces the incumbent only when it beats it by `margin` (a shared, noisy
machine must not make a tile "win" by chance). At most `passes` sweeps, and none once the budget
is spent: the number of timings is bounded by the space, whatever the budget.

Timing belongs to the backend (`backends/c/tune.py`: the variants compiled together and run on
the model's own buffers); records are kept per host by `core.tuning.TuneCache` under `tuning_key`,
and `apply_tuned` puts them into a program's kernels when it compiles.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from dnet.core.dtypes import DType
from dnet.errors import DnetError
from dnet.kernel.ir import Gemm, GemmTile, Kernel

# the knobs and the values tried for each, as data: a function of the analytic tile
SPACE: dict[str, Callable[[GemmTile], tuple]] = {
    "spread": lambda t: (1, 2, 4, 8),
    "kc": lambda t: tuple(sorted({max(64, t.kc // 2 // 16 * 16), t.kc, min(1024, t.kc * 2)})),
    "nc": lambda t: tuple(sorted({max(t.nr, t.nc // 4 // t.nr * t.nr), max(t.nr, t.nc // 2 // t.nr * t.nr),
                                  t.nc, t.nc * 2})),
    "mc": lambda t: tuple(sorted({max(t.mr, t.mc // 2 // t.mr * t.mr), t.mc, t.mc * 2 // t.mr * t.mr})),
    "unroll": lambda t: (1, 2, 4, 8),
    "direct_a": lambda t: (True, False),
}
KNOBS = tuple(SPACE)
Measure = Callable[[dict[str, list[GemmTile]]], dict[str, list[float]]]   # per kernel, seconds per tile


@dataclass
class SearchResult:
    start: GemmTile
    best: GemmTile
    seconds: float                  # the best tile's time in the last step that timed it
    default_seconds: float          # the starting tile's time in the first step
    trials: list[tuple[GemmTile, float]] = field(default_factory=list)   # every timing, in order
    complete: bool = True           # False: the budget ran out before the sweeps finished


def search(starts: Mapping[str, GemmTile], measure: Measure, budget: float, passes: int = 2,
           margin: float = 0.02, clock: Callable[[], float] = time.monotonic) -> dict[str, SearchResult]:
    """The fastest tile found for each kernel from its start tile, within `budget` seconds of `clock`.

    Kernels are searched in lock step: one `measure` call per knob times every kernel's incumbent and
    alternatives (a backend compiles them together). A step is started only when the time left covers
    it and the confirmation after it (twice the longest step so far), so a search overruns its budget
    only when its first step and confirmation alone do (they must run to have a baseline at all). At
    most `passes` sweeps over `KNOBS` and one confirmation: `passes * len(KNOBS) + 1` steps.
    """
    if budget < 0 or passes < 1:
        raise DnetError(f"a tuning budget must be >= 0 seconds and passes >= 1 (got {budget}, {passes})")
    begin, longest = clock(), 0.0
    results = {name: SearchResult(t, t, 0.0, 0.0) for name, t in starts.items()}
    timed: set[str] = set()
    for _ in range(passes):
        improved = False
        for knob in KNOBS:
            tries = {name: [r.best, *(replace(r.best, **{knob: v}) for v in SPACE[knob](r.start)
                                      if v != getattr(r.best, knob))] for name, r in results.items()}
            tries = {name: tiles for name, tiles in tries.items() if len(tiles) > 1}
            if not tries:
                continue
            if timed and clock() - begin + 2 * longest > budget:   # this step and the confirmation
                for r in results.values():
                    r.complete = False
                return _confirm(results, measure, margin)
            step_start = clock()
            times = measure(tries)
            longest = max(longest, clock() - step_start)
            for name, tiles in tries.items():
                improved |= _step(results[name], tiles, times.get(name, []), name not in timed, margin)
                timed.add(name)
        if not improved:
            break
    return _confirm(results, measure, margin)


def _confirm(results: dict[str, SearchResult], measure: Measure, margin: float) -> dict[str, SearchResult]:
    """Time each winner beside its start tile once more: a winner that does not beat it again by
    `margin` was luck (a quiet moment on a loaded machine), and the start tile stays."""
    tries = {name: [r.start, r.best] for name, r in results.items() if r.best != r.start}
    if not tries:
        return results
    times = measure(tries)
    for name in tries:
        r, (before, after) = results[name], times[name]
        r.trials += [(r.start, before), (r.best, after)]
        r.default_seconds = before
        if after < before * (1 - margin):
            r.seconds = after
        else:
            r.best, r.seconds = r.start, before
    return results


def _step(result: SearchResult, tiles: list[GemmTile], times: list[float], first: bool, margin: float) -> bool:
    """Take one step's timings into `result`; True when the incumbent was beaten."""
    if len(times) != len(tiles):
        raise DnetError(f"a tuning measure returned {len(times)} times for {len(tiles)} tiles")
    if first:
        result.default_seconds = times[0]
    result.trials += list(zip(tiles, times))
    fastest = min(range(len(times)), key=times.__getitem__)
    if fastest and times[fastest] < times[0] * (1 - margin):
        result.best, result.seconds = tiles[fastest], times[fastest]
        return True
    result.seconds = times[0]
    return False


def tuning_key(kernel: Kernel, threads: int, backend: str) -> str:
    """The key of a kernel's record: a hash of the kernel as it computes (its name, the tile's
    tunable knobs and the inspection notes left out), the threads it runs on and the backend."""
    body = tuple(replace(s, tile=_untuned(s.tile)) if isinstance(s, Gemm) else s for s in kernel.body)
    text = repr((kernel.params, kernel.dims, body, threads, backend))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _untuned(tile: GemmTile) -> GemmTile:
    """The tile with every searched knob at one fixed value: what the key does not depend on."""
    return GemmTile(tile.mr, tile.nr, tile.lanes, 0, 0, 0, 0, True, 0)


def gemm_of(kernel: Kernel) -> Gemm | None:
    """The f32 matmul Gemm a kernel is, or None. Not tuned (yet): the low-precision Gemms (no k
    blocking, a whole-k register tile) and convolutions (the C backend's direct kernel has its own
    blocking)."""
    gemms = [s for s in kernel.body if isinstance(s, Gemm)]
    if len(gemms) != 1 or gemms[0].a.dtype is not DType.F32 or gemms[0].b.im2col is not None:
        return None
    return gemms[0]


def tile_record(tile: GemmTile) -> dict[str, Any]:
    return {name: getattr(tile, name) for name in ("mr", "nr", "lanes", *KNOBS)}


def tile_from_record(record: Mapping[str, Any], like: GemmTile) -> GemmTile | None:
    """The tile a record stores, when it fits `like`'s register block (a record from another build of
    dnet, or with a knob of the wrong type, is ignored: the analytic tile is always correct)."""
    tile = record.get("tile")
    if not isinstance(tile, Mapping) or any(tile.get(n) != getattr(like, n) for n in ("mr", "nr", "lanes")):
        return None
    values = {n: tile.get(n) for n in KNOBS}
    ints_ok = all(isinstance(values[n], int) and not isinstance(values[n], bool) and values[n] > 0
                  for n in KNOBS if n != "direct_a")
    if not ints_ok or not isinstance(values["direct_a"], bool) or values["unroll"] > 16:
        return None
    return replace(like, **values)


def apply_tuned(kernels: Mapping[str, Kernel], records: Mapping[str, Mapping[str, Any]], threads: int,
                backend: str) -> dict[str, Kernel]:
    """The kernels with each Gemm's tile replaced by its tuned one, where `records` has one."""
    out = {}
    for name, kernel in kernels.items():
        gemm = gemm_of(kernel)
        record = records.get(tuning_key(kernel, threads, backend)) if gemm is not None and records else None
        tile = tile_from_record(record, gemm.tile) if record is not None else None
        out[name] = with_tile(kernel, tile) if tile is not None else kernel
    return out


def with_tile(kernel: Kernel, tile: GemmTile, name: str | None = None) -> Kernel:
    """The kernel with its Gemm's tile replaced (and renamed, for a variant timed beside it)."""
    body = tuple(replace(s, tile=tile) if isinstance(s, Gemm) else s for s in kernel.body)
    return replace(kernel, name=name or kernel.name, body=body, meta=dict(kernel.meta))
