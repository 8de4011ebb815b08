"""Measuring a deployed pipeline at steady state, robustly on a machine other work shares.

Requests stream through the pipeline (as many in flight as the coordinator allows);
the first answers (the pipeline filling, first touches of code and weights) are left
out, and the rest are cut into windows of consecutive answers. A window's throughput
is its answers over the time from the answer before it to its last, so neither the
fill nor the drain counts; a stage's time in a window is the mean of its compute
seconds there, since the mean, not the median, is what sets a pipeline's pace. Across
windows the median is taken, so a window that another process disturbed does not
move the result.
"""
from __future__ import annotations

import statistics
from typing import Mapping, Sequence

import numpy as np

from dnet.cluster.coordinator import Answer, Coordinator
from dnet.errors import DnetError
from dnet.partition.feedback import Measurement


def measure(coordinator: Coordinator, requests: Sequence[Mapping[str, np.ndarray]], windows: int = 5,
            window: int = 8, warmup: int | None = None) -> Measurement:
    """Send `warmup + windows * window` requests (cycling through `requests`) and measure them."""
    n_stages = len(coordinator.stages)
    warmup = n_stages + 1 if warmup is None else warmup
    if windows < 1 or window < 1 or warmup < 1 or not requests:
        raise DnetError("a measurement needs requests, at least one window of one answer, and one warm-up answer")
    coordinator.reset_timings()
    futures = [coordinator.submit(requests[i % len(requests)]) for i in range(warmup + windows * window)]
    for future in futures:  # each answer within the usual time of the one before
        future.result(coordinator.call_timeout_s)
    return summarize(list(coordinator.answers), n_stages, windows, window, warmup)


def summarize(answers: Sequence[Answer], n_stages: int, windows: int, window: int, warmup: int) -> Measurement:
    """Windows of `window` answers after the first `warmup`: the median of their throughputs and,
    per stage, the median of its mean seconds in each window."""
    answers = sorted(answers, key=lambda a: a.at)
    if len(answers) < warmup + windows * window:
        raise DnetError(f"{len(answers)} answers cannot fill {windows} windows of {window} after {warmup}")
    rates, seconds = [], []
    for w in range(windows):
        first = warmup + w * window
        chunk = answers[first:first + window]
        rates.append(window / max(chunk[-1].at - answers[first - 1].at, 1e-9))
        seconds.append([statistics.fmean(a.stage_seconds[s] for a in chunk) for s in range(n_stages)])
    return Measurement(statistics.median(rates), np.median(np.array(seconds), axis=0).tolist(), rates)
