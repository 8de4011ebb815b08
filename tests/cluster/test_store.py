"""The worker's weight cache: content-addressed, verified on the way in and on the way out."""
import ml_dtypes
import numpy as np
import pytest

from dnet.cluster.store import WeightStore, content_hash
from dnet.errors import WeightError


def test_a_weight_round_trips_under_its_hash(tmp_path, rng):
    store = WeightStore(tmp_path)
    for w in [rng.standard_normal((3, 4)).astype(np.float32), np.arange(6, dtype=np.int64).reshape(2, 3),
              rng.standard_normal(5).astype(ml_dtypes.bfloat16), np.float32(2.5) * np.ones((), np.float32)]:
        digest = content_hash(w)
        assert store.missing([digest]) == [digest]
        store.put(digest, w)
        back = store.get(digest)
        assert back.dtype == w.dtype and back.shape == w.shape and back.tobytes() == w.tobytes()
    assert not list(tmp_path.rglob("*.tmp"))  # written by rename: nothing half-written left behind


def test_same_bytes_with_another_shape_is_another_weight():
    w = np.arange(6, dtype=np.float32)
    assert content_hash(w) != content_hash(w.reshape(2, 3))


def test_bytes_that_do_not_match_their_hash_are_refused(tmp_path):
    store = WeightStore(tmp_path)
    honest = np.ones(4, np.float32)
    with pytest.raises(WeightError, match="its bytes hash to"):
        store.put(content_hash(honest), np.zeros(4, np.float32))
    assert not store.has(content_hash(honest))


def test_a_corrupted_cache_file_is_detected_and_removed(tmp_path):
    store = WeightStore(tmp_path)
    w = np.arange(100, dtype=np.float32)
    digest = content_hash(w)
    store.put(digest, w)
    path = next(tmp_path.rglob(f"{digest}.bin"))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightError, match="cache file corrupt"):
        store.get(digest)
    assert not store.has(digest)


def test_a_name_that_is_not_a_hash_cannot_reach_the_filesystem(tmp_path):
    with pytest.raises(WeightError, match="not a weight hash"):
        WeightStore(tmp_path).has("../../etc/passwd")
