"""Weights copied into a huge-page arena (`dnet.core.huge_pages`): equal bit for bit, read from their file,
only what lies in a mapped file, nothing where huge pages are off. Oracle: the arrays themselves."""
import os
import time

import numpy as np
import pytest

from dnet.core import huge_pages
from dnet.core.huge_pages import MIN_BYTES, in_huge_pages
from dnet.core.origins import register_mapping


@pytest.fixture
def mapped(tmp_path, rng):
    """A file of two arrays, mapped read-only and registered, as a model file's reader leaves it."""
    big = rng.integers(0, 256, 3 * MIN_BYTES, dtype=np.uint8)
    small = rng.standard_normal(64).astype(np.float32)
    path = tmp_path / "weights.bin"
    path.write_bytes(big.tobytes() + small.tobytes())
    mapping = np.memmap(path, dtype=np.uint8, mode="r")
    register_mapping(mapping, path)
    views = {"big": mapping[:big.nbytes].reshape(3, MIN_BYTES), "small": mapping[big.nbytes:].view(np.float32)}
    return path, mapping, views, big, small


def _arena_of(array: np.ndarray) -> dict[str, str]:
    """The /proc/self/smaps fields of the mapping that holds `array`."""
    at = array.__array_interface__["data"][0]
    fields, inside = {}, False
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= at < hi
        elif inside:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def test_mapped_weights_are_copied_equal_and_the_rest_stay(mapped, rng):
    _, mapping, views, big, small = mapped
    anonymous = rng.standard_normal(MIN_BYTES).astype(np.float32)    # a weight a reader rearranged
    out = in_huge_pages({**views, "anonymous": anonymous}, enabled=True)
    np.testing.assert_array_equal(out["big"], big.reshape(3, MIN_BYTES))
    assert out["big"].shape == (3, MIN_BYTES) and out["big"].dtype == np.uint8
    assert not np.shares_memory(out["big"], mapping)
    assert out["small"] is views["small"] and out["anonymous"] is anonymous


@pytest.mark.skipif(not huge_pages.available(), reason="this kernel offers no transparent huge pages")
def test_the_copies_lie_in_memory_advised_for_huge_pages(mapped):
    out = in_huge_pages(mapped[2])
    fields = _arena_of(out["big"])
    assert "hg" in fields.get("VmFlags", "").split(), fields.get("VmFlags")   # MADV_HUGEPAGE on the arena


def test_nothing_moves_where_huge_pages_are_off(mapped):
    views = mapped[2]
    out = in_huge_pages(views, enabled=False)
    assert all(out[name] is views[name] for name in views)


def test_a_file_changed_since_it_was_mapped_is_not_read(mapped):
    path, _, views, big, _ = mapped
    time.sleep(0.01)
    os.replace(path, path.with_suffix(".old"))             # the mapping keeps the old file; the path a new one
    path.write_bytes(bytes(len(big) + 256))
    out = in_huge_pages(views, enabled=True)
    assert out["big"] is views["big"]
    np.testing.assert_array_equal(out["big"], big.reshape(3, MIN_BYTES))
