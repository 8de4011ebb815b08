"""Continuous batching on a tiny model: requests that join and leave at token boundaries get the text they
would get alone; cancelled ones free their slot; a full queue refuses."""
import queue
import threading
import time

import pytest
from tiny_models import write_tiny_gguf

import dnet
from dnet.errors import GenerationError
from dnet.llm.batcher import Batcher, QueueFull
from dnet.llm.sampling import SamplingParams

PROMPTS = ["the cat sat on", "Hello world", "def add(a, b):", "Numbers: 1, 22", "Once upon a time there was",
           "Emoji are bytes", "accents everywhere", "a tiny model"]


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    path = write_tiny_gguf(tmp_path_factory.mktemp("tiny"), "llama", "q8_0")
    with dnet.llm.load(path, threads=1, context=64, slots=3) as model:
        yield model


class Collector:
    """A request's sink: its steps, then None or an error."""

    def __init__(self):
        self.items = queue.Queue()

    def __call__(self, item):
        self.items.put(item)

    def result(self, timeout=60):
        steps = []
        while True:
            item = self.items.get(timeout=timeout)
            if item is None:
                return steps
            if isinstance(item, BaseException):
                raise item
            steps.append(item)


def greedy(max_tokens, **extra):
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **extra)


def test_concurrent_requests_get_their_sequential_answers(llm):
    """More requests than slots, with different lengths: they join as slots free up and are decoded in
    shared batched steps, yet each gets the tokens it gets alone (slots are packed as sequences leave)."""
    alone = [[s.token for s in llm.steps(p, max_tokens=4 + 3 * i, temperature=0.0, ignore_eos=True)]
             for i, p in enumerate(PROMPTS)]
    batcher = Batcher(llm.engine, llm.tokenizer)
    try:
        sinks = [Collector() for _ in PROMPTS]
        for i, (p, sink) in enumerate(zip(PROMPTS, sinks)):
            batcher.submit(llm.tokenizer.encode(p), greedy(4 + 3 * i), sink)
        together = [[s.token for s in sink.result()] for sink in sinks]
        assert together == alone
        assert batcher.stats.decode_steps < sum(len(t) for t in alone) - len(PROMPTS)   # steps were shared
        assert batcher.stats.finished == len(PROMPTS) and batcher.running == 0
        assert llm.engine.cache.free and len(llm.engine.cache.free) == 3       # every slot given back
    finally:
        batcher.close()


def test_a_long_prompt_is_fed_in_chunks_between_the_others_steps(llm):
    batcher = Batcher(llm.engine, llm.tokenizer, prefill_budget=8)
    try:
        long_prompt = list(range(3, 43))
        alone = [s.token for s in llm.steps(long_prompt, max_tokens=5, temperature=0.0, ignore_eos=True)]
        short, long = Collector(), Collector()
        batcher.submit(llm.tokenizer.encode(PROMPTS[0]), greedy(12), short)
        batcher.submit(long_prompt, greedy(5), long)
        assert [s.token for s in long.result()] == alone
        assert len(short.result()) == 12
    finally:
        batcher.close()


def test_a_cancelled_request_frees_its_slot_and_hears_nothing_more(llm):
    batcher = Batcher(llm.engine, llm.tokenizer)
    try:
        first_step, release = threading.Event(), threading.Event()
        seen = []

        def slow_sink(item):
            seen.append(item)
            first_step.set()
            release.wait(10)         # holds the batcher's thread until the request is cancelled

        request = batcher.submit(llm.tokenizer.encode(PROMPTS[1]), greedy(40), slow_sink)
        assert first_step.wait(30)
        batcher.cancel(request)
        release.set()
        others = [Collector() for _ in range(3)]        # all three slots are needed: the cancelled one's too
        for sink in others:
            batcher.submit(llm.tokenizer.encode(PROMPTS[2]), greedy(3), sink)
        assert all(len(sink.result()) == 3 for sink in others)
        assert len(seen) == 1 and batcher.stats.cancelled == 1
    finally:
        batcher.close()


def test_a_full_queue_refuses_and_a_prompt_past_the_context_is_refused_at_once(llm):
    batcher = Batcher(llm.engine, llm.tokenizer, max_waiting=0)
    try:
        running = [batcher.submit([5, 6], greedy(60), Collector()) for _ in range(3)]   # a slot each
        with pytest.raises(QueueFull, match="every slot is busy and 0 requests are waiting"):
            batcher.submit([5, 6], greedy(2), Collector())
        assert batcher.stats.rejected == 1
        for r in running:
            batcher.cancel(r)
    finally:
        batcher.close()
    batcher = Batcher(llm.engine, llm.tokenizer)
    try:
        with pytest.raises(GenerationError, match="no room in the context of 64"):
            batcher.submit(list(range(3, 70)), greedy(2), Collector())
        nothing = Collector()
        batcher.submit([5, 6], greedy(0), nothing)
        assert nothing.result() == []
    finally:
        batcher.close()


def test_closing_fails_what_is_still_running(llm):
    batcher = Batcher(llm.engine, llm.tokenizer)
    started = threading.Event()
    items = []

    def sink(item):
        items.append(item)
        started.set()
        time.sleep(0.05)         # the context's 60 steps would take 3 s

    batcher.submit(llm.tokenizer.encode(PROMPTS[0]), greedy(10_000, stop=("never",)), sink)
    assert started.wait(30)
    batcher.close()
    assert isinstance(items[-1], GenerationError) and "shutting down" in str(items[-1])
    assert len(llm.engine.cache.free) == 3


def test_a_prompt_sharing_a_start_with_an_earlier_one_reuses_its_slot(llm):
    """Prefix caching: the slot keeps an ended sequence's keys and values, so a prompt that starts the same
    way feeds only the rest; its greedy tokens equal those of teacher-forced logits computed from scratch."""
    shared = llm.tokenizer.encode("Once upon a time there was a tiny model that")
    first, second = shared + llm.tokenizer.encode(" sang"), shared + llm.tokenizer.encode(" spoke")
    batcher = Batcher(llm.engine, llm.tokenizer)
    try:
        done = Collector()
        batcher.submit(first, greedy(3), done)
        done.result()
        reused, fed = batcher.stats.reused_tokens, batcher.stats.prompt_tokens
        again = Collector()
        batcher.submit(second, greedy(5), again)
        tokens = [s.token for s in again.result()]
        common = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)   # the tiny vocabulary
        assert common >= len(shared)                                              # may split " s..."
        assert batcher.stats.reused_tokens - reused == common
        assert batcher.stats.prompt_tokens - fed == len(second) - common
    finally:
        batcher.close()
    ids = list(second)
    for token in tokens:          # llm.logits opens a slot without a prompt: nothing reused
        assert int(llm.logits(ids)[-1].argmax()) == token
        ids.append(token)


def test_the_slot_pool_picks_the_longest_shared_start_and_never_all_of_a_prompt():
    from dnet.llm.kv_cache import SlotPool

    pool = SlotPool(context=16, slots=3)
    pool.tokens[1], pool.tokens[2] = [1, 2, 3, 4], [1, 2, 9]
    assert pool.acquire([1, 2, 3, 7]) == (1, 3) and pool.tokens[1] == [1, 2, 3]
    assert pool.acquire([1, 2]) == (2, 1)              # the last token is fed again for its logits
    assert pool.acquire([5]) == (0, 0)
    pool.release(1)
    pool.forget()                                       # a cluster re-planned: what free slots held is gone
    assert pool.tokens[1] == [] and pool.tokens[2] == [1]
