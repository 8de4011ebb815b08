"""Reads a guarded branch does not take must not happen: a concat's piece (or a pad's) that gathers rows by
index read from data computes that index as a statement, run whether the guard holds or not; where it does
not, the index of the indices themselves may point before the array (rotary embedding, rotate-half: the
second half's rows at the previous token for the first position, -1). The indices here lie at the start of a
page after an unreadable one, so such a read faults; it runs in a child process, so a fault fails the test
instead of killing the test process."""
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent('''
    import ctypes, mmap
    import numpy as np
    from dnet.backends.c import CBackend
    from dnet.core.dtypes import DType
    from dnet.core.shapes import Sym
    from dnet.core.types import TensorType
    from dnet.graph.builder import GraphBuilder
    from dnet.graph.ops import Op

    CTX, HALF, HEADS = 16, 8, 3
    B, S = Sym("batch"), Sym("seq")
    rng = np.random.default_rng(0)
    tables = [rng.standard_normal((CTX, HALF)).astype(np.float32) for _ in range(2)]
    g = GraphBuilder()
    x = g.input("x", TensorType((B, S, HEADS, 2 * HALF), DType.F32))
    pos = g.input("pos", TensorType((B, S), DType.I64))
    # as llm/model.py's rotary embedding: the tables' rows at the positions, rotate-half, one concat
    cos, sin = (g.expand(g.reshape(g.node(Op.GATHER, [g.const(f"t{i}", t), pos], axis=0), (B, S, 1, HALF)),
                         (B, S, HEADS, HALF)) for i, t in enumerate(tables))
    x1, x2 = g.slice(x, -1, 0, HALF), g.slice(x, -1, HALF, 2 * HALF)
    first = g.elementwise(Op.SUB, g.elementwise(Op.MUL, x1, cos), g.elementwise(Op.MUL, x2, sin))
    second = g.elementwise(Op.ADD, g.elementwise(Op.MUL, x2, cos), g.elementwise(Op.MUL, x1, sin))
    g.output("y", g.node(Op.CONCAT, [first, second], axis=-1))
    runner = CBackend().prepare(g.finish(), threads=1)

    page = mmap.PAGESIZE
    guarded = mmap.mmap(-1, 2 * page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(guarded))
    assert ctypes.CDLL(None).mprotect(ctypes.c_void_p(base), ctypes.c_size_t(page), 0) == 0   # PROT_NONE
    for seq in (1, 5):
        positions = np.frombuffer(guarded, np.int64, count=seq, offset=page).reshape(1, seq)
        positions[:] = np.arange(3, 3 + seq)
        xs = rng.standard_normal((1, seq, HEADS, 2 * HALF)).astype(np.float32)
        got = runner.run({"x": xs, "pos": positions})["y"]
        c, s = (t[positions][:, :, None, :] for t in tables)
        a, b = xs[..., :HALF], xs[..., HALF:]
        want = np.concatenate([a * c - b * s, b * c + a * s], axis=-1)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    print("ok")
''')


def test_a_gather_under_a_concat_guard_reads_no_index_before_its_array():
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", (proc.returncode, proc.stdout, proc.stderr[-2000:])
