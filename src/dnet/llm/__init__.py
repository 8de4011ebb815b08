"""LLM text generation: GGUF files and Hugging Face folders, compiled by dnet, with a KV cache.

    llm = dnet.llm.load("model.gguf")              # or a Hugging Face folder; default: SmolLM2-135M
    text = llm.generate("Once upon a time", max_tokens=64, temperature=0.0)
    for piece in llm.chat([{"role": "user", "content": "Hi"}], stream=True): ...

See docs/llm.md.
"""
from dnet.llm.api import LLM, Step, default_model_path, load

__all__ = ["LLM", "Step", "default_model_path", "load"]
