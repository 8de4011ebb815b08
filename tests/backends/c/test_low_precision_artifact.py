"""int8-dynamic and bf16 models as artefacts: saved, loaded without a compiler, the same numbers; and
`dnet compile --quantize int8-dynamic` / `--precision bf16` from the command line."""
import textwrap

import numpy as np
import pytest

import dnet
from dnet.api import load_artifact, save_artifact
from dnet.backends.numpy import run_graph
from dnet.cli.main import main
from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder
from dnet.graph.passes.bf16 import bf16_matmuls
from dnet.graph.passes.dynamic_quant import quantize_dynamic


def _model(rng):
    b = GraphBuilder()
    x = b.input("x", TensorType(("batch", 96), DType.F32))
    h = C.gelu(b, C.linear(b, x, b.const("w1", rng.standard_normal((128, 96)).astype(np.float32))))
    b.output("y", C.linear(b, h, b.const("w2", rng.standard_normal((64, 128)).astype(np.float32))))
    return b.finish()


@pytest.mark.parametrize("options", [{"quantize": "int8-dynamic"}, {"precision": "bf16"}])
def test_artefact_round_trip(options, rng, tmp_path):
    exe = dnet.compile(_model(rng), target="c", cache_dir=tmp_path / "cache", **options)
    x = rng.standard_normal((5, 96)).astype(np.float32)
    before = exe(x=x)
    save_artifact(exe, tmp_path / "artefact")
    loaded = load_artifact(tmp_path / "artefact")
    np.testing.assert_array_equal(loaded(x=x), before)
    call = "dn_igemm_" if "quantize" in options else "dn_bgemm_"
    assert call in exe.runner.source                  # the low-precision Gemm is what was saved


MODEL = textwrap.dedent("""
    import numpy as np
    import dnet
    from dnet import functional as F

    class Two(dnet.Module):
        def __init__(self):
            super().__init__()
            rng = np.random.default_rng(7)
            self.w1 = dnet.Parameter(rng.standard_normal((96, 128)).astype(np.float32))
            self.w2 = dnet.Parameter(rng.standard_normal((128, 64)).astype(np.float32))

        def forward(self, x):
            return F.matmul(F.relu(F.matmul(x, self.w1)), self.w2)

    model = Two()
""")


@pytest.mark.parametrize("flags, rewrite", [(["--quantize", "int8-dynamic"], quantize_dynamic),
                                            (["--precision", "bf16"], bf16_matmuls)])
def test_compile_command_takes_the_options(flags, rewrite, tmp_path, capsys):
    """The artefact `dnet compile` writes computes what the numpy reference computes for the rewritten graph."""
    (tmp_path / "two.py").write_text(MODEL)
    out = tmp_path / "artefact"
    main(["compile", f"{tmp_path / 'two.py'}:model", "-t", "c", "-i", "x:f32[batch,96]", "-o", str(out), *flags])
    capsys.readouterr()
    exe = load_artifact(out)
    x = np.random.default_rng(1).standard_normal((3, 96)).astype(np.float32)
    want = run_graph(rewrite(dnet.to_graph(_module(tmp_path), {"x": TensorType(("batch", 96), DType.F32)})),
                     {"x": x})
    got = exe(x=x)
    np.testing.assert_allclose(got, next(iter(want.values())), rtol=1e-4, atol=1e-3)


def _module(tmp_path):
    namespace: dict = {}
    exec((tmp_path / "two.py").read_text(), namespace)
    return namespace["model"]
