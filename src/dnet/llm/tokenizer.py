"""The tokenizer of an LLM: a Hugging Face `tokenizer.json`, or a GGUF byte-level BPE vocabulary.

    tokenizer = Tokenizer(model_file.tokenizer)
    ids = tokenizer.encode("Hello")                    # BOS first when the model asks for it
    tokenizer.decode(ids)                              # "Hello"
    tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}])

A GGUF file keeps a tokenizer as its vocabulary, merges and a pre-tokenizer's *name*; the
`tokenizers` library does the work once it is built from those: a BPE model over the byte
alphabet, the pre-tokenizer's regex splits (`PRE_TOKENIZERS`, llama.cpp's per-name table), the
byte-level decoder, and control tokens as special tokens matched whole in the text.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from dnet.errors import TokenizerError
from dnet.llm.chat import render_chat
from dnet.llm.model_file import TokenizerData

# llama.cpp's pre-tokenizer regexes: text is split by each in turn, then mapped to the byte alphabet
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
DIGIT_SPLIT = r"\p{N}"
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "": (GPT2_SPLIT,),                        # files from before `tokenizer.ggml.pre`
    "default": (GPT2_SPLIT,),
    "gpt2": (GPT2_SPLIT,),
    "smollm": (DIGIT_SPLIT, GPT2_SPLIT),       # digits one by one (SmolLM's Digits pre-tokenizer), then GPT-2's
    "starcoder": (DIGIT_SPLIT, GPT2_SPLIT),
    "refact": (DIGIT_SPLIT, GPT2_SPLIT),
    "codeshell": (DIGIT_SPLIT, GPT2_SPLIT),
    "llama-bpe": (LLAMA3_SPLIT,),              # Llama 3
    "llama3": (LLAMA3_SPLIT,),
    "llama-v3": (LLAMA3_SPLIT,),
    "smaug-bpe": (LLAMA3_SPLIT,),
    "dbrx": (LLAMA3_SPLIT,),
    "falcon3": (LLAMA3_SPLIT,),
    "qwen2": (QWEN2_SPLIT,),
    "deepseek-r1-qwen": (QWEN2_SPLIT,),
}

TOKEN_CONTROL, TOKEN_USER_DEFINED = 3, 4


class Tokenizer:
    """Text to token ids and back, and a model's chat template; `source` names the model in errors."""

    def __init__(self, data: TokenizerData, source: str = ""):
        self.data = data
        self.source = source
        if data.tokenizer_json is not None:
            self._tokenizer = from_json(data.tokenizer_json, self._where)
            self._tokens = None
        elif data.tokens:
            self._tokenizer = from_vocabulary(data, self._where)
            self._tokens = data.tokens
        else:
            raise TokenizerError(f"{self._where}the model has no tokenizer (no tokenizer.json, no GGUF vocabulary)")
        self.bos_token_id = data.bos_token_id
        self.eos_token_ids = tuple(data.eos_token_ids)
        self._add_bos = data.add_bos and data.bos_token_id is not None and not self._post_processor_adds_bos()

    @property
    def _where(self) -> str:
        return f"{self.source}: " if self.source else ""

    @property
    def vocab_size(self) -> int:
        if self._tokens is not None:
            return len(self._tokens)
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; special tokens written in it (`<|im_start|>`) are matched whole."""
        if not isinstance(text, str):
            raise TokenizerError(f"{self._where}encode takes a str, got {type(text).__name__}")
        ids = self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and self._add_bos:
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(f"{self._where}token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        if self._tokens is not None:
            return self._tokens[token_id] if 0 <= token_id < len(self._tokens) else None
        return self._tokenizer.id_to_token(token_id)

    @property
    def bos_token(self) -> str | None:
        return None if self.bos_token_id is None else self.id_to_token(self.bos_token_id)

    @property
    def eos_token(self) -> str | None:
        return self.id_to_token(self.eos_token_ids[0]) if self.eos_token_ids else None

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            tools: list[dict] | None = None) -> str:
        """The prompt text of a conversation, as transformers' `apply_chat_template(..., tokenize=False)`."""
        return render_chat(self.data.chat_template, messages, add_generation_prompt=add_generation_prompt,
                           tools=tools, source=self.source, bos_token=self.bos_token, eos_token=self.eos_token)

    def _post_processor_adds_bos(self) -> bool:
        """A tokenizer.json whose post-processor already puts BOS first (Llama 3's does)."""
        ids = self._tokenizer.encode("a", add_special_tokens=True).ids
        return bool(ids) and ids[0] == self.data.bos_token_id


def from_json(text: str, where: str = ""):
    from tokenizers import Tokenizer as HFTokenizer

    try:
        return HFTokenizer.from_str(text)
    except Exception as error:                 # the library raises a bare Exception on a bad file
        raise TokenizerError(f"{where}tokenizer.json cannot be read ({_first_line(error)})") from None


def from_vocabulary(data: TokenizerData, where: str = ""):
    """A byte-level BPE tokenizer from a GGUF vocabulary, merges and pre-tokenizer name."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    splits = PRE_TOKENIZERS.get(data.pre)
    if splits is None:
        known = ", ".join(sorted(name for name in PRE_TOKENIZERS if name))
        raise TokenizerError(f"{where}pre-tokenizer '{data.pre}' is not supported (dnet knows {known})")
    alphabet = byte_alphabet()
    vocab: dict[str, int] = {}
    for index, token in enumerate(data.tokens):
        vocab.setdefault(token if set(token) <= alphabet.keys() else to_byte_alphabet(token), index)
    try:
        merges = [tuple(merge.split(" ", 1)) for merge in data.merges]
        model = models.BPE(vocab, merges, fuse_unk=False, ignore_merges=False)
    except Exception as error:
        raise TokenizerError(f"{where}the BPE vocabulary cannot be built ({_first_line(error)})") from None
    tokenizer = HFTokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(split), behavior="isolated") for split in splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    types = data.token_types or (1,) * len(data.tokens)
    # A control token is special (dropped by decode when asked); a user-defined one (`<think>`) is text
    # that is matched whole. A control token outside the byte alphabet is a mislabel and left out.
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False)
                                  for token, kind in zip(data.tokens, types)
                                  if kind == TOKEN_CONTROL and set(token) <= alphabet.keys()])
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False)
                          for token, kind in zip(data.tokens, types) if kind == TOKEN_USER_DEFINED])
    return tokenizer


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[str, int]:
    """GPT-2's spelling of bytes as printable characters: character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelled = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in spelled:
            spelled[byte] = chr(256 + extra)
            extra += 1
    return {char: byte for byte, char in spelled.items()}


def to_byte_alphabet(text: str) -> str:
    spelling = {byte: char for char, byte in byte_alphabet().items()}
    return "".join(spelling[b] for b in text.encode("utf-8"))


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
