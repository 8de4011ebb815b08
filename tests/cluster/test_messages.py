"""Typed control messages: every record survives its frame; a malformed one is a MessageError naming the message
and the field; a worker answers it and keeps serving; a coordinator drops a worker that sends one."""
import dataclasses
import logging
import socket
import threading
import time
import types
import typing

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnet.cluster import Coordinator, Worker, WorkerConfig, WorkerLost
from dnet.cluster import messages
from dnet.cluster.auth import connect, server_handshake
from dnet.cluster.messages import (
    COORDINATOR_ACCEPTS, WORKER_ACCEPTS, Load, MessageError, NextStage, Record, Route, Run, decode_as, encode,
)
from dnet.cluster.protocol import (
    DEFAULT_LIMITS, HEADER, MAGIC, VERSION, Message, MsgType, ProtocolError, decode_frame, encode_frame,
)
from dnet.runtime import contiguous_assignment, split_pipeline
from residual_nets import oracle, request, residual_graph

SECRET = "test-secret-" + "0" * 32


def _records() -> list[type]:
    """Every record class in dnet.cluster.messages (the handshake's too, which no table lists)."""
    found, todo = [], list(Record.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: c.__name__)


RECORDS = _records()


def _reader(cls: type):
    """How the side that receives `cls` decodes a frame."""
    for table in (WORKER_ACCEPTS, COORDINATOR_ACCEPTS):
        if table.records.get(cls.kind) is cls:
            return table.decode
    return lambda msg: decode_as(cls, msg)


def _values(hint):
    """A strategy of valid values for one field annotation (the records' own checks may still refuse some)."""
    if hint is typing.Any:
        return st.integers()
    if hint is str:
        return st.text(max_size=12)
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.integers(-2 ** 53, 2 ** 53)
    if hint is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if dataclasses.is_dataclass(hint):
        return _instances(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(st.none(), *(_values(a) for a in args if a is not type(None)))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return st.lists(_values(args[0]), max_size=3).map(tuple)
    if origin is tuple:
        return st.tuples(*(_values(a) for a in args))
    if origin is dict:
        return st.dictionaries(st.text(max_size=6), _values(args[1]), max_size=3)
    raise AssertionError(f"no strategy for {hint}")


def _instances(cls):
    hints = typing.get_type_hints(cls)

    @st.composite
    def build(draw):
        values = {f.name: draw(_values(hints[f.name])) for f in dataclasses.fields(cls)}
        try:
            return cls(**values)
        except ValueError:   # the record's own check (a positive count, a rank inside its group)
            return None
    return build().filter(lambda r: r is not None)


def _tensors(cls) -> dict[str, np.ndarray]:
    return {name: np.arange(3, dtype=np.float32) for name in cls.tensors}


def _plain(hint):
    """A small valid value of an annotation."""
    simple = {typing.Any: 1, str: "s", bool: True, int: 1, float: 1.5}
    if hint in simple:
        return simple[hint]
    if dataclasses.is_dataclass(hint):
        return _plain_record(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _plain(next(a for a in args if a is not type(None)))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return (_plain(args[0]),)
    if origin is tuple:
        return tuple(_plain(a) for a in args)
    if origin is dict:
        return {"a": _plain(args[1])}
    raise AssertionError(f"no value for {hint}")


def _plain_record(cls):
    """An instance of `cls`: its defaults (valid by design) and small values for its other fields."""
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _plain(hints[f.name]) for f in dataclasses.fields(cls)
                  if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING})


def _valid_meta(cls) -> dict:
    """One valid meta of `cls`, every field present, as the wire carries it."""
    record = _plain_record(cls)
    hints = typing.get_type_hints(cls)
    filled = {f.name: _plain(hints[f.name]) for f in dataclasses.fields(cls) if getattr(record, f.name) is None}
    return encode(dataclasses.replace(record, **filled)).meta


# -- round trips -------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_every_message_survives_a_round_trip_through_its_frame(cls, data):
    record = data.draw(_instances(cls))
    tensors = _tensors(cls)
    back = _reader(cls)(decode_frame(encode_frame(encode(record, tensors))))
    assert back == record and type(back) is cls


def test_every_kind_a_side_accepts_has_one_record_and_every_record_a_kind():
    for table in (WORKER_ACCEPTS, COORDINATOR_ACCEPTS):
        assert all(cls.kind is kind for kind, cls in table.records.items())
    assert all(isinstance(cls.kind, MsgType) for cls in RECORDS)


def test_the_wire_is_the_meta_the_cluster_wrote_by_hand_before():
    assert encode(Run("s/0/1", 4, 2)).meta == {"key": "s/0/1", "rid": 4, "epoch": 2, "trace": ()}
    assert encode_frame(encode(Run("s/0/1", 4, 2, (0, 3)))) == encode_frame(
        Message(MsgType.RUN, {"key": "s/0/1", "rid": 4, "epoch": 2, "trace": [], "slots": [0, 3]}))
    assert encode(Route("k", NextStage("h", 9, "k2"))).meta == {"key": "k", "next": {"host": "h", "port": 9,
                                                                                       "key": "k2"}}


def test_tensors_travel_as_the_callers_arrays_not_copies():
    x = np.arange(1 << 20, dtype=np.float32)
    msg = encode(Run("k", 1, 0), {"x": x})
    assert msg.tensors["x"] is x


# -- malformed messages -------------------------------------------------------------------------------

def _required(cls):
    return [f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


MISSING_CASES = [(cls, name) for cls in RECORDS for name in _required(cls)]


@pytest.mark.parametrize("cls, name", MISSING_CASES, ids=[f"{c.__name__}.{n}" for c, n in MISSING_CASES])
def test_a_missing_field_is_a_protocol_error_naming_the_message_and_the_field(cls, name):
    meta = _valid_meta(cls)
    del meta[name]
    with pytest.raises(MessageError, match=rf"^{cls.kind.name} message: field '{name}' is missing"):
        _reader(cls)(Message(cls.kind, meta, _tensors(cls)))


def _wrong(hint):
    """A JSON value no field of annotation `hint` accepts."""
    inner = [a for a in typing.get_args(hint) if a is not type(None)]
    takes_objects = typing.get_origin(hint) is dict or dataclasses.is_dataclass(hint) or (
        typing.get_origin(hint) in (typing.Union, types.UnionType) and dataclasses.is_dataclass(inner[0]))
    return [1] if takes_objects else {"wrong": True}


WRONG_CASES = [(cls, f.name) for cls in RECORDS for f in dataclasses.fields(cls)
               if typing.get_type_hints(cls)[f.name] is not typing.Any]


@pytest.mark.parametrize("cls, name", WRONG_CASES, ids=[f"{c.__name__}.{n}" for c, n in WRONG_CASES])
def test_a_field_of_the_wrong_type_is_a_protocol_error_naming_the_message_and_the_field(cls, name):
    meta = _valid_meta(cls) | {name: _wrong(typing.get_type_hints(cls)[name])}
    with pytest.raises(MessageError, match=rf"^{cls.kind.name} message: field '{name}' must be "):
        _reader(cls)(Message(cls.kind, meta, _tensors(cls)))


@pytest.mark.parametrize("meta, path", [
    ({"key": "k", "next": {"host": "h", "port": "9", "key": "k2"}}, "next.port"),
    ({"key": "k", "next": {"host": "h", "port": 9}}, "next.key"),
    ({"key": "k", "shape": {"latency": "slow"}}, "shape.latency"),
])
def test_a_nested_field_is_named_by_its_path(meta, path):
    with pytest.raises(MessageError, match=rf"ROUTE message: field '{path}'"):
        WORKER_ACCEPTS.decode(Message(MsgType.ROUTE, meta))


def test_an_item_of_a_list_is_named_by_its_index():
    meta = {"key": "k", "rid": 1, "epoch": 0, "trace": [[0, "w0", 0.5], [1, "w1", "slow"]]}
    with pytest.raises(MessageError, match=r"RUN message: field 'trace\[1\]\[2\]' must be a number, got 'slow'"):
        WORKER_ACCEPTS.decode(Message(MsgType.RUN, meta))


def test_an_integer_field_refuses_booleans_and_a_number_field_takes_integers():
    with pytest.raises(MessageError, match="field 'rid' must be an integer, got True"):
        WORKER_ACCEPTS.decode(Message(MsgType.RUN, {"key": "k", "rid": True, "epoch": 0}))
    run = WORKER_ACCEPTS.decode(Message(MsgType.RUN, {"key": "k", "rid": 1, "epoch": 0, "trace": [[0, "w", 2]]}))
    assert run.trace == ((0, "w", 2.0),) and type(run.trace[0][2]) is float


def test_an_unknown_field_is_refused_naming_the_known_ones():
    with pytest.raises(MessageError, match=r"RUN message: unknown field 'slot' \(known: epoch, key, rid, slots, "
                                           r"trace\)"):
        WORKER_ACCEPTS.decode(Message(MsgType.RUN, {"key": "k", "rid": 1, "epoch": 0, "slot": [0, 1]}))


def test_a_kind_a_side_does_not_accept_is_refused_naming_it():
    with pytest.raises(MessageError, match="^a worker does not accept RESULT messages$"):
        WORKER_ACCEPTS.decode(Message(MsgType.RESULT, {"rid": 1, "epoch": 0}))
    with pytest.raises(MessageError, match="^a coordinator does not accept RUN messages$"):
        COORDINATOR_ACCEPTS.decode(Message(MsgType.RUN, {"key": "k", "rid": 1, "epoch": 0}))
    with pytest.raises(ProtocolError, match="unknown message type 77"):   # no kind at all: refused with the frame
        decode_frame(HEADER.pack(MAGIC, VERSION, 77, 0, 2, 0) + b"{}")


def test_a_required_tensor_and_the_records_own_checks_are_enforced():
    meta = {"key": "k", "weights": []}
    with pytest.raises(MessageError, match="LOAD message: tensor 'graph' is missing"):
        WORKER_ACCEPTS.decode(Message(MsgType.LOAD, meta))
    with pytest.raises(MessageError, match="LOAD message: 'slots' must be a positive integer, got 0"):
        WORKER_ACCEPTS.decode(Message(MsgType.LOAD, meta | {"slots": 0}, {"graph": np.zeros(1, np.uint8)}))
    assert WORKER_ACCEPTS.decode(Message(MsgType.LOAD, meta, {"graph": np.zeros(1, np.uint8)})) == Load("k", ())


def test_a_document_that_travels_as_a_tensor_is_checked_the_same_way():
    ref = {"file": "ab", "dtype": "u8", "shape": [2], "pieces": [[0, 2, 1, "x"]]}
    with pytest.raises(MessageError, match=r"mapped: field 'w1.pieces\[0\]\[3\]' must be an integer"):
        messages.parse(dict[str, messages.FileRef], {"w1": ref}, "mapped")


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=3), max_leaves=8)


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_meta_decodes_to_a_valid_record_or_is_a_message_error_never_a_crash(cls, data):
    meta = _valid_meta(cls)
    names = list(meta) + [f.name for f in dataclasses.fields(cls)] + ["extra"]
    for name in data.draw(st.lists(st.sampled_from(names), max_size=3)):
        if data.draw(st.booleans()):
            meta.pop(name, None)
        else:
            meta[name] = data.draw(json_values)
    try:
        record = _reader(cls)(Message(cls.kind, meta, _tensors(cls)))
    except MessageError:
        return
    assert type(record) is cls and encode(record).meta.keys() <= {f.name for f in dataclasses.fields(cls)}


# -- a worker answers a malformed message from an authenticated peer, and keeps serving -------------------

@pytest.fixture
def workers(tmp_path):
    started = [Worker(SECRET, WorkerConfig(name=f"w{i}", cache_dir=str(tmp_path / f"cache{i}"))) for i in range(2)]
    for w in started:
        w.start()
    try:
        yield started
    finally:
        for w in started:
            w.stop()


@pytest.mark.parametrize("msg, reason", [
    (Message(MsgType.ROUTE, {}), "ROUTE message: field 'key' is missing"),
    (Message(MsgType.ROUTE, {"key": 7}), "ROUTE message: field 'key' must be a string, got 7"),
    (Message(MsgType.RESET, {"session": "s", "all": True}), "RESET message: unknown field 'all'"),
    (Message(MsgType.LINK, {"host": "h", "port": 1, "bytes": 0}), "LINK message: 'bytes' must be in"),
    (Message(MsgType.RESULT, {"rid": 3, "epoch": 0}), "a worker does not accept RESULT messages"),
    (Message(MsgType.CAPS, {"probe": "yes"}), "CAPS message: field 'probe' must be true or false"),
])
def test_a_worker_answers_a_malformed_message_with_an_error_and_keeps_serving(rng, workers, caplog, msg, reason):
    net, graph = residual_graph(rng)
    coordinator = Coordinator([w.address for w in workers], SECRET, call_timeout_s=10)
    try:
        coordinator.load(split_pipeline(graph, contiguous_assignment(graph, [1.0, 1.0])))
        chan = connect(workers[1].host, workers[1].port, SECRET, DEFAULT_LIMITS)
        chan.sock.settimeout(5)
        with caplog.at_level(logging.WARNING, logger="dnet.worker"):
            reply = chan.request(msg)
        assert reply.type is MsgType.ERROR and reply.meta["reason"].startswith(reason)
        assert reason in caplog.text
        assert chan.request(Message(MsgType.PING)).type is MsgType.PONG   # the same connection goes on
        chan.close()
        req = request(rng)   # and the worker, mid-pipeline, still serves its stage
        np.testing.assert_allclose(coordinator.run(req)["output"], oracle(net, req["x"], req["mask"]), rtol=1e-5)
    finally:
        coordinator.close()


def test_a_malformed_request_is_answered_with_its_ids_so_its_sender_can_fail_it(workers):
    chan = connect(workers[0].host, workers[0].port, SECRET, DEFAULT_LIMITS)
    chan.sock.settimeout(5)
    reply = chan.request(Message(MsgType.RUN, {"key": "s/0/0", "rid": 12, "epoch": 3, "slots": "all"},
                                 {"x": np.ones(2, np.float32)}))
    assert reply.type is MsgType.ERROR
    assert reply.meta == {"reason": "RUN message: field 'slots' must be [an integer, an integer] or null, "
                                    "got 'all'", "rid": 12, "epoch": 3, "key": "s/0/0"}
    chan.close()


# -- a coordinator drops a worker that sends it a malformed message ------------------------------------

def test_a_worker_whose_reply_is_malformed_is_lost_with_the_reason_logged(caplog):
    """A fake worker: it passes the handshake, then answers CAPS without its pid."""
    listener = socket.create_server(("127.0.0.1", 0))

    def fake_worker():
        sock, _ = listener.accept()
        chan = server_handshake(sock, SECRET, DEFAULT_LIMITS)
        chan.recv()   # CAPS
        chan.send(Message(MsgType.CAPS, {"name": "fake", "backend": "numpy", "threads": None, "slowdown": 1.0,
                                         "cores": [0], "host": "h", "advertise": "h:1", "tls": False}))
        chan.sock.settimeout(5)
        try:
            while chan.recv():
                pass
        except Exception:  # noqa: BLE001 - the coordinator closed it, as the test expects
            pass
        chan.close()

    thread = threading.Thread(target=fake_worker, daemon=True)
    thread.start()
    try:
        with caplog.at_level(logging.WARNING, logger="dnet.coordinator"):
            with pytest.raises(WorkerLost, match="lost during CAPS"):
                Coordinator([f"127.0.0.1:{listener.getsockname()[1]}"], SECRET, call_timeout_s=5)
            deadline = time.monotonic() + 5   # the reader logs the loss after waking the caller
            while "CAPS message" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.01)
        assert "lost: CAPS message: field 'pid' is missing" in caplog.text
    finally:
        thread.join(5)
        listener.close()


def test_a_nested_records_absent_field_gets_its_own_default_not_a_shared_one():
    meta = {"name": "w", "backend": "numpy", "threads": None, "slowdown": 1.0, "cores": [0], "pid": 1, "host": "h",
            "advertise": "h:1", "tls": False, "device": {"kind": "cpu"}}
    first, second = (COORDINATOR_ACCEPTS.decode(Message(MsgType.CAPS, meta)) for _ in range(2))
    first.device.compute["f32"] = 1e9
    assert second.device.compute == {} and first.device.cores == 1
