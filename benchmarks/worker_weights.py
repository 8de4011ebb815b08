"""Workers that load their own weights: SmolLM2 over three local workers, with and without `--models`.

For each mode the model is loaded across `Topology.local(3)` (an equal split: a stage per worker),
greedy-decodes a few tokens, and the table reports: the weight bytes the coordinator sent and the ones
the workers read from their own copy of the GGUF (`weight_bytes_sent`, `weight_bytes_mapped`), the
bytes of the LOAD documents (stage graphs and file references), the time to ship the stages (LOAD
to LOADED, compile included) and the whole `dnet.llm.load`, and each worker's memory as
`/proc/PID/smaps_rollup` tells it: pages mapped from the file are shared with the page cache (clean,
counted in Rss, split in Pss), weights received over the wire are the worker's own (anonymous).

The workers' weight cache starts empty for every run (their compiled-kernel cache is kept, after a
warm-up run, so both modes compile alike), so without `--models` every weight travels.

    .venv/bin/python benchmarks/worker_weights.py [--runs 2] [--context 256]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

CACHE = Path(tempfile.gettempdir()) / "dnet-bench-worker-weights"
os.environ["DNET_CACHE_DIR"] = str(CACHE)   # before dnet is imported: the workers inherit it

from dnet.cluster.coordinator import Coordinator  # noqa: E402
from dnet.cluster.local import LocalCluster  # noqa: E402
from dnet.cluster.shipping import file_references, pack  # noqa: E402
from dnet.llm import load  # noqa: E402
from dnet.llm.api import default_model_path  # noqa: E402
from dnet.partition import build_problem, layer_chain, plan_from_stages  # noqa: E402
from dnet.partition.baselines import equal_split  # noqa: E402
from dnet.topology import Topology  # noqa: E402

MB = 1e6
FIELDS = ("Rss", "Pss", "Shared_Clean", "Private_Clean", "Private_Dirty", "Anonymous")


def equal(graph, topology, env, objective):
    chain = layer_chain(graph, env)
    problem = build_problem(chain, topology)
    return plan_from_stages(chain, topology, problem, equal_split(problem), objective, "equal")


def smaps(pid: int) -> dict[str, float]:
    """The fields of /proc/PID/smaps_rollup, in MB."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        if key in FIELDS:
            out[key] = int(rest.split()[0]) * 1024 / MB
    return out


def timed_installs() -> list[float]:
    """Make every Coordinator record how long shipping its stages took (LOAD to the last LOADED)."""
    seconds: list[float] = []
    install = Coordinator._install

    def timed(self) -> None:
        start = time.perf_counter()
        install(self)
        seconds.append(time.perf_counter() - start)

    Coordinator._install = timed
    return seconds


def run(models: bool, context: int, installs: list[float]) -> dict:
    shutil.rmtree(CACHE / "weights", ignore_errors=True)   # no weight cached on the workers
    options = {"plan": equal, "calibrate": False, "models": [str(default_model_path().parent)] if models else []}
    start = time.perf_counter()
    llm = load(context=context, topology=Topology.local(3), cluster=options)
    load_s = time.perf_counter() - start
    try:
        text = llm.generate("The capital of France is", max_tokens=8, temperature=0)
        exe = llm.engine.exe
        coordinator = exe.coordinator
        docs = 0
        for stage, worker in zip(exe.pipeline.stages, coordinator.placement):
            packed = pack(stage)
            refs = file_references(packed.arrays, coordinator.workers[worker].caps.models)
            docs += len(packed.doc) + (len(json.dumps(refs)) if refs else 0)
        memory = [smaps(w.caps.pid) for w in coordinator.workers]
        return {"sent": coordinator.weight_bytes_sent / MB, "mapped": coordinator.weight_bytes_mapped / MB,
                "docs": docs / MB, "ship_s": installs[-1], "load_s": load_s, "memory": memory, "text": text,
                "weights": llm.weight_bytes / MB}
    finally:
        llm.close()


def idle_worker() -> dict[str, float]:
    """A worker's memory before it holds any stage: Python, numpy and dnet imported."""
    with LocalCluster(1) as cluster, cluster.coordinator() as coordinator:
        return smaps(coordinator.workers[0].caps.pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="runs of each mode (alternating); medians reported")
    parser.add_argument("--context", type=int, default=256)
    args = parser.parse_args()
    installs = timed_installs()
    run(True, args.context, installs)                          # warm-up: kernels compiled and cached
    results: dict[bool, list[dict]] = {True: [], False: []}
    for _ in range(args.runs):
        for models in (False, True):
            results[models].append(run(models, args.context, installs))
    first = results[True][0]
    print(f"SmolLM2-135M Q4_1 ({first['weights']:.1f} MB of weights), Topology.local(3), an equal split, "
          f"context {args.context}; medians of {args.runs} run(s); MB = 1e6 bytes")
    print(f"{'':14} {'sent MB':>8} {'mapped MB':>9} {'docs MB':>8} {'ship s':>7} {'load s':>7}   "
          + "  ".join(f"{f:>13}" for f in FIELDS))
    for models in (False, True):
        rows = results[models]
        med = {k: statistics.median(r[k] for r in rows) for k in ("sent", "mapped", "docs", "ship_s", "load_s")}
        label = "--models DIR" if models else "weights sent"
        for i in range(3):
            mem = [statistics.median(r["memory"][i][f] for r in rows) for f in FIELDS]
            head = (f"{label:14} {med['sent']:8.2f} {med['mapped']:9.2f} {med['docs']:8.3f} "
                    f"{med['ship_s']:7.2f} {med['load_s']:7.2f}" if i == 0 else " " * 58)
            print(f"{head}   " + "  ".join(f"w{i} {m:10.1f}" for m in mem))
    idle = idle_worker()
    print(f"{'idle worker':14} {'':58}" + "  ".join(f"   {idle[f]:10.1f}" for f in FIELDS))
    same = len({r["text"] for rs in results.values() for r in rs}) == 1
    print(f"greedy text the same in every run: {same} ({first['text']!r})")


if __name__ == "__main__":
    main()
