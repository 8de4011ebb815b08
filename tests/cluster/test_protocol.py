"""The frame format: round trips, and every malformed frame refused with a reason (fuzzed)."""
import json
import struct

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dnet.cluster.protocol import (
    ALIGN, COALESCE_BYTES, HEADER, MAGIC, VERSION, Limits, Message, MsgType, ProtocolError, decode_frame, encode_frame,
    frame_buffers,
)

DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16, np.int8, np.int32, np.int64, np.bool_, np.uint8]


def _frame(type_code: int, meta: dict | bytes, payload: bytes = b"", version: int = VERSION,
           magic: bytes = MAGIC, flags: int = 0) -> bytes:
    meta_bytes = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    return HEADER.pack(magic, version, type_code, flags, len(meta_bytes), len(payload)) + meta_bytes + payload


@st.composite
def arrays(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    if dtype is ml_dtypes.bfloat16:
        return draw(hnp.arrays(np.float32, shape, elements=st.floats(-1e3, 1e3, width=32))).astype(dtype)
    return draw(hnp.arrays(np.dtype(dtype), shape))


@st.composite
def messages(draw):
    names = draw(st.lists(st.text(min_size=1, max_size=8), max_size=4, unique=True))
    meta = draw(st.dictionaries(st.sampled_from(["rid", "key", "epoch"]), st.integers(0, 2 ** 40), max_size=3))
    return Message(draw(st.sampled_from(list(MsgType))), meta, {n: draw(arrays()) for n in names})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_any_message_survives_a_round_trip(msg):
    back = decode_frame(encode_frame(msg))
    assert back.type is msg.type and back.meta == msg.meta
    assert list(back.tensors) == list(msg.tensors)
    for name, arr in msg.tensors.items():
        assert back.tensors[name].dtype == arr.dtype and back.tensors[name].shape == arr.shape
        assert back.tensors[name].tobytes() == arr.tobytes()  # bit-exact, NaNs included


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=256))
def test_arbitrary_bytes_are_refused_as_protocol_errors(data):
    with pytest.raises(ProtocolError):
        decode_frame(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages(), st.data())
def test_a_mutated_frame_decodes_or_is_refused_never_crashes(msg, data):
    frame = bytearray(encode_frame(msg))
    mutation = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if mutation == "flip":
        at = data.draw(st.integers(0, len(frame) - 1))
        frame[at] ^= data.draw(st.integers(1, 255))
    elif mutation == "truncate":
        frame = frame[:data.draw(st.integers(0, len(frame) - 1))]
    else:
        frame += data.draw(st.binary(min_size=1, max_size=16))
    try:
        back = decode_frame(bytes(frame))
    except ProtocolError:
        return
    assert mutation == "flip"  # only a flip inside the tensor bytes or a JSON value can still parse
    assert isinstance(back, Message)


@pytest.mark.parametrize("frame, reason", [
    (_frame(1, {}, magic=b"HTTP"), "bad magic"),
    (_frame(1, {}, version=9), "unsupported protocol version 9"),
    (_frame(200, {}), "unknown message type 200"),
    (_frame(1, {}, flags=1), "reserved flags"),
    (_frame(1, b"[1, 2]"), "meta must be a JSON object"),
    (_frame(1, b"\xff\xfe"), "not UTF-8 JSON"),
    (_frame(15, {"tensors": [["x", "f32", [2]]]}, bytes(4)), "past the 4-byte payload"),
    (_frame(15, {"tensors": [["x", "f32", [1]]]}, bytes(8)), "payload is 8 bytes but its tensors cover 4"),
    (_frame(15, {"tensors": [["x", "f99", [1]]]}, bytes(4)), "unknown dtype"),
    (_frame(15, {"tensors": [["x", "f32", [-1]]]}), "bad shape"),
    (_frame(15, {"tensors": [["x", "f32", [1]], ["x", "f32", [0]]]}, bytes(4)), "listed twice"),
    (_frame(15, {"tensors": [["b", "bool", [2]]]}, b"\x01\x07"), "bool bytes other than 0 and 1"),
    (_frame(15, {"tensors": "x"}), "'tensors' must be a list"),
    (_frame(1, {})[:-1], "its header declares"),
    (_frame(1, {})[:10], "truncated header"),
])
def test_malformed_frames_are_refused_with_their_reason(frame, reason):
    with pytest.raises(ProtocolError, match=reason):
        decode_frame(frame)


def test_oversized_claims_are_refused_from_the_header_alone():
    limits = Limits(max_meta=64, max_payload=1024)
    huge = HEADER.pack(MAGIC, VERSION, int(MsgType.RUN), 0, 2, 1 << 40)  # claims a terabyte, sends nothing
    with pytest.raises(ProtocolError, match=r"oversized payload: 1099511627776 bytes claimed, limit 1024"):
        decode_frame(huge + b"{}", limits)
    with pytest.raises(ProtocolError, match="oversized meta"):
        decode_frame(_frame(1, {"pad": "x" * 100}), limits)
    with pytest.raises(ProtocolError, match="too many tensors"):
        decode_frame(_frame(15, {"tensors": [[str(i), "u8", [0]] for i in range(3)]}), Limits(max_tensors=2))


def test_tensors_start_on_aligned_offsets_and_large_frames_reference_the_arrays_without_copying():
    a = np.arange(3, dtype=np.int8)
    b = np.arange(COALESCE_BYTES, dtype=np.float32)  # past the coalescing size: sent from where it lies
    buffers = frame_buffers(Message(MsgType.RUN, {}, {"a": a, "b": b}))
    _, _, _, _, meta_len, payload_len = struct.unpack(HEADER.format, bytes(buffers[0][:HEADER.size]))
    assert payload_len == ALIGN + b.nbytes  # b starts at the next aligned offset after a's 3 bytes
    views = [np.frombuffer(buf, np.uint8) for buf in buffers[1:]]
    assert any(np.shares_memory(v, a) for v in views) and any(np.shares_memory(v, b) for v in views)


def test_a_small_frame_is_one_buffer_and_decodes_like_a_large_one():
    a, b = np.arange(3, dtype=np.int8), np.arange(10, dtype=np.float32)
    small = frame_buffers(Message(MsgType.RUN, {"rid": 1}, {"a": a, "b": b}))
    assert len(small) == 1 and len(small[0]) <= COALESCE_BYTES
    big = np.arange(COALESCE_BYTES, dtype=np.float32)
    large = frame_buffers(Message(MsgType.RUN, {"rid": 1}, {"a": a, "b": b, "big": big}))
    assert len(large) > 1
    msg_small = decode_frame(b"".join(bytes(x) for x in small))
    msg_large = decode_frame(b"".join(bytes(x) for x in large))
    assert msg_small.meta == msg_large.meta == {"rid": 1}
    for name, want in {"a": a, "b": b}.items():
        np.testing.assert_array_equal(msg_small.tensors[name], want)
        np.testing.assert_array_equal(msg_large.tensors[name], want)
    np.testing.assert_array_equal(msg_large.tensors["big"], big)


def test_a_control_message_carries_no_tensor_list():
    (frame,) = frame_buffers(Message(MsgType.PING, {"n": 1}))
    assert frame[HEADER.size:] == b'{"n":1}'
    assert decode_frame(frame) == Message(MsgType.PING, {"n": 1})


def test_deeply_nested_meta_is_a_protocol_error_not_a_recursion_error():
    deep = b"[" * 100_000 + b"]" * 100_000
    frame = HEADER.pack(MAGIC, VERSION, int(MsgType.RUN), 0, len(deep), 0) + deep
    with pytest.raises(ProtocolError, match="nested too deeply"):
        decode_frame(frame, Limits(max_meta=1 << 20))
    nested_in_a_string = {"note": "[" * 100, "tensors": []}
    assert decode_frame(_frame(1, nested_in_a_string)).meta["note"] == "[" * 100
