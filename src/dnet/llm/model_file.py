"""What a reader gives the rest of `dnet.llm`: a config, tensors by canonical name, tokenizer data.

Every source (a GGUF file, a Hugging Face folder) is read into this one form, so the model
builder knows no file format. Tensor names are GGUF's (llama.cpp's), whatever the source:

    token_embd.weight                      (vocab, hidden)
    blk.{i}.attn_norm.weight               (hidden,)
    blk.{i}.attn_q.weight / .bias          (heads * head_dim, hidden) / (heads * head_dim,)
    blk.{i}.attn_k.weight / .bias          (kv_heads * head_dim, hidden)
    blk.{i}.attn_v.weight / .bias          (kv_heads * head_dim, hidden)
    blk.{i}.attn_q_norm.weight             (head_dim,)          Qwen3
    blk.{i}.attn_k_norm.weight             (head_dim,)          Qwen3
    blk.{i}.attn_output.weight             (hidden, heads * head_dim)
    blk.{i}.ffn_norm.weight                (hidden,)
    blk.{i}.ffn_gate.weight / ffn_up       (intermediate, hidden)
    blk.{i}.ffn_down.weight                (hidden, intermediate)
    output_norm.weight                     (hidden,)
    output.weight                          (vocab, hidden)      absent when tied to token_embd

Shapes are numpy's order (rows = output features, as in PyTorch), not GGUF's reversed `ne`.
The q and k rows are in Hugging Face's order (rotate-half RoPE): a reader of a GGUF `llama`
file undoes the row permutation llama.cpp's converter applies, so one model serves all sources.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np

from dnet.core.dtypes import DType

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(frozen=True)
class QuantTensor:
    """A tensor kept in a GGUF block format: `data` is its uint8 storage (rows of whole blocks)."""
    dtype: DType
    shape: tuple[int, ...]
    data: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


Tensor = Union[np.ndarray, QuantTensor]


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3's frequency-dependent rope scaling ("rope_type": "llama3"); `linear` divides positions."""
    kind: str                                  # "llama3" or "linear"
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    arch: str                                  # one of ARCHITECTURES
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    context_length: int
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False
    qkv_bias: bool = False                     # Qwen2
    qk_norm: bool = False                      # Qwen3
    name: str = ""


@dataclass(frozen=True)
class TokenizerData:
    """What a tokenizer is built from: a `tokenizer.json` text, or a GGUF vocabulary and merges."""
    tokenizer_json: str | None = None          # a Hugging Face tokenizer.json, as text
    tokens: tuple[str, ...] = ()               # GGUF: tokenizer.ggml.tokens
    token_types: tuple[int, ...] = ()          # GGUF: 1 normal, 3 control, 4 user-defined, ...
    merges: tuple[str, ...] = ()               # GGUF: "a b" pairs
    pre: str = ""                              # GGUF: tokenizer.ggml.pre (the pre-tokenizer's name)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    add_bos: bool = False
    chat_template: str | None = None


@dataclass
class ModelFile:
    """A model as read from disk: weights stay memory-mapped where the format allows."""
    config: ModelConfig
    tensors: dict[str, Tensor]
    tokenizer: TokenizerData
    source: str = ""
    extra: dict = field(default_factory=dict)

    def weight_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())
