"""Running the model's one graph for prefill and decode steps over a KV cache.

`Engine` knows the graph's inputs (`dnet.llm.model`) and the cache's slots; it knows
nothing of text or sampling. A sequence is a slot and a length: `prefill` feeds it new
tokens in chunks, `decode` advances several sequences by one token each in one batched
step per run of consecutive slots, and each returns the logits of the positions asked for.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dnet.errors import GenerationError
from dnet.llm.kv_cache import KVCache, SlotPool

PREFILL_CHUNK = 512      # new tokens per prefill call: bounds the (chunk, ctx) attention scores in memory


@dataclass
class Sequence:
    slot: int
    length: int = 0          # positions in the cache


class Engine:
    def __init__(self, executable, cache: KVCache | SlotPool, vocab_size: int):
        self.exe = executable
        self.cache = cache
        self.vocab_size = vocab_size
        # Reuse a slot's kept start of a prompt (prefix caching). Off, a prompt is always fed whole: its
        # logits are then bit for bit those of a fresh run, since a matmul over fewer rows (the rest of a
        # prompt, not all of it) may round differently, and a sampled answer may differ with it.
        self.prefix_cache = True

    @property
    def context(self) -> int:
        return self.cache.context

    def open(self, prompt: list[int] | None = None) -> Sequence:
        """A sequence in a free slot; with `prompt`, in the slot that holds the longest start of it
        already: its `length` says how many of the prompt's tokens need not be fed again."""
        slot, reused = self.cache.acquire(prompt if prompt and self.prefix_cache else ())
        return Sequence(slot, reused)

    def close(self, seq: Sequence) -> None:
        self.cache.release(seq.slot)

    def shutdown(self) -> None:
        """Free what the engine holds besides memory (a cluster engine: its workers' stages)."""

    def prefill(self, seq: Sequence, tokens: list[int], all_logits: bool = False,
                chunk: int = PREFILL_CHUNK) -> np.ndarray:
        """Feed `tokens` after the sequence's cached ones: logits (1 or len(tokens), vocab)."""
        self._check_room(seq, len(tokens))
        out = []
        for start in range(0, len(tokens), chunk):
            piece = tokens[start:start + chunk]
            last = start + chunk >= len(tokens)
            rows = np.arange(len(piece)) if all_logits else np.array([len(piece) - 1])
            logits = self._run(seq.slot, [seq.length], np.array([piece], np.int64), rows)
            self._advance(seq, piece)
            if all_logits or last:
                out.append(logits)
        return np.concatenate(out) if out else np.zeros((0, self.vocab_size), np.float32)

    def decode(self, seqs: list[Sequence], tokens: list[int]) -> np.ndarray:
        """One new token for each sequence: logits (len(seqs), vocab). Sequences in consecutive cache
        slots share one batched step (the weights read once); a gap in the slots starts another step,
        so a batch's owner keeps its sequences packed (`pack`)."""
        for s in seqs:
            self._check_room(s, 1)
        out = np.empty((len(seqs), self.vocab_size), np.float32)
        order = sorted(range(len(seqs)), key=lambda i: seqs[i].slot)
        for run in consecutive_runs([seqs[i].slot for i in order]):
            picked = [order[i] for i in run]
            out[picked] = self._run(seqs[picked[0]].slot, [seqs[i].length for i in picked],
                                    np.array([[tokens[i]] for i in picked], np.int64), np.arange(len(picked)))
        for s, token in zip(seqs, tokens):
            self._advance(s, [token])
        return out

    def pack(self, seqs: list[Sequence]) -> None:
        """Move the open sequences `seqs` into the lowest slots, so that one batched step decodes them all
        (a cache that lives elsewhere, a cluster's, is left as it is)."""
        if not isinstance(self.cache, KVCache):
            return
        for seq in sorted(seqs, key=lambda s: -s.slot):
            low = self.cache.lowest_free()
            if low is None or low > seq.slot:
                return
            self.cache.move(seq.slot, low)
            seq.slot = low

    def _advance(self, seq: Sequence, tokens: list[int]) -> None:
        """`tokens` are in the sequence's cache now."""
        seq.length += len(tokens)
        self.cache.tokens[seq.slot].extend(int(t) for t in tokens)

    def _check_room(self, seq: Sequence, count: int) -> None:
        if seq.length + count > self.context:
            raise GenerationError(f"{seq.length + count} tokens do not fit the context of {self.context}",
                                  hint="load the model with a larger context=")

    def _run(self, first_slot: int, starts: list[int], tokens: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """One step with the caches of slots [first_slot, first_slot + batch): its logits."""
        inputs = step_inputs(starts, tokens, rows)
        return self.exe.run({**inputs, **self.cache.bind(first_slot, len(tokens))})["logits"]


def consecutive_runs(slots: list[int]) -> list[range]:
    """Index ranges of sorted `slots` that are runs of consecutive slots."""
    runs, start = [], 0
    for i in range(1, len(slots) + 1):
        if i == len(slots) or slots[i] != slots[i - 1] + 1:
            runs.append(range(start, i))
            start = i
    return runs


def step_inputs(starts: list[int], tokens: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The graph's inputs for tokens (batch, seq) of sequences whose caches hold `starts` positions;
    `rows` index batch*seq (the tokens that get logits)."""
    batch, seq = tokens.shape
    positions = np.asarray(starts, np.int64)[:, None] + np.arange(seq, dtype=np.int64)[None, :]
    ctx = int(positions.max()) + 1
    keys = np.arange(ctx, dtype=np.int64)
    mask = np.where(keys[None, None, :] <= positions[:, :, None], np.float32(0), np.float32(-np.inf))
    return {"tokens": tokens, "positions": positions, "mask": mask.astype(np.float32),
            "rows": np.asarray(rows, np.int64)}
