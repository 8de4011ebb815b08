"""dnet.llm's API on a tiny model: streaming, seeds, stop strings, log-probabilities, chat, and bad input."""
import numpy as np
import pytest
from tiny_models import write_tiny_gguf

import dnet
from dnet.errors import DnetError, GenerationError, ModelFileError

PROMPT = "the cat sat on"


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    path = write_tiny_gguf(tmp_path_factory.mktemp("tiny"), "llama", "q8_0")
    with dnet.llm.load(path, threads=2, context=48) as model:
        yield model


def test_streamed_pieces_join_to_the_whole_text_and_a_seed_repeats_it(llm):
    options = dict(max_tokens=12, temperature=0.9, top_k=0, top_p=1.0, min_p=0.0, seed=7, ignore_eos=True)
    whole = llm.generate(PROMPT, **options)
    assert "".join(llm.generate(PROMPT, stream=True, **options)) == whole
    assert llm.generate(PROMPT, **options) == whole
    others = {llm.generate(PROMPT, **{**options, "seed": s}) for s in range(5)}
    assert len(others) > 1                                       # other seeds, other texts


def test_greedy_steps_follow_the_teacher_forced_logits_and_report_their_logprobs(llm):
    ids = llm.tokenizer.encode(PROMPT)
    steps = list(llm.steps(ids, max_tokens=6, temperature=0.0, ignore_eos=True, top_logprobs=3))
    tokens = [s.token for s in steps]
    logits = llm.logits(ids + tokens)[len(ids) - 1:-1]                # row i predicts token i + 1
    assert tokens == list(logits.argmax(-1))
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    np.testing.assert_allclose([s.logprob for s in steps], logp[np.arange(6), tokens], atol=2e-3)
    assert [t for t, _ in steps[0].top][0] == tokens[0] and len(steps[0].top) == 3
    assert steps[-1].finish_reason == "length" and all(s.finish_reason is None for s in steps[:-1])


def test_a_stop_string_ends_the_text_before_it(llm):
    text = llm.generate(PROMPT, max_tokens=16, temperature=0.0, ignore_eos=True)
    stop = text[len(text) // 2:len(text) // 2 + 2]
    assert stop and llm.generate(PROMPT, max_tokens=16, temperature=0.0, ignore_eos=True, stop=[stop]) \
        == text[:text.index(stop)]


def test_chat_renders_the_template_then_generates(llm):
    messages = [{"role": "user", "content": "hello"}]
    rendered = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    ids = llm.tokenizer.encode(rendered, add_special_tokens=False)
    assert llm.chat(messages, max_tokens=8, temperature=0.0) == llm.generate(ids, max_tokens=8, temperature=0.0)


def test_no_tokens_asked_none_given(llm):
    assert llm.generate(PROMPT, max_tokens=0) == ""


@pytest.mark.parametrize("options, message", [
    ({"max_tokens": -1}, "max_tokens"),
    ({"temprature": 0.5}, "did you mean 'temperature'"),
    ({"top_p": 1.5}, "top_p"),
])
def test_bad_sampling_options_are_one_line_errors(llm, options, message):
    with pytest.raises(GenerationError, match=message) as err:
        llm.generate(PROMPT, **options)
    assert "\n" not in str(err.value)


def test_a_prompt_longer_than_the_context_is_refused(llm):
    with pytest.raises(GenerationError, match="leave no room in the context of 48"):
        llm.generate(list(range(3, 60)), max_tokens=4)
    with pytest.raises(GenerationError, match="do not fit the context of 48"):
        llm.logits(list(range(3, 60)))


def test_token_ids_outside_the_vocabulary_are_refused(llm):
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        llm.generate([1, 2, 10 ** 6], max_tokens=1)


def test_generation_stops_at_the_context(llm):
    steps = list(llm.steps(list(range(3, 40)), max_tokens=100, temperature=0.0, ignore_eos=True))
    # 37 prompt positions, 11 more fed back, and the last token sampled from position 48's logits
    assert len(steps) == 48 - 37 + 1 and steps[-1].finish_reason == "length"


def test_bad_files_and_options_fail_at_load(tmp_path):
    with pytest.raises(ModelFileError):
        dnet.llm.load(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelFileError, match="bad.gguf"):
        dnet.llm.load(bad)
    with pytest.raises(GenerationError, match="quantize"):
        dnet.llm.load(bad, quantize="q3")
    with pytest.raises(DnetError, match="topology"):
        dnet.llm.load(bad, topology=object())


def test_a_closed_llm_says_so(tmp_path):
    path = write_tiny_gguf(tmp_path, "llama", "f32")
    with dnet.llm.load(path, target="numpy", context=16) as llm:
        pass
    with pytest.raises(GenerationError, match="closed"):
        llm.generate("x", max_tokens=1)
    assert "closed" in repr(llm)


def test_a_second_generation_while_one_streams_needs_a_free_slot(llm):
    stream = llm.generate(PROMPT, stream=True, max_tokens=20, temperature=0.0, ignore_eos=True)
    next(stream)
    with pytest.raises(GenerationError, match="all 1 sequence slots of the KV cache are in use"):
        llm.generate(PROMPT, max_tokens=2)
    stream.close()                                     # an abandoned stream gives its slot back
    assert llm.generate(PROMPT, max_tokens=2, temperature=0.0) is not None
