"""`dnet worker` and `dnet cluster up` from the command line."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from dnet.cli.cluster_commands import _cores
from dnet.cli.main import cli
from dnet.errors import DnetError


def test_a_worker_without_the_secret_refuses_to_start(monkeypatch):
    monkeypatch.delenv("DNET_CLUSTER_SECRET", raising=False)
    result = CliRunner().invoke(cli, ["worker", "--listen", "127.0.0.1:0"])
    assert isinstance(result.exception, DnetError) and "no cluster secret" in str(result.exception)


def test_core_lists_read_like_taskset():
    assert _cores("0,2-3") == [0, 2, 3]
    assert _cores(None) is None
    with pytest.raises(DnetError, match="bad core list 'x'"):
        _cores("x")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cluster_up_starts_workers_and_stops_them_on_interrupt(tmp_path, stop):
    secret_file = tmp_path / "secret"
    dnet = os.path.join(os.path.dirname(sys.executable), "dnet")
    proc = subprocess.Popen([dnet, "cluster", "up", "2", "--secret-file", str(secret_file)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()  # every line, as it comes
    try:
        deadline = time.monotonic() + 30
        while not any("secret in" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = [line for line in lines if line.startswith("w")]
        assert len(workers) == 2 and all("127.0.0.1:" in line for line in workers), lines
        assert oct(secret_file.stat().st_mode & 0o777) == "0o600" and len(secret_file.read_text()) == 64
        # and their topology beside the secret: the workers' addresses, devices they probed, links they measured
        from dnet.topology import Topology

        topology = Topology.load(str(tmp_path / "cluster.toml"))
        assert [(n.name, n.address) for n in topology.nodes] == [tuple(w.split()[:2]) for w in workers]
        assert len(topology.links) == 2 and all(n.devices[0].compute["f32"] > 0 for n in topology.nodes)
        children = _children(proc.pid)
        assert len(children) == 2
    finally:
        proc.send_signal(stop)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the workers too: they share its session
            proc.wait(timeout=5)
    assert proc.returncode == 0
    assert not any(os.path.exists(f"/proc/{pid}") for pid in children)   # stopped and reaped by `cluster up`


def _children(pid: int) -> list[int]:
    """The processes whose parent is pid (their stat's fourth field), read from /proc."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def test_local_workers_get_disjoint_cores_only_where_there_are_enough():
    from dnet.cluster.local import core_sets

    assert core_sets([1, 2, None], available=8) == [[0], [1, 2], [3]]
    assert core_sets([2, 2], available=3) == [None, None]


def test_cluster_init_writes_a_256_bit_secret_only_its_owner_can_read(tmp_path):
    path = tmp_path / "cluster.secret"
    result = CliRunner().invoke(cli, ["cluster", "init", "--secret-file", str(path)])
    assert result.exit_code == 0, result.output
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert len(bytes.fromhex(path.read_text())) == 32


def test_cluster_init_makes_a_ca_and_a_tls_directory_per_node(tmp_path):
    from dnet.cluster.tls import ClusterTls

    secret = tmp_path / "cluster.secret"
    result = CliRunner().invoke(cli, ["cluster", "init", "--secret-file", str(secret), "--nodes", "desk,laptop"])
    assert result.exit_code == 0, result.output
    tls = tmp_path / "tls"
    assert oct((tls / "ca.key").stat().st_mode & 0o777) == "0o600"
    for node in ("desk", "laptop"):
        assert oct((tls / node / "node.key").stat().st_mode & 0o777) == "0o600"
        ClusterTls(tls / node)   # loads: its certificate, its key and the CA
    result = CliRunner().invoke(cli, ["cluster", "issue", "phone", "--tls-dir", str(tls)])
    assert result.exit_code == 0, result.output
    ClusterTls(tls / "phone")
    again = CliRunner().invoke(cli, ["cluster", "issue", "phone", "--tls-dir", str(tls)])
    assert isinstance(again.exception, DnetError) and "not overwriting" in str(again.exception)


def test_a_bad_node_name_is_refused_before_anything_is_written(tmp_path):
    result = CliRunner().invoke(cli, ["cluster", "init", "--secret-file", str(tmp_path / "s"), "--nodes", "a/../b"])
    assert isinstance(result.exception, DnetError) and "bad node name" in str(result.exception)
    assert list(tmp_path.iterdir()) == []


def test_a_worker_off_loopback_without_tls_is_one_line_and_status_2(monkeypatch):
    monkeypatch.setenv("DNET_CLUSTER_SECRET", "0" * 64)
    monkeypatch.delenv("DNET_TLS_DIR", raising=False)
    proc = subprocess.run([sys.executable, "-m", "dnet.cluster", "--listen", "0.0.0.0:0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "no TLS files are given" in proc.stderr


def test_a_worker_refuses_a_secret_under_128_bits():
    from dnet.cluster.worker import Worker

    for weak in ("test-secret", "0" * 31, "A" * 21):
        with pytest.raises(DnetError, match="too weak"):
            Worker(weak)
    Worker("0" * 32).listener.close()


def test_a_worker_out_of_file_descriptors_keeps_serving(tmp_path):
    """Hundreds of silent connections against a limit of 48 descriptors: the worker backs off, refuses
    past its cap, and still admits the coordinator once they go (it used to exit 0, logging nothing)."""
    import resource
    import socket

    from dnet.cluster.auth import connect
    from dnet.cluster.local import READY_PREFIX
    from dnet.cluster.protocol import DEFAULT_LIMITS

    secret = "0" * 64
    dnet = os.path.join(os.path.dirname(sys.executable), "dnet")
    proc = subprocess.Popen([dnet, "worker", "--listen", "127.0.0.1:0"], text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env={**os.environ, "DNET_CLUSTER_SECRET": secret},
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48)))
    try:
        host, port = proc.stdout.readline().strip().removeprefix(READY_PREFIX).rsplit(":", 1)
        silent = []
        for _ in range(300):
            try:
                silent.append(socket.create_connection((host, int(port)), timeout=2))
            except OSError:
                pass
        time.sleep(1.0)
        assert proc.poll() is None, f"the worker exited with {proc.returncode}"
        for s in silent:
            s.close()
        time.sleep(0.5)
        connect(host, int(port), secret, DEFAULT_LIMITS).close()
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_connections_past_the_cap_of_unfinished_handshakes_are_closed_at_once(monkeypatch):
    """Peers that never finish the handshake hold a slot each until its deadline; one more is closed
    on accept, and the coordinator is admitted once a slot frees."""
    import socket

    from dnet.cluster import worker as worker_module
    from dnet.cluster.auth import connect
    from dnet.cluster.protocol import DEFAULT_LIMITS

    monkeypatch.setattr(worker_module, "MAX_UNAUTHENTICATED", 3)
    secret = "0" * 64
    worker = worker_module.Worker(secret)
    worker.start()
    try:
        silent = [socket.create_connection((worker.host, worker.port), timeout=2) for _ in range(3)]
        extra = socket.create_connection((worker.host, worker.port), timeout=2)
        assert extra.recv(1) == b""                     # closed by the worker, well before the 5 s deadline
        for s in silent:
            s.setblocking(False)
            with pytest.raises(BlockingIOError):        # still open, waiting for a HELLO
                s.recv(1)
            s.close()
        deadline = time.monotonic() + 5
        while True:   # the slots free as the worker sees each silent peer go
            try:
                connect(worker.host, worker.port, secret, DEFAULT_LIMITS).close()
                break
            except Exception:
                assert time.monotonic() < deadline, "no slot freed"
                time.sleep(0.05)
    finally:
        worker.stop()


def test_a_failing_listening_socket_is_logged_and_ends_the_worker_with_an_error(caplog):
    """Only running out of descriptors is waited out; any other accept error is fatal, logged, not a quiet exit."""
    import errno

    from dnet.cluster.worker import Worker

    class BrokenListener:
        def accept(self):
            raise OSError(errno.EINVAL, "Invalid argument")

        def shutdown(self, how):
            pass

        def close(self):
            pass

    worker = Worker("0" * 64)
    worker.listener.close()
    worker.listener = BrokenListener()
    with pytest.raises(DnetError, match="accept failed"):
        worker.serve_forever()
    assert any(r.levelname == "ERROR" and "accept failed" in r.getMessage() for r in caplog.records)
    worker.stop()   # its compute thread
