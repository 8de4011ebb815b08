"""Weights know the file bytes they came from: views of a registered read-only map, and copies that
permute or stack its rows. Oracle: the bytes the origin names, read back from the file, are the array's."""
import hashlib
import os

import numpy as np
import pytest

from dnet.core import file_hash
from dnet.core.origins import Piece, gather, origin_of, register_mapping, stack_rows, take_rows


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Files' digests are remembered in a cache of this test's own."""
    monkeypatch.setenv("DNET_CACHE_DIR", str(tmp_path / "dnet-cache"))


@pytest.fixture
def mapped(tmp_path):
    """A 64-row x 40-byte matrix after a 24-byte header, in a file mapped read-only and registered."""
    path = tmp_path / "model.bin"
    rows = np.random.default_rng(0).integers(0, 256, (64, 40), dtype=np.uint8)
    path.write_bytes(b"h" * 24 + rows.tobytes())
    mapping = np.memmap(path, dtype=np.uint8, mode="r")
    register_mapping(mapping, path)
    return path, mapping, mapping[24:].reshape(64, 40)


def read_back(path, origin) -> bytes:
    return gather(np.fromfile(path, np.uint8), origin.pieces).tobytes()


def test_a_view_of_a_registered_map_has_the_byte_range_it_lies_in(mapped):
    path, _, matrix = mapped
    origin = origin_of(matrix[8:16])
    assert origin.pieces == (Piece(24 + 8 * 40, 8 * 40),)
    assert read_back(path, origin) == matrix[8:16].tobytes()
    assert origin.file.sha256() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_arrays_not_in_a_registered_map_have_no_origin(mapped):
    _, _, matrix = mapped
    assert origin_of(np.array(matrix)) is None             # a plain copy
    assert origin_of(matrix[:, :8]) is None                # not contiguous
    assert origin_of(np.zeros(4)) is None


def test_rows_taken_in_a_new_order_keep_their_origin_in_few_pieces(mapped):
    path, _, matrix = mapped
    # llama.cpp's q/k permutation undone: per head of 16 rows, the even rows then the odd ones
    within = np.concatenate([np.arange(0, 16, 2), np.arange(1, 16, 2)])
    order = (np.arange(4)[:, None] * 16 + within[None, :]).reshape(-1)
    permuted = take_rows(matrix, order)
    origin = origin_of(permuted)
    assert read_back(path, origin) == permuted.tobytes() == matrix[order].tobytes()
    assert len(origin.pieces) == 8                          # two strided runs per head


def test_stacked_rows_keep_the_origins_of_their_parts(mapped):
    path, _, matrix = mapped
    stacked = stack_rows([take_rows(matrix[:16], np.arange(16)[::-1]), matrix[16:32], matrix[32:40]])
    origin = origin_of(stacked)
    assert read_back(path, origin) == stacked.tobytes()
    assert origin.pieces[-1] == Piece(24 + 16 * 40, 24 * 40)   # adjacent ranges joined into one run
    assert origin_of(stack_rows([matrix[:4], np.ones((4, 40), np.uint8)])) is None


def test_gather_refuses_ranges_past_the_end_of_the_file(mapped):
    _, mapping, _ = mapped
    with pytest.raises(ValueError, match="past the end"):
        gather(np.asarray(mapping), [Piece(mapping.size - 8, 16)])
    with pytest.raises(ValueError):
        Piece.from_json([0, 8, 3, 4])                       # runs that overlap


def test_a_writable_map_is_not_registered(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="read-only"):
        register_mapping(np.memmap(path, dtype=np.uint8, mode="r+"), path)


def test_a_files_digest_is_computed_once_per_version(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"one")
    assert file_hash.file_sha256(path) == hashlib.sha256(b"one").hexdigest()
    stat = path.stat()
    path.write_bytes(b"two")                                # same size; the old times put back:
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_hash.file_sha256(path) == hashlib.sha256(b"one").hexdigest()   # the cache answered
    path.write_bytes(b"three")                              # a new version: hashed again
    assert file_hash.file_sha256(path) == hashlib.sha256(b"three").hexdigest()


def test_a_finalizer_run_by_the_garbage_collector_inside_a_locked_section_does_not_deadlock(tmp_path):
    """The cyclic GC may run a noted copy's or a mapping's finalizer on any allocation, also while this
    thread holds the module's lock (origin_of -> allocation -> gc -> finalizer): a test run once hung so.
    Run in a child process with a deadline, since a deadlocked lock would hang every later test here."""
    script = f"""
import gc, numpy as np
from dnet.core import origins
path = {str(tmp_path / "w.bin")!r}
np.arange(4096, dtype=np.float32).tofile(path)
m = np.memmap(path, np.float32, "r")
origins.register_mapping(m, path)
copy = origins.take_rows(m.reshape(64, 64), list(range(63, -1, -1)))
cycle = [copy]; cycle.append(cycle)            # only the cyclic GC frees them
mapping_cycle = [m]; mapping_cycle.append(mapping_cycle)
del copy, cycle, m, mapping_cycle
gc.disable()
with origins._lock:                            # as origin_of holds it when an allocation collects
    gc.collect()
assert origins.origin_of(np.zeros(4)) is None  # the lock is free again, the finalizers' work done
assert not origins._noted and not origins._mappings
print("ok")
"""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
