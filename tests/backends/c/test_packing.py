"""The C backend's weight layout (backends/c/packing.py): panels of nr columns, row by row."""
import numpy as np

from dnet.backends.c.packing import pack_panels


def test_packed_panels_hold_b_column_blocks_row_by_row():
    b = np.arange(3 * 5, dtype=np.float32).reshape(3, 5)
    p = pack_panels(b, 4)
    assert p.shape == (2, 3, 4)
    np.testing.assert_array_equal(p[0], b[:, :4])
    np.testing.assert_array_equal(p[1][:, 0], b[:, 4])
    assert not p[1][:, 1:].any()
