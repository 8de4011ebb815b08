"""dnet.nn layers against the same torch layers holding the same weights (f32)."""
import numpy as np
import pytest

import dnet
from dnet import nn
from dnet.errors import ShapeError, UnsupportedOpError, WeightError

torch = pytest.importorskip("torch")


def torch_weights(module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def seeded_torch(module, seed: int = 0):
    """Random non-trivial weights (and running stats) for a torch module, in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen) * 0.5 + (1.0 if name.endswith("running_var") else 0.0))
                if name.endswith("running_var"):
                    t.abs_()
    return module.eval()


def compare(ours, theirs, *arrays, shapes=None, atol=1e-5):
    """Load theirs' weights into ours, compile ours for `shapes` (default: the arrays' shapes), run both."""
    ours.load_state_dict(torch_weights(theirs))
    types = [dnet.TensorType(s, dnet.DType.from_numpy(a.dtype)) for s, a in zip(shapes or [a.shape for a in arrays], arrays)]
    got = dnet.compile(ours, types)(*arrays)
    with torch.no_grad():
        want = theirs(*(torch.from_numpy(a) for a in arrays)).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol)
    return got


@pytest.fixture
def x3(rng):
    return rng.standard_normal((2, 5, 16)).astype(np.float32)


@pytest.fixture
def image(rng):
    return rng.standard_normal((2, 4, 9, 11)).astype(np.float32)


LAYERS = {  # (dnet layer, torch layer)
    "linear": lambda: (nn.Linear(16, 8), torch.nn.Linear(16, 8)),
    "linear no bias": lambda: (nn.Linear(16, 8, bias=False), torch.nn.Linear(16, 8, bias=False)),
    "layer norm": lambda: (nn.LayerNorm(16), torch.nn.LayerNorm(16)),
    "layer norm 2-d": lambda: (nn.LayerNorm((5, 16), eps=1e-3), torch.nn.LayerNorm((5, 16), eps=1e-3)),
    "layer norm no affine": lambda: (nn.LayerNorm(16, elementwise_affine=False),
                                     torch.nn.LayerNorm(16, elementwise_affine=False)),
    "rms norm": lambda: (nn.RMSNorm(16), torch.nn.RMSNorm(16)),
    "rms norm eps 2-d": lambda: (nn.RMSNorm((5, 16), eps=1e-4), torch.nn.RMSNorm((5, 16), eps=1e-4)),
    "gelu": lambda: (nn.GELU(), torch.nn.GELU()),
    "gelu tanh": lambda: (nn.GELU("tanh"), torch.nn.GELU("tanh")),
    "relu": lambda: (nn.ReLU(), torch.nn.ReLU()),
    "silu": lambda: (nn.SiLU(), torch.nn.SiLU()),
    "sigmoid": lambda: (nn.Sigmoid(), torch.nn.Sigmoid()),
    "tanh": lambda: (nn.Tanh(), torch.nn.Tanh()),
    "softmax": lambda: (nn.Softmax(1), torch.nn.Softmax(1)),
    "dropout": lambda: (nn.Dropout(0.3), torch.nn.Dropout(0.3)),
    "identity": lambda: (nn.Identity(), torch.nn.Identity()),
    "flatten": lambda: (nn.Flatten(), torch.nn.Flatten()),
    "sequential": lambda: (nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 4)),
                           torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.LayerNorm(32),
                                               torch.nn.Linear(32, 4))),
}


@pytest.mark.parametrize("name", LAYERS)
def test_layer_matches_torch(name, x3):
    ours, theirs = LAYERS[name]()
    compare(ours, seeded_torch(theirs), x3)


@pytest.mark.parametrize("name", ["linear", "layer norm", "rms norm", "sequential"])
def test_layer_compiled_once_for_symbolic_batch_and_seq_runs_at_every_size(name, rng):
    ours, theirs = LAYERS[name]()
    seeded_torch(theirs)
    ours.load_state_dict(torch_weights(theirs))
    exe = dnet.compile(ours, [dnet.TensorType(("batch", "seq", 16), dnet.f32)])
    for shape in [(1, 1, 16), (3, 7, 16), (2, 13, 16)]:
        x = rng.standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            np.testing.assert_allclose(exe(x), theirs(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-5)


def test_embedding_matches_torch(rng):
    ids = rng.integers(0, 50, (3, 7)).astype(np.int64)
    compare(nn.Embedding(50, 8), seeded_torch(torch.nn.Embedding(50, 8)), ids, shapes=[("batch", "seq")])


# -- convolution and pooling ---------------------------------------------------------------
CONVS = {
    "plain": dict(kernel_size=3),
    "stride padding": dict(kernel_size=3, stride=2, padding=1),
    "rectangular": dict(kernel_size=(3, 2), stride=(1, 2), padding=(2, 0)),
    "dilation": dict(kernel_size=3, dilation=2, padding=2),
    "groups": dict(kernel_size=3, groups=2, padding=1),
    "depthwise no bias": dict(kernel_size=3, groups=4, bias=False),
    "same": dict(kernel_size=4, padding="same", dilation=(1, 2)),
    "valid": dict(kernel_size=1, padding="valid"),
}


@pytest.mark.parametrize("name", CONVS)
@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_conv2d_matches_torch(name, image):
    kw = CONVS[name]
    out_channels = 4 if kw.get("groups") == 4 else 6
    compare(nn.Conv2d(4, out_channels, **kw), seeded_torch(torch.nn.Conv2d(4, out_channels, **kw)), image, atol=2e-5)


POOLS = {
    "max": lambda: (nn.MaxPool2d(2), torch.nn.MaxPool2d(2)),
    "max stride padding": lambda: (nn.MaxPool2d(3, 2, 1), torch.nn.MaxPool2d(3, 2, 1)),
    "avg": lambda: (nn.AvgPool2d(2), torch.nn.AvgPool2d(2)),
    "avg padding": lambda: (nn.AvgPool2d(3, 2, 1), torch.nn.AvgPool2d(3, 2, 1)),
    "avg excluding padding": lambda: (nn.AvgPool2d((3, 2), 1, 1, count_include_pad=False),
                                      torch.nn.AvgPool2d((3, 2), 1, 1, count_include_pad=False)),
    "adaptive 1": lambda: (nn.AdaptiveAvgPool2d(1), torch.nn.AdaptiveAvgPool2d(1)),
    "adaptive divisible": lambda: (nn.AdaptiveAvgPool2d((3, 1)), torch.nn.AdaptiveAvgPool2d((3, 1))),
}


@pytest.mark.parametrize("name", POOLS)
def test_pooling_matches_torch(name, image):
    ours, theirs = POOLS[name]()
    compare(ours, theirs, image)


def test_batchnorm_uses_running_statistics_and_loads_torch_state_dict(image):
    theirs = seeded_torch(torch.nn.BatchNorm2d(4))
    assert "num_batches_tracked" in theirs.state_dict()
    compare(nn.BatchNorm2d(4), theirs, image)


def test_small_cnn_matches_torch_at_any_batch(rng):
    def cnn(m):
        return m.Sequential(m.Conv2d(3, 8, 3, padding=1), m.BatchNorm2d(8), m.ReLU(), m.MaxPool2d(2),
                            m.Conv2d(8, 8, 3, groups=2), m.AdaptiveAvgPool2d(1), m.Flatten(), m.Linear(8, 5))
    theirs = seeded_torch(cnn(torch.nn))
    ours = cnn(nn)
    ours.load_state_dict(torch_weights(theirs))
    exe = dnet.compile(ours, [dnet.TensorType(("batch", 3, 12, 12), dnet.f32)])
    for batch in (1, 3):
        x = rng.standard_normal((batch, 3, 12, 12)).astype(np.float32)
        with torch.no_grad():
            np.testing.assert_allclose(exe(x), theirs(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=2e-5)


# -- attention -----------------------------------------------------------------------------
def mha_from_torch(theirs: "torch.nn.MultiheadAttention", num_heads: int) -> nn.MultiHeadAttention:
    """Our layer with torch's packed in_proj split into q/k/v projections."""
    w = torch_weights(theirs)
    q, k, v = np.split(w["in_proj_weight"], 3)
    qb, kb, vb = np.split(w["in_proj_bias"], 3)
    ours = nn.MultiHeadAttention(theirs.embed_dim, num_heads)
    ours.load_state_dict({"q_proj.weight": q, "k_proj.weight": k, "v_proj.weight": v, "q_proj.bias": qb,
                          "k_proj.bias": kb, "v_proj.bias": vb, "o_proj.weight": w["out_proj.weight"],
                          "o_proj.bias": w["out_proj.bias"]})
    return ours


class Masked(dnet.Module):
    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, x, keep):
        return self.attn(x, keep[:, None, None, :])


def test_attention_matches_torch_multihead_attention(x3):
    theirs = seeded_torch(torch.nn.MultiheadAttention(16, 4, batch_first=True))
    ours = mha_from_torch(theirs, 4)
    got = dnet.compile(ours, [dnet.TensorType(("batch", "seq", 16), dnet.f32)])(x3)
    with torch.no_grad():
        t = torch.from_numpy(x3)
        want = theirs(t, t, t, need_weights=False)[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_attention_bool_padding_mask_matches_torch_key_padding_mask(rng, x3):
    theirs = seeded_torch(torch.nn.MultiheadAttention(16, 4, batch_first=True))
    model = Masked(mha_from_torch(theirs, 4))
    keep = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
    exe = dnet.compile(model, [dnet.TensorType(("batch", "seq", 16), dnet.f32),
                               dnet.TensorType(("batch", "seq"), dnet.boolean)])
    with torch.no_grad():
        t = torch.from_numpy(x3)
        want = theirs(t, t, t, key_padding_mask=torch.from_numpy(~keep), need_weights=False)[0].numpy()
    np.testing.assert_allclose(exe(x3, keep), want, rtol=1e-5, atol=1e-5)


def test_attention_additive_mask_matches_torch(rng, x3):
    theirs = seeded_torch(torch.nn.MultiheadAttention(16, 2, batch_first=True))
    ours = mha_from_torch(theirs, 2)
    bias = rng.standard_normal((5, 5)).astype(np.float32)
    got = dnet.compile(ours, [dnet.TensorType(x3.shape, dnet.f32), dnet.TensorType((5, 5), dnet.f32)])(x3, bias)
    with torch.no_grad():
        t = torch.from_numpy(x3)
        want = theirs(t, t, t, attn_mask=torch.from_numpy(bias), need_weights=False)[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def torch_gqa(x: np.ndarray, w: dict, heads: int, kv_heads: int, causal: bool) -> np.ndarray:
    """Grouped-query attention written with torch's own scaled_dot_product_attention."""
    t = torch.from_numpy(x)
    b, s, _ = x.shape

    def proj(name, n):
        y = t @ torch.from_numpy(w[f"{name}.weight"]).T + torch.from_numpy(w[f"{name}.bias"])
        return y.reshape(b, s, n, -1).transpose(1, 2)
    out = torch.nn.functional.scaled_dot_product_attention(
        proj("q_proj", heads), proj("k_proj", kv_heads), proj("v_proj", kv_heads), is_causal=causal, enable_gqa=True)
    out = out.transpose(1, 2).reshape(b, s, -1)
    return (out @ torch.from_numpy(w["o_proj.weight"]).T + torch.from_numpy(w["o_proj.bias"])).numpy()


@pytest.mark.parametrize("causal", [False, True])
def test_grouped_query_attention_matches_torch_sdpa(causal, rng):
    ours = nn.init.seeded_(nn.MultiHeadAttention(32, 8, num_kv_heads=2, causal=causal), seed=1, std=0.3)
    assert ours.k_proj.weight.type.shape == (8, 32)
    exe = dnet.compile(ours, [dnet.TensorType(("batch", "seq", 32), dnet.f32)])
    for shape in [(1, 1, 32), (2, 6, 32)]:
        x = rng.standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(exe(x), torch_gqa(x, ours.state_dict(), 8, 2, causal), rtol=1e-5, atol=1e-5)


class Decoder(dnet.Module):
    """One causal attention step that reads and extends a KV cache."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiHeadAttention(32, 8, num_kv_heads=4, causal=True)

    def forward(self, x, past_key, past_value):
        out, (key, value) = self.attn(x, cache=(past_key, past_value))
        return out, key, value


def test_kv_cache_prefill_then_decode_equals_causal_attention_over_the_whole_sequence(rng):
    model = Decoder()
    nn.init.seeded_(model, seed=2, std=0.3)
    cache = dnet.TensorType(("batch", 4, "past", 4), dnet.f32)  # 4 kv heads of 32 // 8
    exe = dnet.compile(model, [dnet.TensorType(("batch", "seq", 32), dnet.f32), cache, cache])
    x = rng.standard_normal((2, 7, 32)).astype(np.float32)
    empty = np.zeros((2, 4, 0, 4), np.float32)
    out1, k, v = exe(x[:, :4], empty, empty)          # prefill 4 tokens
    out2, k, v = exe(x[:, 4:6], k, v)                 # then 2
    out3, k, v = exe(x[:, 6:], k, v)                  # then 1
    assert k.shape == v.shape == (2, 4, 7, 4)
    weights = {name[len("attn."):]: w for name, w in model.state_dict().items()}
    want = torch_gqa(x, weights, 8, 4, causal=True)
    np.testing.assert_allclose(np.concatenate([out1, out2, out3], 1), want, rtol=1e-5, atol=1e-5)


# -- weights and errors --------------------------------------------------------------------
def test_parameter_names_match_torch(rng):
    ours = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.LayerNorm(4), nn.Embedding(5, 4), nn.RMSNorm(4))
    theirs = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.LayerNorm(4),
                                 torch.nn.Embedding(5, 4), torch.nn.RMSNorm(4))
    assert {n for n, _ in ours.named_parameters()} == set(theirs.state_dict())


def test_compiling_unloaded_weights_names_the_weight(x3):
    with pytest.raises(WeightError, match="parameter '1.weight' has no data"):
        dnet.compile(nn.Sequential(nn.Identity(), nn.Linear(16, 4)), [dnet.TensorType(x3.shape, dnet.f32)])


def test_loading_a_mismatched_weight_names_it():
    with pytest.raises(WeightError, match=r"weight 'weight' has shape \(4, 16\), the model expects \(8, 16\)"):
        nn.Linear(16, 8).load_state_dict({"weight": np.zeros((4, 16), np.float32),
                                          "bias": np.zeros(8, np.float32)})


def test_seeded_init_is_reproducible_and_leaves_loaded_weights_alone():
    a, b = nn.init.seeded_(nn.Linear(4, 3), seed=5), nn.init.seeded_(nn.Linear(4, 3), seed=5)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert a.weight.data.std() > 0
    c = nn.Linear(4, 3)
    c.weight.load(np.ones((3, 4), np.float32))
    nn.init.seeded_(c)
    np.testing.assert_array_equal(c.weight.data, np.ones((3, 4)))


def test_layer_configuration_errors_are_clear_and_point_at_the_caller():
    cases = [(ShapeError, "num_heads 6 is not a multiple of num_kv_heads 4", lambda: nn.MultiHeadAttention(24, 6, 4)),
             (ShapeError, "embed_dim 10 does not divide into 4 heads", lambda: nn.MultiHeadAttention(10, 4)),
             (ShapeError, "do not divide into 3 groups", lambda: nn.Conv2d(4, 6, 3, groups=3)),
             (ShapeError, "padding='same' needs stride 1", lambda: nn.Conv2d(4, 6, 3, stride=2, padding="same")),
             (UnsupportedOpError, "ceil_mode", lambda: nn.MaxPool2d(2, ceil_mode=True)),
             (UnsupportedOpError, "running statistics", lambda: nn.BatchNorm2d(4, track_running_stats=False))]
    for error, message, make in cases:
        with pytest.raises(error, match=message) as err:
            make()
        assert err.value.where.file == __file__, message


def test_reshape_errors_point_at_the_line_that_reshapes():
    class TwoFree(dnet.Module):
        def forward(self, x):
            return dnet.functional.reshape(x, (-1, -1))

    with pytest.raises(ShapeError, match=r"reshape: more than one -1 in \[-1, -1\]") as err:
        dnet.compile(TwoFree(), [dnet.TensorType((2, 3), dnet.f32)])
    assert err.value.where.file == __file__


def test_shape_mismatch_in_a_layer_names_both_shapes(rng):
    layer = nn.init.seeded_(nn.Linear(16, 4))
    with pytest.raises(ShapeError, match=r"matmul: inner dims differ, \(2, 8\) @ \(16, 4\)"):
        dnet.compile(layer, [dnet.TensorType((2, 8), dnet.f32)])
