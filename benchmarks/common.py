"""Shared benchmark helpers: medians of repeated runs, interleaved so that load hits all alike."""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_median(fn: Callable[[], object], repeats: int) -> float:
    """Median CPU time of the process per call: with one thread, what a busy machine disturbs least."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, rounds: int = 7) -> dict[str, float]:
    """Median over `rounds` x `repeats` runs of each, alternating between them round by round."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(median_seconds(fn, repeats, warmup=1))
    return {name: statistics.median(s) for name, s in samples.items()}


def pin_threads(n: int) -> None:
    """Set the thread count for every library before they start their pools."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
