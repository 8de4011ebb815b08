"""Whole models imported through torch.export match PyTorch, at several sizes from one compile.

The transformers models are built from small configs with seeded random weights; the
oracle is the same module run by PyTorch. f32 criterion: max abs error <= 1e-4 x max(1, max|output|).
"""
from __future__ import annotations

import functools

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from torch import nn  # noqa: E402
from torch.export import Dim  # noqa: E402
from torch_compare import assert_matches, dnet_outputs, torch_outputs  # noqa: E402

import dnet  # noqa: E402

SMALL = dict(vocab_size=1000, num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
             max_position_embeddings=128, attn_implementation="eager")
SIZES = [(1, 2), (2, 8), (3, 13)]  # (batch, seq), all from one compiled graph


def bert() -> nn.Module:
    return transformers.BertModel(transformers.BertConfig(**SMALL))


def gpt2() -> nn.Module:
    config = transformers.GPT2Config(vocab_size=1000, n_layer=2, n_embd=64, n_head=4, n_positions=128,
                                     attn_implementation="eager", use_cache=False)
    return transformers.GPT2LMHeadModel(config)


def llama() -> nn.Module:
    config = transformers.LlamaConfig(**{**SMALL, "attn_implementation": "sdpa"}, num_key_value_heads=2,
                                      use_cache=False)
    return transformers.LlamaForCausalLM(config)


BUILDERS = {"bert": bert, "gpt2": gpt2, "llama": llama}


def tokens(batch: int, seq: int) -> tuple:
    """Random ids and an attention mask whose first row is padded at the end."""
    ids = torch.randint(0, 1000, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[0, max(1, seq - 2):] = 0
    return ids, mask


@functools.lru_cache(maxsize=None)
def imported(name: str) -> tuple[nn.Module, dnet.Executable, object]:
    """The torch model, its dnet executable and object module: exported once per test session."""
    torch.manual_seed(0)
    model = BUILDERS[name]().eval()
    batch, seq = Dim("batch", max=64), Dim("seq", max=128)
    ids, mask = tokens(2, 8)
    dynamic = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    module = dnet.from_torch(model, (), dynamic, example_kwargs={"input_ids": ids, "attention_mask": mask})
    return model, dnet.compile(module), module


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_transformer_matches_pytorch_at_every_size_from_one_compile(name):
    model, exe, _ = imported(name)
    torch.manual_seed(1)
    for batch, seq in SIZES:
        ids, mask = tokens(batch, seq)
        expected = torch_outputs(model, input_ids=ids, attention_mask=mask)
        assert_matches(expected, dnet_outputs(exe, ids, mask))


def test_dynamic_dims_keep_the_names_given_to_torch_export():
    _, exe, module = imported("bert")
    forward = module.root.functions["forward"]
    assert [str(a.type) for a in forward.args] == ["i64(batch, seq)", "i64(batch, seq)"]
    assert [str(t) for t in exe.graph.output_types().values()] == ["f32(batch, seq, 64)", "f32(batch, 64)"]


def test_weights_keep_their_pytorch_names_and_values():
    model, exe, module = imported("bert")
    name = "encoder.layer.0.attention.self.query.weight"
    expected = model.state_dict()[name].numpy()
    assert (dict(module.root.named_parameters())[name].value == expected).all()
    assert (exe.graph.weights[name] == expected).all()


def test_the_module_tree_becomes_objects_with_their_torch_classes():
    _, exe, module = imported("bert")
    assert list(module.root.children) == ["embeddings", "encoder", "pooler"]
    attention = module.root.children["encoder"].children["layer"].children["1"].children["attention"]
    assert attention.class_name == "BertAttention"
    assert set(attention.children["self"].children["query"].parameters) == {"weight", "bias"}
    assert "forward" in attention.functions
    assert any(node.name.endswith("encoder.layer.1.attention.self.forward") for node in exe.graph)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d((3, 3)))  # 4x4 -> 3x3: uneven, overlapping windows
        self.head = nn.Linear(16 * 9, 10)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


def test_cnn_with_batch_norm_in_eval_mode_matches_pytorch_for_any_batch():
    torch.manual_seed(0)
    model = SmallCNN()
    for m in model.modules():  # running statistics that are not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    model.eval()
    exe = dnet.compile(dnet.from_torch(model, (torch.randn(2, 3, 16, 16),), ({0: Dim("batch")},)))
    assert str(exe.graph.input_types()["x"]) == "f32(batch, 3, 16, 16)"
    for batch in (1, 2, 5):
        x = torch.randn(batch, 3, 16, 16)
        assert_matches(torch_outputs(model, x), dnet_outputs(exe, x))
