"""A Llama-style decoder block built on the seed's Attention (verbatim, std/llama.dnet),
against a numpy oracle written from the Llama equations."""
import numpy as np
import pytest

from dnet.backends.numpy import run_graph
from dnet.core.dtypes import DType
from dnet.core.shapes import Sym
from dnet.core.types import TensorType
from dnet.objects.lower import lower

CONFIG = dict(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2)
HEADS, KV, HD = 4, 2, 8


@pytest.fixture(scope="module")
def block():
    from dnet.frontend.dsl import instantiate, parse_program

    module = instantiate(parse_program('import("std/llama.dnet");'), "DecoderBlock", CONFIG)
    rng = np.random.default_rng(0)
    weights = {}
    for path, sym in module.root.named_parameters():
        scale = 1.0 if path.endswith("layernorm.weight") else 0.15
        base = 1.0 if path.endswith("layernorm.weight") else 0.0
        sym.value = (base + scale * rng.standard_normal(sym.type.shape)).astype(np.float16)
        weights[path] = sym.value.astype(np.float32)
    return module, weights


# -- the oracle ------------------------------------------------------------------------------
def rms_norm(x, w, eps=1e-6):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rotary(h, past, theta=10000.0):
    t, d = h.shape[2], h.shape[3]
    inv = theta ** (-(2.0 * np.arange(d // 2)) / d)
    angles = np.arange(past, past + t)[:, None] * inv[None, :]
    angles = np.concatenate([angles, angles], -1)
    rotated = np.concatenate([-h[..., d // 2:], h[..., :d // 2]], -1)
    return h * np.cos(angles) + rotated * np.sin(angles)


def heads(x, n):
    b, t, _ = x.shape
    return x.reshape(b, t, n, -1).transpose(0, 2, 1, 3)


def oracle(w, x, cache=None):
    """(hidden states, kv cache) of one Llama decoder block, in float64."""
    p = "self_attn."
    h = rms_norm(x, w["input_layernorm.weight"])
    past = 0 if cache is None else cache.shape[3]
    # The seed multiplies q by idiv(hidden_size, num_attention_heads) before attention.
    q = HD * rotary(heads(h @ w[p + "q_proj.weight"].T, HEADS), past)
    k = rotary(heads(h @ w[p + "k_proj.weight"].T, KV), past)
    v = heads(h @ w[p + "v_proj.weight"].T, KV)
    if cache is not None:
        k, v = np.concatenate([cache[0], k], 2), np.concatenate([cache[1], v], 2)
    present = np.stack([k, v])
    k, v = np.repeat(k, HEADS // KV, 1), np.repeat(v, HEADS // KV, 1)
    t, s = q.shape[2], k.shape[2]
    visible = np.arange(s)[None, :] <= np.arange(t)[:, None] + (s - t)
    scores = np.where(visible, q @ k.transpose(0, 1, 3, 2) / np.sqrt(HD), -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attn = (probs @ v).transpose(0, 2, 1, 3).reshape(x.shape)
    x = x + attn @ w[p + "o_proj.weight"].T
    g = rms_norm(x, w["post_attention_layernorm.weight"])
    gate, up = g @ w["mlp.gate_proj.weight"].T, g @ w["mlp.up_proj.weight"].T
    mlp = (gate / (1 + np.exp(-gate)) * up) @ w["mlp.down_proj.weight"].T
    return x + mlp, present


def run(module, x, cache=None):
    inputs = {"x": TensorType((Sym("batch"), Sym("seq"), 32), DType.F16)}
    feeds = {"x": x.astype(np.float16)}
    if cache is not None:
        inputs["cache"] = TensorType((2, Sym("batch"), KV, Sym("past"), HD), DType.F16)
        feeds["cache"] = cache.astype(np.float16)
    out = run_graph(lower(module, "forward", inputs), feeds)
    return out["output0"].astype(np.float64), out["output1"].astype(np.float64)


def close(got, want, tol=5e-3):
    assert got.shape == want.shape
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < tol, err


def test_decoder_block_matches_the_llama_oracle(block):
    module, w = block
    x = np.random.default_rng(1).standard_normal((2, 5, 32)).astype(np.float16)
    got, cache = run(module, x)
    want, want_cache = oracle(w, x.astype(np.float64))
    close(got, want)
    close(cache, want_cache)


def test_decoding_with_the_kv_cache_continues_the_full_sequence(block):
    module, w = block
    x = np.random.default_rng(2).standard_normal((1, 6, 32)).astype(np.float16)
    full, full_cache = oracle(w, x.astype(np.float64))
    _, cache = run(module, x[:, :4])
    step, step_cache = run(module, x[:, 4:], cache)
    close(step, full[:, 4:])
    close(step_cache, full_cache)


def test_the_oracle_is_causal(block):
    """Guard the oracle itself: changing a later token leaves earlier outputs alone."""
    _, w = block
    x = np.random.default_rng(3).standard_normal((1, 4, 32))
    y = x.copy()
    y[:, 3] += 1.0
    np.testing.assert_allclose(oracle(w, x)[0][:, :3], oracle(w, y)[0][:, :3])
