"""Cluster benchmark: the transport against a raw socket, and a planned pipeline against the equal split.

1. Transport, loopback, in one run: large-message throughput of dnet frames (a worker
   process receiving PING frames carrying one tensor, answering each) against a raw
   socket (a process receiving the same bytes with recv_into, answering each), the
   small-message round trip of both, and a decode-sized request (one 576-float hidden
   state) through the coordinator and a one-stage pipeline and back, less the stage's
   own compute time: what each stage of a decode step costs in messaging. Beside it, in
   the same run (blocks of requests alternating), the same request with its answer read
   by the connection's own thread and handed to the caller through its Future, as before
   callers read their answers themselves (dnet.cluster.reading). Where the
   peers run decides a round trip (on this kind of machine, waking a process on
   another core costs about as much as the whole round trip on one), so both peers
   are placed alike: `--placement same` runs everything on one core, `split` the
   peers (the raw socket's and dnet's worker) on one core and this process on
   another, `free` leaves it to the scheduler (which may keep one pair together and
   not the other).
   `--tls` adds a column per TLS engine (`--tls-engines`, default every installed one:
   openssl, pyOpenSSL on cryptography's bundled OpenSSL; ssl, Python's ssl module): the same
   through a worker whose links run mutual TLS (dnet.cluster.tls) on that engine at both ends,
   interleaved with the others. `benchmarks/tls_costs.py` says where a TLS link's time goes.
2. Pipeline: the real all-MiniLM-L6-v2 on three local workers made unequal (each
   simulates a device 2x, 4x or 8x slower) and joined by shaped links. The plan starts
   from the probed cost model; the JIT's feedback loop (`exe.retune`) measures it,
   corrects each worker's times by measured over modelled (which holds what sharing
   this machine's cores costs), re-plans and moves the stages until the plan stays
   put, printing each round. The equal split is calibrated the same way, by one round
   on itself. Then each is measured afresh in timed windows, beside its prediction.
   Every measurement is the median of several windows at steady state
   (`dnet.cluster.measure`), so a window another process disturbs does not count.

    .venv/bin/python benchmarks/cluster.py [--mib 64] [--rounds 4] [--windows 5] [--window 8] [--tls]
                                           [--tls-engines openssl,ssl]
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy loads
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from dnet.cluster import LocalCluster  # noqa: E402
from dnet.cluster.local import WorkerSpec  # noqa: E402
from dnet.cluster.auth import connect  # noqa: E402
from dnet.cluster.protocol import DEFAULT_LIMITS, Message, MsgType  # noqa: E402
from dnet.cluster.tls_engines import ENGINE_ENV  # noqa: E402
from dnet.partition.feedback import factor_line, layout  # noqa: E402

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


def _raw_peer(size: int, cores: list[int] | None = None) -> tuple[subprocess.Popen, socket.socket]:
    proc = subprocess.Popen([sys.executable, "-c", RAW_SERVER, str(size)], stdout=subprocess.PIPE, text=True,
                            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
    port = int(proc.stdout.readline())
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return proc, sock


def _raw_send(sock: socket.socket, data: memoryview) -> None:
    sock.sendall(len(data).to_bytes(8, "big"))
    if len(data):
        sock.sendall(data)
    assert sock.recv(1) == b"k"


def _tiny_stage():
    """One small op on a decode-sized hidden state: a stage whose compute is next to nothing."""
    import dnet

    class Scale(dnet.Module):
        def forward(self, x):
            return x * 2.0

    return dnet.to_graph(Scale(), {"x": dnet.TensorType((1, 576), dnet.f32)})


def _placement(placement: str) -> tuple[set[int] | None, list[int] | None]:
    """(this process's cores, the peers' cores) for a placement."""
    cores = sorted(os.sched_getaffinity(0))
    if placement == "free":
        return None, None
    if placement == "same":
        return {cores[0]}, [cores[0]]
    if placement == "split" and len(cores) >= 2:
        return {cores[0]}, [cores[1]]
    raise SystemExit(f"placement {placement!r} needs 'same', 'free', or 'split' on two or more cores")


def transport(mib: int, repeats: int, round_trips: int, placement: str = "same",
              tls_engines: tuple[str, ...] = ()) -> dict:
    """Raw socket against dnet frames (and dnet frames over mutual TLS on each engine given), interleaved."""
    payload = np.random.default_rng(0).integers(0, 255, mib << 20, dtype=np.uint8)
    mine, peers = _placement(placement)
    before = os.sched_getaffinity(0)
    if mine:
        os.sched_setaffinity(0, mine)
    raw_proc, raw = _raw_peer(payload.nbytes, peers)
    clusters = {"dnet": LocalCluster([WorkerSpec(name="w0", cores=peers)])}
    clusters["dnet"].start()
    for engine in tls_engines:   # the coordinator's end and the worker's (its environment) on this engine
        with _tls_engine(engine):
            clusters[f"tls-{engine}"] = LocalCluster([WorkerSpec(name=f"w-{engine}", cores=peers)], tls=True)
            clusters[f"tls-{engine}"].start()
    try:
        chans = {}
        for name, local in clusters.items():
            host, port = local.addresses[0].rsplit(":", 1)
            chans[name] = connect(host, int(port), local.secret, DEFAULT_LIMITS, tls=local.tls)
        big, ping, empty = Message(MsgType.PING, {}, {"data": payload}), Message(MsgType.PING), memoryview(b"")
        times: dict[str, list[float]] = {"raw": [], **{name: [] for name in chans}}
        rtts: dict[str, list[float]] = {"raw": [], **{name: [] for name in chans}}
        for _ in range(repeats + 1):  # interleaved, so all see the same machine; the first is warm-up
            times["raw"].append(_timed(lambda: _raw_send(raw, memoryview(payload))))
            for name, chan in chans.items():
                times[name].append(_timed(lambda: chan.request(big)))
        for _ in range(round_trips):
            rtts["raw"].append(_timed(lambda: _raw_send(raw, empty)))
            for name, chan in chans.items():
                rtts[name].append(_timed(lambda: chan.request(ping)))
        for chan in chans.values():
            chan.close()
        stage = {name: _stage_round_trips(local, raw, round_trips) for name, local in clusters.items()}
    finally:
        raw.close()
        raw_proc.wait(timeout=10)
        for local in clusters.values():
            local.close()
        os.sched_setaffinity(0, before)
    gb = payload.nbytes / 1e9
    out = {}
    for name in times:
        out[f"{name}_gbps"] = gb / statistics.median(times[name][1:])
        out[f"{name}_best_gbps"] = gb / min(times[name][1:])
        out[f"{name}_rtt_us"] = 1e6 * statistics.median(rtts[name])
    out["raw_stage_rtt_us"] = 1e6 * statistics.median(stage["dnet"][0])
    for name in chans:
        out[f"{name}_stage_rtt_us"] = 1e6 * statistics.median(stage[name][1])
        out[f"{name}_handed_rtt_us"] = 1e6 * statistics.median(stage[name][2])
    out["raw_handed_rtt_us"] = out["raw_stage_rtt_us"]
    return out


@contextlib.contextmanager
def _tls_engine(engine: str):
    before = os.environ.get(ENGINE_ENV)
    os.environ[ENGINE_ENV] = engine
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENGINE_ENV)
        else:
            os.environ[ENGINE_ENV] = before


def installed_tls_engines() -> list[str]:
    try:
        import OpenSSL  # noqa: F401
        return ["openssl", "ssl"]
    except ImportError:
        return ["ssl"]


def _timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def _stage_round_trips(local: LocalCluster, raw: socket.socket,
                       round_trips: int) -> tuple[list[float], list[float], list[float]]:
    """Requests through a one-stage pipeline (interleaved with raw round trips), less the stage's compute:
    (raw, the caller reading its answer, the answer handed over by the connection's thread), the last two
    in alternating blocks (the thread steps aside or in between blocks, not per request)."""
    coordinator = local.coordinator()
    reader = coordinator.workers[0].reader
    leads = reader.callers_lead
    try:
        coordinator.load([_tiny_stage()])
        x = {"x": np.ones((1, 576), np.float32)}
        for _ in range(50):  # warm: the stage's first runs, and its runs known to be short
            coordinator.run(x)
        raw_times: list[float] = []
        times: dict[bool, list[float]] = {True: [], False: []}
        block = 100
        for i in range(2 * round_trips):
            lead = leads and (i // block) % 2 == 0
            if i % block == 0:
                reader.callers_lead = lead
                coordinator.run(x)          # not timed: the connection's thread takes its part
            start = time.perf_counter()      # before every request of both kinds, so both see the same
            _raw_send(raw, memoryview(b""))
            raw_times.append(time.perf_counter() - start)
            coordinator.answers.clear()
            start = time.perf_counter()
            coordinator.run(x)
            elapsed = time.perf_counter() - start
            times[lead].append(elapsed - sum(coordinator.answers[0].stage_seconds.values()))
    finally:
        reader.callers_lead = leads
        coordinator.close()
    return raw_times, times[True] or times[False], times[False]


# -- the pipeline -------------------------------------------------------------------------------

def pipeline(slowdowns: list[float], bandwidth: float, latency: float, rounds: int, windows: int,
             window: int) -> dict:
    """dnet's plan, found by the JIT's feedback loop (`exe.retune`) from the probed cost model, against the equal
    split calibrated the same way (one round on itself); each then measured afresh in timed windows."""
    from dnet.cluster.session import compile_distributed
    from dnet.models import load_minilm
    from dnet.partition import plan_from_stages
    from dnet.partition.baselines import equal_split
    from dnet.topology import Topology

    encoder = load_minilm()
    graph = encoder.executable.graph
    texts = ["the cat sat on the mat", "a dog barked at the mailman all afternoon",
             "dnet compiles a network of unlike devices", "pipelines keep every node busy"]
    inputs = encoder.tokenize(texts)
    env = {"batch": inputs["input_ids"].shape[0], "seq": inputs["input_ids"].shape[1]}
    topology = Topology.local(3, bandwidth=bandwidth, latency=latency, scales=[1.0 / s for s in slowdowns])
    with compile_distributed(graph, topology, env=env, slowdowns=slowdowns) as exe:
        history = exe.retune(inputs, rounds=rounds, windows=windows, window=window)
        plan = exe.plan
        timed = {"dnet plan": (plan, exe.measure(inputs, windows, window))}
        problem = exe.problem
        exe.deploy(plan_from_stages(exe.chain, topology, problem, equal_split(problem), "throughput", "equal"))
        calibration = exe.retune(inputs, rounds=1, windows=windows, window=window)
        timed["equal split"] = (exe.plan, exe.measure(inputs, windows, window))
    return {"problem": problem, "rounds": history, "equal_calibration": calibration[0], "timed": timed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="size of the large message")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--placement", default="same", choices=["same", "split", "free"],
                        help="where the transport's peers run: this process's core, another one, or anywhere")
    parser.add_argument("--rounds", type=int, default=4, help="feedback rounds at most")
    parser.add_argument("--windows", type=int, default=5, help="timed windows per measurement")
    parser.add_argument("--window", type=int, default=8, help="requests per window")
    parser.add_argument("--slowdowns", default="2,4,8", help="how many times slower each worker is simulated")
    parser.add_argument("--bandwidth", type=float, default=50e6, help="link bytes/s")
    parser.add_argument("--latency", type=float, default=1e-3, help="link seconds")
    parser.add_argument("--parts", default="transport,pipeline", help="which parts to run")
    parser.add_argument("--tls", action="store_true", help="transport: also through a worker with mutual TLS")
    parser.add_argument("--tls-engines", default=",".join(installed_tls_engines()),
                        help="with --tls: the TLS engines to measure, a column each (openssl, ssl)")
    args = parser.parse_args()
    console = Console() if sys.stdout.isatty() else Console(width=150)  # a log: tables unwrapped
    if "transport" in args.parts:
        print_transport(console, args)
    if "pipeline" in args.parts:
        print_pipeline(console, args)


def print_transport(console: Console, args: argparse.Namespace) -> None:
    engines = tuple(args.tls_engines.split(",")) if args.tls else ()
    t = transport(args.mib, args.repeats, args.round_trips, args.placement, engines)
    variants = ["dnet", *(f"tls-{e}" for e in engines)]
    label = {"dnet": "dnet frames", **{f"tls-{e}": f"TLS ({e})" for e in engines}}
    out = Table(title=f"transport on loopback: {args.mib} MiB messages ({args.repeats} each, interleaved), "
                      f"{args.round_trips} small round trips, placement {args.placement}")
    out.add_column("", justify="right")
    out.add_column("raw socket", justify="right")
    for v in variants:
        out.add_column(label[v], justify="right")
    for v in variants:
        out.add_column(f"{label[v]} / raw", justify="right")

    def row(title: str, key: str, ratio) -> None:
        values = [t[f"raw{key}"]] + [t[f"{v}{key}"] for v in variants]
        cells = [f"{x:.2f}" if "gbps" in key else f"{x:.0f}" for x in values]
        out.add_row(title, *cells, *(ratio(t[f"{v}{key}"] / t[f"raw{key}"]) for v in variants))

    row("throughput GB/s, median", "_gbps", lambda r: f"{r:.0%}")
    row("throughput GB/s, best", "_best_gbps", lambda r: f"{r:.0%}")
    row("round trip us, median", "_rtt_us", lambda r: f"{r:.1f}x")
    row("one-stage request us, median (less compute)", "_stage_rtt_us", lambda r: f"{r:.1f}x")
    row("  its answer handed over by a reader thread", "_handed_rtt_us", lambda r: f"{r:.1f}x")
    console.print(out)


def print_pipeline(console: Console, args: argparse.Namespace) -> None:
    slowdowns = [float(s) for s in args.slowdowns.split(",")]
    result = pipeline(slowdowns, args.bandwidth, args.latency, args.rounds, args.windows, args.window)
    problem = result["problem"]
    setting = (f"MiniLM on 3 local workers (simulated "
               f"{args.slowdowns}x slower; links {args.bandwidth / 1e6:.0f} MB/s, {args.latency * 1e3:.1f} ms); "
               f"medians of {args.windows} windows of {args.window} requests")
    out = Table(title=f"feedback rounds (exe.retune): {setting}")
    for col in ("round", "plan (node:layers)", "factors measured/model", "predicted req/s", "measured req/s",
                "measured / predicted", "next"):
        out.add_column(col, justify="right")
    for r in [*result["rounds"], result["equal_calibration"]]:
        out.add_row(str(r.index) if r is not result["equal_calibration"] else "equal split",
                    layout(problem, r.stages), factor_line(problem, r.factors),
                    f"{r.predicted:.2f}", f"{r.measured.throughput:.2f}", f"{r.error:.0%}",
                    f"moves (predicted {r.proposal_predicted:.2f} before it runs)" if r.moved else "stays")
    console.print(out)

    out = Table(title="timed afresh after calibration, requests/s")
    for col in ("split", "plan (node:layers)", "predicted", "measured", "measured / predicted",
                "windows", "stage ms measured (predicted)"):
        out.add_column(col, justify="right")
    rates = {}
    for name, (plan, m) in result["timed"].items():
        rates[name] = m.throughput
        out.add_row(name, " ".join(f"{s.node}:{len(s.layers)}" for s in plan.stages), f"{plan.throughput:.2f}",
                    f"{m.throughput:.2f}", f"{m.throughput / plan.throughput:.0%}",
                    " ".join(f"{w:.1f}" for w in m.window_throughputs),
                    " ".join(f"{1e3 * t:.0f} ({1e3 * s.compute_seconds:.0f})"
                             for t, s in zip(m.stage_seconds, plan.stages)))
    console.print(out)
    console.print(f"dnet plan / equal split, measured: {rates['dnet plan'] / rates['equal split']:.2f}x")
    console.print(f"{os.cpu_count()} cores; load average at the end: {os.getloadavg()[0]:.1f} "
                  "(other processes on this machine share the cores the workers run on)")


if __name__ == "__main__":
    main()
