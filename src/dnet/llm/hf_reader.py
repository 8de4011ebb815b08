"""Read a Hugging Face model folder into a `ModelFile`, weights memory-mapped.

    model = read_hf_folder("SmolLM2-135M-Instruct/")   # config.json, model.safetensors, tokenizer.json, ...

`config.json` gives the config, `model.safetensors` (or the shards that
`model.safetensors.index.json` lists) the weights, renamed to GGUF's canonical names and kept
in their stored dtype (f32, f16, bf16: the model builder casts), `tokenizer.json` and
`tokenizer_config.json` (and `chat_template.jinja`, `generation_config.json` when present) the
tokenizer. A safetensors file is a JSON header and raw little-endian arrays, so each tensor is a
numpy view of one memory map of its file.
"""
from __future__ import annotations

import dataclasses
import json
import re
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from dnet.core.origins import register_mapping
from dnet.errors import ModelFileError, TokenizerError
from dnet.llm.model_file import ModelConfig, ModelFile, RopeScaling, TokenizerData

ARCHITECTURE_CLASSES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}

SAFETENSORS_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype(ml_dtypes.bfloat16)}

# Hugging Face name -> canonical (GGUF) name; `{i}` is the layer
TENSOR_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{i}.input_layernorm.weight": "blk.{i}.attn_norm.weight",
    "model.layers.{i}.self_attn.q_proj.weight": "blk.{i}.attn_q.weight",
    "model.layers.{i}.self_attn.q_proj.bias": "blk.{i}.attn_q.bias",
    "model.layers.{i}.self_attn.k_proj.weight": "blk.{i}.attn_k.weight",
    "model.layers.{i}.self_attn.k_proj.bias": "blk.{i}.attn_k.bias",
    "model.layers.{i}.self_attn.v_proj.weight": "blk.{i}.attn_v.weight",
    "model.layers.{i}.self_attn.v_proj.bias": "blk.{i}.attn_v.bias",
    "model.layers.{i}.self_attn.o_proj.weight": "blk.{i}.attn_output.weight",
    "model.layers.{i}.self_attn.q_norm.weight": "blk.{i}.attn_q_norm.weight",
    "model.layers.{i}.self_attn.k_norm.weight": "blk.{i}.attn_k_norm.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "blk.{i}.ffn_norm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "blk.{i}.ffn_gate.weight",
    "model.layers.{i}.mlp.up_proj.weight": "blk.{i}.ffn_up.weight",
    "model.layers.{i}.mlp.down_proj.weight": "blk.{i}.ffn_down.weight",
}
IGNORED_TENSORS = re.compile(r".*rotary_emb\.inv_freq$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def read_hf_folder(path: str | Path) -> ModelFile:
    """The config, tensors and tokenizer of the Hugging Face model folder at `path`."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelFileError(f"{folder}: no such folder")
    raw_config = read_json(folder / "config.json", ModelFileError)
    config = read_config(raw_config, folder.name)
    tensors = read_tensors(folder)
    if config.tie_embeddings:
        tensors.pop("output.weight", None)
    elif "output.weight" not in tensors:
        config = dataclasses.replace(config, tie_embeddings=True)
    if "token_embd.weight" not in tensors:
        raise ModelFileError(f"{folder.name}: tensor 'model.embed_tokens.weight' is missing")
    rows = tensors["token_embd.weight"].shape[0]
    if rows != config.vocab_size:              # the embedding is what the model computes with
        config = dataclasses.replace(config, vocab_size=rows)
    tokenizer = read_tokenizer(folder, raw_config)
    return ModelFile(config, tensors, tokenizer, source=str(folder), extra={"format": "huggingface"})


def read_json(path: Path, error=ModelFileError) -> dict:
    if not path.is_file():
        raise error(f"{path.parent.name}: '{path.name}' is missing")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as problem:
        raise error(f"{path.parent.name}/{path.name}: not valid JSON ({problem})") from None
    if not isinstance(value, dict):
        raise error(f"{path.parent.name}/{path.name}: not a JSON object")
    return value


def read_config(raw: dict, name: str) -> ModelConfig:
    arch = architecture(raw, name)

    def field(key: str, default=None):
        value = raw.get(key, default)
        if value is None:
            raise ModelFileError(f"{name}/config.json: '{key}' is missing")
        return value

    hidden, heads = int(field("hidden_size")), int(field("num_attention_heads"))
    rope = raw.get("rope_parameters") or {}           # transformers 5 keeps theta and scaling together
    theta = rope.get("rope_theta", raw.get("rope_theta", 10000.0))
    return ModelConfig(
        arch=arch,
        vocab_size=int(field("vocab_size")),
        hidden_size=hidden,
        intermediate_size=int(field("intermediate_size")),
        num_layers=int(field("num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=int(raw.get("head_dim") or hidden // heads),
        context_length=int(raw.get("max_position_embeddings", 2048)),
        rope_theta=float(theta),
        rope_scaling=rope_scaling(raw.get("rope_scaling") or rope, name),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=arch == "qwen2" or bool(raw.get("attention_bias", False)),
        qk_norm=arch == "qwen3",
        name=str(raw.get("_name_or_path", "")) or name,
    )


def architecture(raw: dict, name: str) -> str:
    classes = raw.get("architectures") or []
    for cls in classes:
        if cls in ARCHITECTURE_CLASSES:
            return ARCHITECTURE_CLASSES[cls]
    model_type = raw.get("model_type")
    if not classes and model_type in ARCHITECTURE_CLASSES.values():
        return model_type
    found = ", ".join(classes) or model_type or "none"
    raise ModelFileError(f"{name}/config.json: unknown architecture '{found}' "
                         f"(dnet reads {', '.join(ARCHITECTURE_CLASSES)})")


def rope_scaling(raw: dict, name: str) -> RopeScaling | None:
    kind = raw.get("rope_type", raw.get("type"))
    if kind in (None, "default"):
        return None
    if kind == "linear":
        return RopeScaling("linear", float(raw["factor"]))
    if kind == "llama3":
        return RopeScaling("llama3", float(raw["factor"]), float(raw.get("low_freq_factor", 1.0)),
                           float(raw.get("high_freq_factor", 4.0)),
                           int(raw.get("original_max_position_embeddings", 8192)))
    raise ModelFileError(f"{name}/config.json: rope scaling '{kind}' is not supported (dnet reads linear and llama3)")


def read_tensors(folder: Path) -> dict[str, np.ndarray]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelFileError(f"{folder.name}/{index.name}: no 'weight_map'")
        files = sorted(set(weight_map.values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise ModelFileError(f"{folder.name}: 'model.safetensors' (or 'model.safetensors.index.json') is missing")
    tensors = {}
    for file in files:
        for hf_name, array in read_safetensors(folder / file).items():
            if IGNORED_TENSORS.match(hf_name):
                continue
            tensors[canonical_name(hf_name, f"{folder.name}/{file}")] = array
    return tensors


def canonical_name(hf_name: str, where: str) -> str:
    match = _LAYER.match(hf_name)
    pattern = hf_name.replace(match.group(0), "model.layers.{i}.", 1) if match else hf_name
    canonical = TENSOR_NAMES.get(pattern)
    if canonical is None:
        raise ModelFileError(f"{where}: unexpected tensor '{hf_name}'")
    return canonical.replace("{i}", match.group(1)) if match else canonical


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """{name: array} of a safetensors file, each array a view of one read-only memory map."""
    if not path.is_file():
        raise ModelFileError(f"{path.parent.name}: '{path.name}' is missing")
    where = f"{path.parent.name}/{path.name}"
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            if header_size > size - 8:
                raise ValueError("header runs past the end of the file")
            header = json.loads(handle.read(header_size))
    except (struct.error, ValueError, UnicodeDecodeError) as problem:
        raise ModelFileError(f"{where}: not a safetensors file ({problem})") from None
    start = 8 + header_size
    memory = np.memmap(path, dtype=np.uint8, mode="r") if size > start else np.zeros(0, np.uint8)
    if isinstance(memory, np.memmap):
        register_mapping(memory, path)         # a worker holding this file reads its tensors there
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(entry.get("dtype"))
        if dtype is None:
            raise ModelFileError(f"{where}: tensor '{name}' has dtype {entry.get('dtype')} "
                                 f"(dnet reads {', '.join(SAFETENSORS_DTYPES)})")
        shape = tuple(int(d) for d in entry["shape"])
        begin, end = (int(o) for o in entry["data_offsets"])
        if start + end > size or end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise ModelFileError(f"{where}: tensor '{name}' runs past the end of the file or has the wrong size")
        tensors[name] = memory[start + begin:start + end].view(dtype).reshape(shape)
    return tensors


def read_tokenizer(folder: Path, raw_config: dict) -> TokenizerData:
    from tokenizers import Tokenizer as HFTokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise TokenizerError(f"{folder.name}: 'tokenizer.json' is missing")
    text = path.read_text(encoding="utf-8")
    settings = read_json(folder / "tokenizer_config.json", TokenizerError) \
        if (folder / "tokenizer_config.json").is_file() else {}
    try:
        vocabulary = HFTokenizer.from_str(text)
    except Exception as problem:
        raise TokenizerError(f"{folder.name}/tokenizer.json: cannot be read ({problem})") from None

    def token_id(key: str) -> int | None:
        token = settings.get(key)
        token = token.get("content") if isinstance(token, dict) else token
        return vocabulary.token_to_id(token) if isinstance(token, str) else None

    generation = read_json(folder / "generation_config.json") if (folder / "generation_config.json").is_file() else {}
    eos = [token_id("eos_token"), *as_list(generation.get("eos_token_id")), *as_list(raw_config.get("eos_token_id"))]
    bos = token_id("bos_token")
    if bos is None:
        bos = generation.get("bos_token_id", raw_config.get("bos_token_id"))
    return TokenizerData(
        tokenizer_json=text,
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=tuple(dict.fromkeys(int(e) for e in eos if e is not None)),
        add_bos=bool(settings.get("add_bos_token", False)),
        chat_template=chat_template(folder, settings),
    )


def as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def chat_template(folder: Path, settings: dict) -> str | None:
    """`chat_template.jinja` (transformers 4.43+ writes it) or tokenizer_config's `chat_template`."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = settings.get("chat_template")
    if isinstance(template, list):             # named templates: the default one
        named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None
