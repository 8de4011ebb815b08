"""Mutual TLS on cluster links: certificates from the cluster's CA both ways, the HMAC handshake inside,
bytes altered in flight refused; plain TCP only on loopback unless chosen."""
import socket
import threading
import time

import numpy as np
import pytest

from dnet.cluster import Coordinator, Worker, WorkerConfig, WorkerLost
from dnet.cluster.auth import AuthError, connect
from dnet.cluster.certs import create_ca, issue_node
from dnet.cluster.protocol import DEFAULT_LIMITS, Message, MsgType
from dnet.cluster.tls import ClusterTls, TlsError
from dnet.errors import DnetError
from dnet.runtime import contiguous_assignment, split_pipeline
from residual_nets import oracle, request, residual_graph

SECRET = "test-secret-" + "0" * 32


@pytest.fixture(scope="module")
def pki_dirs(tmp_path_factory):
    """Two clusters' CAs: ours (nodes w0, w1, coord) and another (node intruder)."""
    root = tmp_path_factory.mktemp("pki")
    create_ca(root / "ours")
    create_ca(root / "other")
    dirs = {name: issue_node(root / "ours", name) for name in ("w0", "w1", "coord")}
    dirs["intruder"] = issue_node(root / "other", "intruder")
    return dirs


ENGINES = ["openssl", "ssl"]   # every test below runs on each TLS engine (dnet.cluster.tls_engines)


@pytest.fixture(scope="module", params=ENGINES)
def pki(request, pki_dirs):
    pytest.importorskip("OpenSSL") if request.param == "openssl" else None
    return {name: ClusterTls(d, engine=request.param) for name, d in pki_dirs.items()}


@pytest.fixture
def tls_workers(pki, tmp_path):
    started = [Worker(SECRET, WorkerConfig(name=n, cache_dir=str(tmp_path / n), tls=pki[n])) for n in ("w0", "w1")]
    for w in started:
        w.start()
    try:
        yield started
    finally:
        for w in started:
            w.stop()


def test_a_tls_cluster_gives_the_local_result(rng, pki, tls_workers):
    net, graph = residual_graph(rng)
    stages = split_pipeline(graph, contiguous_assignment(graph, [1.0, 1.0]))
    with Coordinator([w.address for w in tls_workers], SECRET, call_timeout_s=10, tls=pki["coord"]) as coord:
        assert [c.tls for c in coord.capabilities()] == [True, True]
        coord.load(stages)           # the stage-to-stage link is TLS too: w0 dials w1 with its own certificate
        reqs = [request(rng, batch=2, seq=5) for _ in range(4)]
        outs = coord.run_many(reqs, timeout=20)
    for req, out in zip(reqs, outs):
        np.testing.assert_allclose(out["output"], oracle(net, req["x"], req["mask"]), rtol=1e-5, atol=1e-5)


def test_a_large_tensor_crosses_a_tls_link_intact(pki, tls_workers):
    chan = connect(tls_workers[0].host, tls_workers[0].port, SECRET, DEFAULT_LIMITS, tls=pki["coord"])
    probe = np.random.default_rng(1).integers(0, 255, 9 << 20, dtype=np.uint8)   # many TLS records
    reply = chan.request(Message(MsgType.PING, {}, {"probe": probe}))
    assert reply.type is MsgType.PONG and reply.meta["bytes"] == probe.nbytes
    chan.close()


def test_a_peer_with_a_certificate_from_another_ca_is_refused(pki, tls_workers):
    with pytest.raises(WorkerLost, match="cannot connect"):
        Coordinator([tls_workers[0].address], SECRET, call_timeout_s=5, tls=pki["intruder"])
    # and the other way: a worker whose certificate is not from our CA is refused by our coordinator
    impostor = Worker(SECRET, WorkerConfig(name="impostor", tls=pki["intruder"]))
    impostor.start()
    try:
        with pytest.raises(WorkerLost, match="certificate verify failed.*cluster.s CA"):
            Coordinator([impostor.address], SECRET, call_timeout_s=5, tls=pki["coord"])
    finally:
        impostor.stop()


def test_a_plain_peer_is_refused_by_a_tls_worker_which_keeps_serving(pki, tls_workers):
    with pytest.raises((AuthError, OSError, DnetError)):
        connect(tls_workers[0].host, tls_workers[0].port, SECRET, DEFAULT_LIMITS)   # no TLS: HELLO in the clear
    chan = connect(tls_workers[0].host, tls_workers[0].port, SECRET, DEFAULT_LIMITS, tls=pki["coord"])
    assert chan.request(Message(MsgType.PING)).type is MsgType.PONG
    chan.close()


class _FlippingProxy:
    """Forwards TCP both ways; flips one byte of the client's stream once `after` bytes have passed."""

    def __init__(self, target: tuple[str, int], after: int):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.target, self.after = target, after
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        client, _ = self.listener.accept()
        server = socket.create_connection(self.target)
        threading.Thread(target=self._pipe, args=(server, client, None), daemon=True).start()
        self._pipe(client, server, self.after)

    @staticmethod
    def _pipe(src, dst, flip_at):
        seen = 0
        try:
            while data := src.recv(65536):
                if flip_at is not None and seen <= flip_at < seen + len(data):
                    data = bytearray(data)
                    data[flip_at - seen] ^= 0x01
                seen += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            dst.close()


def test_a_byte_altered_in_flight_ends_the_connection_instead_of_arriving(pki, tls_workers):
    proxy = _FlippingProxy((tls_workers[0].host, tls_workers[0].port), after=200_000)   # past the handshakes
    chan = connect(*proxy.address, SECRET, DEFAULT_LIMITS, tls=pki["coord"])
    chan.sock.settimeout(5)
    payload = {"probe": np.ones(1 << 20, np.float32)}
    with pytest.raises((OSError, DnetError)):    # the worker drops the connection: no PONG of altered floats
        for _ in range(3):
            reply = chan.request(Message(MsgType.PING, {}, payload))
            assert reply.type is MsgType.PONG
    chan.close()


def test_plain_tcp_off_loopback_must_be_chosen(pki):
    with pytest.raises(TlsError, match="not a loopback address"):
        Worker(SECRET, WorkerConfig(host="0.0.0.0"))
    with pytest.raises(TlsError, match="not a loopback address"):
        Coordinator(["192.0.2.1:7700"], SECRET)   # refused before any connection is tried
    with pytest.raises(WorkerLost, match="cannot connect"):   # allowed: then it dials (nothing listens there)
        Coordinator(["127.0.0.1:1"], SECRET, allow_plain=True)


def test_missing_tls_files_are_one_error(tmp_path):
    with pytest.raises(TlsError, match="TLS files missing"):
        ClusterTls(tmp_path)


# -- the byte-moving path itself: two TlsSockets over a socket pair -----------------------------

def _tls_pair(pki_dirs, client_engine: str, server_engine: str):
    """A connected (client, server) pair of TlsSockets, each end on the engine given."""
    for engine in {client_engine, server_engine} & {"openssl"}:
        pytest.importorskip("OpenSSL")
    a, b = socket.socketpair()
    client = ClusterTls(pki_dirs["coord"], engine=client_engine)
    server = ClusterTls(pki_dirs["w0"], engine=server_engine)
    wrapped = {}
    thread = threading.Thread(target=lambda: wrapped.setdefault("server", server.wrap_server(b)))
    thread.start()
    wrapped["client"] = client.wrap_client(a)
    thread.join(10)
    return wrapped["client"], wrapped["server"]


@pytest.mark.parametrize("client_engine,server_engine",
                         [("openssl", "openssl"), ("ssl", "ssl"), ("openssl", "ssl"), ("ssl", "openssl")])
def test_large_tensors_cross_tls_byte_for_byte_both_ways(pki_dirs, client_engine, server_engine):
    """Frames of many records (and a small one between them) arrive equal to what was sent, whichever engine
    each end runs: the sent arrays are the oracle."""
    _exchange(*_tls_pair(pki_dirs, client_engine, server_engine))


@pytest.mark.parametrize("fast", ["1", "0"])
def test_the_openssl_engine_moves_the_same_bytes_on_each_of_its_paths(pki_dirs, monkeypatch, fast):
    """Its direct OpenSSL calls (SSL_read into the frame, one reused ciphertext buffer) and pyOpenSSL's
    public calls: each forced in turn."""
    pytest.importorskip("OpenSSL")
    monkeypatch.setenv("DNET_TLS_FAST", fast)
    client, server = _tls_pair(pki_dirs, "openssl", "openssl")
    assert (client._tls._raw is not None, server._tls._raw is not None) == (fast == "1", fast == "1")
    _exchange(client, server)


def _exchange(client, server) -> None:
    from dnet.cluster.channel import Channel

    ends = Channel(client, "server"), Channel(server, "client")
    rng = np.random.default_rng(7)
    sent = [rng.integers(0, 255, n, dtype=np.uint8) for n in (9 << 20, 3, (5 << 20) + 17)]
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(ends[1].recv().tensors["t"].copy() for _ in sent))
    reader.start()
    for arr in sent:                     # the writer sends while the other end reads, as a link does
        ends[0].send(Message(MsgType.RUN, {}, {"t": arr}))
    reader.join(30)
    assert len(got) == len(sent) and all(np.array_equal(g, s) for g, s in zip(got, sent))
    back = threading.Thread(target=ends[1].send, args=(Message(MsgType.RESULT, {}, {"back": sent[0][::-1].copy()}),))
    back.start()                         # and the other way
    np.testing.assert_array_equal(ends[0].recv().tensors["back"], sent[0][::-1])
    back.join(10)
    ends[0].close()
    with pytest.raises(DnetError, match="closed"):   # the peer's close is a clean end, not an error
        ends[1].recv()
    ends[1].close()


def test_the_openssl_engine_negotiates_tls13_with_aes128_gcm(pki_dirs):
    client, server = _tls_pair(pki_dirs, "openssl", "openssl")
    assert client.cipher() == server.cipher() == ("TLS_AES_128_GCM_SHA256", "TLSv1.3")
    client.close(), server.close()


@pytest.mark.parametrize("client_engine,server_engine", [("ssl", "ssl"), ("ssl", "openssl"), ("openssl", "ssl")])
def test_every_engine_pairing_is_tls13_with_an_aead_suite(pki_dirs, client_engine, server_engine):
    client, server = _tls_pair(pki_dirs, client_engine, server_engine)
    suite, version = client.cipher()
    assert version == "TLSv1.3" and server.cipher() == (suite, version)
    assert suite in {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
    client.close(), server.close()


def test_the_engine_is_chosen_by_name_or_environment(pki_dirs, monkeypatch):
    monkeypatch.setenv("DNET_TLS_ENGINE", "ssl")
    assert ClusterTls(pki_dirs["w0"]).engine.name == "ssl"
    monkeypatch.delenv("DNET_TLS_ENGINE")
    try:
        import OpenSSL  # noqa: F401
        fastest = "openssl"
    except ImportError:
        fastest = "ssl"
    assert ClusterTls(pki_dirs["w0"]).engine.name == fastest   # unset: the fastest installed
    with pytest.raises(TlsError, match="unknown TLS engine 'rustls'.*known: openssl, ssl"):
        ClusterTls(pki_dirs["w0"], engine="rustls")
