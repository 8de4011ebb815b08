"""Where MiniLM's int8-dynamic error comes from, and what would remove it: a study, not a benchmark of dnet.

    .venv/bin/python benchmarks/int8_sensitivity.py

The transformers model (the same weights dnet loads) with dnet's int8-dynamic scheme applied as fake
quantization around every encoder Linear: weights per output channel, symmetric, max |w| / 127; each
activation row (token) asymmetric, 255 steps with an integer zero offset (graph/passes/dynamic_quant.py).
Worst cosine over tests/models/test_minilm.py's 8 sentences against the f32 model. Variants: weights
alone; each kind of matmul left in f32; SmoothQuant-style scaling (x / s, W * s per input channel,
s = r^a / max|W|^(1-a)) with the activation ranges r estimated without data from the LayerNorm that
produces the input (r = 4 |gamma| + |beta|: q, k, v and the FFN's first matmul read LayerNorm outputs);
and the two together. Then what `graph.passes.smooth` and `graph.passes.dynamic_quant` build: the FFN's
second matmul in bf16 (weights and activations rounded to bf16) with and without the smoothing, the
smoothing's a and spread (r = spread |gamma| + |beta|) swept, and one s shared by q, k and v (their
concatenated weights' rows) against one s each.
"""
from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "models"))
from test_minilm import SENTENCES  # noqa: E402


def quantize_weight(w: torch.Tensor) -> torch.Tensor:
    step = w.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127
    return torch.round(w / step).clamp(-127, 127) * step


def quantize_rows(x: torch.Tensor) -> torch.Tensor:
    top, bottom = x.amax(-1, keepdim=True), x.amin(-1, keepdim=True)
    step = torch.clamp(top - bottom, min=1e-30) / 255
    zero = torch.floor(bottom / step + 0.5) + 128
    return (torch.clamp(torch.floor(x / step + 0.5) - zero, max=127) + zero) * step


def layer_norm_ranges(model, spread: float = 4) -> dict[str, torch.Tensor]:
    """Per input channel, the range of the LayerNorm output a Linear reads (`spread` standard deviations)."""
    ranges, layers = {}, model.encoder.layer
    for i, layer in enumerate(layers):
        norm = model.embeddings.LayerNorm if i == 0 else layers[i - 1].output.LayerNorm
        for k in ("query", "key", "value"):
            ranges[f"encoder.layer.{i}.attention.self.{k}"] = (norm.weight.abs() * spread + norm.bias.abs()).detach()
        norm = layer.attention.output.LayerNorm
        ranges[f"encoder.layer.{i}.intermediate.dense"] = (norm.weight.abs() * spread + norm.bias.abs()).detach()
    return ranges


def fake_quantized(model, keep_f32=(), ranges=None, alpha=0.7, activations=True, keep_bf16=(), shared_qkv=False):
    m = copy.deepcopy(model)
    modules = dict(m.named_modules())
    for name, mod in m.named_modules():
        if not isinstance(mod, torch.nn.Linear) or "pooler" in name or any(re.search(k, name) for k in keep_f32):
            continue
        if any(re.search(k, name) for k in keep_bf16):
            mod.weight.data = mod.weight.data.to(torch.bfloat16).float()
            mod.register_forward_pre_hook(lambda _, inp: (inp[0].to(torch.bfloat16).float(),))
            continue
        w, s = mod.weight.data, None
        if ranges is not None and name in ranges:
            rows = w
            if shared_qkv and ".self." in name:   # one s for q, k and v: their weights' rows together
                base = name.rsplit(".", 1)[0]
                rows = torch.cat([modules[f"{base}.{k}"].weight.data for k in ("query", "key", "value")])
            s = (ranges[name] ** alpha / rows.abs().amax(0).clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
            w = w * s
        mod.weight.data = quantize_weight(w)
        if activations:
            mod.register_forward_pre_hook(lambda _, inp, s=s: (quantize_rows(inp[0] if s is None else inp[0] / s),))
    return m


def main() -> None:
    from transformers import AutoModel, AutoTokenizer

    from dnet.models.minilm import model_dir

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir()))
    model = AutoModel.from_pretrained(str(model_dir())).eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")

    def embed(m) -> np.ndarray:
        with torch.no_grad():
            h = m(**batch).last_hidden_state
        w = batch["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((h * w).sum(1) / w.sum(1), dim=-1).numpy()

    reference = embed(model)
    ffn2 = (r"layer\.\d+\.output\.dense$",)   # the FFN's second matmul, on GELU outputs
    ranges = layer_norm_ranges(model)
    rows = [("int8-dynamic as dnet computes it", fake_quantized(model)),
            ("weights int8, activations f32", fake_quantized(model, activations=False))]
    for kind in (r"self\.query", r"self\.key", r"self\.value", r"attention\.output\.dense", r"intermediate\.dense"):
        rows.append((f"{kind.replace(chr(92), '')} kept f32", fake_quantized(model, keep_f32=(kind,))))
    rows += [("FFN's second matmul kept f32", fake_quantized(model, keep_f32=ffn2)),
             ("LayerNorm-range smoothing (a = 0.7)", fake_quantized(model, ranges=ranges)),
             ("smoothing + FFN's second matmul f32", fake_quantized(model, keep_f32=ffn2, ranges=ranges)),
             ("FFN's second matmul bf16", fake_quantized(model, keep_bf16=ffn2))]
    for spread in (2, 3, 4, 6):
        for alpha in ((0.5, 0.6, 0.7, 0.8, 0.9) if spread == 4 else (0.5,)):
            rows.append((f"smoothing a = {alpha}, spread {spread} + FFN's second bf16",
                         fake_quantized(model, keep_bf16=ffn2, ranges=layer_norm_ranges(model, spread), alpha=alpha)))
    rows += [("smoothing a = 0.5 alone", fake_quantized(model, ranges=ranges, alpha=0.5)),
             ("smoothing a = 0.5 alone, one s for q, k, v", fake_quantized(model, ranges=ranges, alpha=0.5,
                                                                          shared_qkv=True))]
    for label, m in rows:
        got = embed(m)
        cos = (got * reference).sum(-1)
        print(f"{label:50s} worst cosine {cos.min():.5f}")


if __name__ == "__main__":
    main()
