"""Models written with dnet.nn: a BERT encoder and the real all-MiniLM-L6-v2 sentence embedder."""
from dnet.models.bert import BertConfig, BertModel, load_hf_weights
from dnet.models.minilm import load_minilm, minilm_model, minilm_module, model_dir
from dnet.models.sentence import INPUT_TYPES, SentenceEmbedder, SentenceEncoder
from dnet.models.tokenizer import Tokenizer

# Built-in models for the command line: name -> () -> (module, default input types).
BUILTIN = {"minilm": minilm_model}

__all__ = [
    "BertConfig", "BertModel", "load_hf_weights", "load_minilm", "minilm_model", "minilm_module", "model_dir",
    "INPUT_TYPES", "SentenceEmbedder", "SentenceEncoder", "Tokenizer", "BUILTIN",
]
