"""The whole BERT encoder in the DSL (std/bert.dnet, examples/minilm.dnet) with the real
all-MiniLM-L6-v2 weights, against the Python frontend's model and sentence-transformers."""
import numpy as np
import pytest

import dnet
from dnet.backends.numpy import run_graph
from dnet.objects.lower import lower

from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

SENTENCES = [
    "The cat sits on the mat.",
    "A quick brown fox jumps over the lazy dog near the river bank.",
    "Compilers turn programs into machine code.",
    "Hello",
]


@pytest.fixture(scope="module")
def minilm():
    models = pytest.importorskip("dnet.models")
    path = models.model_dir()
    module = dnet.load_dsl(EXAMPLES / "minilm.dnet", weights=path / "model.safetensors")
    tokenizer = models.Tokenizer(path / "tokenizer.json", 256)
    return module, models, tokenizer(SENTENCES)


@pytest.fixture(scope="module")
def dsl_embeddings(minilm):
    _, models, batch = minilm
    module = dnet.load_dsl(EXAMPLES / "minilm.dnet", weights=models.model_dir() / "model.safetensors",
                           entry="sentence_embedding")
    exe = dnet.compile(module)  # input types as the DSL declares them: i64 (batch, seq)
    return exe(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_last_hidden_states_match_the_python_frontend_bert(minilm):
    module, models, batch = minilm
    feeds = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    types = {name: t for name, t in models.INPUT_TYPES.items() if name in feeds}
    dsl = run_graph(lower(module, "forward", types), feeds)["output"]
    bert = models.minilm_module().bert
    python = dnet.compile(bert, types)(**feeds)
    real = feeds["attention_mask"].astype(bool)  # padded positions attend to nothing real in either model
    assert np.abs(dsl - python)[real].max() <= 1e-5


def test_padding_is_exercised(minilm):
    _, _, batch = minilm
    assert (batch["attention_mask"] == 0).any()


def test_dsl_bert_matches_the_python_frontend_model(minilm, dsl_embeddings):
    _, models, batch = minilm
    exe = dnet.compile(models.minilm_module(), models.INPUT_TYPES)
    python = exe(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert np.abs(dsl_embeddings - python).max() <= 1e-5


def test_dsl_bert_matches_sentence_transformers(minilm, dsl_embeddings):
    pytest.importorskip("torch")
    st = pytest.importorskip("sentence_transformers")
    _, models, _ = minilm
    reference = st.SentenceTransformer(str(models.model_dir()), device="cpu").encode(
        SENTENCES, convert_to_numpy=True, normalize_embeddings=True)
    assert np.abs(dsl_embeddings - reference).max() <= 1e-5


def test_weights_bind_to_every_parameter_by_checkpoint_name(minilm):
    module, models, _ = minilm
    from safetensors.numpy import load_file

    weights = load_file(str(models.model_dir() / "model.safetensors"))
    params = dict(module.root.named_parameters())
    assert set(params) == set(weights)
    np.testing.assert_array_equal(params["encoder.layer.5.output.dense.weight"].value,
                                  weights["encoder.layer.5.output.dense.weight"])
