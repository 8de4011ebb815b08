"""A pipeline over in-process workers on loopback: results, pipelining, weights by hash, bad input."""
import logging
import socket
import threading
import time

import numpy as np
import pytest

from dnet.cluster import Coordinator, RemoteError, Worker, WorkerConfig, WorkerLost
from dnet.cluster import worker as worker_module
from dnet.cluster.auth import connect
from dnet.cluster.messages import Pong
from dnet.cluster.protocol import DEFAULT_LIMITS, HEADER, MAGIC, VERSION, Message, MsgType, encode_frame
from dnet.runtime import contiguous_assignment, split_pipeline
from residual_nets import oracle, request, residual_graph

SECRET = "test-secret-" + "0" * 32   # a worker refuses a secret under 128 bits


@pytest.fixture
def workers(tmp_path):
    started = [Worker(SECRET, WorkerConfig(name=f"w{i}", cache_dir=str(tmp_path / f"cache{i}"))) for i in range(3)]
    for w in started:
        w.start()
    try:
        yield started
    finally:
        for w in started:
            w.stop()


@pytest.fixture
def coordinator(workers):
    coord = Coordinator([w.address for w in workers], SECRET, call_timeout_s=10)
    try:
        yield coord
    finally:
        coord.close()


def _stages(graph, n):
    return split_pipeline(graph, contiguous_assignment(graph, [1.0] * n))


@pytest.mark.parametrize("n_workers", [1, 2, 3])
def test_the_same_model_on_one_two_and_three_workers_gives_the_same_outputs(rng, coordinator, n_workers):
    net, graph = residual_graph(rng)
    coordinator.load(_stages(graph, n_workers))
    for shape in [(1, 1), (2, 5)]:
        req = request(rng, batch=shape[0], seq=shape[1])
        out = coordinator.run(req)["output"]
        np.testing.assert_allclose(out, oracle(net, req["x"], req["mask"]), rtol=1e-5, atol=1e-5)


def test_many_requests_in_flight_come_back_in_order_with_per_stage_timings(rng, coordinator):
    net, graph = residual_graph(rng)
    coordinator.load(_stages(graph, 3))
    reqs = [request(rng) for _ in range(24)]
    outs = coordinator.run_many(reqs, timeout=20)
    for req, out in zip(reqs, outs):
        np.testing.assert_allclose(out["output"], oracle(net, req["x"], req["mask"]), rtol=1e-5, atol=1e-5)
    assert [coordinator.timings[s].runs for s in range(3)] == [24, 24, 24]
    assert all(coordinator.timings[s].compute_s > 0 for s in range(3))
    stats = coordinator.worker_stats()
    assert sum(s.runs for per_worker in stats.values() for s in per_worker.values()) == 72


def test_weights_are_sent_once_and_then_come_from_the_workers_cache(rng, coordinator, workers):
    _, graph = residual_graph(rng)
    coordinator.load(_stages(graph, 3))
    assert coordinator.weight_bytes_sent == graph.weight_bytes()
    cached = {p.stem for w in workers for p in w.store.root.rglob("*.bin")}
    assert len(cached) == len(graph.weights)
    coordinator.load(_stages(graph, 3))  # again: every worker answers LOADED without asking for weights
    assert coordinator.weight_bytes_sent == graph.weight_bytes()


def test_activations_flow_worker_to_worker_not_through_the_coordinator(rng, coordinator, workers):
    _, graph = residual_graph(rng)
    coordinator.load(_stages(graph, 3))
    coordinator.run(request(rng))
    assert workers[0].stages and all(s.next_link is not None for s in workers[0].stages.values())
    peer = next(iter(workers[0].stages.values())).next_link.channel.peer
    assert peer == workers[1].address


def test_a_request_a_stage_cannot_run_fails_alone_and_the_pipeline_keeps_serving(rng, coordinator):
    net, graph = residual_graph(rng)
    coordinator.load(_stages(graph, 2))
    bad = {"x": np.ones((2, 3, 8), np.float32), "mask": np.ones((2, 4, 8), np.float32)}
    with pytest.raises(RemoteError, match=r"worker 0 \(w0\), stage 0: ShapeError: input 'mask' has shape"):
        coordinator.run(bad)
    good = request(rng)
    np.testing.assert_allclose(coordinator.run(good)["output"], oracle(net, good["x"], good["mask"]), rtol=1e-5)


def test_a_coordinator_with_the_wrong_secret_is_refused(workers):
    with pytest.raises(WorkerLost, match="does not hold the cluster secret"):
        Coordinator([workers[0].address], "not-the-secret")


def test_workers_listen_on_loopback_unless_told_otherwise(workers):
    assert all(w.host == "127.0.0.1" for w in workers)


# -- hostile frames: each costs only its own connection -----------------------------------------------

def _raw_session(worker: Worker) -> socket.socket:
    """An authenticated connection whose socket the test writes to directly."""
    return connect(worker.host, worker.port, SECRET, DEFAULT_LIMITS).sock


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        while sock.recv(65536):  # the worker may first say why, in an ERROR frame
            pass
    except ConnectionResetError:
        pass
    return True


@pytest.mark.parametrize("junk, reason", [
    (b"GET / HTTP/1.1\r\n\r\n" + bytes(8), "bad magic"),
    (HEADER.pack(MAGIC, VERSION, 77, 0, 2, 0) + b"{}", "unknown message type 77"),
    (HEADER.pack(MAGIC, VERSION, int(MsgType.RUN), 0, 2, 1 << 42) + b"{}", "oversized payload"),
    (encode_frame(Message(MsgType.RUN, {}, {"x": np.ones(64, np.float32)}))[:-7], "truncated frame"),
])
def test_a_hostile_frame_is_refused_with_a_logged_reason_and_the_worker_keeps_serving(
        rng, workers, coordinator, caplog, junk, reason):
    net, graph = residual_graph(rng)
    coordinator.load(_stages(graph, 3))
    with caplog.at_level(logging.WARNING, logger="dnet.worker"):
        sock = _raw_session(workers[1])
        sock.sendall(junk)
        try:
            sock.shutdown(socket.SHUT_WR)  # a truncated frame is only known to be one at the close
        except OSError:
            pass  # the worker was quicker and has closed the connection already
        assert _closed_by_peer(sock)
        sock.close()
    deadline = time.monotonic() + 5
    while reason not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reason in caplog.text
    req = request(rng)  # the same worker, mid-pipeline, still serves
    np.testing.assert_allclose(coordinator.run(req)["output"], oracle(net, req["x"], req["mask"]), rtol=1e-5)


def test_weights_that_do_not_match_their_hash_are_refused_and_the_worker_stays_up(workers):
    chan = connect(workers[0].host, workers[0].port, SECRET, DEFAULT_LIMITS)
    chan.sock.settimeout(5)
    claimed = "ab" * 32
    chan.send(Message(MsgType.WEIGHTS, {"key": "k", "last": True}, {claimed: np.ones(3, np.float32)}))
    reply = chan.recv()
    assert reply.type is MsgType.ERROR and "hash to" in reply.meta["reason"]
    assert chan.request(Message(MsgType.PING)).type is MsgType.PONG
    chan.close()


def test_a_well_formed_request_for_something_wrong_gets_an_error_reply(workers):
    chan = connect(workers[0].host, workers[0].port, SECRET, DEFAULT_LIMITS)
    chan.sock.settimeout(5)
    reply = chan.request(Message(MsgType.RESULT, {"rid": 3}))
    assert reply.type is MsgType.ERROR and "does not accept RESULT" in reply.meta["reason"]
    reply = chan.request(Message(MsgType.ROUTE, {"key": "nope"}))
    assert reply.type is MsgType.ERROR and "no such stage" in reply.meta["reason"]
    chan.close()


def test_workers_with_different_backends_agree(rng, tmp_path):
    """Each worker compiles its own stage with its own backend: numpy on one, generated C on the other."""
    from dnet.backends import registry

    if "c" not in registry.names():
        pytest.skip("the C backend is not registered in this build")
    mixed = [Worker(SECRET, WorkerConfig(backend=b, cache_dir=str(tmp_path / b))) for b in ("numpy", "c")]
    for w in mixed:
        w.start()
    coord = Coordinator([w.address for w in mixed], SECRET, call_timeout_s=60)
    try:
        net, graph = residual_graph(rng)
        coord.load(_stages(graph, 2))
        req = request(rng)
        out = coord.run(req)["output"]
        assert coord.workers[1].caps.backend == "c"
    finally:
        coord.close()
        for w in mixed:
            w.stop()
    np.testing.assert_allclose(out, oracle(net, req["x"], req["mask"]), rtol=1e-5, atol=1e-5)


def test_fields_of_the_wrong_type_are_refused_and_the_connection_keeps_serving(workers):
    chan = connect(workers[0].host, workers[0].port, SECRET, DEFAULT_LIMITS)
    chan.sock.settimeout(5)
    for meta in [{"key": 7}, {"key": "k", "weights": "x"}, {"key": "k", "weights": [1]}]:
        reply = chan.request(Message(MsgType.LOAD, meta, {"graph": np.zeros(3, np.uint8)}))
        assert reply.type is MsgType.ERROR
    reply = chan.request(Message(MsgType.LOAD, {"key": "k", "weights": []}, {"graph": np.frombuffer(b"{", np.uint8)}))
    assert reply.type is MsgType.ERROR and "not valid JSON" in reply.meta["reason"]
    assert chan.request(Message(MsgType.PING)).type is MsgType.PONG
    chan.close()


def test_timings_can_start_afresh_after_a_warm_up(rng, coordinator):
    _, graph = residual_graph(rng)
    coordinator.load(_stages(graph, 2))
    coordinator.run_many([request(rng) for _ in range(3)])
    coordinator.reset_timings()
    coordinator.run(request(rng))
    assert [t.runs for t in coordinator.timings.values()] == [1, 1] and len(coordinator.latencies) == 1


def test_workers_report_their_probed_device(coordinator):
    caps = coordinator.capabilities(probe=True)
    assert [c.name for c in caps] == ["w0", "w1", "w2"]
    device = caps[0].device
    assert device.kind == "numpy" and device.compute["f32"] > 0 and device.memory > 0


@pytest.mark.parametrize("inline_s, inline", [(10.0, True), (0.0, False)])
def test_a_short_request_on_an_idle_worker_runs_on_the_thread_that_read_it(rng, coordinator, workers,
                                                                           monkeypatch, inline_s, inline):
    """After a stage's first run (on the compute thread) its runs shorter than INLINE_S skip the hand-off."""
    monkeypatch.setattr(worker_module, "INLINE_S", inline_s)
    net, graph = residual_graph(rng)
    coordinator.load(_stages(graph, 2))
    threads = []
    for w in workers[:2]:
        def recording(stage, request, tensors, run=w._run):
            threads.append(threading.current_thread().name)
            return run(stage, request, tensors)
        w._run = recording
    for _ in range(4):
        req = request(rng)
        np.testing.assert_allclose(coordinator.run(req)["output"], oracle(net, req["x"], req["mask"]),
                                   rtol=1e-5, atol=1e-5)
        time.sleep(0.05)  # the last stage has sent its result, and now it is idle too
    assert threads[:2] == ["compute", "compute"]  # how long a stage runs is not known before its first run
    assert all((name != "compute") == inline for name in threads[2:])


def test_one_request_in_the_air_is_answered_on_the_thread_that_waits_for_it(rng, coordinator):
    """The caller reads the last stage's connection itself (dnet.cluster.reading): no hand-off from a reader
    thread, once a caller has waited there (the first answer may still come through the reader's thread)."""
    net, graph = residual_graph(rng)
    coordinator.load(_stages(graph, 2))
    threads = []
    on_result = coordinator._on_result

    def recording(result, outputs):
        threads.append(threading.current_thread().name)
        on_result(result, outputs)

    coordinator._on_result = recording
    for _ in range(5):
        req = request(rng)
        np.testing.assert_allclose(coordinator.run(req)["output"], oracle(net, req["x"], req["mask"]),
                                   rtol=1e-5, atol=1e-5)
    assert threads[1:] == [threading.current_thread().name] * 4


def test_requests_from_many_threads_each_get_their_own_answer(rng, coordinator):
    """Callers waiting at once share the connection: whoever reads hands the others their answers."""
    net, graph = residual_graph(rng)
    coordinator.load(_stages(graph, 3))
    requests = [request(rng) for _ in range(12)]
    outputs: dict[int, np.ndarray] = {}

    def caller(k: int) -> None:
        for i in range(k, len(requests), 4):
            outputs[i] = coordinator.run(requests[i])["output"]

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for i, req in enumerate(requests):
        np.testing.assert_allclose(outputs[i], oracle(net, req["x"], req["mask"]), rtol=1e-5, atol=1e-5)


def test_a_ping_on_the_coordinators_connection_is_answered_while_a_slow_stage_computes(rng, coordinator, workers):
    """A stage known to be slow runs on the compute thread, so the reading thread keeps answering pings."""
    _, graph = residual_graph(rng)
    coordinator.load(_stages(graph, 1))

    def slow(stage, request, tensors, run=workers[0]._run):
        time.sleep(0.5)
        return run(stage, request, tensors)

    workers[0]._run = slow
    coordinator.run(request(rng))                # its first run: from now on the stage is known to be slow
    pending = coordinator.submit(request(rng))   # read from the connection the ping comes on
    time.sleep(0.1)
    start = time.monotonic()
    coordinator._call(coordinator.workers[0], Message(MsgType.PING), Pong)
    assert time.monotonic() - start < 0.25
    pending.result(5)


def test_a_stage_that_compiles_for_longer_than_a_control_call_still_loads(rng, workers, monkeypatch):
    """A LOAD is answered after the compile (minutes on a busy machine); the worker answers heartbeats
    meanwhile, so the wait is bounded by load_timeout_s, not call_timeout_s."""
    slow_runner = worker_module.StageRunner

    def compiling_slowly(*args, **kwargs):
        time.sleep(1.5)
        return slow_runner(*args, **kwargs)

    monkeypatch.setattr(worker_module, "StageRunner", compiling_slowly)
    net, graph = residual_graph(rng)
    with Coordinator([w.address for w in workers[:2]], SECRET, call_timeout_s=0.5, heartbeat_s=0.1,
                     dead_after_s=1.0) as coord:
        coord.load(_stages(graph, 2))
        req = request(rng)
        out = coord.run(req, timeout=10)["output"]
    np.testing.assert_allclose(out, oracle(net, req["x"], req["mask"]), rtol=1e-5, atol=1e-5)


def test_a_worker_gone_during_a_long_load_fails_it_at_once(rng, workers, monkeypatch):
    def never_done(*args, **kwargs):
        time.sleep(30)

    monkeypatch.setattr(worker_module, "StageRunner", never_done)
    net, graph = residual_graph(rng)
    with Coordinator([workers[0].address], SECRET, call_timeout_s=0.5, load_timeout_s=60) as coord:
        threading.Timer(0.5, workers[0].stop).start()
        start = time.monotonic()
        with pytest.raises(WorkerLost, match="lost"):
            coord.load(_stages(graph, 1))
    assert time.monotonic() - start < 10
