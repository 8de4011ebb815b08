"""A worker refuses, at start, a backend it cannot run: unknown (naming the targets) or one this machine
lacks (naming why, and the backends it has), rather than accepting it and failing at the first stage."""
import pytest

from dnet.backends import registry
from dnet.cli.main import main
from dnet.cluster.auth import new_secret
from dnet.cluster.worker import Worker, WorkerConfig
from dnet.errors import BackendError
from dnet.program.device import Device


@pytest.fixture
def absent_backend(monkeypatch):
    """A backend registered with its Device, whose `available()` says this machine has no such hardware."""
    monkeypatch.setitem(registry._BACKENDS, "fakegpu", registry.NumpyBackend)
    monkeypatch.setitem(registry._DEVICES, "fakegpu", lambda: Device(
        "fakegpu", allocator=lambda: None, renderers={}, loader=None, dtypes=frozenset(),
        available=lambda: "no FakeGPU driver (libfake.so not found)"))
    return "fakegpu"


def test_a_worker_for_a_backend_the_machine_lacks_refuses_to_start(absent_backend):
    with pytest.raises(BackendError) as err:
        Worker(new_secret(), WorkerConfig(backend=absent_backend))
    message = str(err.value)
    assert "backend 'fakegpu' cannot run on this machine: no FakeGPU driver (libfake.so not found)" in message
    assert "backends this machine has: " in message and "numpy" in message.split("has: ")[1]
    assert "\n" not in message


def test_dnet_worker_with_a_backend_the_machine_lacks_is_a_one_line_error(absent_backend, monkeypatch, capsys):
    monkeypatch.setenv("DNET_CLUSTER_SECRET", new_secret())
    with pytest.raises(SystemExit) as exit_:
        main(["worker", "--backend", absent_backend, "--listen", "127.0.0.1:0"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: backend 'fakegpu' cannot run on this machine: no FakeGPU driver"), err


def test_an_unknown_backend_names_the_targets():
    with pytest.raises(BackendError) as err:
        Worker(new_secret(), WorkerConfig(backend="nosuch"))
    assert str(err.value).startswith("unknown target 'nosuch'")
    for name in registry.names():
        assert name in str(err.value).split("targets: ")[1]


def test_a_backend_this_machine_has_starts(monkeypatch):
    worker = Worker(new_secret(), WorkerConfig(backend="numpy"))
    try:
        assert registry.unavailable("numpy") is None and "numpy" in registry.available_names()
    finally:
        worker.listener.close()


def test_a_worker_probing_its_backend_still_answers_heartbeats(monkeypatch):
    """A probe through a compiling backend takes seconds; meanwhile the coordinator's heartbeat must not
    find the worker silent (`dnet cluster up --backends c,...` lost its C worker during CAPS)."""
    import time

    from dnet.cluster import Coordinator
    from dnet.topology import probe
    from dnet.topology.model import Device as Probed

    def slow_probe(backend, quick=False):
        time.sleep(1.0)                                   # longer than the coordinator waits for a pong
        return Probed(kind=backend, compute={"f32": 1e9})

    monkeypatch.setattr(probe, "probe_device", slow_probe)
    secret = new_secret()
    worker = Worker(secret, WorkerConfig(backend="numpy", name="w0"))
    worker.start()
    try:
        with Coordinator([worker.address], secret, heartbeat_s=0.1, dead_after_s=0.4) as coordinator:
            caps = coordinator.capabilities(probe=True)
            assert caps[0].device.kind == "numpy" and caps[0].device.compute == {"f32": 1e9}
            assert coordinator.workers[0].alive
    finally:
        worker.stop()
