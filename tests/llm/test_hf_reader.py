"""read_hf_folder: config.json, safetensors (memory-mapped, sharded or not), tokenizer files.

The oracle is transformers: its config of the folder, the model whose state it saved."""
import json
import shutil

import ml_dtypes
import numpy as np
import pytest

from dnet.errors import ModelFileError, TokenizerError
from dnet.llm.hf_reader import canonical_name, read_hf_folder
from dnet.llm.model_file import RopeScaling
from dnet.llm.read import read_model
from tiny_models import ARCHS, tiny_hf_model, write_tiny_hf_folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    out = {arch: write_tiny_hf_folder(root / arch, arch) for arch in ARCHS}
    out["sharded"] = write_tiny_hf_folder(root / "sharded", "llama", max_shard_size="30KB")
    return out


def copy_of(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / folder.name)


def edit_json(path, **changes):
    value = json.loads(path.read_text())
    value.update(changes)
    path.write_text(json.dumps(value))


@pytest.mark.parametrize("arch", ARCHS)
def test_config_equals_transformers_config(folders, arch):
    from transformers import AutoConfig

    config, expected = read_hf_folder(folders[arch]).config, AutoConfig.from_pretrained(folders[arch])
    assert config.arch == arch
    assert (config.vocab_size, config.hidden_size, config.intermediate_size, config.num_layers) == (
        expected.vocab_size, expected.hidden_size, expected.intermediate_size, expected.num_hidden_layers)
    assert (config.num_heads, config.num_kv_heads, config.head_dim, config.context_length) == (
        expected.num_attention_heads, expected.num_key_value_heads, 16, expected.max_position_embeddings)
    assert config.rope_theta == expected.rope_parameters["rope_theta"] and config.rope_scaling is None
    assert config.rms_norm_eps == expected.rms_norm_eps
    assert config.tie_embeddings == expected.tie_word_embeddings == (arch == "qwen2")
    assert (config.qkv_bias, config.qk_norm) == (arch == "qwen2", arch == "qwen3")


@pytest.mark.parametrize("arch", ARCHS)
def test_tensors_are_the_saved_model_under_canonical_names(folders, arch):
    model = read_hf_folder(folders[arch])
    expected = {canonical_name(k, ""): v.numpy() for k, v in tiny_hf_model(arch).state_dict().items()}
    if model.config.tie_embeddings:
        expected.pop("output.weight")
    assert sorted(model.tensors) == sorted(expected)
    for name, tensor in model.tensors.items():
        assert isinstance(tensor, np.memmap), name
        np.testing.assert_array_equal(tensor, expected[name], err_msg=name)


def test_sharded_folder_reads_like_one_file(folders):
    sharded, single = read_hf_folder(folders["sharded"]), read_hf_folder(folders["llama"])
    assert len(list(folders["sharded"].glob("model-*.safetensors"))) > 1
    assert sorted(sharded.tensors) == sorted(single.tensors)
    for name in single.tensors:
        np.testing.assert_array_equal(sharded.tensors[name], single.tensors[name])


def test_bf16_weights_stay_bf16(tmp_path):
    import torch

    tiny_hf_model("qwen3").to(torch.bfloat16).save_pretrained(tmp_path)
    shutil.copy(write_tiny_hf_folder(tmp_path / "t", "qwen3") / "tokenizer.json", tmp_path)
    weight = read_hf_folder(tmp_path).tensors["blk.1.ffn_down.weight"]
    assert weight.dtype == ml_dtypes.bfloat16 and weight.shape == (64, 128)


def test_llama3_rope_scaling_from_config(folders, tmp_path):
    folder = copy_of(folders["llama"], tmp_path)
    edit_json(folder / "config.json", rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    config = read_hf_folder(folder).config
    assert config.rope_theta == 500000.0
    assert config.rope_scaling == RopeScaling("llama3", 32.0, 1.0, 4.0, 8192)


def test_transformers_4_rope_fields(folders, tmp_path):
    folder = copy_of(folders["llama"], tmp_path)
    raw = json.loads((folder / "config.json").read_text())
    del raw["rope_parameters"]
    raw.update(rope_theta=1e6, rope_scaling={"type": "linear", "factor": 2.0})
    (folder / "config.json").write_text(json.dumps(raw))
    config = read_hf_folder(folder).config
    assert (config.rope_theta, config.rope_scaling) == (1e6, RopeScaling("linear", 2.0))


def test_tokenizer_data_from_the_tokenizer_files(folders):
    data = read_hf_folder(folders["llama"]).tokenizer
    assert json.loads(data.tokenizer_json)["model"]["type"] == "BPE"
    assert data.bos_token_id == 0 and data.eos_token_ids == (2,)
    assert data.chat_template == (folders["llama"] / "chat_template.jinja").read_text()


def test_generation_config_eos_ids_are_added(folders, tmp_path):
    folder = copy_of(folders["qwen2"], tmp_path)
    edit_json(folder / "generation_config.json", eos_token_id=[2, 1])
    assert read_hf_folder(folder).tokenizer.eos_token_ids == (2, 1)


def test_chat_template_in_tokenizer_config(folders, tmp_path):
    folder = copy_of(folders["qwen3"], tmp_path)
    (folder / "chat_template.jinja").unlink()
    edit_json(folder / "tokenizer_config.json", chat_template="{{ messages[0]['content'] }}")
    assert read_hf_folder(folder).tokenizer.chat_template == "{{ messages[0]['content'] }}"


def test_read_model_dispatches_on_a_folder(folders):
    assert read_model(str(folders["qwen3"])).extra["format"] == "huggingface"


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("missing, error", [("config.json", ModelFileError), ("model.safetensors", ModelFileError),
                                            ("tokenizer.json", TokenizerError)])
def test_missing_file_names_it(folders, tmp_path, missing, error):
    folder = copy_of(folders["llama"], tmp_path)
    (folder / missing).unlink()
    with pytest.raises(error) as raised:
        read_hf_folder(folder)
    assert missing in str(raised.value) and "\n" not in str(raised.value)


def test_missing_shard_names_it(folders, tmp_path):
    folder = copy_of(folders["sharded"], tmp_path)
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ModelFileError, match=shard.name):
        read_hf_folder(folder)


def test_unknown_architecture_names_it(folders, tmp_path):
    folder = copy_of(folders["llama"], tmp_path)
    edit_json(folder / "config.json", architectures=["FalconForCausalLM"], model_type="falcon")
    with pytest.raises(ModelFileError, match="unknown architecture 'FalconForCausalLM'"):
        read_hf_folder(folder)


def test_truncated_safetensors_is_a_model_file_error(folders, tmp_path):
    folder = copy_of(folders["llama"], tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    for cut in (len(data) - 100, 20, 4):
        (folder / "model.safetensors").write_bytes(data[:cut])
        with pytest.raises(ModelFileError, match="model.safetensors"):
            read_hf_folder(folder)


def test_unexpected_tensor_is_named(folders, tmp_path):
    from safetensors.numpy import save_file

    folder = copy_of(folders["llama"], tmp_path)
    tensors = {k: np.array(v) for k, v in read_hf_folder(folder).tensors.items()}
    extra = {"model.embed_tokens.weight": tensors["token_embd.weight"], "model.vision.weight": np.zeros(3, np.float32)}
    save_file(extra, str(folder / "model.safetensors"))
    with pytest.raises(ModelFileError, match="unexpected tensor 'model.vision.weight'"):
        read_hf_folder(folder)


def test_missing_folder_is_a_model_file_error(tmp_path):
    with pytest.raises(ModelFileError, match="no such file or folder"):
        read_model(tmp_path / "absent")
