"""Multi-head attention with grouped-query heads, an optional mask and an optional KV cache."""
from __future__ import annotations

from typing import Any

from dnet.core.dtypes import DType
from dnet.errors import ShapeError
from dnet.frontend import functional as F
from dnet.frontend.module import Module
from dnet.frontend.nn.linear import Linear
from dnet.frontend.trace import user_location


class MultiHeadAttention(Module):
    """softmax(q k^T / sqrt(head_dim) + mask) v over `num_heads` heads, with projections
    `q_proj`, `k_proj`, `v_proj` and `o_proj` (the names Llama-style checkpoints use).

    `num_kv_heads` < `num_heads` gives grouped-query attention: each key/value head
    serves `num_heads // num_kv_heads` query heads. `causal=True` lets query i see
    keys up to its own position (past keys from a cache included).

    Call it as `attn(x, mask=None, cache=None)`:
      - x: (batch, seq, embed_dim);
      - mask: broadcastable to (batch, num_heads, seq, keys); a bool mask keeps the
        True entries, a float mask is added to the scores;
      - cache: a (key, value) pair of past keys and values, each
        (batch, num_kv_heads, past, head_dim); `past` may be 0 to start a cache.
    Without a cache it returns the output; with one it returns
    (output, (key, value)), the cache extended by this call's keys and values.
    The traced function is `forward(x, mask, past_key, past_value)`, which returns the
    flat tuple (output, key, value) when given a cache.
    """

    def __init__(self, embed_dim: int, num_heads: int, num_kv_heads: int | None = None, *,
                 head_dim: int | None = None, bias: bool = True, causal: bool = False,
                 dtype: DType = DType.F32) -> None:
        super().__init__()
        num_kv_heads = num_kv_heads or num_heads
        if num_heads % num_kv_heads:
            raise ShapeError(f"MultiHeadAttention: num_heads {num_heads} is not a multiple of "
                             f"num_kv_heads {num_kv_heads}", user_location())
        if head_dim is None:
            if embed_dim % num_heads:
                raise ShapeError(f"MultiHeadAttention: embed_dim {embed_dim} does not divide into "
                                 f"{num_heads} heads", user_location(), "give head_dim")
            head_dim = embed_dim // num_heads
        self.num_heads, self.num_kv_heads, self.head_dim, self.causal = num_heads, num_kv_heads, head_dim, causal
        self.q_proj = Linear(embed_dim, num_heads * head_dim, bias, dtype)
        self.k_proj = Linear(embed_dim, num_kv_heads * head_dim, bias, dtype)
        self.v_proj = Linear(embed_dim, num_kv_heads * head_dim, bias, dtype)
        self.o_proj = Linear(num_heads * head_dim, embed_dim, bias, dtype)

    def __call__(self, x: Any, mask: Any = None, cache: tuple[Any, Any] | None = None) -> Any:
        if cache is None:
            return super().__call__(x) if mask is None else super().__call__(x, mask)
        past_key, past_value = cache
        out, key, value = super().__call__(x, mask, past_key, past_value)
        return out, (key, value)

    def forward(self, x, mask=None, past_key=None, past_value=None):
        batch, seq, _ = x.shape
        q = self._split_heads(self.q_proj(x), self.num_heads)
        k = self._split_heads(self.k_proj(x), self.num_kv_heads)
        v = self._split_heads(self.v_proj(x), self.num_kv_heads)
        if past_key is not None:
            k, v = F.cat([past_key, k], 2), F.cat([past_value, v], 2)
        heads = F.scaled_dot_product_attention(q, self._share_kv(k), self._share_kv(v), mask, causal=self.causal)
        out = self.o_proj(heads.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim))
        return out if past_key is None else (out, k, v)

    def _split_heads(self, x, heads: int):
        """(batch, seq, heads * head_dim) -> (batch, heads, seq, head_dim)."""
        batch, seq, _ = x.shape
        return x.reshape(batch, seq, heads, self.head_dim).transpose(1, 2)

    def _share_kv(self, x):
        """Repeat each key/value head for the query heads of its group."""
        group = self.num_heads // self.num_kv_heads
        if group == 1:
            return x
        batch, heads, seq, dim = x.shape
        return x.unsqueeze(2).expand(batch, heads, group, seq, dim).reshape(batch, heads * group, seq, dim)
