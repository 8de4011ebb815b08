"""A BERT encoder written with dnet.nn, and the names that map a Hugging Face checkpoint onto it."""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, Mapping

import numpy as np

from dnet.core.dtypes import DType
from dnet.errors import WeightError
from dnet.frontend import functional as F
from dnet.frontend import nn


@dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face `config.json` that the encoder needs."""
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @staticmethod
    def from_dict(config: Mapping[str, Any]) -> "BertConfig":
        """Read a config.json dict; keys the encoder does not use are ignored."""
        known = {f.name for f in fields(BertConfig)}
        return BertConfig(**{k: v for k, v in config.items() if k in known})


_ACTIVATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


class BertEmbeddings(nn.Module):
    """word + position + token type embeddings, then LayerNorm."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids, token_type_ids=None):
        if token_type_ids is None:  # one segment: every token has type 0
            token_type_ids = F.full(input_ids.shape, 0, DType.I64)
        positions = F.arange(input_ids.shape[1])
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.norm(x + self.token_type_embeddings(token_type_ids))


class BertLayer(nn.Module):
    """Post-norm encoder layer: attention, add & norm, feed-forward, add & norm."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.attention = nn.MultiHeadAttention(hidden, config.num_attention_heads)
        self.attention_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(hidden, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.act = nn.ReLU() if config.hidden_act == "relu" else nn.GELU(_ACTIVATIONS[config.hidden_act])

    def forward(self, x, mask=None):
        h = self.attention_norm(x + self.attention(x, mask))
        return self.output_norm(h + self.output(self.act(self.intermediate(h))))


class BertModel(nn.Module):
    """The encoder: token ids (batch, seq) -> hidden states (batch, seq, hidden_size).

    `attention_mask` (batch, seq) is 1 for real tokens and 0 for padding; padded keys
    are hidden from every query. Without it every token is attended to.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config  # not a constant of the object: a plain Python attribute
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        x = self.embeddings(input_ids, token_type_ids)
        mask = None if attention_mask is None else (attention_mask != 0)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        return x


# -- Hugging Face checkpoint names -------------------------------------------------------------
# (checkpoint prefix, dnet prefix); `{i}` is a layer index. First match wins.
HF_BERT_NAMES: tuple[tuple[str, str], ...] = (
    ("embeddings.LayerNorm.", "embeddings.norm."),
    ("embeddings.", "embeddings."),
    ("encoder.layer.{i}.attention.self.query.", "layers.{i}.attention.q_proj."),
    ("encoder.layer.{i}.attention.self.key.", "layers.{i}.attention.k_proj."),
    ("encoder.layer.{i}.attention.self.value.", "layers.{i}.attention.v_proj."),
    ("encoder.layer.{i}.attention.output.dense.", "layers.{i}.attention.o_proj."),
    ("encoder.layer.{i}.attention.output.LayerNorm.", "layers.{i}.attention_norm."),
    ("encoder.layer.{i}.intermediate.dense.", "layers.{i}.intermediate."),
    ("encoder.layer.{i}.output.dense.", "layers.{i}.output."),
    ("encoder.layer.{i}.output.LayerNorm.", "layers.{i}.output_norm."),
)
# Checkpoint entries the encoder does not use: a buffer of position indices, the pooler head.
HF_BERT_UNUSED = ("embeddings.position_ids", "pooler.")


def _prefix_pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)"))


def rename(name: str, rules: tuple[tuple[str, str], ...] = HF_BERT_NAMES, reverse: bool = False) -> str | None:
    """A checkpoint name as a dnet parameter name (or back, with `reverse`); None when no rule applies."""
    for source, target in rules:
        if reverse:
            source, target = target, source
        m = _prefix_pattern(source).match(name)
        if m:
            return target.replace("{i}", m.groupdict().get("i") or "") + name[m.end():]
    return None


def load_hf_weights(model: BertModel, weights: Mapping[str, np.ndarray], source: str = "checkpoint") -> None:
    """Load a Hugging Face BertModel state dict into `model`. A missing, unexpected or mismatched
    weight is a WeightError that names it as the checkpoint does (and as dnet does)."""
    params = dict(model.named_parameters())
    mapped: dict[str, tuple[str, np.ndarray]] = {}
    for hf_name, array in weights.items():
        hf_name = hf_name.removeprefix("bert.")
        if hf_name.startswith(HF_BERT_UNUSED):
            continue
        name = rename(hf_name)
        if name not in params:
            raise WeightError(f"{source} has weight '{hf_name}', which the model does not expect")
        mapped[name] = (hf_name, array)
    missing = [n for n in params if n not in mapped]
    if missing:
        listed = ", ".join(f"'{rename(n, reverse=True)}' (dnet '{n}')" for n in missing[:4])
        raise WeightError(f"{source} lacks {len(missing)} weight(s): {listed}" + (" ..." if len(missing) > 4 else ""))
    for name, (hf_name, array) in mapped.items():
        want = params[name].type
        got = (tuple(array.shape), DType.from_numpy(array.dtype))
        if got != (tuple(want.shape), want.dtype):
            raise WeightError(f"{source} weight '{hf_name}' (dnet '{name}') is {got[1]}{list(got[0])}, "
                              f"the model expects {want.dtype}{list(want.shape)}")
        params[name].load(array, name)
