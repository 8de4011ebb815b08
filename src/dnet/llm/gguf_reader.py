"""Read a GGUF file (llama.cpp's format) into a `ModelFile`, weights memory-mapped.

    model = read_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
    model.config.num_layers, model.tensors["blk.0.attn_q.weight"]      # a QuantTensor over the file

The `gguf` package parses the file; this module turns its metadata into a `ModelConfig`, its
vocabulary into `TokenizerData`, and its tensors into numpy arrays (F32, F16, BF16) or
`QuantTensor`s (the block formats), all views of the one memory map. Only the q and k weights
of a `llama` file are copied: llama.cpp's converter reorders their rows for its interleaved RoPE,
and this reader puts them back in Hugging Face's order (see `unpermute_rows`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import ml_dtypes
import numpy as np

from dnet.core import progress
from dnet.core.origins import register_mapping, take_rows
from dnet.core.quant import block_dtype
from dnet.errors import ModelFileError, TokenizerError
from dnet.llm.model_file import ARCHITECTURES, ModelConfig, ModelFile, QuantTensor, RopeScaling, TokenizerData

# architectures whose q/k rows llama.cpp's converter permutes (Mistral's GGUF files say `llama`)
PERMUTED_ARCHITECTURES = ("llama", "mistral")
PLAIN_TYPES = {"F32": np.float32, "F16": np.float16}


def read_gguf(path: str | Path) -> ModelFile:
    """The config, tensors and tokenizer of the GGUF file at `path`."""
    path = Path(path)
    name = path.name
    reader = open_reader(path)
    register_mapping(reader.data, path)        # a worker holding this file reads its tensors there
    try:
        metadata = FieldReader(reader, name)
        config = read_config(metadata, [t.name for t in reader.tensors])
        tensors = read_tensors(reader, config, name)
        tokenizer = read_tokenizer(metadata)
    except (ModelFileError, TokenizerError):
        raise
    except Exception as error:                 # gguf's parser raises many kinds on a damaged file
        raise ModelFileError(f"{name}: cannot be read ({first_line(error)})") from None
    config = with_rope_freqs(config, tensors, name)
    rows = tensors["token_embd.weight"].shape[0]
    if rows != config.vocab_size:              # the embedding is what the model computes with
        config = dataclasses.replace(config, vocab_size=rows)
    return ModelFile(config, tensors, tokenizer, source=str(path), extra={"format": "gguf"})


def open_reader(path: Path):
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        # the gguf package parses every metadata field (the vocabulary: ~100k strings) in this one call
        with progress.task(f"read {path.name} metadata"):
            return _reader_class()(path, "r")
    except Exception as error:
        raise ModelFileError(f"{path.name}: not a readable GGUF file ({first_line(error)})") from None


@functools.cache   # the subclass is made once, not per file opened
def _reader_class():
    """gguf's reader, slicing a plain array over its memory map instead of the np.memmap itself.

    Each slice of an np.memmap is a new memmap object (its __array_finalize__ and __getitem__ in Python):
    with two slices per vocabulary string the reader took 1.8-2 s over SmolLM2's 49k tokens, and every worker
    of a cluster opens the file again; over a plain view of the same mapping, 0.6 s. The tensors' arrays are
    still views of the one mapping. Where gguf's private `_get` is not the one this was written against (its
    signature changed), the reader is used as it is."""
    import inspect

    import gguf

    base = gguf.GGUFReader
    if list(inspect.signature(base._get).parameters) != ["self", "offset", "dtype", "count", "override_order"]:
        return base

    class PlainReader(base):
        def _get(self, offset, dtype, count=1, override_order=None):
            plain = self.__dict__.get("_plain")
            if plain is None:   # self.data, the memory map, is set once, before the first read
                plain = self._plain = self.data.view(np.ndarray)
            count, dtype = int(count), np.dtype(dtype)
            arr = plain[offset:offset + dtype.itemsize * count].view(dtype)[:count]
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    return PlainReader


def first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


class FieldReader:
    """Metadata values by key, with errors that name the file and the key."""

    def __init__(self, reader, file_name: str):
        self.fields = reader.fields
        self.file_name = file_name

    def __contains__(self, key: str) -> bool:
        return key in self.fields

    def get(self, key: str, default=None):
        field = self.fields.get(key)
        return default if field is None else field.contents()

    def require(self, key: str):
        if key not in self.fields:
            raise ModelFileError(f"{self.file_name}: metadata '{key}' is missing")
        return self.get(key)


def read_config(metadata: FieldReader, tensor_names: list[str]) -> ModelConfig:
    name = metadata.file_name
    arch = metadata.require("general.architecture")
    if arch not in ARCHITECTURES:
        raise ModelFileError(f"{name}: unknown architecture '{arch}' (dnet reads {', '.join(ARCHITECTURES)})")

    def key(suffix: str, default=None):
        """`{arch}.{suffix}`: required unless a default is given."""
        if default is None:
            return metadata.require(f"{arch}.{suffix}")
        return metadata.get(f"{arch}.{suffix}", default)

    hidden, heads = int(key("embedding_length")), int(key("attention.head_count"))
    head_dim = metadata.get(f"{arch}.attention.key_length") or metadata.get(f"{arch}.rope.dimension_count")
    tokens = metadata.fields.get("tokenizer.ggml.tokens")
    vocab = metadata.get(f"{arch}.vocab_size") or (len(tokens.data) if tokens is not None else 0)
    if not vocab:
        raise ModelFileError(f"{name}: neither '{arch}.vocab_size' nor a vocabulary says the vocabulary size")
    names = set(tensor_names)
    return ModelConfig(
        arch=arch,
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(key("feed_forward_length")),
        num_layers=int(key("block_count")),
        num_heads=heads,
        num_kv_heads=int(key("attention.head_count_kv", heads)),
        head_dim=int(head_dim) if head_dim else hidden // heads,
        context_length=int(key("context_length", 2048)),
        rope_theta=float(key("rope.freq_base", 10000.0)),
        rope_scaling=read_rope_scaling(metadata, arch),
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings="output.weight" not in names,
        qkv_bias="blk.0.attn_q.bias" in names,
        qk_norm="blk.0.attn_q_norm.weight" in names,
        name=str(metadata.get("general.name", "")),
    )


def read_rope_scaling(metadata: FieldReader, arch: str) -> RopeScaling | None:
    kind = metadata.get(f"{arch}.rope.scaling.type")
    factor = metadata.get(f"{arch}.rope.scaling.factor")
    if kind in (None, "none") or (kind == "linear" and factor in (None, 1.0)):
        return None
    if kind == "linear":
        return RopeScaling("linear", float(factor))
    raise ModelFileError(f"{metadata.file_name}: rope scaling '{kind}' is not supported (dnet reads linear and llama3)")


def with_rope_freqs(config: ModelConfig, tensors: dict, file_name: str) -> ModelConfig:
    """Llama 3.1+ files keep their rope scaling as `rope_freqs.weight` (a divisor per frequency),
    not as metadata: recognise it as Llama 3's scaling with its usual parameters."""
    freqs = tensors.pop("rope_freqs.weight", None)
    if freqs is None or config.rope_scaling is not None:
        return config
    freqs = np.asarray(freqs, dtype=np.float64).reshape(-1)
    factor = float(freqs.max())
    for original in (8192, config.context_length):
        scaling = RopeScaling("llama3", factor, 1.0, 4.0, original)
        if np.allclose(llama3_divisors(scaling, config.rope_theta, config.head_dim), freqs, rtol=1e-3):
            return dataclasses.replace(config, rope_scaling=scaling)
    raise ModelFileError(f"{file_name}: 'rope_freqs.weight' is not Llama 3's rope scaling (dnet reads llama3 only)")


def llama3_divisors(scaling: RopeScaling, theta: float, head_dim: int) -> np.ndarray:
    """What Llama 3's scaling divides each rope frequency by (llama.cpp's `rope_freqs`)."""
    freqs = theta ** -(np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / freqs
    low_wavelen = scaling.original_context / scaling.low_freq_factor
    high_wavelen = scaling.original_context / scaling.high_freq_factor
    smooth = (scaling.original_context / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    middle = 1.0 / ((1 - smooth) / scaling.factor + smooth)
    return np.where(wavelen < high_wavelen, 1.0, np.where(wavelen > low_wavelen, scaling.factor, middle))


def read_tensors(reader, config: ModelConfig, file_name: str) -> dict:
    tensors = {}
    # views of the memory map, but a llama file's q and k weights are copied in a new row order
    with progress.task(f"read {file_name} tensors", total=len(reader.tensors), unit="tensors") as task:
        for tensor in reader.tensors:
            value = read_tensor(tensor, file_name)
            if config.arch in PERMUTED_ARCHITECTURES and tensor.name.endswith((".attn_q.weight", ".attn_q.bias")):
                value = unpermute_rows(value, config.num_heads)
            elif config.arch in PERMUTED_ARCHITECTURES and tensor.name.endswith((".attn_k.weight", ".attn_k.bias")):
                value = unpermute_rows(value, config.num_kv_heads)
            tensors[tensor.name] = value
            task.advance()
    if "token_embd.weight" not in tensors:
        raise ModelFileError(f"{file_name}: tensor 'token_embd.weight' is missing")
    return tensors


def read_tensor(tensor, file_name: str):
    """A numpy view (F32, F16, BF16) or a QuantTensor over the file's bytes."""
    kind = tensor.tensor_type.name
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    if kind in PLAIN_TYPES:
        return tensor.data.reshape(shape)
    if kind == "BF16":
        return tensor.data.view(ml_dtypes.bfloat16).reshape(shape)
    dtype = block_dtype(kind)
    if dtype is None:
        raise ModelFileError(f"{file_name}: tensor '{tensor.name}' has type {kind}, which dnet does not read "
                             "(F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)")
    return QuantTensor(dtype=dtype, shape=shape, data=tensor.data)   # already (rows, row bytes), uint8


def unpermute_rows(value, num_heads: int):
    """Hugging Face's row order of a q or k weight that llama.cpp's converter permuted.

    The converter takes each head's rows as two halves (rotate-half pairs dimension i with
    i + d/2) and interleaves them (its RoPE pairs 2i with 2i + 1): within a head, stored row 2i
    is HF row i and stored row 2i + 1 is HF row i + d/2. So HF's order is the stored rows
    0, 2, 4, ..., then 1, 3, 5, ... of each head. Block rows move whole, so this works on
    QuantTensors too (a copy of just these tensors, which remembers the file rows it came from)."""
    rows = value.shape[0]
    head_dim = rows // num_heads
    within = np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])
    order = (np.arange(num_heads)[:, None] * head_dim + within[None, :]).reshape(-1)
    if isinstance(value, QuantTensor):
        return QuantTensor(value.dtype, value.shape, take_rows(value.data, order))
    return take_rows(value, order)


def read_tokenizer(metadata: FieldReader) -> TokenizerData:
    name = metadata.file_name
    model = metadata.get("tokenizer.ggml.model")
    if model is None or "tokenizer.ggml.tokens" not in metadata:
        return TokenizerData()                 # no vocabulary: the Tokenizer says so when built
    if model != "gpt2":
        raise TokenizerError(f"{name}: tokenizer '{model}' is not supported (dnet reads byte-level BPE, 'gpt2')")
    eos = [metadata.get(key) for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                                         "tokenizer.ggml.eom_token_id")]
    bos = metadata.get("tokenizer.ggml.bos_token_id")
    return TokenizerData(
        tokens=tuple(metadata.get("tokenizer.ggml.tokens")),
        token_types=tuple(int(t) for t in metadata.get("tokenizer.ggml.token_type", [])),
        merges=tuple(metadata.get("tokenizer.ggml.merges", [])),
        pre=str(metadata.get("tokenizer.ggml.pre", "")),
        bos_token_id=None if bos is None else int(bos),
        eos_token_ids=tuple(dict.fromkeys(int(e) for e in eos if e is not None)),
        add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        chat_template=metadata.get("tokenizer.chat_template"),
    )
