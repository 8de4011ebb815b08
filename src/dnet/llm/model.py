"""The decoder-only transformer of every supported family, as one graph-IR graph.

One graph serves prefill and decode of any length: its dims are symbols,

    tokens     i64 (batch, seq)            the new tokens of each sequence
    positions  i64 (batch, seq)            their positions: RoPE angles and where their keys are written
    mask       f32 (batch, seq, ctx)       0 where a query may see a key, -inf elsewhere; `ctx` keys are read
    rows       i64 (out,)                  which of the batch*seq new tokens get logits (the last, or all)
    k.{i}, v.{i}  f32 (batch, context, kv_heads, head_dim)   STATE: the KV cache of layer i

and its output is `logits` f32 (out, vocab). Each layer SCATTERs the keys and values of the new
tokens into its cache in place, then attends over the cache's first `ctx` positions, so a
decode step moves one token's activations and reads the cache where it lies.

Llama, Mistral, Qwen2 (biases on q, k, v) and Qwen3 (RMS norms on q and k per head) differ
only in the switches of `ModelConfig`. Weights in a GGUF block format stay in it
(`GraphBuilder.block_const`); the kernels read the blocks (`dnet.kernel.qgemm`).

Built for one member of a tensor-parallel group (`dnet.llm.tensor_parallel`), the graph holds
that member's heads and features, each layer's two partial sums go through an ALL_REDUCE, and
`logits` is the member's slice of the vocabulary.
"""
from __future__ import annotations

import math

import numpy as np

from dnet.core.dtypes import DType
from dnet.core.origins import stack_rows
from dnet.core.shapes import Sym
from dnet.core.types import TensorType
from dnet.graph import composites as C
from dnet.graph.builder import GraphBuilder, Value
from dnet.graph.ir import Graph
from dnet.graph.ops import Op
from dnet.llm.model_file import ModelConfig, QuantTensor, Tensor
from dnet.llm.tensor_parallel import GROUP, TensorShard, row_slice, shard_model

BATCH, SEQ, CTX, OUT = Sym("batch"), Sym("seq"), Sym("ctx"), Sym("out")


def state_type(config: ModelConfig, context: int) -> TensorType:
    return TensorType((BATCH, context, config.num_kv_heads, config.head_dim), DType.F32)


def build_graph(config: ModelConfig, tensors: dict[str, Tensor], context: int,
                shard: TensorShard | None = None) -> Graph:
    """The model's graph for caches of `context` positions (of one member's part, given a `shard`)."""
    if shard is not None:
        config, tensors = shard_model(config, tensors, shard)
    b = GraphBuilder()
    w = _Weights(b, tensors)
    tokens = b.input("tokens", TensorType((BATCH, SEQ), DType.I64))
    positions = b.input("positions", TensorType((BATCH, SEQ), DType.I64))
    mask = b.input("mask", TensorType((BATCH, SEQ, CTX), DType.F32))
    rows = b.input("rows", TensorType((OUT,), DType.I64))
    cos, sin = rope_tables(config, context)
    with b.scope("rope"):
        angles = (_rope_at(b, b.const("rope.cos", cos), positions), _rope_at(b, b.const("rope.sin", sin), positions))
    with b.scope("token_embd"):
        h = b.node(Op.GATHER, [w.matrix("token_embd.weight"), tokens], axis=0)
    for i in range(config.num_layers):
        with b.scope(f"blk.{i}"):
            caches = (b.state(f"k.{i}", state_type(config, context)), b.state(f"v.{i}", state_type(config, context)))
            h = _layer(b, w, config, i, h, positions, mask, angles, caches, shard.size if shard else 0)
    with b.scope("output"):
        h = C.rms_norm(b, h, w.vector("output_norm.weight"), config.rms_norm_eps)
        picked = b.node(Op.GATHER, [b.reshape(h, (BATCH * SEQ, config.hidden_size)), rows], axis=0)
        head = "token_embd.weight" if config.tie_embeddings or "output.weight" not in tensors else "output.weight"
        b.output("logits", C.linear(b, picked, w.matrix(head, shard.vocab if shard is not None else None)))
    return b.finish()


def _layer(b: GraphBuilder, w: "_Weights", config: ModelConfig, i: int, h: Value, positions: Value, mask: Value,
           angles: tuple[Value, Value], caches: tuple[Value, Value], partial: int = 0) -> Value:
    """One decoder layer; with `partial` members (a tensor-parallel group) its two projections back to the
    hidden size give partial sums, added up over the group before the residual."""
    p = f"blk.{i}."
    total = (lambda x: b.node(Op.ALL_REDUCE, [x], group=GROUP, size=partial)) if partial else (lambda x: x)
    heads, kv_heads, head_dim = config.num_heads, config.num_kv_heads, config.head_dim
    with b.scope("attn"):
        x = C.rms_norm(b, h, w.vector(p + "attn_norm.weight"), config.rms_norm_eps)
        q, k, v = w.linears(x, [p + "attn_q", p + "attn_k", p + "attn_v"])
        q, k, v = _heads(b, q, heads, head_dim), _heads(b, k, kv_heads, head_dim), _heads(b, v, kv_heads, head_dim)
        if config.qk_norm:
            q = C.rms_norm(b, q, w.vector(p + "attn_q_norm.weight"), config.rms_norm_eps)
            k = C.rms_norm(b, k, w.vector(p + "attn_k_norm.weight"), config.rms_norm_eps)
        q, k = _rope(b, q, angles), _rope(b, k, angles)
        keys = b.scatter(caches[0], positions, k, axis=1)
        values = b.scatter(caches[1], positions, v, axis=1)
        o = _attention(b, q, keys, values, mask, config)
        h = b.elementwise(Op.ADD, h, total(w.linear(o, p + "attn_output")))
    with b.scope("ffn"):
        x = C.rms_norm(b, h, w.vector(p + "ffn_norm.weight"), config.rms_norm_eps)
        gated = b.elementwise(Op.MUL, C.silu(b, w.linear(x, p + "ffn_gate")), w.linear(x, p + "ffn_up"))
        return b.elementwise(Op.ADD, h, total(w.linear(gated, p + "ffn_down")))


def _heads(b: GraphBuilder, x: Value, heads: int, head_dim: int) -> Value:
    return b.reshape(x, (BATCH, SEQ, heads, head_dim))


def _attention(b: GraphBuilder, q: Value, keys: Value, values: Value, mask: Value, config: ModelConfig) -> Value:
    """Grouped-query attention of the new tokens' queries over the cache's first `ctx` positions.

    The queries of the heads that share a KV head are stacked as rows of one matmul against that
    head's keys, so a key is read once per KV head, not once per query head."""
    heads, kv_heads, head_dim = config.num_heads, config.num_kv_heads, config.head_dim
    group = heads // kv_heads
    q = b.permute(b.reshape(q, (BATCH, SEQ, kv_heads, group, head_dim)), (0, 2, 3, 1, 4))
    q = b.reshape(q, (BATCH, kv_heads, group * SEQ, head_dim))
    k = b.permute(b.slice(keys, 1, 0, CTX), (0, 2, 3, 1))              # (batch, kv_heads, head_dim, ctx)
    v = b.permute(b.slice(values, 1, 0, CTX), (0, 2, 1, 3))            # (batch, kv_heads, ctx, head_dim)
    scores = b.elementwise(Op.MUL, b.matmul(q, k), 1.0 / math.sqrt(head_dim))
    # the mask repeated for each query head of the group, so the scores keep the matmul's rows: reshaped
    # to (.., group, seq, ctx) and back, the probabilities were copied for the next matmul (a division
    # by the symbolic seq in the index makes that reshape no strided view), a tenth of a long context's step
    mask = b.expand(b.reshape(mask, (BATCH, 1, 1, SEQ, CTX)), (BATCH, 1, group, SEQ, CTX))
    scores = b.elementwise(Op.ADD, scores, b.reshape(mask, (BATCH, 1, group * SEQ, CTX)))
    probs = C.softmax(b, scores, -1)
    o = b.reshape(b.matmul(probs, v), (BATCH, kv_heads, group, SEQ, head_dim))
    return b.reshape(b.permute(o, (0, 3, 1, 2, 4)), (BATCH, SEQ, heads * head_dim))


# -- rotary position embedding (rotate-half, as Hugging Face's Llama) ---------------------------------
def rope_tables(config: ModelConfig, context: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of position * frequency, (context, head_dim / 2), computed in f32 as transformers does."""
    half = config.head_dim // 2
    inv_freq = (1.0 / (config.rope_theta ** (np.arange(0, 2 * half, 2, dtype=np.int64).astype(np.float32)
                                             / np.float32(config.head_dim)))).astype(np.float32)
    inv_freq = _scaled(inv_freq, config)
    angles = np.arange(context, dtype=np.float32)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _scaled(inv_freq: np.ndarray, config: ModelConfig) -> np.ndarray:
    s = config.rope_scaling
    if s is None:
        return inv_freq
    if s.kind == "linear":
        return (inv_freq / np.float32(s.factor)).astype(np.float32)
    # llama3: long wavelengths slowed by `factor`, short ones kept, a smooth blend between
    low_wavelen = s.original_context / s.low_freq_factor
    high_wavelen = s.original_context / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, blended, scaled).astype(np.float32)


def _rope_at(b: GraphBuilder, table: Value, positions: Value) -> Value:
    """(batch, seq, 1, head_dim / 2): the table's rows at the tokens' positions."""
    rows = b.node(Op.GATHER, [table, positions], axis=0)
    return b.reshape(rows, (BATCH, SEQ, 1, b.shape(table)[1]))


def _rope(b: GraphBuilder, x: Value, angles: tuple[Value, Value]) -> Value:
    shape = b.shape(x)
    half = shape[-1] // 2
    cos, sin = (b.expand(a, shape[:-1] + (half,)) for a in angles)
    x1, x2 = b.slice(x, -1, 0, half), b.slice(x, -1, half, 2 * half)
    first = b.elementwise(Op.SUB, b.elementwise(Op.MUL, x1, cos), b.elementwise(Op.MUL, x2, sin))
    second = b.elementwise(Op.ADD, b.elementwise(Op.MUL, x2, cos), b.elementwise(Op.MUL, x1, sin))
    return b.node(Op.CONCAT, [first, second], axis=-1)


# -- weights --------------------------------------------------------------------------------------
class _Weights:
    """Graph constants for the model's tensors: block formats kept, float ones as f32."""

    def __init__(self, b: GraphBuilder, tensors: dict[str, Tensor]):
        self.b, self.tensors = b, dict(tensors)
        self.made: dict[str, Value] = {}

    def matrix(self, name: str, rows: tuple[int, int] | None = None) -> Value:
        """An f32 view of a (rows, k) matrix: the dequantizing cast of a block weight, or the weight.
        `rows`: only those (a tensor-parallel member's slice of the lm_head)."""
        key = name if rows is None else f"{name}[{rows[0]}:{rows[1]}]"
        if key not in self.made:
            t = self.tensors[name] if rows is None else row_slice(self.tensors[name], *rows)
            name = key
            if isinstance(t, QuantTensor):
                stored = self.b.block_const(name, np.asarray(t.data), t.dtype, t.shape)
                self.made[name] = self.b.cast(stored, DType.F32)
            else:
                self.made[name] = self.b.const(name, np.asarray(t, dtype=np.float32))
        return self.made[key]

    def vector(self, name: str) -> Value:
        return self.b.const(name, np.asarray(self.tensors[name], dtype=np.float32))

    def linears(self, x: Value, prefixes: list[str]) -> list[Value]:
        """Several projections of one input. Block weights of one format are stacked into one matrix
        (rows are independent, so stacking the stored rows is exact): one matmul reads `x` once and
        a decode step launches one kernel instead of three small ones."""
        weights = [self.tensors[p + ".weight"] for p in prefixes]
        biases = [self.tensors.get(p + ".bias") for p in prefixes]
        stackable = (all(isinstance(t, QuantTensor) and t.dtype is weights[0].dtype for t in weights)
                     and len({t.shape[1] for t in weights}) == 1
                     and (all(bias is None for bias in biases) or all(bias is not None for bias in biases)))
        if not stackable:
            return [self.linear(x, p) for p in prefixes]
        name = "+".join(prefixes)
        rows = [t.shape[0] for t in weights]
        self.tensors[name + ".weight"] = QuantTensor(weights[0].dtype, (sum(rows), weights[0].shape[1]),
                                                     stack_rows([t.data for t in weights]))
        if biases[0] is not None:
            self.tensors[name + ".bias"] = np.concatenate([np.asarray(bias, np.float32) for bias in biases])
        y = self.linear(x, name)
        starts = np.cumsum([0] + rows)
        return [self.b.slice(y, -1, int(lo), int(hi)) for lo, hi in zip(starts[:-1], starts[1:])]

    def linear(self, x: Value, prefix: str) -> Value:
        bias = self.tensors.get(prefix + ".bias")
        return C.linear(self.b, x, self.matrix(prefix + ".weight"),
                        None if bias is None else self.vector(prefix + ".bias"))
