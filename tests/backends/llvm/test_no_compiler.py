"""Target 'llvm' is for a worker on a machine with no C compiler: with none reachable (PATH without
gcc, cc or clang, CC=/bin/false), target 'c' refuses and target 'llvm' still compiles and runs."""
import json
import os
import subprocess
import sys
from pathlib import Path


SCRIPT = r"""
import json, sys
import numpy as np
import dnet
from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.errors import DnetError
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder

rng = np.random.default_rng(0)
b = GraphBuilder()
x = b.input("x", TensorType(("batch", 24), DType.F32))
w = b.const("w", rng.standard_normal((40, 24)).astype(np.float32))
bias = b.const("bias", rng.standard_normal((40,)).astype(np.float32))
b.output("y", C.softmax(b, C.gelu(b, C.linear(b, x, w, bias)), -1))
graph = b.finish()
feeds = {"x": rng.standard_normal((5, 24)).astype(np.float32)}
try:
    dnet.compile(graph, target="c", cache_dir=sys.argv[1])
    c_error = None
except DnetError as err:
    c_error = str(err)
got = dnet.compile(graph, target="llvm")(**feeds)
want = run_graph(graph, feeds)["y"]
print(json.dumps({"c_error": c_error, "diff": float(np.abs(got - want).max())}))
"""


def _without_compilers(tmp_path: Path) -> dict:
    """The environment with PATH holding only this Python (no gcc, cc, clang) and CC=/bin/false."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "PATH")}
    return {**env, "PATH": str(bin_dir), "CC": "/bin/false", "DNET_CACHE_DIR": str(tmp_path / "cache")}


def test_llvm_target_compiles_and_runs_with_no_c_compiler_reachable(compile_llvm, tmp_path):
    env = _without_compilers(tmp_path)
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "c-cache")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["c_error"] is not None, "target 'c' found a compiler: this test proves nothing here"
    assert "compiler" in result["c_error"].lower()
    assert result["diff"] < 1e-5
