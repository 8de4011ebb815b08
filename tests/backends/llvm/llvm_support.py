"""Shared checks for the LLVM backend tests."""
import numpy as np

from dnet.backends.numpy import run_graph


def assert_matches_reference(runner, graph, feeds, rtol=1e-5, atol=1e-6):
    """The LLVM backend's outputs equal the numpy reference backend's (the oracle)."""
    got = runner.run(feeds)
    want = run_graph(graph, feeds)
    assert set(got) == set(want)
    for name in graph.output_names:
        g, w = got[name], want[name]
        assert g.dtype == w.dtype and g.shape == w.shape, name
        r, a = rtol, atol
        if w.dtype.itemsize == 2:   # f16/bf16 results: one rounding step (summation order) apart
            r, a = max(rtol, 4e-3 if w.dtype == np.float16 else 3e-2), max(atol, 1e-3)
        if w.dtype.kind in "biu":
            np.testing.assert_array_equal(g, w, err_msg=name)
        else:
            np.testing.assert_allclose(g.astype(np.float32), w.astype(np.float32), rtol=r, atol=a, err_msg=name)
