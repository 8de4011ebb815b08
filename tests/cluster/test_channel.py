"""Frames over real sockets: large tensors, truncation, oversized claims, the handshake, shaped links."""
import socket
import threading
import time

import numpy as np
import pytest

from dnet.cluster.auth import AuthError, client_handshake, server_handshake
from dnet.cluster.channel import Channel, FrameReader, read_frame
from dnet.cluster.link import LinkShape, Outbox
from dnet.cluster.protocol import (
    ALIGN, DEFAULT_LIMITS, HEADER, MAGIC, VERSION, ConnectionClosed, Limits, Message, MsgType, ProtocolError,
    decode_frame, encode_frame,
)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    yield Channel(a, "a"), Channel(b, "b")
    a.close()
    b.close()


def _in_thread(fn, *args):
    box = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            box["error"] = err

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def test_a_large_tensor_arrives_intact_and_aligned(pair, rng):
    a, b = pair
    x = rng.standard_normal((512, 1024)).astype(np.float32)  # 2 MiB: many partial sends
    t, _ = _in_thread(a.send, Message(MsgType.RUN, {"rid": 7}, {"x": x, "i": np.arange(5)}))
    msg = b.recv()
    t.join(10)
    assert msg.meta == {"rid": 7}
    np.testing.assert_array_equal(msg.tensors["x"], x)
    np.testing.assert_array_equal(msg.tensors["i"], np.arange(5))
    assert msg.tensors["x"].ctypes.data % ALIGN == 0


def test_a_connection_closed_mid_frame_is_a_truncated_frame(pair):
    a, b = pair
    frame = encode_frame(Message(MsgType.RUN, {}, {"x": np.ones(100, np.float32)}))
    a.sock.sendall(frame[:-10])
    a.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(ProtocolError, match=r"truncated frame: connection closed after 390 of 400 payload bytes"):
        b.recv()


def test_a_close_between_frames_is_a_clean_close(pair):
    a, b = pair
    a.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionClosed):
        b.recv()


def test_an_oversized_claim_is_refused_before_anything_is_allocated(pair):
    a, b = pair
    b.limits = Limits(max_payload=1 << 20)
    a.sock.sendall(HEADER.pack(MAGIC, VERSION, int(MsgType.RUN), 0, 2, 1 << 40) + b"{}")
    with pytest.raises(ProtocolError, match="oversized payload"):
        b.recv()


# -- the handshake ------------------------------------------------------------------------

def _handshake(server_secret: str, client_secret: str):
    s, c = socket.socketpair()
    t, box = _in_thread(server_handshake, s, server_secret, DEFAULT_LIMITS)
    try:
        return client_handshake(c, client_secret, DEFAULT_LIMITS), t, box
    except AuthError as err:
        t.join(10)
        return err, t, box


def test_peers_holding_the_same_secret_get_a_working_channel():
    client, t, box = _handshake("k" * 64, "k" * 64)
    t.join(10)
    client.send(Message(MsgType.PING, {"n": 1}))
    assert box["value"].recv().meta == {"n": 1}


def test_a_client_with_the_wrong_secret_is_refused_by_both_sides():
    err, t, box = _handshake("right", "wrong")
    t.join(10)
    assert isinstance(err, AuthError) and "does not hold the cluster secret" in str(err)
    assert isinstance(box["error"], AuthError)


def test_a_server_with_the_wrong_secret_is_refused_by_the_client():
    err, t, box = _handshake("wrong", "right")
    t.join(10)
    assert "does not hold the cluster secret" in str(err)


def test_a_replayed_proof_is_refused():
    """A proof seen on one connection is worthless on the next: the server's nonce changes."""
    sessions = []
    for _ in range(2):
        s, c = socket.socketpair()
        t, box = _in_thread(server_handshake, s, "secret", DEFAULT_LIMITS)
        chan = Channel(c)
        challenge = chan.request(Message(MsgType.HELLO, {"client_nonce": "00" * 32}))
        sessions.append((chan, t, box, challenge))
    (chan1, t1, _, ch1), (chan2, t2, box2, ch2) = sessions
    from dnet.cluster.auth import _proof

    proof = _proof("secret", b"dnet-client", bytes.fromhex(ch1.meta["server_nonce"]), bytes(32))
    chan1.send(Message(MsgType.AUTH, {"proof": proof}))
    assert chan1.recv().type is MsgType.WELCOME
    chan2.send(Message(MsgType.AUTH, {"proof": proof}))  # the replay
    reply = chan2.recv()
    t1.join(10)
    t2.join(10)
    assert reply.type is MsgType.ERROR and "wrong proof" in reply.meta["reason"]
    assert isinstance(box2["error"], AuthError)


def test_before_the_handshake_a_peer_cannot_send_a_payload():
    s, c = socket.socketpair()
    t, box = _in_thread(server_handshake, s, "secret", DEFAULT_LIMITS)
    c.sendall(encode_frame(Message(MsgType.HELLO, {}, {"junk": np.zeros(1000, np.uint8)})))
    t.join(10)
    assert isinstance(box["error"], AuthError) and "oversized payload" in str(box["error"])


# -- shaped links ----------------------------------------------------------------------------

def test_a_shaped_link_delivers_after_its_latency_and_pipelines_messages(pair):
    a, b = pair
    outbox = Outbox(a, LinkShape(bandwidth=None, latency=0.15))
    start = time.monotonic()
    for i in range(5):
        outbox.put(Message(MsgType.PING, {"i": i}))
    arrivals = [(b.recv().meta["i"], time.monotonic() - start) for _ in range(5)]
    outbox.close()
    assert [i for i, _ in arrivals] == list(range(5))
    assert arrivals[0][1] >= 0.15
    assert arrivals[-1][1] < 0.15 * 3  # all five in flight at once, not 5 x 0.15 s one after another


def test_a_shaped_link_paces_bytes_to_its_bandwidth(pair):
    a, b = pair
    outbox = Outbox(a, LinkShape(bandwidth=4e6, latency=0.0))  # 4 MB/s
    start = time.monotonic()
    for _ in range(4):
        outbox.put(Message(MsgType.PING, {}, {"x": np.zeros(100_000, np.uint8)}))
    for _ in range(4):
        b.recv()
    elapsed = time.monotonic() - start
    outbox.close()
    assert 0.1 <= elapsed < 0.4  # 400 kB at 4 MB/s


# -- direct sends ------------------------------------------------------------------------------

def test_a_small_message_on_an_idle_link_goes_out_from_the_putting_thread():
    a, b = socket.socketpair()
    sender, receiver = Channel(a, "a"), Channel(b, "b")
    outbox = Outbox(sender)
    senders = []
    sender.send = lambda msg: senders.append(threading.current_thread().name)  # the outbox thread's way out
    outbox.put(Message(MsgType.RUN, {"rid": 1}, {"x": np.arange(4, dtype=np.float32)}))
    msg = receiver.recv()
    assert msg.meta == {"rid": 1} and senders == []
    np.testing.assert_array_equal(msg.tensors["x"], np.arange(4, dtype=np.float32))
    outbox.close()
    a.close()
    b.close()


def _tcp_pair(sndbuf: int) -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname())
        b, _ = server.accept()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    return a, b


@pytest.mark.parametrize("large_every, pause_every", [(0, 0), (0, 3), (50, 3)])
def test_direct_sends_keep_the_order_of_a_backlog_and_a_full_socket(rng, large_every, pause_every):
    """Small messages go out directly when nothing waits, large ones (every `large_every`th) queue for the
    outbox's thread. The peer starts reading late, so the socket fills: direct sends come back unsent or
    cut short (their rest sent by the thread), and the producer pausing (every `pause_every`th message)
    lets the link fall idle again between them. Every frame still arrives whole, in the order it was put."""
    a, b = _tcp_pair(16 << 10)
    sender, receiver = Channel(a, "a"), Channel(b, "b")
    outbox = Outbox(sender, depth=8)
    sizes = [int(s) for s in rng.integers(1, 6000, 400)]
    if large_every:
        sizes[::large_every] = [100_000] * len(sizes[::large_every])  # past the direct-send size

    def read_late():
        time.sleep(0.3)
        return [receiver.recv() for _ in sizes]

    t, box = _in_thread(read_late)
    for i, n in enumerate(sizes):
        outbox.put(Message(MsgType.RUN, {"i": i}, {"x": np.full(n, i % 251, np.uint8)}))
        if pause_every and i % pause_every == 0:
            time.sleep(0.001)
    t.join(20)
    outbox.close()
    got = box["value"]
    assert [m.meta["i"] for m in got] == list(range(len(sizes)))
    assert all(m.tensors["x"].size == n and (m.tensors["x"] == i % 251).all()
               for i, (m, n) in enumerate(zip(got, sizes)))
    a.close()
    b.close()


def test_a_direct_send_on_a_closed_link_fails_the_outbox_and_ends_its_thread():
    a, b = socket.socketpair()
    sender = Channel(a, "a")
    errors = []
    outbox = Outbox(sender, on_error=errors.append)
    b.close()
    sender.close()
    outbox.put(Message(MsgType.PING))   # lost, as a queued message on a failing link is
    assert outbox.error is not None and errors == [outbox.error]
    with pytest.raises(ConnectionError, match="link to a failed"):
        outbox.put(Message(MsgType.PING))
    outbox._thread.join(2)
    assert not outbox._thread.is_alive()


def test_the_handshake_has_a_deadline_not_just_a_timeout_per_read(monkeypatch):
    """A peer that sends one byte every 0.2 s never trips a 0.5 s timeout per read; the deadline ends it."""
    from dnet.cluster import auth
    from dnet.cluster.protocol import encode_frame

    monkeypatch.setattr(auth, "HANDSHAKE_TIMEOUT_S", 0.5)
    s, c = socket.socketpair()
    start = time.monotonic()
    t, box = _in_thread(server_handshake, s, "secret", DEFAULT_LIMITS)
    hello = encode_frame(Message(MsgType.HELLO, {"client_nonce": "00" * 32}))
    try:
        for byte in hello[:15]:
            if not t.is_alive():
                break
            c.send(bytes([byte]))
            time.sleep(0.2)
    except OSError:
        pass
    t.join(5)
    assert isinstance(box.get("error"), AuthError) and time.monotonic() - start < 2.0
    c.close()


def test_frames_arriving_byte_by_byte_and_across_the_read_buffers_end_are_read_whole(rng):
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    reader = FrameReader(b, size=HEADER.size + 40)   # a small read buffer: frames straddle its end
    sent = [Message(MsgType.PING, {"i": i, "pad": "x" * (i % 7)}, {"t": rng.standard_normal(i % 3 + 1).astype(np.float32)} if i % 2
                    else {}) for i in range(12)]
    data = b"".join(encode_frame(m) for m in sent)
    t, _ = _in_thread(lambda: [a.sendall(data[i:i + 1]) for i in range(len(data))])
    for want in sent:
        got = reader.read()
        assert got.meta == want.meta and got.tensors.keys() == want.tensors.keys()
        for name, value in want.tensors.items():
            np.testing.assert_array_equal(got.tensors[name], value)
    t.join(10)
    a.close()
    b.close()


def test_the_unbuffered_reader_reads_no_byte_past_its_frame():
    a, b = socket.socketpair()
    b.settimeout(10)
    a.sendall(encode_frame(Message(MsgType.PING, {"n": 1})) + b"after")
    assert read_frame(b).meta == {"n": 1}
    assert b.recv(16) == b"after"
    a.close()
    b.close()


@pytest.mark.parametrize("heartbeat", [False, True])
def test_the_worker_answers_an_empty_ping_with_the_pong_encode_writes(heartbeat):
    from dnet.cluster.messages import Ping, Pong, decode_as, encode
    from dnet.cluster.worker import _PONGS
    assert _PONGS[heartbeat] == encode_frame(encode(Pong(heartbeat, 0)))
    assert decode_as(Pong, decode_frame(_PONGS[heartbeat])) == Pong(heartbeat, 0)
    assert Ping(heartbeat).heartbeat is heartbeat
