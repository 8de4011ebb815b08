"""What the server serves: a text generator (an LLM behind a batcher) or a sentence encoder.

Both are bridged to asyncio here: the batcher's thread hands each step to the request's
event loop (`call_soon_threadsafe`), and an encoder runs in a worker thread, so the server's
loop never waits on the model. A stream that ends early (the client went away) cancels its
request, which frees its cache slot at the next token boundary.
"""
from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import numpy as np

from dnet.errors import DnetError
from dnet.llm.api import LLM
from dnet.llm.batcher import Batcher
from dnet.llm.generation import Step
from dnet.llm.sampling import SamplingParams


class ServedLLM:
    kind = "text"

    def __init__(self, llm: LLM, name: str, max_waiting: int = 64):
        self.llm, self.name = llm, name
        self.batcher = Batcher(llm.engine, llm.tokenizer, max_waiting=max_waiting)
        self.started = time.time()

    @property
    def context(self) -> int:
        return self.llm.context

    @property
    def eos(self) -> tuple[int, ...]:
        return tuple(self.llm.tokenizer.eos_token_ids)

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        text = self.llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return self.llm.tokenizer.encode(text, add_special_tokens=False)

    def text_prompt(self, prompt: str | Sequence[int]) -> list[int]:
        return self.llm._prompt_ids(prompt)

    def token_text(self, token: int) -> str:
        return self.llm.tokenizer.decode([token], skip_special_tokens=False)

    def start(self, prompt: list[int], params: SamplingParams) -> "TokenStream":
        """Queue a generation (QueueFull when the queue is full): its steps, as they come, by `async for`."""
        return TokenStream(self.batcher, prompt, params)

    def status(self) -> dict:
        """The model, its plan over the cluster (one local stage on one node) and live figures."""
        engine, batcher, config = self.llm.engine, self.batcher, self.llm.config
        return {"model": self.name, "kind": self.kind, "arch": config.arch, "layers": config.num_layers,
                "context": self.context, "slots": engine.cache.slots, "source": self.llm.source,
                "weight_bytes": self.llm.weight_bytes, "plan": _plan(engine, config.num_layers, batcher),
                "tokens_per_second": batcher.tokens_per_second(), "running": batcher.running,
                "waiting": batcher.waiting, "kv_bytes_in_use": engine.cache.bytes_in_use,
                "stats": vars(batcher.stats).copy()}

    def close(self) -> None:
        self.batcher.close()
        self.llm.close()


class TokenStream:
    """One generation's steps handed from the batcher's thread to the event loop that started it.
    Leaving the `async for` early (or being cancelled) cancels the generation: its slot is freed."""

    def __init__(self, batcher: Batcher, prompt: list[int], params: SamplingParams):
        self._loop = asyncio.get_running_loop()
        self._items: asyncio.Queue = asyncio.Queue()
        self._batcher = batcher
        self.request = batcher.submit(prompt, params, self._put)

    def _put(self, item: Step | BaseException | None) -> None:
        self._loop.call_soon_threadsafe(self._items.put_nowait, item)   # raises once the loop is closed

    async def __aiter__(self) -> AsyncIterator[Step]:
        try:
            while True:
                item = await self._items.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel()

    def cancel(self) -> None:
        self._batcher.cancel(self.request)      # nothing if it has finished


def _plan(engine: Any, layers: int, batcher: Batcher) -> dict:
    """Stages (node, layers, planned and measured ms per step), the bottleneck, the nodes."""
    exe = engine.exe
    if not hasattr(exe, "plan"):          # one node: the whole model, measured by the batcher's steps
        s = batcher.stats
        measured = 1e3 * s.decode_seconds / s.decode_steps if s.decode_steps else None
        return {"stages": [{"node": "local", "layers": layers, "first": "0", "last": str(layers - 1),
                            "planned_ms": None, "measured_ms": measured}],
                "bottleneck": "local", "nodes": [{"name": "local", "address": None, "used": True}]}
    plan, timings = exe.plan, exe.timings
    stages = []
    for k, st in enumerate(plan.stages):
        t = timings.get(k)
        stages.append({"node": st.node, "layers": len(st.layers), "first": st.layers[0] if st.layers else "",
                       "last": st.layers[-1] if st.layers else "", "planned_ms": 1e3 * st.compute_seconds,
                       "measured_ms": t.mean_ms if t and t.runs else None})
    used = {st.node for st in plan.stages}
    nodes = [{"name": n.name, "address": n.address, "used": n.name in used} for n in exe.topology.nodes]
    return {"stages": stages, "bottleneck": plan.bottleneck, "nodes": nodes}


class ServedEncoder:
    kind = "embeddings"

    def __init__(self, encoder: Any, name: str):
        self.encoder, self.name = encoder, name
        self.started = time.time()
        self._lock = threading.Lock()       # one run at a time: the executable's buffers are its own
        self.requests = 0
        self.tokens = 0

    async def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """Unit vectors for `texts` and the tokens they took."""
        return await asyncio.to_thread(self._embed, texts)

    def _embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        with self._lock:
            tokens = int(self.encoder.tokenize(texts)["attention_mask"].sum())
            vectors = self.encoder.encode(texts)
            self.requests += 1
            self.tokens += tokens
        return vectors, tokens

    def status(self) -> dict:
        return {"model": self.name, "kind": self.kind, "dimensions": self.encoder.module.bert.config.hidden_size,
                "requests": self.requests, "tokens": self.tokens}

    def close(self) -> None:
        pass


def load_served(model: str, topology: Any = None, threads: int | None = None, slots: int = 16,
                context: int | None = None, max_waiting: int = 64, target: str = "c",
                cluster: dict | None = None, prefix_cache: bool = True) -> ServedLLM | ServedEncoder:
    """`minilm` (embeddings), or a GGUF file / Hugging Face folder / `smollm2` (text generation).
    `cluster`: options for running across `topology` (see `dnet.llm.load`)."""
    if model == "minilm":
        from dnet.models.minilm import load_minilm

        if topology is not None:
            raise DnetError("minilm is served from one node", hint="leave out --topology for an encoder")
        return ServedEncoder(load_minilm(target), "minilm")
    import dnet.llm

    llm = dnet.llm.load(model, target=target, threads=threads, topology=topology, context=context, slots=slots,
                        cluster=cluster, prefix_cache=prefix_cache)
    name = "smollm2" if model in ("smollm2", None) else Path(model).name
    return ServedLLM(llm, name, max_waiting=max_waiting)
