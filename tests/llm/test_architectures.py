"""Every supported architecture and weight format, on tiny seeded models, against transformers.

transformers loads the same tiny GGUF (dequantizing it to f32) or the same Hugging Face folder:
dnet's numpy reference with the weights as stored matches its logits to float rounding; the C
backend matches the reference within the error of its 8-bit quantized activations.
"""
import numpy as np
import pytest
from tiny_models import ARCHS, load_gguf_in_transformers, tiny_hf_model, write_tiny_gguf, write_tiny_hf_folder

import dnet

torch = pytest.importorskip("torch")

IDS = [5, 17, 42, 8, 99, 3, 64, 120, 7, 33, 81, 2, 56]


def _oracle_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def _close(got, want, rel):
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= rel * np.abs(want).max(), np.abs(got - want).max() / np.abs(want).max()


@pytest.mark.parametrize("fmt", ["f32", "q8_0", "q4_1"])
@pytest.mark.parametrize("arch", ARCHS)
def test_reference_logits_equal_transformers_on_the_same_gguf(tmp_path, arch, fmt):
    path = write_tiny_gguf(tmp_path, arch, fmt)
    with dnet.llm.load(path, target="numpy", context=32) as llm:
        _close(llm.logits(IDS), _oracle_logits(load_gguf_in_transformers(path), IDS), 1e-4)


@pytest.mark.parametrize("arch, fmt", [("llama", "q4_1"), ("mistral", "q8_0"), ("qwen2", "q4_0"), ("qwen3", "f16"),
                                       ("llama", "q4_k"), ("qwen2", "q5_k"), ("qwen3", "q6_k"), ("llama", "bf16")])
def test_c_backend_matches_the_reference_for_every_format(tmp_path, arch, fmt):
    path = write_tiny_gguf(tmp_path, arch, fmt)
    with dnet.llm.load(path, target="numpy", context=32) as ref, dnet.llm.load(path, threads=2, context=32) as c:
        want = ref.logits(IDS)
        _close(c.logits(IDS), want, 0.03)
        if fmt in ("q4_k", "q5_k", "q6_k"):    # random blocks: transformers' dequantization is the model
            _close(want, _oracle_logits(load_gguf_in_transformers(path), IDS), 1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_hugging_face_folder_gives_the_models_logits(tmp_path, arch):
    folder = write_tiny_hf_folder(tmp_path, arch)
    want = _oracle_logits(tiny_hf_model(arch).eval(), IDS)
    with dnet.llm.load(folder, threads=2, context=32) as llm:
        _close(llm.logits(IDS), want, 1e-4)


def test_quantize_stores_a_float_model_in_a_block_format(tmp_path):
    folder = write_tiny_hf_folder(tmp_path, "llama")
    want = _oracle_logits(tiny_hf_model("llama").eval(), IDS)
    with dnet.llm.load(folder, threads=2, context=32, quantize="q8_0") as llm:
        assert llm.weight_bytes < sum(p.numel() * 4 for p in tiny_hf_model("llama").parameters())
        _close(llm.logits(IDS), want, 0.05)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_greedy_generation_equals_transformers_greedy(tmp_path, arch):
    path = write_tiny_gguf(tmp_path, arch, "f32")
    model = load_gguf_in_transformers(path)
    with dnet.llm.load(path, threads=2, context=64) as llm:
        steps = list(llm.steps(IDS[:5], max_tokens=12, temperature=0.0, ignore_eos=True))
        with torch.no_grad():
            want = model.generate(torch.tensor([IDS[:5]]), max_new_tokens=12, do_sample=False,
                                  eos_token_id=None, pad_token_id=0)[0, 5:].tolist()
        assert [s.token for s in steps] == want
        assert steps[-1].finish_reason == "length"
