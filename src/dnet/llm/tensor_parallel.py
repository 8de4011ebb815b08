"""Tensor parallelism for the decoder: each member of a group holds a slice of every layer.

Megatron's split, the one that needs two all-reduces a layer and nothing else:

    attention   q, k and v by KV-head groups (a KV head and the query heads that read it stay
                together), so each member attends over its own heads with its own slice of the
                KV cache; the output projection by its input columns (the same heads): each member
                has a partial sum of the layer's attention output -> ALL_REDUCE
    MLP         gate and up by rows (intermediate features), down by the same columns: a partial
                sum again -> ALL_REDUCE
    lm_head     by vocabulary rows: each member returns its slice of the logits, joined in order

Norms, the embedding gather and the residual stream are computed by every member on the whole
hidden vector (they are cheap and need no exchange). Shares follow the members' speeds, in units
that keep a block-quantized weight's columns whole blocks.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from dnet.core.origins import take_columns
from dnet.errors import DnetError
from dnet.llm.model_file import ModelConfig, QuantTensor, Tensor

GROUP = "tp"   # the ALL_REDUCE group of a model's members: the runtime gives it its peers


@dataclass(frozen=True)
class TensorShard:
    """What one member of a tensor-parallel group of `size` holds: half-open ranges."""
    rank: int
    size: int
    kv_heads: tuple[int, int]
    ffn: tuple[int, int]          # intermediate features (rows of gate/up, columns of down)
    vocab: tuple[int, int]        # rows of the lm_head: this member's logits

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(obj: dict) -> "TensorShard":
        return TensorShard(int(obj["rank"]), int(obj["size"]), tuple(obj["kv_heads"]), tuple(obj["ffn"]),
                           tuple(obj["vocab"]))


def split_model(config: ModelConfig, tensors: dict[str, Tensor], speeds: Sequence[float]) -> list[TensorShard]:
    """One shard per member, each member's share of every split in proportion to its speed.

    KV heads are whole (a member gets at least one, so a group has at most `num_kv_heads` members);
    intermediate features come in units of the down projection's block (its columns are split)."""
    n = len(speeds)
    if n < 2:
        raise DnetError("tensor parallelism needs at least two members")
    if n > config.num_kv_heads:
        raise DnetError(f"{config.name or 'the model'} has {config.num_kv_heads} KV heads: tensor parallelism "
                        f"over {n} members would leave one with none", hint=f"at most {config.num_kv_heads} members")
    if any(not s > 0 for s in speeds):
        raise DnetError(f"member speeds must be positive, got {list(speeds)}")
    unit = math.lcm(*(_block(tensors.get(f"blk.{i}.ffn_down.weight")) for i in range(config.num_layers)))
    if config.intermediate_size % unit:
        raise DnetError(f"the MLP's {config.intermediate_size} features do not split into blocks of {unit}")
    heads = _ranges(config.num_kv_heads, speeds, 1)
    ffn = _ranges(config.intermediate_size // unit, speeds, 1)
    vocab = _ranges(config.vocab_size, speeds, 1)
    return [TensorShard(r, n, heads[r], (ffn[r][0] * unit, ffn[r][1] * unit), vocab[r]) for r in range(n)]


def _ranges(total: int, speeds: Sequence[float], least: int) -> list[tuple[int, int]]:
    """`total` units cut into contiguous ranges in proportion to `speeds`, each at least `least` long."""
    share = np.asarray(speeds, float) / float(np.sum(speeds))
    counts = np.maximum(least, np.floor(share * total).astype(int))
    while counts.sum() > total:                      # the floor of `least` took too much: from the largest
        counts[np.argmax(counts)] -= 1
    while counts.sum() < total:                      # the remainder to whoever is furthest below its share
        counts[np.argmax(share * total - counts)] += 1
    ends = np.cumsum(counts)
    return [(int(e - c), int(e)) for c, e in zip(counts, ends)]


def _block(t: Tensor | None) -> int:
    return t.dtype.block if isinstance(t, QuantTensor) else 1


def shard_model(config: ModelConfig, tensors: dict[str, Tensor],
                shard: TensorShard) -> tuple[ModelConfig, dict[str, Tensor]]:
    """This member's config (its heads) and tensors (its slices; rows stay memory-mapped views)."""
    hd, group = config.head_dim, config.num_heads // config.num_kv_heads
    k0, k1 = shard.kv_heads
    q_rows, kv_rows, ffn = (k0 * group * hd, k1 * group * hd), (k0 * hd, k1 * hd), shard.ffn
    out: dict[str, Tensor] = {}
    for name, t in tensors.items():
        if not name.startswith("blk."):
            out[name] = t
            continue
        part = name.split(".", 2)[2]
        if part in ("attn_q.weight", "attn_q.bias"):
            out[name] = row_slice(t, *q_rows)
        elif part in ("attn_k.weight", "attn_k.bias", "attn_v.weight", "attn_v.bias"):
            out[name] = row_slice(t, *kv_rows)
        elif part == "attn_output.weight":
            out[name] = _columns(t, *q_rows, name)
        elif part in ("ffn_gate.weight", "ffn_up.weight", "ffn_gate.bias", "ffn_up.bias"):
            out[name] = row_slice(t, *ffn)
        elif part == "ffn_down.weight":
            out[name] = _columns(t, *ffn, name)
        elif part in ("attn_output.bias", "ffn_down.bias"):
            if shard.rank == 0:                      # added once, before the sum over members
                out[name] = t
        else:
            out[name] = t
    sharded = dataclasses.replace(config, num_heads=(k1 - k0) * group, num_kv_heads=k1 - k0)
    return sharded, out


def row_slice(t: Tensor, lo: int, hi: int) -> Tensor:
    """Rows [lo, hi) of a weight (a view: a memory-mapped one keeps its origin)."""
    if isinstance(t, QuantTensor):
        data = t.data.reshape(t.shape[0], -1)[lo:hi]
        return QuantTensor(t.dtype, (hi - lo,) + tuple(t.shape[1:]), data)
    return np.asarray(t)[lo:hi]


def _columns(t: Tensor, lo: int, hi: int, name: str) -> Tensor:
    if isinstance(t, QuantTensor):
        block, nbytes = t.dtype.block, t.dtype.block_bytes
        if lo % block or hi % block:
            raise DnetError(f"{name}: columns {lo}:{hi} cut through {t.dtype} blocks of {block}")
        data = take_columns(t.data.reshape(t.shape[0], -1), lo // block * nbytes, hi // block * nbytes)
        return QuantTensor(t.dtype, (t.shape[0], hi - lo), data)
    return np.ascontiguousarray(np.asarray(t)[:, lo:hi])


# -- when it pays ------------------------------------------------------------------------------

@dataclass(frozen=True)
class GroupEstimate:
    members: tuple[int, ...]      # topology node indices, fastest first
    seconds: float                # one step: the members' share of the work plus the exchanges
    compute_seconds: float
    exchange_seconds: float


def best_group(node_seconds: Sequence[float], latency: np.ndarray, bandwidth: np.ndarray, exchanges: int,
               exchange_bytes: float, max_members: int, fits: Sequence[Sequence[bool]] | None = None
               ) -> GroupEstimate | None:
    """The tensor-parallel group with the shortest step, by the cost model: members split the work in
    proportion to their speed (all finish together: 1 / sum(1 / t_i)), then every one of `exchanges`
    all-reduces costs the slowest pair's latency plus `exchange_bytes` over its bandwidth. Groups are
    the k fastest nodes, k = 2 .. max_members; `fits[k][i]`: whether node i can hold its share in a
    group of k+2 (memory). None when no group of two or more is possible."""
    order = [i for i in np.argsort(node_seconds, kind="stable") if np.isfinite(node_seconds[i])]
    best = None
    for k in range(2, min(max_members, len(order)) + 1):
        members = tuple(int(i) for i in order[:k])
        if fits is not None and not all(fits[k - 2][i] for i in members):
            continue
        pairs = [(a, b) for a in members for b in members if a != b]
        if any(bandwidth[a, b] <= 0 for a, b in pairs):
            continue
        exchange = max(latency[a, b] + exchange_bytes / bandwidth[a, b] for a, b in pairs)
        compute = 1.0 / sum(1.0 / node_seconds[i] for i in members)
        estimate = GroupEstimate(members, compute + exchanges * exchange, compute, exchanges * exchange)
        if best is None or estimate.seconds < best.seconds:
            best = estimate
    return best


def member_graphs(config: ModelConfig, tensors: dict[str, Tensor], context: int,
                  speeds: Sequence[float]) -> tuple[list, list[TensorShard]]:
    """Each member's graph (heads, features and vocabulary rows in proportion to `speeds`) and shard."""
    from dnet.llm.model import build_graph   # the model builds on this module's shards

    shards = split_model(config, tensors, speeds)
    return [build_graph(config, tensors, context, s) for s in shards], shards
