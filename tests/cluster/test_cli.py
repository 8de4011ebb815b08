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


def test_cluster_up_starts_workers_and_stops_them_on_interrupt(tmp_path):
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
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the workers too: they share its session
            proc.wait(timeout=5)
    assert proc.returncode == 0


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
