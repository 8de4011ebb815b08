"""The dnet BERT against transformers' BertModel, both holding the same seeded random weights."""
import numpy as np
import pytest

import dnet
from dnet.errors import WeightError
from dnet.models import INPUT_TYPES, BertConfig, BertModel, load_hf_weights
from dnet.models.bert import rename

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=64, type_vocab_size=2, layer_norm_eps=1e-12)


@pytest.fixture(scope="module")
def hf_bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(**SMALL, hidden_act="gelu", attn_implementation="eager")
    return transformers.BertModel(config, add_pooling_layer=True).eval()


@pytest.fixture(scope="module")
def hf_weights(hf_bert):
    return {k: v.numpy() for k, v in hf_bert.state_dict().items()}


@pytest.fixture(scope="module")
def ours(hf_weights):
    model = BertModel(BertConfig.from_dict({**SMALL, "model_type": "bert", "unused_key": 1}))
    load_hf_weights(model, hf_weights)
    return model


def padded_batch(rng):
    ids = rng.integers(1, 99, (3, 9)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    return ids * mask, mask


def test_hidden_states_match_transformers_bert_with_padding(hf_bert, ours, rng):
    ids, mask = padded_batch(rng)
    types = rng.integers(0, 2, ids.shape).astype(np.int64)
    exe = dnet.compile(ours, {**INPUT_TYPES, "token_type_ids": INPUT_TYPES["input_ids"]})
    with torch.no_grad():
        want = hf_bert(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                       token_type_ids=torch.from_numpy(types)).last_hidden_state.numpy()
    got = exe(input_ids=ids, attention_mask=mask, token_type_ids=types)
    np.testing.assert_allclose(got[mask == 1], want[mask == 1], rtol=1e-5, atol=1e-5)


def test_absent_token_types_mean_segment_zero(hf_bert, ours, rng):
    ids, mask = padded_batch(rng)
    exe = dnet.compile(ours, INPUT_TYPES)
    with torch.no_grad():
        want = hf_bert(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
    np.testing.assert_allclose(exe(ids, mask)[mask == 1], want.numpy()[mask == 1], rtol=1e-5, atol=1e-5)


def test_checkpoint_names_map_both_ways():
    hf = "encoder.layer.11.attention.self.query.weight"
    assert rename(hf) == "layers.11.attention.q_proj.weight"
    assert rename("layers.11.attention.q_proj.weight", reverse=True) == hf
    assert rename("embeddings.LayerNorm.bias") == "embeddings.norm.bias"
    assert rename("encoder.layer.0.crossattention.weight") is None


def test_missing_weight_is_named_as_the_checkpoint_names_it(hf_weights):
    weights = dict(hf_weights)
    del weights["encoder.layer.1.output.dense.bias"]
    with pytest.raises(WeightError, match=r"lacks 1 weight\(s\): 'encoder.layer.1.output.dense.bias' "
                                          r"\(dnet 'layers.1.output.bias'\)"):
        load_hf_weights(BertModel(BertConfig(**SMALL)), weights)


def test_mismatched_weight_is_named_with_both_shapes(hf_weights):
    weights = dict(hf_weights, **{"encoder.layer.0.intermediate.dense.weight": np.zeros((36, 32), np.float32)})
    with pytest.raises(WeightError, match=r"'encoder.layer.0.intermediate.dense.weight' \(dnet "
                                          r"'layers.0.intermediate.weight'\) is f32\[36, 32\], the model expects "
                                          r"f32\[37, 32\]"):
        load_hf_weights(BertModel(BertConfig(**SMALL)), weights)


def test_unexpected_weight_is_named(hf_weights):
    weights = dict(hf_weights, **{"encoder.layer.2.output.dense.weight": np.zeros((32, 37), np.float32)})
    with pytest.raises(WeightError, match="has weight 'encoder.layer.2.output.dense.weight', which the model "
                                          "does not expect"):
        load_hf_weights(BertModel(BertConfig(**SMALL)), weights)
