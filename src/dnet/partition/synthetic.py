"""Graphs of common model shapes with stand-in weights, for planning without weights.

A stand-in weight is `np.broadcast_to` of one zero: it has the shape, dtype and
`nbytes` of the real weight and costs no memory, so a 1B-parameter model can be
planned on a laptop. Node names follow the usual layer paths (`encoder.layer.3`,
`layers.12`, `blocks.2`) so `layer_chain` finds the layers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from dnet.core.dtypes import DType
from dnet.core.types import TensorType
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder, Value
from dnet.graph.ir import Graph
from dnet.graph.ops import Op


def stand_in(b: GraphBuilder, name: str, shape: tuple[int, ...], dtype: DType = DType.F32) -> Value:
    """A CONST node whose weight is a zero-stride array: the right size on paper, no memory."""
    b.graph.weights[name] = np.broadcast_to(np.zeros((), dtype.np), shape)
    return b.node(Op.CONST, name=name, shape=tuple(shape), dtype=dtype)


def _linear(b: GraphBuilder, x: Value, name: str, n_in: int, n_out: int, bias: bool, dtype: DType) -> Value:
    with b.scope(name):
        w = stand_in(b, f"{b.where}.weight", (n_out, n_in), dtype)
        bb = stand_in(b, f"{b.where}.bias", (n_out,), dtype) if bias else None
        return C.linear(b, x, w, bb)


def _heads(b: GraphBuilder, x: Value, batch: int, seq: int, heads: int, dim: int) -> Value:
    return b.permute(b.reshape(x, (batch, seq, heads, dim)), (0, 2, 1, 3))


@dataclass(frozen=True)
class BertConfig:
    layers: int = 6
    hidden: int = 384
    heads: int = 12
    ffn: int = 1536
    vocab: int = 30522
    seq: int = 128
    batch: int = 1
    dtype: DType = DType.F32


def bert(cfg: BertConfig = BertConfig()) -> Graph:
    """A BERT encoder (all-MiniLM-L6-v2's shape by default): embeddings, post-norm layers, mean pooling."""
    b, t = GraphBuilder(), cfg.dtype
    ids = b.input("input_ids", TensorType((cfg.batch, cfg.seq), DType.I64))
    mask = b.input("attention_mask", TensorType((cfg.batch, 1, 1, cfg.seq), t))
    with b.scope("embeddings"):
        x = b.node(Op.GATHER, [stand_in(b, "embeddings.word", (cfg.vocab, cfg.hidden), t), ids], axis=0)
        x = b.elementwise(Op.ADD, x, stand_in(b, "embeddings.position", (cfg.seq, cfg.hidden), t))
        x = C.layer_norm(b, x, stand_in(b, "embeddings.ln.w", (cfg.hidden,), t),
                         stand_in(b, "embeddings.ln.b", (cfg.hidden,), t), eps=1e-12)
    dim = cfg.hidden // cfg.heads
    for i in range(cfg.layers):
        with b.scope(f"encoder.layer.{i}"):
            q, k, v = (_heads(b, _linear(b, x, n, cfg.hidden, cfg.hidden, True, t), cfg.batch, cfg.seq, cfg.heads, dim)
                       for n in ("query", "key", "value"))
            a = C.scaled_dot_product_attention(b, q, k, v, mask)
            a = b.reshape(b.permute(a, (0, 2, 1, 3)), (cfg.batch, cfg.seq, cfg.hidden))
            x = _norm(b, b.elementwise(Op.ADD, x, _linear(b, a, "attn_out", cfg.hidden, cfg.hidden, True, t)), "ln1", t)
            h = C.gelu(b, _linear(b, x, "intermediate", cfg.hidden, cfg.ffn, True, t))
            x = _norm(b, b.elementwise(Op.ADD, x, _linear(b, h, "output", cfg.ffn, cfg.hidden, True, t)), "ln2", t)
    with b.scope("pooler"):
        b.output("embedding", C.mean(b, x, 1))
    return b.finish()


def _norm(b: GraphBuilder, x: Value, name: str, t: DType) -> Value:
    n = b.shape(x)[-1]
    return C.layer_norm(b, x, stand_in(b, f"{b.where}.{name}.w", (n,), t), stand_in(b, f"{b.where}.{name}.b", (n,), t),
                        eps=1e-12)


@dataclass(frozen=True)
class LlamaConfig:
    """Llama 3.2 1B's shape by default (1.24B parameters, the LM head tied to the embedding)."""

    layers: int = 16
    hidden: int = 2048
    heads: int = 32
    kv_heads: int = 8
    ffn: int = 8192
    vocab: int = 128256
    seq: int = 128
    batch: int = 1
    dtype: DType = DType.F16
    tie_embeddings: bool = True


def llama(cfg: LlamaConfig = LlamaConfig()) -> Graph:
    """A Llama decoder over one prompt: embedding, RMS-norm layers with GQA attention and a SwiGLU MLP, LM head."""
    b, t = GraphBuilder(), cfg.dtype
    ids = b.input("input_ids", TensorType((cfg.batch, cfg.seq), DType.I64))
    with b.scope("embed"):
        embed = stand_in(b, "embed.weight", (cfg.vocab, cfg.hidden), t)
        x = b.node(Op.GATHER, [embed, ids], axis=0)
    dim, group = cfg.hidden // cfg.heads, cfg.heads // cfg.kv_heads
    for i in range(cfg.layers):
        with b.scope(f"layers.{i}"):
            h = C.rms_norm(b, x, stand_in(b, f"{b.where}.attn_norm", (cfg.hidden,), t))
            q = _heads(b, _linear(b, h, "q_proj", cfg.hidden, cfg.hidden, False, t), cfg.batch, cfg.seq, cfg.heads, dim)
            kv = [_heads(b, _linear(b, h, n, cfg.hidden, cfg.kv_heads * dim, False, t),
                         cfg.batch, cfg.seq, cfg.kv_heads, dim) for n in ("k_proj", "v_proj")]
            k, v = (_repeat_kv(b, z, group) for z in kv)
            a = C.scaled_dot_product_attention(b, q, k, v, causal=True)
            a = b.reshape(b.permute(a, (0, 2, 1, 3)), (cfg.batch, cfg.seq, cfg.hidden))
            x = b.elementwise(Op.ADD, x, _linear(b, a, "o_proj", cfg.hidden, cfg.hidden, False, t))
            h = C.rms_norm(b, x, stand_in(b, f"{b.where}.mlp_norm", (cfg.hidden,), t))
            gate = C.silu(b, _linear(b, h, "gate_proj", cfg.hidden, cfg.ffn, False, t))
            up = _linear(b, h, "up_proj", cfg.hidden, cfg.ffn, False, t)
            x = b.elementwise(Op.ADD, x, _linear(b, b.elementwise(Op.MUL, gate, up), "down_proj", cfg.ffn,
                                                 cfg.hidden, False, t))
    with b.scope("head"):
        h = C.rms_norm(b, x, stand_in(b, "head.norm", (cfg.hidden,), t))
        logits = (C.linear(b, h, embed) if cfg.tie_embeddings
                  else _linear(b, h, "lm_head", cfg.hidden, cfg.vocab, False, t))
        b.output("logits", logits)
    return b.finish()


def _repeat_kv(b: GraphBuilder, x: Value, group: int) -> Value:
    """(B, kv, S, D) -> (B, kv*group, S, D): each key/value head serves `group` query heads."""
    if group == 1:
        return x
    bs, kv, s, d = b.shape(x)
    x = b.expand(b.reshape(x, (bs, kv, 1, s, d)), (bs, kv, group, s, d))
    return b.reshape(x, (bs, kv * group, s, d))


@dataclass(frozen=True)
class CnnConfig:
    """A VGG-style network: blocks of conv-relu pairs, each block ending in a 2x2 max pool."""

    widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    convs_per_block: int = 2
    image: int = 224
    classes: int = 1000
    batch: int = 1
    dtype: DType = DType.F32


def cnn(cfg: CnnConfig = CnnConfig()) -> Graph:
    b, t = GraphBuilder(), cfg.dtype
    x = b.input("image", TensorType((cfg.batch, 3, cfg.image, cfg.image), t))
    channels = 3
    for i, width in enumerate(cfg.widths):
        with b.scope(f"blocks.{i}"):
            for j in range(cfg.convs_per_block):
                w = stand_in(b, f"{b.where}.conv{j}.weight", (width, channels, 3, 3), t)
                x = b.node(Op.CONV2D, [x, w], stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1)
                bias = b.reshape(stand_in(b, f"{b.where}.conv{j}.bias", (width,), t), (1, width, 1, 1))
                x = C.relu(b, b.elementwise(Op.ADD, x, bias))
                channels = width
            x = b.node(Op.MAXPOOL2D, [x], kernel=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0))
    with b.scope("classifier"):
        pooled = C.mean(b, x, (2, 3))
        b.output("logits", _linear(b, pooled, "fc", channels, cfg.classes, True, t))
    return b.finish()


MODELS: dict[str, Callable[[], Graph]] = {
    "minilm": lambda: bert(BertConfig()),
    "llama-1b": lambda: llama(LlamaConfig()),
    "cnn": lambda: cnn(CnnConfig()),
}
