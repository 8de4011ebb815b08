"""Transformers exported with a fixed example batch of 1, 2 and 3 (no dynamic dims) import and match
PyTorch (issue 13: GPT-2 at batch 2 failed inside torch's own decomposition, "Cannot view a tensor with
shape [2, 11, 72] and strides (72, 144, 1)"; batch 1 imported)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from torch_compare import assert_matches, dnet_outputs, torch_outputs  # noqa: E402

import dnet  # noqa: E402

COMMON = dict(vocab_size=100, bos_token_id=0, eos_token_id=0, pad_token_id=0, use_cache=False)


def gpt2():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=72, n_head=6, n_positions=32,
                                                                **COMMON))


def bert():
    return transformers.BertModel(transformers.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                                          intermediate_size=128, max_position_embeddings=32,
                                                          **COMMON))


def llama():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
        max_position_embeddings=32, **COMMON))


@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("build", [gpt2, bert, llama], ids=lambda f: f.__name__)
def test_a_transformer_exported_at_a_fixed_batch_matches_pytorch(build, batch):
    torch.manual_seed(0)
    model = build().eval()
    ids = torch.randint(1, 100, (batch, 11))
    exe = dnet.compile(dnet.from_torch(model, (ids,)))
    assert_matches(torch_outputs(model, ids), dnet_outputs(exe, ids))
