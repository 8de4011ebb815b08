"""Cluster benchmark: the transport against a raw socket, and a planned pipeline against the equal split.

1. Transport, loopback, in one run: large-message throughput of dnet frames (a worker
   process receiving PING frames carrying one tensor, answering each) against a raw
   socket (a process receiving the same bytes with recv_into, answering each), and
   the small-message round trip of both.
2. Pipeline: the real all-MiniLM-L6-v2 on three local workers made unequal (each
   simulates a device 2x, 4x or 8x slower) and joined by shaped links. The cost model
   is fed measurements, as the JIT's feedback loop will do by itself: each layer's time
   measured on this machine, then each worker's factor (measured over predicted stage
   time) from one calibration run of the equal split, which captures what sharing the
   cores costs. Then dnet's plan and the equal split each run the same requests, and
   the measured throughput is printed beside the plan's prediction.

    .venv/bin/python benchmarks/cluster.py [--mib 64] [--repeats 5] [--requests 24]
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy loads
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from dnet.cluster import LocalCluster  # noqa: E402
from dnet.cluster.auth import connect  # noqa: E402
from dnet.cluster.protocol import DEFAULT_LIMITS, Message, MsgType  # noqa: E402

# A raw-socket peer: reads each message of the announced size into one buffer, answers one byte.
RAW_SERVER = r"""
import socket, sys
size = int(sys.argv[1])
srv = socket.create_server(("127.0.0.1", 0))
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
buf = memoryview(bytearray(max(size, 1)))
while True:
    head = conn.recv(8)
    if len(head) < 8:
        break
    n, got = int.from_bytes(head, "big"), 0
    while got < n:
        got += conn.recv_into(buf[got:n])
    conn.sendall(b"k")
"""


def _raw_peer(size: int) -> tuple[subprocess.Popen, socket.socket]:
    proc = subprocess.Popen([sys.executable, "-c", RAW_SERVER, str(size)], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return proc, sock


def _raw_send(sock: socket.socket, data: memoryview) -> None:
    sock.sendall(len(data).to_bytes(8, "big"))
    if len(data):
        sock.sendall(data)
    assert sock.recv(1) == b"k"


def transport(mib: int, repeats: int, round_trips: int) -> dict[str, float]:
    payload = np.random.default_rng(0).integers(0, 255, mib << 20, dtype=np.uint8)
    raw_proc, raw = _raw_peer(payload.nbytes)
    local = LocalCluster(1).start()
    try:
        host, port = local.addresses[0].rsplit(":", 1)
        chan = connect(host, int(port), local.secret, DEFAULT_LIMITS)
        big = Message(MsgType.PING, {}, {"data": payload})
        raw_times, dnet_times = [], []
        for _ in range(repeats + 1):  # interleaved, so both see the same machine; the first is warm-up
            start = time.perf_counter()
            _raw_send(raw, memoryview(payload))
            raw_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            assert chan.request(big).meta["bytes"] == payload.nbytes
            dnet_times.append(time.perf_counter() - start)
        rtt_raw, rtt_dnet = [], []
        empty, ping = memoryview(b""), Message(MsgType.PING)
        for _ in range(round_trips):
            start = time.perf_counter()
            _raw_send(raw, empty)
            rtt_raw.append(time.perf_counter() - start)
            start = time.perf_counter()
            chan.request(ping)
            rtt_dnet.append(time.perf_counter() - start)
        chan.close()
    finally:
        raw.close()
        raw_proc.wait(timeout=10)
        local.close()
    gb = payload.nbytes / 1e9
    return {"raw_gbps": gb / statistics.median(raw_times[1:]), "dnet_gbps": gb / statistics.median(dnet_times[1:]),
            "raw_best_gbps": gb / min(raw_times[1:]), "dnet_best_gbps": gb / min(dnet_times[1:]),
            "raw_rtt_us": 1e6 * statistics.median(rtt_raw), "dnet_rtt_us": 1e6 * statistics.median(rtt_dnet)}


# -- the pipeline -------------------------------------------------------------------------------

def layer_times(graph, chain, inputs, repeats: int = 5) -> np.ndarray:
    """Each layer's measured seconds on this machine: the chain's layers run one by one, chained."""
    from dnet.backends.numpy import run_graph
    from dnet.runtime import split_pipeline

    stage_of = [0] * len(graph.nodes)
    for k, layer in enumerate(chain.layers):
        for i in layer.nodes:
            stage_of[i] = k
    stages = split_pipeline(graph, stage_of, len(chain.layers))
    runs = []
    for _ in range(repeats + 1):  # the first run is a warm-up
        values, times = dict(inputs), []
        for stage in stages:
            start = time.perf_counter()
            values.update(run_graph(stage, {n: values[n] for n in stage.input_names}))
            times.append(time.perf_counter() - start)
        runs.append(times)
    return np.median(np.array(runs[1:]), axis=0)


def _measure(graph, topology, plan, slowdowns, requests) -> tuple[float, dict[int, float]]:
    """Requests per second at steady state, and each stage's mean compute seconds (slowdown included)."""
    from dnet.cluster.session import compile_distributed

    with compile_distributed(graph, topology, plan=plan, slowdowns=slowdowns, max_in_flight=6) as exe:
        exe.run_many(requests[:4])  # warm-up: first touches of weights and code
        exe.coordinator.reset_timings()
        start = time.perf_counter()
        exe.run_many(requests)
        elapsed = time.perf_counter() - start
        stage_seconds = {s: t.mean_ms / 1e3 for s, t in exe.timings.items()}
    return len(requests) / elapsed, stage_seconds


def _node_factors(problem, plan, stage_seconds: dict[int, float]) -> np.ndarray:
    """Per node, measured over predicted stage time: what sharing this machine's cores costs each worker."""
    measured, predicted = np.zeros(problem.n_nodes), np.zeros(problem.n_nodes)
    for k, stage in enumerate(plan.stages):
        node = problem.names.index(stage.node)
        measured[node] += stage_seconds[k]
        predicted[node] += stage.compute_seconds
    return np.where(predicted > 0, measured / np.maximum(predicted, 1e-12), 1.0)


def pipeline(n_requests: int, slowdowns: list[float], bandwidth: float, latency: float) -> list[dict]:
    """dnet's plan against the equal split, on a cost model fed by measurements (the JIT's loop, run once by hand):
    layer times measured on this machine, then each worker's factor from one calibration run of the pipeline."""
    from dnet.models import load_minilm
    from dnet.partition import build_problem, layer_chain, plan_from_stages, solve
    from dnet.partition.baselines import equal_split
    from dnet.topology import Topology

    encoder = load_minilm()
    graph = encoder.executable.graph
    texts = ["the cat sat on the mat", "a dog barked at the mailman all afternoon",
             "dnet compiles a network of unlike devices", "pipelines keep every node busy"]
    inputs = encoder.tokenize(texts)
    env = {"batch": inputs["input_ids"].shape[0], "seq": inputs["input_ids"].shape[1]}
    topology = Topology.local(3, bandwidth=bandwidth, latency=latency, scales=[1.0 / s for s in slowdowns])
    chain = layer_chain(graph, env)
    measured = layer_times(graph, chain, inputs)
    requests = [inputs] * n_requests

    def problem_with(times: np.ndarray):
        problem = build_problem(chain, topology)
        problem.time = times  # the cost model's layer times replaced by measured ones
        return problem

    def plans(problem) -> dict:
        solution = solve(problem)
        return {"dnet plan": plan_from_stages(chain, topology, problem, solution.stages, "throughput",
                                              solution.solver),
                "equal split": plan_from_stages(chain, topology, problem, equal_split(problem), "throughput",
                                                "equal")}

    first = problem_with(np.outer(slowdowns, measured))
    calibration = plans(first)["equal split"]
    _, stage_seconds = _measure(graph, topology, calibration, slowdowns, requests[:12])
    factors = _node_factors(first, calibration, stage_seconds)
    rows = []
    for name, plan in plans(problem_with(first.time * factors[:, None])).items():
        rate, stage_seconds = _measure(graph, topology, plan, slowdowns, requests)
        rows.append({"name": name, "predicted": plan.throughput, "measured": rate,
                     "one_node": 1 / measured.sum(), "stages": [(s.node, len(s.layers)) for s in plan.stages],
                     "stage_ms": [1e3 * stage_seconds[k] for k in sorted(stage_seconds)],
                     "factors": factors})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="size of the large message")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--slowdowns", default="2,4,8", help="how many times slower each worker is simulated")
    parser.add_argument("--bandwidth", type=float, default=50e6, help="link bytes/s")
    parser.add_argument("--latency", type=float, default=1e-3, help="link seconds")
    args = parser.parse_args()
    console = Console()

    t = transport(args.mib, args.repeats, args.round_trips)
    out = Table(title=f"transport on loopback: {args.mib} MiB messages ({args.repeats} each, interleaved), "
                      f"{args.round_trips} small round trips")
    for col in ("", "raw socket", "dnet frames", "dnet / raw"):
        out.add_column(col, justify="right")
    out.add_row("throughput GB/s, median", f"{t['raw_gbps']:.2f}", f"{t['dnet_gbps']:.2f}",
                f"{t['dnet_gbps'] / t['raw_gbps']:.0%}")
    out.add_row("throughput GB/s, best", f"{t['raw_best_gbps']:.2f}", f"{t['dnet_best_gbps']:.2f}",
                f"{t['dnet_best_gbps'] / t['raw_best_gbps']:.0%}")
    out.add_row("round trip us, median", f"{t['raw_rtt_us']:.0f}", f"{t['dnet_rtt_us']:.0f}",
                f"{t['dnet_rtt_us'] / t['raw_rtt_us']:.1f}x")
    console.print(out)

    slowdowns = [float(s) for s in args.slowdowns.split(",")]
    rows = pipeline(args.requests, slowdowns, args.bandwidth, args.latency)
    out = Table(title=f"MiniLM on 3 local workers (simulated {args.slowdowns}x slower; links "
                      f"{args.bandwidth / 1e6:.0f} MB/s, {args.latency * 1e3:.1f} ms); requests/s")
    for col in ("split", "stages (node: layers)", "predicted", "measured", "measured / predicted", "stage ms"):
        out.add_column(col, justify="right")
    for r in rows:
        out.add_row(r["name"], " ".join(f"{n}:{k}" for n, k in r["stages"]), f"{r['predicted']:.2f}",
                    f"{r['measured']:.2f}", f"{r['measured'] / r['predicted']:.0%}",
                    " ".join(f"{ms:.0f}" for ms in r["stage_ms"]))
    console.print(out)
    console.print(f"one node at full speed, no pipeline (sum of measured layer times): "
                  f"{rows[0]['one_node']:.2f} requests/s; "
                  f"dnet plan / equal split measured: {rows[0]['measured'] / rows[1]['measured']:.2f}x")
    console.print("calibration: measured / predicted stage time per worker, from one run of the equal split: "
                  + ", ".join(f"{f:.2f}" for f in rows[0]["factors"]))
    console.print(f"{os.cpu_count()} cores; load average at the end: {os.getloadavg()[0]:.1f} "
                  "(other processes on this machine share the cores the workers run on)")


if __name__ == "__main__":
    main()
